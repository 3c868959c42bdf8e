# Oxford-IIIT Pets (Parkhi 2012): trainval 3,680 / test 3,669, 37 classes.
# Images are loaded from files. Resolution, transforms and loaders: configs/_base_/resolutions/;
# the pair is joined in configs/_base_/data/. Where the data goes: data/README.md.
dataset_name = "oxford-pets"
dataset_type = "OxfordIIITPet"
data_root = "data/oxford_pets"
num_classes = 37
data_preprocessor = dict(
    num_classes=37, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)
load_pipeline = [dict(type="LoadImageFromFile")]
train_dataset = dict(type=dataset_type, data_root=data_root, split="trainval")
test_dataset = dict(type=dataset_type, data_root=data_root, split="test")
