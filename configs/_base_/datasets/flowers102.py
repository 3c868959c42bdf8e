# Oxford Flowers102 (Nilsback 2008): train+val 2,040 / test 6,149, 102 classes.
# Images are loaded from files. Resolution, transforms and loaders: configs/_base_/resolutions/;
# the pair is joined in configs/_base_/data/. Where the data goes: data/README.md.
dataset_name = "flowers102"
dataset_type = "Flowers102"
data_root = "data/flowers102"
num_classes = 102
data_preprocessor = dict(
    num_classes=102, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)
load_pipeline = [dict(type="LoadImageFromFile")]
train_dataset = dict(type=dataset_type, data_root=data_root, split="trainval")
test_dataset = dict(type=dataset_type, data_root=data_root, split="test")
