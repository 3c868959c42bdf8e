# Stanford Cars (Krause 2013): 8,144 train / 8,041 test, 196 classes.
# Pipeline (NOTES-paper): resize to 256x256, RandomResizedCrop 256, horizontal flip; test: resize
# to 256x256. Where the data goes and how to get it: data/README.md.
dataset_name = "stanford-cars"
dataset_type = "StanfordCars"
data_root = "data/stanford_cars"
num_classes = 196
img_size = 256
data_preprocessor = dict(
    num_classes=196, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 256)),
    dict(type="RandomResizedCrop", scale=256),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 256)),
    dict(type="PackInputs"),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, split="train", pipeline=train_pipeline),
    sampler=dict(type="DefaultSampler", shuffle=True),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(type=dataset_type, data_root=data_root, split="test", pipeline=test_pipeline),
    sampler=dict(type="DefaultSampler", shuffle=False),
)
val_evaluator = dict(type="Accuracy", topk=(1,))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
