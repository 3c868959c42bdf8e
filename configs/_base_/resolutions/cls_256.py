# Image classification at 256x256 (SwinV2-Small window 8 is a 256 px model): as cls_224.py with
# every size 256.
_base_ = ["cls_224.py"]
img_size = 256
train_transforms = [
    dict(type="Resize", scale=(256, 256)),
    dict(type="RandomResizedCrop", scale=256),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),
]
test_transforms = [dict(type="Resize", scale=(256, 256)), dict(type="PackInputs")]
