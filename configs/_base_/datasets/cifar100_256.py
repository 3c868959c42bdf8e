# CIFAR-100 (Krizhevsky 2009): 50k train / 10k test, 32x32, upsampled to 256x256.
# Pipeline (NOTES-paper): resize to 256x256, RandomResizedCrop 256, horizontal flip; test: resize
# to 256x256. Where the data goes and how to get it: data/README.md.
dataset_name = "cifar100"
dataset_type = "CIFAR100"
data_root = "data/cifar100"
num_classes = 100
img_size = 256
data_preprocessor = dict(
    num_classes=100, mean=[129.304, 124.070, 112.434], std=[68.170, 65.392, 70.418], to_rgb=False
)

train_pipeline = [
    dict(type="Resize", scale=(256, 256)),
    dict(type="RandomResizedCrop", scale=256),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(256, 256)),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split="train",
        download=False,
        pipeline=train_pipeline,
    ),
    sampler=dict(type="DefaultSampler", shuffle=True),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type, data_root=data_root, split="test", download=False, pipeline=test_pipeline
    ),
    sampler=dict(type="DefaultSampler", shuffle=False),
)
val_evaluator = dict(type="Accuracy", topk=(1,))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
