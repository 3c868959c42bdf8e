# CIFAR-10 (Krizhevsky 2009): 50k train / 10k test, 32x32, upsampled to 224x224.
# Pipeline (NOTES-paper): resize to 224x224, RandomResizedCrop 224, horizontal flip; test: resize
# to 224x224. Where the data goes and how to get it: data/README.md.
dataset_name = "cifar10"
dataset_type = "CIFAR10"
data_root = "data/cifar10"
num_classes = 10
img_size = 224
data_preprocessor = dict(
    num_classes=10, mean=[129.304, 124.070, 112.434], std=[68.170, 65.392, 70.418], to_rgb=False
)

train_pipeline = [
    dict(type="Resize", scale=(224, 224)),
    dict(type="RandomResizedCrop", scale=224),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_pipeline = [
    dict(type="Resize", scale=(224, 224)),
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
