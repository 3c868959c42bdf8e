# The demo's mini EfficientFormer: the 'mini-efficientformer' preset's structure
# (mmpretrain EfficientFormer, 28x28 input, stride-4 stem -> 7x7 maps, so the last stage works on
# L = 49 tokens like the paper's; no stage downsamples) at a lighter size: 48 channels, stages of
# 1/1/1/2 blocks, the last stage = 1 Meta4D block (1x1-conv MLP) + Flat + 1 Meta3D
# (attention) block. Why lighter than lbp_wht.experiments.presets.MINI_EFFICIENTFORMER_ARCH
# (64 channels, 1/1/2/4 blocks): measured on 1 CPU thread, a training step costs 8.2 instead of
# 15.7 ms per image and inference 2.4 instead of 7.3 ms, which is what fits the 34 adaptation
# runs of `make demo` into its 20-minute budget on 2 cores (see results/mini/RESULTS.md).
_base_ = ["../../../_base_/models/mini-efficientformer.py"]
demo_embed_dims = 48
model = dict(
    backbone=dict(
        arch=dict(
            layers=[1, 1, 1, 2],
            embed_dims=[demo_embed_dims] * 4,
            downsamples=[False, False, False, False],
            vit_num=1,
        )
    ),
    head=dict(in_channels=demo_embed_dims, num_classes=5),
)
