"""The model zoo of the table-driven conversion test (issue 21): small random-init configs of
the timm and transformers families users bring, each keeping its family's structure (prefix
tokens, windows, non-square stages, NHWC MLPs, spatial-reduction attention, unrolled tokens).

Data only (no test here): ``tests/test_model_zoo.py`` runs the checks over :data:`ZOO`.
Every entry builds in well under a second and runs one float64 forward + backward in about
0.01-0.1 s of one CPU thread. Keep it so: the whole zoo runs in ``make test``. (Float64
depthwise convolutions run one kernel per channel; with several intra-op threads on a busy
machine they are 50x slower, which is why the test runs with one thread.)

Fields of :class:`ZooModel` that describe the model (measured with forward pre-hooks on every
``nn.Linear`` / 1x1 ``nn.Conv2d``, timm 1.0.31 / transformers 5.23):

``targets``       how many ``nn.Linear`` + 1x1 ``nn.Conv2d`` (stride 1, groups 1, no padding)
                  the model has: what ``target="all-linear"`` considers (heads included).
``bypassed``      globs of those layers whose ``forward`` never runs: the model reads their
                  ``weight`` itself (``F.linear(x, self.qkv.weight, qkv_bias)`` with separate
                  ``q_bias`` / ``v_bias``). Replacing the module changes nothing there, so a
                  report that names such a layer as converted is wrong.
``multi_call``    globs of layers called more than once per forward (shared weights).
``dead``          globs of layers that run but whose output never reaches the logits (zero
                  gradient): nothing to compare there.
``not_maps``      globs of layers whose input is not a spatial token map (relative-position
                  MLPs on coordinate tables, token-mixing MLPs over the token axis, class-token
                  only layers, unfolded patches): ``all-linear`` must skip them, with a reason.
``prefix_tokens`` class / distillation / register tokens in front of the map in the main blocks.
``maps``          the (H, W) token maps of the stages for this input (windows noted in ``notes``).
``token_order``   ``raster`` (row-major map), ``windows`` (window-partitioned, leading dims are
                  windows), ``unrolled`` (Hiera: not row-major), ``unfolded`` (MobileViT patch
                  unfolding: one token per patch, the pixels of a patch in the batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ZooModel", "ZOO", "BY_ID", "is_target"]


@dataclass(frozen=True)
class ZooModel:
    id: str
    library: str  # "timm" | "transformers"
    family: str
    build: Callable[[], nn.Module] = field(repr=False)
    shape: tuple[int, int, int, int]  # input (B, 3, H, W)
    targets: int  # nn.Linear + 1x1 nn.Conv2d in the model
    prefix_tokens: int = 0
    maps: tuple[tuple[int, int], ...] = ()
    token_order: str = "raster"
    bypassed: tuple[str, ...] = ()
    multi_call: tuple[str, ...] = ()
    dead: tuple[str, ...] = ()
    not_maps: tuple[str, ...] = ()
    notes: str = ""

    def create(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
        """The model, random-init (``seed``), in ``dtype`` and train mode, with every all-zero
        weight (zero-init heads, res-post-norm / BatchNorm gains, ...) drawn at random: a zero
        there zeroes the gradients of every layer before it, which would make a gradient
        comparison vacuous."""
        torch.manual_seed(seed)
        model = self.build()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.endswith("bias") and p.numel() > 1 and not p.any():
                    p.normal_(0.0, 0.5)
        return model.to(dtype).train()

    @property
    def input_key(self) -> str | None:
        """``pixel_values`` for transformers models (called with keywords), else None."""
        return "pixel_values" if self.library == "transformers" else None

    def make_input(self, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
        return torch.randn(*self.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)

    def example_input(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """What ``convert(..., example_input=)`` gets: the tensor, or the keyword dict."""
        return {self.input_key: x} if self.input_key else x

    def run(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's main output (logits) as one tensor."""
        out = model(**{self.input_key: x}) if self.input_key else model(x)
        if hasattr(out, "logits"):
            out = out.logits
        if isinstance(out, tuple | list):  # timm distilled models in train mode, aux heads
            out = out[0]
        return out


