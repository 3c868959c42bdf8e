# Stanford Cars (Krause 2013): 8,144 train / 8,041 test, 196 classes.
# Images are loaded from files. Resolution, transforms and loaders: configs/_base_/resolutions/;
# the pair is joined in configs/_base_/data/. Where the data goes: data/README.md.
dataset_name = "stanford-cars"
dataset_type = "StanfordCars"
data_root = "data/stanford_cars"
num_classes = 196
data_preprocessor = dict(
    num_classes=196, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True
)
load_pipeline = [dict(type="LoadImageFromFile")]
train_dataset = dict(type=dataset_type, data_root=data_root, split="train")
test_dataset = dict(type=dataset_type, data_root=data_root, split="test")
