# `make demo`, step 1 ("pretraining"): the mini EfficientFormer trained from scratch on the
# source task, Fashion-MNIST classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat), all
# 30,000 training images, every parameter, BatchNorm in train mode (norm_eval=False: from
# scratch the running statistics must be learned; the adaptation runs then keep them fixed).
# 400 iterations x 128 images (1.7 epochs), AdamW 3e-3, 20-iteration warm-up then cosine.
# Evaluated on the 5,000 test images of classes 0-4. scripts/reproduce_mini.sh runs it once
# and reuses the checkpoint (iter_400.pth) for every adaptation run.
_base_ = [
    "./_base_/model.py",
    "../../_base_/datasets/fashion-mnist.py",
    "../../_base_/schedules/mini_iters.py",
    "../../_base_/method.py",
    "../../_base_/default_runtime.py",
]
dataset_name = "fmnist-0to4"
source_classes = [0, 1, 2, 3, 4]
max_iters = 400
# serialize_data=False: the idx images stay a plain list (no pickling of 60,000 entries at
# start-up, no unpickling per label lookup): 3.5 s less start-up per run; the loaders have no
# workers, so nothing needs the serialized form. Evaluation in batches of 100: the attention
# maps of 500 images (8 x 49 x 49 each) run 25% slower per image on CPU.
_fast = dict(serialize_data=False)
train_dataloader = dict(
    batch_size=128, dataset=dict(classes=source_classes, max_per_class=None, dataset=_fast)
)
val_dataloader = dict(batch_size=100, dataset=dict(classes=source_classes, dataset=_fast))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(type="AdamW", lr=3e-3, weight_decay=1e-5))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type="CosineAnnealingLR", eta_min_ratio=1e-2, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_last=True),
)
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
lbp = dict(
    # the lighter demo size of ./_base_/model.py, deliberately (checked against lbp.model)
    model_variant="demo size: 48 channels, stages of 1/1/1/2 blocks",
    method="full_bp",
    model="mini-efficientformer",
    scope="full",
    norm_eval=False,
    allow_random_init=True,
)
