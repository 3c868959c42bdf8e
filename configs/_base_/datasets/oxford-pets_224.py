# Oxford-IIIT Pets (Parkhi 2012): trainval 3,680 / test 3,669, 37 classes.
# Pipeline (NOTES-paper): resize to 224x224, RandomResizedCrop 224, horizontal flip; test: resize
# to 224x224. Where the data goes and how to get it: data/README.md.
dataset_name = "oxford-pets"
dataset_type = "OxfordIIITPet"
data_root = "data/oxford_pets"
num_classes = 37
img_size = 224
data_preprocessor = dict(
    num_classes=37, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
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
    dataset=dict(type=dataset_type, data_root=data_root, split="trainval", pipeline=train_pipeline),
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
