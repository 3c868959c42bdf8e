# A CPU-sized Segformer: MiT with four 1-block stages of 8-64 channels (explicit attention
# projections as in segformer-mit-b0.py) and the Segformer MLP decoder (32 channels). Same
# module names as MiT-B0, so the same preset rules apply (lbp.preset='segformer-mit-b0').
# Plain BN (not SyncBN) so it also runs distributed on CPU.
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    pretrained=None,
    backbone=dict(
        type="MixVisionTransformerConvertible",
        in_channels=3,
        embed_dims=8,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],  # channels = embed_dims * num_heads = 8, 16, 32, 64
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=2,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    ),
    decode_head=dict(
        type="SegformerHead",
        in_channels=[8, 16, 32, 64],
        in_index=[0, 1, 2, 3],
        channels=32,
        dropout_ratio=0.1,
        num_classes=4,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
load_from = None
