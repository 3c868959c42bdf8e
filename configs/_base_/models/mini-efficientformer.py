# A CPU-sized EfficientFormer (mmpretrain EfficientFormer, custom arch =
# lbp_wht.presets.MINI_EFFICIENTFORMER_ARCH): stride-4 stem on 28x28 inputs gives 7x7 maps (the
# size Meta3D's attention biases need), no stage downsamples, 64 channels throughout; the last
# stage mirrors L1's (3 Meta4D blocks, then Flat + 1 Meta3D block), so the 'mini-efficientformer'
# preset converts the same layer types as for L1. 1 input channel (Fashion-MNIST).
model = dict(
    type="ImageClassifier",
    backbone=dict(
        type="EfficientFormer",
        arch=dict(
            layers=[1, 1, 2, 4],
            embed_dims=[64, 64, 64, 64],
            downsamples=[False, False, False, False],
            vit_num=1,
        ),
        in_channels=1,
        drop_path_rate=0.0,
    ),
    neck=dict(type="GlobalAveragePooling", dim=1),
    head=dict(
        type="EfficientFormerClsHead",
        in_channels=64,
        num_classes=10,
        distillation=False,
        loss=dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original"),
    ),
)
load_from = None
