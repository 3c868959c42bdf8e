# Food-101 (Bossard 2014): 75,750 train / 25,250 test, 101 classes.
# Images are loaded from files. Resolution, transforms and loaders: configs/_base_/resolutions/;
# the pair is joined in configs/_base_/data/. Where the data goes: data/README.md.
dataset_name = "food101"
dataset_type = "Food101"
data_root = "data/food-101"
num_classes = 101
data_preprocessor = dict(
    num_classes=101, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)
load_pipeline = [dict(type="LoadImageFromFile")]
train_dataset = dict(type=dataset_type, data_root=data_root, split="train")
test_dataset = dict(type=dataset_type, data_root=data_root, split="test")
