# EfficientFormerV2-L (Li et al., ICCV 2023; hybrid), timm implementation wrapped as an
# mmpretrain backbone (lbp_wht.integrations.models.TimmEfficientFormerV2; module names
# backbone.timm_model.stages.<i>...). ImageNet-1k weights: timm's efficientformerv2_l,
# converted to this model's keys by `python tools/fetch_checkpoints.py efficientformerv2-l`.
# Label smoothing 0.1, drop path 0. Input must be 224x224.
model = dict(
    type="ImageClassifier",
    backbone=dict(type="TimmEfficientFormerV2", arch="l", drop_path_rate=0.0),
    neck=dict(type="GlobalAveragePooling"),
    head=dict(
        type="LinearClsHead",
        in_channels=384,
        num_classes=1000,
        loss=dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original"),
    ),
)
load_from = "checkpoints/efficientformerv2_l_timm_in1k.pth"
