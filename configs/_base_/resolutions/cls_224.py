# Image classification at 224x224 (Sec. 4.1; the authors' pipeline): training images are resized
# to 224x224, then RandomResizedCrop 224 and a horizontal flip; test images are resized to
# 224x224. Batch 64 on one GPU (the paper's total batch), 8 loader workers. The dataset's own
# loading step (configs/_base_/datasets/<dataset>.py: load_pipeline) goes in front of these
# transforms, in configs/_base_/data/<dataset>_224.py.
img_size = 224
train_transforms = [
    dict(type="Resize", scale=(224, 224)),
    dict(type="RandomResizedCrop", scale=224),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_transforms = [dict(type="Resize", scale=(224, 224)), dict(type="PackInputs")]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
)
val_evaluator = dict(type="Accuracy", topk=(1,))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
