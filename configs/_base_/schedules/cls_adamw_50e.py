# Classification fine-tuning (Sec. 4.1 + the authors' configs): 50 epochs, AdamW, lr 1e-4,
# batch 64, weight decay 1e-5; linear warm-up from 0.001x over 1000 iterations, then cosine
# annealing per iteration down to 0.01x. The cosine spans the whole run and overlaps the warm-up
# (mmengine multiplies overlapping schedulers), as mmcls 0.25's warm-up did.
optim_wrapper = dict(optimizer=dict(type="AdamW", lr=1e-4, weight_decay=1e-5))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(
        type="CosineAnnealingLR",
        eta_min_ratio=1e-2,
        by_epoch=True,
        begin=0,
        end=50,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=50, val_interval=10)
val_cfg = dict()
test_cfg = dict()
# lr above is for a total batch of 64 (e.g. 1 GPU x 64); enable to rescale for other sizes.
auto_scale_lr = dict(base_batch_size=64, enable=False)
