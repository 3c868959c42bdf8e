# Places365-Standard (Zhou 2018), 256x256 images: 1.8M train / 36,500 val (Table 7).
# Pipeline (NOTES-paper): resize to 224x224, RandomResizedCrop 224, horizontal flip; test: resize
# to 224x224. Where the data goes and how to get it: data/README.md.
dataset_name = "places365"
dataset_type = "Places365"
data_root = "data/places365"
num_classes = 365
img_size = 224
data_preprocessor = dict(
    num_classes=365, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(224, 224)),
    dict(type="RandomResizedCrop", scale=224),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(224, 224)),
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
    dataset=dict(type=dataset_type, data_root=data_root, split="val", pipeline=test_pipeline),
    sampler=dict(type="DefaultSampler", shuffle=False),
)
val_evaluator = dict(type="Accuracy", topk=(1,))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
