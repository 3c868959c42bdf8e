# Mini classification data for the CPU configs: Fashion-MNIST (28x28 grey, 10 classes) read from
# the idx files as shipped (Debian `dataset-fashion-mnist` puts them in
# /usr/share/datasets/fashion-mnist), through ClassSubsetDataset so a config can keep some
# classes and cap their number (the CPU demo: source classes 0-4, target classes 5-9).
# Tests point data_root at small generated idx files.
dataset_name = "fashion-mnist"
data_root = "/usr/share/datasets/fashion-mnist"
num_classes = 10
img_size = 28
data_preprocessor = dict(num_classes=num_classes, mean=[72.94], std=[90.02], to_rgb=False)
train_pipeline = [
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_pipeline = [dict(type="PackInputs")]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type="ClassSubsetDataset",
        classes=None,
        max_per_class=None,
        dataset=dict(
            type="GzFashionMNIST", data_root=data_root, split="train", pipeline=train_pipeline
        ),
    ),
    sampler=dict(type="InfiniteSampler", shuffle=True),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type="ClassSubsetDataset",
        classes=None,
        max_per_class=None,
        dataset=dict(
            type="GzFashionMNIST", data_root=data_root, split="test", pipeline=test_pipeline
        ),
    ),
    sampler=dict(type="DefaultSampler", shuffle=False),
)
val_evaluator = dict(type="Accuracy", topk=(1,))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
