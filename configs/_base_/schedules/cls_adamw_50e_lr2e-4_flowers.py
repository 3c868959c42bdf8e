# Flowers102 variant of cls_adamw_50e_*.py (NOTES-paper): lr 2e-4, warm-up over 100
# iterations (the training set is small), cosine down to 0.001x.
optim_wrapper = dict(optimizer=dict(type="AdamW", lr=2e-4, weight_decay=1e-5))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(
        type="CosineAnnealingLR",
        eta_min_ratio=1e-3,
        by_epoch=True,
        begin=0,
        end=50,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=50, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=64, enable=False)