def is_target(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a plain 1x1 ``nn.Conv2d`` (what ``all-linear`` converts)."""
    if isinstance(module, nn.Linear):
        return True
    if not isinstance(module, nn.Conv2d):
        return False
    return (
        tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and module.padding in ((0, 0), 0, "valid")
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
    )


# ---- builders --------------------------------------------------------------------------------
def _timm(name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)


def _timm_cls(module: str, cls: str, **kwargs: Any) -> nn.Module:
    """A timm model class built directly: for entry points that hard-code depths / widths."""
    import importlib

    import timm  # noqa: F401  (registers the models)

    return getattr(importlib.import_module(f"timm.models.{module}"), cls)(num_classes=5, **kwargs)


def _maxvit(**kwargs: Any) -> nn.Module:
    from timm.models.maxxvit import MaxxVit, model_cfgs

    base = model_cfgs["maxvit_rmlp_pico_rw"]
    tcfg = dataclasses.replace(base.transformer_cfg, dim_head=8, partition_ratio=16)
    cfg = dataclasses.replace(
        base,
        embed_dim=(16, 24, 32),
        depths=(1, 1, 1),
        block_type=("M",) * 3,
        stem_width=(8, 16),
        transformer_cfg=tcfg,
    )
    return MaxxVit(cfg, num_classes=5, **kwargs)


def _mobilevit(v2: bool) -> nn.Module:
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import (
        _inverted_residual_block,
        _mobilevit_block,
        _mobilevitv2_block,
    )

    if v2:
        blocks = (
            _inverted_residual_block(d=1, c=16, s=1, br=2.0),
            _inverted_residual_block(d=1, c=16, s=2, br=2.0),
            _mobilevitv2_block(d=1, c=32, s=2, transformer_depth=1),
            _mobilevitv2_block(d=1, c=32, s=2, transformer_depth=1),
        )
    else:
        blocks = (
            _inverted_residual_block(d=1, c=16, s=1, br=2.0),
            _inverted_residual_block(d=1, c=16, s=2, br=2.0),
            _mobilevit_block(
                d=1, c=24, s=2, transformer_dim=32, transformer_depth=1, patch_size=2, br=2.0
            ),
            _mobilevit_block(
                d=1, c=32, s=2, transformer_dim=32, transformer_depth=1, patch_size=2, br=2.0
            ),
        )
    cfg = ByoModelCfg(
        blocks=blocks,
        stem_chs=8,
        stem_type="3x3",
        stem_pool="",
        downsample="",
        act_layer="silu",
        num_features=0 if v2 else 64,
    )
    return ByobNet(cfg, num_classes=5)


def _metaformer(kind: str) -> nn.Module:
    from timm.models import metaformer as mf

    common = dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 64), num_classes=5)
    if kind == "poolformer":  # v1: GroupNorm, GELU MLP with bias, layer scale
        return mf.MetaFormer(
            **common,
            downsample_norm=None,
            mlp_act=nn.GELU,
            mlp_bias=True,
            norm_layers=mf.GroupNorm1,
            layer_scale_init_values=1e-5,
            res_scale_init_values=None,
            use_mlp_head=False,
        )
    # caformer: SepConv stages (NCHW, 1x1-conv MLP) then attention stages (NHWC, linear MLP)
    return mf.MetaFormer(
        **common,
        token_mixers=[mf.SepConv, mf.SepConv, mf.Attention, mf.Attention],
        norm_layers=[mf.LayerNorm2dNoBias] * 2 + [mf.LayerNormNoBias] * 2,
    )


def _fastvit() -> nn.Module:
    from timm.models.fastvit import RepConditionalPosEnc

    cpe = partial(RepConditionalPosEnc, spatial_shape=(7, 7))
    return _timm(
        "fastvit_sa12",
        layers=(1, 1, 1, 1),
        embed_dims=(16, 32, 64, 128),
        mlp_ratios=(2, 2, 2, 2),
        token_mixers=("repmixer", "repmixer", "attention", "attention"),
        pos_embs=(None, None, cpe, cpe),
    )


def _hf(config: str, model: str, **kwargs: Any) -> nn.Module:
    import transformers

    cfg = getattr(transformers, config)(num_labels=5, **kwargs)
    return getattr(transformers, model)(cfg)


VIT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)
HF_VIT = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
#: the stage maps of a 4-stage stride-4 backbone on a 64x96 input
S4 = ((16, 24), (8, 12), (4, 6), (2, 3))
GRID = ((4, 6),)  # a patch-8 ViT on 32x48

# ---- the table -------------------------------------------------------------------------------
# fmt: off
ZOO: list[ZooModel] = [
    # --- timm: plain ViTs -------------------------------------------------------------------
    ZooModel(
        "timm_vit", "timm", "ViT",
        partial(_timm, "vit_tiny_patch16_224", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=9, prefix_tokens=1, maps=GRID,
    ),
    ZooModel(
        "timm_vit_dynamic_b1", "timm", "ViT (dynamic_img_size)",
        partial(_timm, "vit_tiny_patch16_224", img_size=32, dynamic_img_size=True, **VIT),
        (1, 3, 48, 32), targets=9, prefix_tokens=1, maps=((6, 4),),
        notes="batch 1; configured 32x32, fed 48x32: the patch grid (6x4) follows the input",
    ),
    ZooModel(
        "timm_deit_distilled", "timm", "DeiT (distilled)",
        partial(_timm, "deit_tiny_distilled_patch16_224", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=10, prefix_tokens=2, maps=GRID,
        notes="class + distillation token; heads head and head_dist",
    ),
    ZooModel(
        "timm_eva02", "timm", "EVA-02",
        partial(_timm, "eva02_tiny_patch14_224", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=9, prefix_tokens=1, maps=GRID,
        bypassed=("blocks.*.attn.qkv",),
        notes="attn.qkv is never called: F.linear(x, qkv.weight, cat(q_bias, 0, v_bias)); RoPE; "
        "SwiGLU MLP (fc2 input width 85)",
    ),
    ZooModel(
        "timm_beit", "timm", "BEiT",
        partial(_timm, "beit_base_patch16_224", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=9, prefix_tokens=1, maps=GRID,
        bypassed=("blocks.*.attn.qkv",),
        notes="attn.qkv is never called (F.linear with q_bias/v_bias); relative position bias "
        "over the 4x6 grid",
    ),
    ZooModel(
        "timm_vit_reg4", "timm", "ViT + registers (DINOv2 reg4)",
        partial(_timm, "vit_base_patch14_reg4_dinov2", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=9, prefix_tokens=5, maps=GRID,
        notes="1 class + 4 register tokens (29 tokens)",
    ),
    ZooModel(
        "timm_vit_reg4_gap", "timm", "ViT + registers, no class token",
        partial(_timm, "vit_little_patch16_reg4_gap_256", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=9, prefix_tokens=4, maps=GRID,
        notes="4 register tokens, no class token (28 tokens), average pooling",
    ),
    ZooModel(
        "timm_cait", "timm", "CaiT",
        partial(_timm, "cait_xxs24_224", img_size=(32, 48), **VIT),
        (2, 3, 32, 48), targets=25, prefix_tokens=0, maps=GRID,
        not_maps=(
            "blocks.*.attn.proj_l", "blocks.*.attn.proj_w",
            "blocks_token_only.*.attn.q", "blocks_token_only.*.attn.proj",
            "blocks_token_only.*.mlp.*",
        ),
        notes="class token joins after blocks (blocks see the bare 4x6 grid); talking heads "
        "proj_l/proj_w mix heads of the (B, N, N, heads) attention logits; class-attention "
        "blocks: q (B, C), proj/mlp (B, 1, C) on the class token, k/v (B, 1+24, C)",
    ),
    ZooModel(
        "timm_xcit", "timm", "XCiT",
        partial(_timm, "xcit_nano_12_p8_224", img_size=(32, 48), depth=2, embed_dim=32,
                num_heads=2),
        (2, 3, 32, 48), targets=22, prefix_tokens=0, maps=GRID,
        not_maps=("cls_attn_blocks.*.attn.q", "cls_attn_blocks.*.attn.proj",
                  "cls_attn_blocks.*.mlp.*"),
        notes="cross-covariance attention; pos_embed.token_projection: 1x1 conv on (1, 64, 4, 6) "
        "Fourier features (batch 1, no input grad); cls_attn_blocks add the class token",
    ),
    # --- timm: hierarchical, windowed, NHWC --------------------------------------------------
    ZooModel(
        "timm_pvt_v2", "timm", "PVT v2",
        partial(_timm, "pvt_v2_b0", embed_dims=(16, 24, 32, 40), depths=(1, 1, 1, 1),
                num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2)),
        (2, 3, 64, 96), targets=21, maps=S4,
        notes="spatial-reduction attention: kv sees the sr-conv map (2x3 in every stage), q the "
        "stage map; fc2's input map went through a depthwise conv",
    ),
    ZooModel(
        "timm_swin", "timm", "Swin",
        partial(_timm, "swin_tiny_patch4_window7_224", img_size=(64, 96), embed_dim=16,
                depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4,
                drop_path_rate=0.0),
        (2, 3, 64, 96), targets=24, token_order="windows", maps=S4 + ((4, 4),),
        notes="attn on (B*windows, 16, C) 4x4 windows (last stage: one 2x3 window); mlp on the "
        "(B, H*W, C) stage map; PatchMerging reduction on NHWC (B, H, W, 4C)",
    ),
    ZooModel(
        "timm_swinv2", "timm", "Swin V2",
        partial(_timm, "swinv2_tiny_window8_256", img_size=(64, 96), embed_dim=16,
                depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4,
                drop_path_rate=0.0),
        (2, 3, 64, 96), targets=34, token_order="windows", maps=S4 + ((4, 4),),
        bypassed=("layers.*.blocks.*.attn.qkv",),
        not_maps=("layers.*.blocks.*.attn.cpb_mlp.*",),
        notes="attn.qkv is never called (F.linear with q_bias/v_bias); cpb_mlp: MLP on the "
        "(1, 2w-1, 2w-1, 2) relative-coordinate table (1, 7, 7, 2), (1, 3, 5, 2)",
    ),
    ZooModel(
        "timm_swinv2_cr", "timm", "Swin V2 (CR)",
        partial(_timm, "swinv2_cr_tiny_224", img_size=(64, 96), embed_dim=16,
                depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4,
                drop_path_rate=0.0),
        (2, 3, 64, 96), targets=34, token_order="windows", maps=S4 + ((4, 4),),
        not_maps=("stages.*.blocks.*.attn.meta_mlp.*",),
        notes="meta_mlp: MLP on the (w^4, 2) relative-coordinate list, 2-D input (256, 2)",
    ),
    ZooModel(
        "timm_convnext", "timm", "ConvNeXt (NHWC MLP)",
        partial(_timm, "convnext_atto", conv_mlp=False, depths=(1, 1, 1, 1),
                dims=(16, 24, 32, 40)),
        (2, 3, 64, 96), targets=9, maps=S4,
        notes="mlp.fc1/fc2 on permuted (non-contiguous) NHWC maps (B, H, W, C)",
    ),
    ZooModel(
        "timm_convnext_conv_mlp_b1", "timm", "ConvNeXt (1x1-conv MLP)",
        partial(_timm, "convnext_atto", depths=(1, 1, 1, 1), dims=(16, 24, 32, 40)),
        (1, 3, 64, 64), targets=9, maps=((16, 16), (8, 8), (4, 4), (2, 2)),
        notes="conv_mlp=True: NCHW 1x1 convs; square input, batch 1",
    ),
    ZooModel(
        "timm_edgenext", "timm", "EdgeNeXt",
        partial(_timm, "edgenext_xx_small", depths=(1, 1, 1, 1), dims=(16, 24, 32, 40),
                heads=(2, 2, 2, 2)),
        (2, 3, 64, 96), targets=16, maps=S4,
        notes="ConvEncoder / SDTA blocks: NHWC MLP (B, H, W, C); xca.qkv/proj on (B, H*W, C) "
        "(channel attention); pos_embd.token_projection 1x1 conv on Fourier features",
    ),
    ZooModel(
        "timm_gcvit", "timm", "GCViT",
        partial(_timm_cls, "gcvit", "GlobalContextVit", img_size=64, embed_dim=16,
                depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=(4, 4, 2, 1)),
        (2, 3, 64, 64), targets=60, token_order="windows",
        maps=((32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)),
        dead=("stages.3.global_block.*",),
        not_maps=("*.se.fc1", "*.se.fc2"),
        notes="square input (the global query generator pools the stage map to a square "
        "window); depth 2 per stage (odd blocks take q from the global query generator, unused "
        "at depth 1, and in stage 3 with its one-token windows); windows 4, 4, 2, 1; MBConv / SE "
        "1x1 convs, SE on (B, C, 1, 1)",
    ),
    ZooModel(
        "timm_maxvit", "timm", "MaxViT (rel-pos MLP)",
        partial(_maxvit, img_size=(64, 96)),
        (2, 3, 64, 96), targets=51, token_order="windows",
        maps=((32, 48), (16, 24), (8, 12), (4, 6)),
        not_maps=("*.se.fc1", "*.se.fc2", "*.rel_pos.mlp.*"),
        notes="3 stages; block and grid attention on NHWC partitions (B*windows, 4, 6, C) (grid: "
        "a dilated 4x6 lattice); rel_pos.mlp on the (7, 11, 2) coordinate table; SE on "
        "(B, C, 1, 1)",
    ),
    ZooModel(
        "timm_hiera", "timm", "Hiera",
        partial(_timm, "hiera_tiny_224", img_size=(64, 96), embed_dim=16, num_heads=1,
                stages=(1, 1, 1, 1)),
        (2, 3, 64, 96), targets=20, token_order="unrolled", maps=S4,
        notes="tokens are unrolled (mask-unit order), not row-major; 384 = 16x24 tokens; "
        "blocks.k.proj / attn.qkv see the previous stage, attn.proj the pooled one",
    ),
    ZooModel(
        "timm_levit", "timm", "LeViT",
        partial(_timm, "levit_128s", img_size=64, embed_dim=(32, 48, 64), depth=(1, 1, 1),
                num_heads=(2, 2, 2), key_dim=8),
        (2, 3, 64, 64), targets=24, maps=((4, 4), (2, 2), (1, 1)),
        notes="square input (attention biases need a square resolution); LinearNorm (Linear + "
        "BatchNorm1d) on (B, N, C); subsample attention: q on the 2x-subsampled map; the last "
        "stage is a 1x1 map",
    ),
    ZooModel(
        "timm_coat", "timm", "CoaT (lite)",
        partial(_timm, "coat_lite_tiny", img_size=(64, 96), embed_dims=(16, 16, 32, 32),
                serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)),
        (2, 3, 64, 96), targets=17, prefix_tokens=1, maps=S4,
        notes="a class token in every stage (385, 97, 25, 7 tokens); conv relative position "
        "encoding on the map",
    ),
    ZooModel(
        "timm_mobilevit", "timm", "MobileViT",
        partial(_mobilevit, False),
        (2, 3, 64, 96), targets=22, token_order="unfolded",
        maps=((32, 48), (16, 24), (8, 12), (4, 6), (2, 3)),
        notes="transformer on unfolded 2x2 patches: (B*4, N, C), N = the 4x6 / 2x3 lattice of "
        "patches; 1x1 convs elsewhere",
    ),
    ZooModel(
        "timm_mobilevitv2", "timm", "MobileViT v2",
        partial(_mobilevit, True),
        (2, 3, 64, 96), targets=21, token_order="unfolded",
        maps=((32, 48), (16, 24), (8, 12), (4, 6)),
        not_maps=("stages.*.1.transformer.*",),
        notes="linear attention on unfolded patches: 1x1 convs on (B, C, P, N) = (2, 16, 4, 24)",
    ),
    ZooModel(
        "timm_efficientformer", "timm", "EfficientFormer",
        partial(_timm, "efficientformer_l1", depths=(1, 1, 1, 2), embed_dims=(16, 24, 32, 48),
                num_vit=1),
        (2, 3, 224, 224), targets=14, maps=((56, 56), (28, 28), (14, 14), (7, 7)),
        notes="224x224 only (fixed attention biases); Meta4D: 1x1-conv MLP (NCHW); Meta3D on "
        "the flattened 7x7 map (B, 49, C); head and head_dist",
    ),
    ZooModel(
        "timm_efficientformerv2", "timm", "EfficientFormer V2",
        partial(_timm, "efficientformerv2_s0", img_size=(64, 96), depths=(1, 1, 1, 2),
                embed_dims=(16, 24, 32, 48), num_vit=1),
        (2, 3, 64, 96), targets=28, maps=S4,
        not_maps=("*.token_mixer.talking_head1", "*.token_mixer.talking_head2"),
        notes="all 1x1 convs (NCHW); attention q/k/v on the stride-2 2x3 map; talking heads: "
        "1x1 convs on the (B, heads, N, N) = (2, 8, 6, 6) attention logits",
    ),
    ZooModel(
        "timm_poolformer", "timm", "PoolFormer (MetaFormer)",
        partial(_metaformer, "poolformer"),
        (2, 3, 64, 96), targets=9, maps=S4,
        notes="pooling token mixer, 1x1-conv MLP (NCHW)",
    ),
    ZooModel(
        "timm_caformer", "timm", "CAFormer (MetaFormer)",
        partial(_metaformer, "caformer"),
        (2, 3, 64, 96), targets=18, maps=S4,
        notes="SepConv stages: pwconv and MLP 1x1 convs (NCHW); attention stages: qkv/proj/mlp "
        "on (B, H*W, C) = (2, 24, C), (2, 6, C); MLP head (head.fc.fc1/fc2)",
    ),
    ZooModel(
        "timm_twins_svt", "timm", "Twins-SVT",
        partial(_timm, "twins_svt_small", img_size=(64, 96), embed_dims=(16, 32, 48, 64),
                depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), wss=(4, 4, 4, 4),
                sr_ratios=(4, 2, 1, 1)),
        (2, 3, 64, 96), targets=22, token_order="windows", maps=S4 + ((4, 4),),
        notes="locally-grouped attention: qkv on 6-D (B, H/ws, W/ws, ws, ws, C) windows "
        "(the last stages pad to 4x4); global sub-sampled attention: kv on the sr map 4x6",
    ),
    ZooModel(
        "timm_twins_pcpvt", "timm", "Twins-PCPVT",
        partial(_timm, "twins_pcpvt_small", img_size=(64, 96), embed_dims=(16, 32, 48, 64),
                depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratios=(2, 2, 2, 2)),
        (2, 3, 64, 96), targets=21, maps=S4,
        notes="PVT-style spatial reduction: kv on the 2x3 sr map",
    ),
    ZooModel(
        "timm_crossvit", "timm", "CrossViT",
        partial(_timm, "crossvit_tiny_240", img_size=48, img_scale=(1.0, 1.0),
                embed_dim=(24, 48), depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2, 1)),
        (2, 3, 48, 48), targets=22, prefix_tokens=1, maps=((4, 4), (3, 3)),
        not_maps=("blocks.*.projs.*", "blocks.*.revert_projs.*", "blocks.*.fusion.*.attn.wq",
                  "blocks.*.fusion.*.attn.proj"),
        notes="square input; two branches (patch 12: 4x4, patch 16: 3x3) with a class token "
        "each; fusion: class token (B, 1, C) attends to the other branch (wk/wv on 1 + N)",
    ),
    ZooModel(
        "timm_tinyvit", "timm", "TinyViT",
        partial(_timm_cls, "tiny_vit", "TinyVit", embed_dims=(16, 24, 32, 40),
                depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_sizes=(4, 4, 4, 4),
                drop_path_rate=0.0),
        (2, 3, 64, 96), targets=21, token_order="windows", maps=S4 + ((4, 4),),
        notes="MBConv stage (1x1 convs), then 4x4-window attention with attention biases "
        "(the 2x3 stage is padded to one 4x4 window)",
    ),
    ZooModel(
        "timm_mixer", "timm", "MLP-Mixer",
        partial(_timm_cls, "mlp_mixer", "MlpMixer", img_size=(32, 48), patch_size=8,
                num_blocks=2, embed_dim=16),
        (2, 3, 32, 48), targets=9, maps=GRID,
        not_maps=("blocks.*.mlp_tokens.*",),
        notes="mlp_tokens mixes over the token axis: input (B, C, N) = (2, 16, 24), 16 "
        "channels where tokens would be (a square count: reads as a 4x4 map)",
    ),
    ZooModel(
        "timm_pit_distilled", "timm", "PiT (distilled)",
        partial(_timm, "pit_ti_distilled_224", img_size=(64, 96), depth=(1, 1, 1),
                heads=(1, 2, 2), base_dims=(16, 16, 16)),
        (2, 3, 64, 96), targets=16, prefix_tokens=2, maps=((7, 11), (4, 6), (2, 3)),
        not_maps=("transformers.*.pool.fc",),
        notes="class + distillation token; 7x11 first map (patch 16, stride 8); pooling: "
        "depthwise conv on the map, pool.fc on the two prefix tokens only (B, 2, C)",
    ),
    ZooModel(
        "timm_davit", "timm", "DaViT",
        partial(_timm, "davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 40),
                num_heads=(1, 1, 2, 2), window_size=4),
        (2, 3, 64, 96), targets=33, token_order="windows", maps=S4 + ((4, 4),),
        notes="spatial window attention (4x4 windows, the 2x3 stage padded) + channel "
        "attention on the whole map",
    ),
    ZooModel(
        "timm_fastvit", "timm", "FastViT",
        _fastvit,
        (2, 3, 64, 96), targets=19, maps=S4,
        not_maps=("final_conv.se.*",),
        notes="RepMixer stages (1x1-conv MLP, NCHW; MobileOne 1x1 branches), attention stages "
        "on (B, H*W, C) with a conditional positional encoding; SE on (B, C, 1, 1)",
    ),
    # --- transformers -----------------------------------------------------------------------
    ZooModel(
        "hf_vit", "transformers", "ViT",
        partial(_hf, "ViTConfig", "ViTForImageClassification", image_size=(32, 48),
                intermediate_size=64, **HF_VIT),
        (2, 3, 32, 48), targets=13, prefix_tokens=1, maps=GRID,
    ),
    ZooModel(
        "hf_deit_teacher", "transformers", "DeiT (with teacher)",
        partial(_hf, "DeiTConfig", "DeiTForImageClassificationWithTeacher",
                image_size=(32, 48), intermediate_size=64, **HF_VIT),
        (2, 3, 32, 48), targets=14, prefix_tokens=2, maps=GRID,
        notes="class + distillation token; cls_classifier and distillation_classifier heads",
    ),
    ZooModel(
        "hf_swin", "transformers", "Swin",
        partial(_hf, "SwinConfig", "SwinForImageClassification", image_size=64, embed_dim=16,
                depths=[1, 2, 1], num_heads=[1, 2, 2], window_size=4, drop_path_rate=0.0),
        (2, 3, 64, 96), targets=27, token_order="windows", maps=S4[:3] + ((4, 4),),
        notes="3 stages (transformers 5.23 fails when a stage map is smaller than the window: "
        "the relative position bias keeps the configured size); downsample.reduction on "
        "(B, H*W/4, 4C) tokens",
    ),
    ZooModel(
        "hf_swinv2", "transformers", "Swin V2",
        partial(_hf, "Swinv2Config", "Swinv2ForImageClassification", image_size=64,
                embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=4,
                drop_path_rate=0.0),
        (2, 3, 64, 96), targets=44, token_order="windows", maps=S4 + ((4, 4), (2, 2)),
        not_maps=("*.continuous_position_bias_mlp.*",),
        notes="query/key/value separate (called); continuous_position_bias_mlp on the "
        "(1, 7, 7, 2) coordinate table; last stage: 2x2 windows",
    ),
    ZooModel(
        "hf_dinov2_reg", "transformers", "DINOv2 with registers",
        partial(_hf, "Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification",
                image_size=48, mlp_ratio=2, num_register_tokens=4, **HF_VIT),
        (2, 3, 32, 48), targets=13, prefix_tokens=5, maps=GRID,
        notes="1 class + 4 register tokens; position embeddings interpolated to the 4x6 grid",
    ),
    ZooModel(
        "hf_segformer", "transformers", "SegFormer (MiT)",
        partial(_hf, "SegformerConfig", "SegformerForImageClassification",
                hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1],
                num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, drop_path_rate=0.0),
        (2, 3, 64, 96), targets=25, maps=S4,
        notes="sequence-reduction attention: k/v on the 2x3 sr map",
    ),
    ZooModel(
        "hf_beit", "transformers", "BEiT",
        partial(_hf, "BeitConfig", "BeitForImageClassification", image_size=48,
                intermediate_size=64, use_relative_position_bias=True, drop_path_rate=0.0,
                **HF_VIT),
        (2, 3, 32, 48), targets=13, prefix_tokens=1, maps=GRID,
        notes="relative position bias interpolated to the 4x6 grid",
    ),
    ZooModel(
        "hf_convnext", "transformers", "ConvNeXt",
        partial(_hf, "ConvNextConfig", "ConvNextForImageClassification",
                hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1]),
        (2, 3, 64, 96), targets=9, maps=S4,
        notes="pwconv1/pwconv2 on NHWC maps (B, H, W, C)",
    ),
    ZooModel(
        "hf_pvt_v2", "transformers", "PVT v2",
        partial(_hf, "PvtV2Config", "PvtV2ForImageClassification",
                hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1],
                num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2]),
        (2, 3, 64, 96), targets=25, maps=S4,
        notes="spatial reduction: key/value on the 2x3 sr map",
    ),
]
# fmt: on

BY_ID: dict[str, ZooModel] = {m.id: m for m in ZOO}
assert len(BY_ID) == len(ZOO), "duplicate zoo ids"
