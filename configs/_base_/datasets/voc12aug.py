# Pascal VOC 2012 + SBD augmentation ("VOC12A", Everingham 2010 / Hariharan 2011), 21 classes:
# 10,582 train (train + aug) / 1,449 val. 512x512 crops, batch 8 (Sec. 4.1); mmseg's standard
# VOC pipeline. Where the data goes: data/README.md.
dataset_name = "voc12aug"
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"
num_classes = 21
crop_size = (512, 512)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="Pad", size=crop_size),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
dataset_train = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
    ann_file="ImageSets/Segmentation/train.txt",
    pipeline=train_pipeline,
)
dataset_aug = dict(
    type=dataset_type,
    data_root=data_root,
    data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
    ann_file="ImageSets/Segmentation/aug.txt",
    pipeline=train_pipeline,
)
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="ConcatDataset", datasets=[dataset_train, dataset_aug]),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/val.txt",
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
