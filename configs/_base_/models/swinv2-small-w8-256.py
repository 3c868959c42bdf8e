# SwinV2-Small, window 8, 256x256 (Liu et al., CVPR 2022; ViT), mmpretrain implementation
# with qkv called as a module (lbp_wht.integrations.models.SwinTransformerV2Convertible; same
# state dict). ImageNet-1k weights: mmpretrain model zoo,
# `python tools/fetch_checkpoints.py swinv2-small-w8`. Label smoothing 0.1, drop path 0.
model = dict(
    type="ImageClassifier",
    backbone=dict(
        type="SwinTransformerV2Convertible",
        arch="small",
        img_size=256,
        window_size=[8, 8, 8, 8],
        drop_path_rate=0.0,
    ),
    neck=dict(type="GlobalAveragePooling"),
    head=dict(
        type="LinearClsHead",
        in_channels=768,
        num_classes=1000,
        loss=dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original"),
    ),
)
load_from = "checkpoints/swinv2-small-w8_3rdparty_in1k-256px_20220803-b01a4332.pth"
