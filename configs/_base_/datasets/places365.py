# Places365-Standard (Zhou 2018), 256x256 images: 1.8M train / 36,500 val, 365 classes (Table 7).
# Images are loaded from files. Resolution, transforms and loaders: configs/_base_/resolutions/;
# the pair is joined in configs/_base_/data/. Where the data goes: data/README.md.
dataset_name = "places365"
dataset_type = "Places365"
data_root = "data/places365"
num_classes = 365
data_preprocessor = dict(
    num_classes=365, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)
load_pipeline = [dict(type="LoadImageFromFile")]
train_dataset = dict(type=dataset_type, data_root=data_root, split="train")
test_dataset = dict(type=dataset_type, data_root=data_root, split="val")
