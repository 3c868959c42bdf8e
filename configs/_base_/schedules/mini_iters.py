# CPU-sized schedule for the mini configs: iteration based, AdamW, short warm-up + cosine.
# Tests shorten it further with --cfg-options train_cfg.max_iters=2.
optim_wrapper = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-5))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type="CosineAnnealingLR", eta_min_ratio=1e-2, by_epoch=False, begin=0, end=300),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=300, val_interval=300)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
