# CIFAR-100 (Krizhevsky 2009): 50k train / 10k test, 32x32, 100 classes.
# The images are held in memory (no image files to load). Resolution, transforms and loaders:
# configs/_base_/resolutions/; the pair is joined in configs/_base_/data/. Where the data goes:
# data/README.md.
dataset_name = "cifar100"
dataset_type = "CIFAR100"
data_root = "data/cifar100"
num_classes = 100
data_preprocessor = dict(
    num_classes=100, mean=[129.304, 124.070, 112.434], std=[68.170, 65.392, 70.418], to_rgb=False
)
load_pipeline = []
train_dataset = dict(type=dataset_type, data_root=data_root, split="train", download=False)
test_dataset = dict(type=dataset_type, data_root=data_root, split="test", download=False)
