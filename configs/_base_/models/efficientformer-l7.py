# EfficientFormer-L7 (Li et al., NeurIPS 2022; hybrid CNN-ViT), mmpretrain implementation.
# ImageNet-1k weights: mmpretrain model zoo, `python tools/fetch_checkpoints.py efficientformer-l7`.
# The ImageNet distillation head is not used for fine-tuning (distillation=False); the head is
# re-initialised for the target classes (lbp.reinit_keys). Label smoothing 0.1, drop path 0.
model = dict(
    type="ImageClassifier",
    backbone=dict(type="EfficientFormer", arch="l7", drop_path_rate=0.0),
    neck=dict(type="GlobalAveragePooling", dim=1),
    head=dict(
        type="EfficientFormerClsHead",
        in_channels=768,
        num_classes=1000,
        distillation=False,
        loss=dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original"),
    ),
)
load_from = "checkpoints/efficientformer-l7_3rdparty_in1k_20220915-185e30af.pth"
