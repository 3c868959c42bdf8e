# Segmentation fine-tuning (Sec. 4.1): 20k iterations, AdamW, batch 8 (set in the dataset
# configs). The paper gives no learning rate; this is mmseg's Segformer recipe (lr 6e-5,
# weight decay 0.01, 10x lr for the decode head, no decay on norms / positional blocks, linear
# warm-up 1500 iterations, then poly decay), shortened to 20k iterations.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            "pos_block": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
            "head": dict(lr_mult=10.0),
        }
    ),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=20000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=20000, val_interval=2000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
