"""Which layers get LBP-WHT / LoRA and which parameters train, per model, method and scope.

Pure data (imports only the standard library): ``get_preset(...)`` returns the ``rules`` for
:func:`lbp_wht.convert` and the ``trainable`` globs for :func:`lbp_wht.freeze`. Globs are over
the qualified names of the whole OpenMMLab model (``backbone.*``, ``head.*``,
``decode_head.*``) built as in :func:`model_config`; ``*`` also matches dots.

Layer choices follow the authors' experiment configurations (``docs/PAPER_NOTES.md``):

* Where LBP-WHT goes (order-8 WHT on 8x8 patches; 7x7 maps reflect-padded to 8x8):
  EfficientFormer L1/L7: Meta4D ``mlp.fc1``/``mlp.fc2`` (1x1 convs), Meta3D
  ``token_mixer.qkv``/``token_mixer.proj``/``mlp.fc1``/``mlp.fc2`` (linears).
  EfficientFormerV2: ``mlp.fc1``/``mlp.fc2`` in every block, ``q``/``k``/``v``/``proj`` and
  both talking-head 1x1 convs in attention blocks, ``q``/``k``/``v``/``proj`` of the
  attention-downsampling block. SwinV2: ``attn.w_msa.qkv``/``attn.w_msa.proj``, both FFN
  linears, each patch-merging ``reduction``.
  Segformer (not in the notes; chosen here): ``attn.q``/``k``/``v``/``proj`` and the MixFFN
  1x1 convs ``ffn.layers.0``/``ffn.layers.4`` of every block, plus the decode head's 1x1 convs
  ``convs.*.conv`` and ``fusion_conv.conv``; the classifier ``conv_seg`` stays exact (it is the
  task head, like ``head.*`` in classification). Why the decode head: its 1024->256 fusion conv
  at 128x128 alone costs ~8.6 GMAC to back-propagate, about 40% of partial training's Full BP,
  so a method that leaves it exact cannot reach Table 3's low-rank costs. Which layers the
  authors converted is not documented; the ``authors`` variant below is the set that fits
  Table 3's costs.
* Partial training trains the last stage and the head: EfficientFormer ``backbone.network.3``
  (with its downsampling conv), EfficientFormerV2 the authors' ``network.6`` = timm
  ``stages.3.blocks`` (the attention-downsampling block ``stages.3.downsample`` is the
  authors' ``network.5`` and stays frozen), SwinV2 ``backbone.stages.3`` (with its patch
  merging), Segformer ``backbone.layers.3`` (patch embed, blocks, norm) + ``decode_head``.
  Final backbone norms (``backbone.norm3``, timm ``norm``) are outside those modules and stay
  frozen, as in the authors' configs ("everything else frozen").
* LoRA baselines: rank 8, alpha 8 (scaling 1); a fused qkv layer gets rank 24 and alpha 24
  (3 x 8, scaling still 1). "LoRA" = attention projections only; "LoRA-all" = every layer
  that LBP-WHT converts.

Method semantics come from each method's flags (:data:`~lbp_wht.experiments.methods.METHOD_SPECS`,
whose docstring tables them): ``conversion`` and ``layers`` give the rules (the core's rule
method on the attention projections or on every layer of the model's table), ``trains`` the
trainable globs given to :func:`lbp_wht.freeze`: ``head`` the task head only, ``scope`` every
parameter in scope, ``adapters`` the LoRA adapters + task head, ``side`` the side network
``losa.*`` + task head. Nothing here names a method.

``losa`` (low-rank side adaptation, :mod:`lbp_wht.losa`; not a paper row) converts nothing: the
builder attaches a side network whose taps are the last stage's blocks
(``Preset.losa_containers``) and whose correction is added to the backbone's final feature
(``Preset.losa_output``); only the side network and the task head train, and no gradient
reaches the backbone. Classification models only, ``scope="partial"``.

``head_only`` is the linear-probe baseline (not a paper row; the CPU mini-reproduction reports
it to show that adapting the backbone matters): nothing is converted and only the task head
trains, whatever the scope (the scope only names the setting it is compared with). Its
backprop cost is the head's own backward.

LoRA variants train only the adapters and the (new) task head, as in LoRA (Hu et al.): no
norms, biases or other backbone parameters. The task head is ``head.*`` in classification and
``decode_head.conv_seg.*`` in segmentation; the rest of Segformer's decode head stays frozen
under LoRA (it carries adapters under LoRA-all), which matches Table 3's LoRA cost (the frozen
decoder still back-propagates ``g_x`` through its fusion conv). ``lora_train="scope"``
(config key ``lbp.lora_train``) follows the authors' configs instead: every parameter of the
trained scope trains beside the adapters, except the LoRA layers' frozen base weights; with it
our LoRA-all costs come within about 10% of Table 7's (``results/cost/README.md``, item 3).

Variants (``variant=``, config key ``lbp.variant``): ``"corrected"`` (the default) converts
every layer above and makes sure each converted layer really runs converted. ``"authors"``
reproduces what the authors' code actually executed, for comparing costs with the paper:

* SwinV2: ``attn.w_msa.qkv`` stays a plain, exactly trained linear layer, and gets no LoRA
  adapter. mmcls 0.25's ``WindowMSAV2.forward`` computes ``F.linear(x, self.qkv.weight, ...)``
  and never calls the ``qkv`` module, so a wrapper put on it never ran: in the paper's SwinV2
  runs qkv back-propagated exactly (LBP-WHT) and carried no working adapter (LoRA, LoRA-all).
  The qkv weight trains wherever its scope trains (LBP-WHT, Full BP, ``lora_train="scope"``)
  and stays frozen under ``lora_train="adapters"``.
* Segformer: only the MixFFN 1x1 convs ``ffn.layers.0``/``ffn.layers.4`` and the decode head's
  ``fusion_conv.conv`` are converted, by LoRA and LoRA-all alike; attention and the decode
  head's per-level 1x1 convs stay plain. This is not documented by the authors: it is the
  layer set whose measured costs fit every Table 3 row of both scopes up to one uniform
  factor (our counts are twice the paper's; ``results/cost/README.md``). mmseg's attention
  keeps its projections inside ``nn.MultiheadAttention`` (an ``in_proj_weight`` Parameter and
  an ``out_proj`` that ``F.multi_head_attention_forward`` reads without calling), so a
  module wrapper there would not have run either.
* Every model: LBP-WHT layers compute the input gradient ``g_x`` even when their input needs
  none (the first trained layer of a partially trained model, e.g. EfficientFormerV2's first
  stage-3 block behind the frozen attention downsampling): the authors' op always returned
  it. :attr:`Preset.always_grad_x` says so; the builder makes such inputs require grad.

The accuracy rows of the paper's SwinV2 experiments describe the ``authors`` model (qkv
trained with exact gradients); the corrected variant is the method as the paper describes it.

Geometry: the builder converts with a zero image at the model's input size as the example
input, so a dry forward establishes every converted layer's map (``lbp_wht.tracing``):
EfficientFormer Meta3D tokens ``(B, 49, C)`` are the 7x7 map, SwinV2 window attention
``(B * windows, 64, C)`` one 8x8 window, its FFN and patch merging the stage map; none of these
models has extra (class) tokens. The talking-head 1x1 convs of EfficientFormerV2 act on the
``(N x N)`` attention scores, which are no image map: the authors' configs project them as an
N x N image, so their rules say ``layout="nchw"``. Segformer's explicit attention
(``lbp_wht.integrations.models.ExplicitEfficientMultiheadAttention``) also sets ``hw`` of its
LBP layers from ``hw_shape`` on every forward, so non-square crops work. 1x1 convs (NCHW) take
any map size.

Model prerequisites: SwinV2 must be built as ``SwinTransformerV2Convertible`` and Segformer's
backbone as ``MixVisionTransformerConvertible`` (both registered by
``lbp_wht.integrations.models``), EfficientFormerV2 as ``TimmEfficientFormerV2``; see
:func:`model_config`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .vocab import (
    LORA_TRAIN,
    METHODS,
    PRESET_MODELS,
    SCOPES,
    SELECTIONS,
    check_model,
    method_spec,
)

if TYPE_CHECKING:  # the core configs import torch; this module stays standard-library only
    from lbp_wht.config import LBPConfig, LoRAConfig

__all__ = [
    "Preset",
    "get_preset",
    "describe_preset",
    "model_config",
    "PRESET_MODELS",
    "METHODS",
    "SCOPES",
    "SELECTIONS",
    "LORA_TRAIN",
    "VARIANTS",
    "MINI_EFFICIENTFORMER_ARCH",
]

#: Conversion variants (``get_preset(variant=...)``, config key ``lbp.variant``): the corrected
#: conversion (default) and what the authors' code executed (see the module docstring).
VARIANTS: tuple[str, ...] = ("corrected", "authors")


#: mmpretrain ``EfficientFormer`` arch for a CPU-sized model on 28x28 inputs: the stride-4 stem
#: gives a 7x7 map (the size Meta3D's attention biases require) and no stage downsamples, so
#: all widths are equal. The last stage mirrors L1's: 3 Meta4D blocks, then Flat + 1 Meta3D
#: block. Use with ``EfficientFormer(arch=MINI_EFFICIENTFORMER_ARCH)`` (copy it if you edit).
#: The source of truth for the general mini model: :func:`model_config` and
#: ``configs/_base_/models/mini-efficientformer.py`` (the ``configs/mini/*.py`` experiments) use
#: exactly this arch (a test checks the config against it). The CPU demo (``make demo``,
#: ``configs/mini/demo/_base_/model.py``) deliberately builds a lighter variant of the same
#: structure, 48 channels and 1/1/1/2 blocks (last stage: 1 Meta4D + 1 Meta3D block), calibrated
#: so that all of its adaptation runs fit the 20-minute budget on 2 cores (a training step costs
#: about half as much); the preset's globs (``backbone.network.3.*``, Meta4D / Meta3D layer
#: names) hold for both, so both use the ``mini-efficientformer`` preset.
MINI_EFFICIENTFORMER_ARCH: dict[str, Any] = {
    "layers": [1, 1, 2, 4],
    "embed_dims": [64, 64, 64, 64],
    "downsamples": [False, False, False, False],
    "vit_num": 1,
}


@dataclass(frozen=True)
class Preset:
    """Conversion rules, trainable-parameter globs and the BatchNorm policy for one setting.

    Attributes:
        rules: ``[dict(target=glob, method="lbp"|"lora"|"lbp_lora", **options)]`` for
            :func:`lbp_wht.convert`.
        trainable: parameter-name globs for :func:`lbp_wht.freeze`.
        norm_eval: keep BatchNorm layers in eval mode (running statistics) while training:
            True wherever BatchNorm sits in the trained region (hybrid models; Segformer's
            decode head). LBP-WHT's projected gradient does not commute with batch
            statistics (``docs/PAPER_NOTES.md``, "Why norm_eval matters"); the authors'
            classification configs used it for every method, so it is on for every method
            here too, keeping methods comparable.
        model, method, scope, variant: the arguments this preset was made for.
        losa_containers, losa_output: ``losa`` only: the modules whose children with
            parameters are LoSA's taps (:func:`lbp_wht.losa.find_blocks`), and the module whose
            output the head reads and the side network corrects (:func:`lbp_wht.losa.attach_losa`).
        always_grad_x: LBP-WHT layers compute ``g_x`` even when their input needs none (the
            ``authors`` variant: the authors' op always returned it); the builder makes the
            inputs of those layers require grad.
    """

    rules: list[dict[str, Any]]
    trainable: list[str]
    norm_eval: bool
    model: str = ""
    method: str = ""
    scope: str = ""
    notes: tuple[str, ...] = field(default=())
    losa_containers: tuple[str, ...] = ()
    losa_output: str = ""
    variant: str = "corrected"
    always_grad_x: bool = False


# ---------------------------------------------------------------------------------------------
# Per-model layer tables. Each entry: (glob, kind, fused) with kind "attn" (attention
# projection: LoRA in every LoRA variant) or "other" (FFN / reduction / decoder 1x1: LBP and
# LoRA-all only); fused = number of projections fused in the layer (qkv: 3), which scales the
# LoRA rank and alpha.
# ---------------------------------------------------------------------------------------------
_Layer = tuple[str, str, int]


def _efficientformer_layers(scope: str) -> list[_Layer]:
    # mmpretrain EfficientFormer: backbone.network.<stage>.<block>; Meta4D blocks have
    # mlp.fc1/fc2 as 1x1 convs, the Meta3D blocks (stage 3 only) token_mixer.qkv/proj and
    # mlp.fc1/fc2 as linears, so the mlp globs cover both block types.
    p = "backbone.network.3.*." if scope == "partial" else "backbone.network.*.*."
    return [
        (p + "token_mixer.qkv", "attn", 3),
        (p + "token_mixer.proj", "attn", 1),
        (p + "mlp.fc1", "other", 1),
        (p + "mlp.fc2", "other", 1),
    ]


def _efficientformerv2_layers(scope: str) -> list[_Layer]:
    # timm EfficientFormerV2 inside TimmEfficientFormerV2: backbone.timm_model.stages.<i>.
    # ConvNorm layers hold the conv as ``.conv``; talking heads are plain 1x1 convs over heads.
    t = "backbone.timm_model.stages."
    b = t + ("3.blocks.*." if scope == "partial" else "*.blocks.*.")
    layers: list[_Layer] = [
        (b + "token_mixer.q.conv", "attn", 1),
        (b + "token_mixer.k.conv", "attn", 1),
        (b + "token_mixer.v.conv", "attn", 1),
        (b + "token_mixer.proj.conv", "attn", 1),
        (b + "token_mixer.talking_head1", "attn", 1),
        (b + "token_mixer.talking_head2", "attn", 1),
        (b + "mlp.fc1.conv", "other", 1),
        (b + "mlp.fc2.conv", "other", 1),
    ]
    if scope == "full":
        # Attention downsampling (authors' network.5); q = local dw-conv + pool + 1x1 proj.
        d = t + "*.downsample.attn."
        layers += [
            (d + "q.proj.conv", "attn", 1),
            (d + "k.conv", "attn", 1),
            (d + "v.conv", "attn", 1),
            (d + "proj.conv", "attn", 1),
        ]
    return layers


def _swinv2_layers(scope: str) -> list[_Layer]:
    # mmpretrain SwinTransformerV2: backbone.stages.<i>.{downsample, blocks.<j>}; the
    # downsample (patch merging) opens stages 1-3. FFN = mmcv FFN: layers.0.0 and layers.1.
    p = "backbone.stages.3." if scope == "partial" else "backbone.stages.*."
    return [
        (p + "blocks.*.attn.w_msa.qkv", "attn", 3),
        (p + "blocks.*.attn.w_msa.proj", "attn", 1),
        (p + "blocks.*.ffn.layers.0.0", "other", 1),
        (p + "blocks.*.ffn.layers.1", "other", 1),
        (p + "downsample.reduction", "other", 1),
    ]


def _segformer_layers(scope: str) -> list[_Layer]:
    # mmseg MixVisionTransformerConvertible: backbone.layers.<stage> = [patch_embed, blocks,
    # norm]; block attention has explicit q/k/v/proj; MixFFN layers = [fc1, pe_conv, act,
    # drop, fc2, drop]. SegformerHead: convs.<i>.conv (1x1 per level), fusion_conv.conv.
    p = "backbone.layers.3.1.*." if scope == "partial" else "backbone.layers.*.1.*."
    return [
        (p + "attn.q", "attn", 1),
        (p + "attn.k", "attn", 1),
        (p + "attn.v", "attn", 1),
        (p + "attn.proj", "attn", 1),
        (p + "ffn.layers.0", "other", 1),
        (p + "ffn.layers.4", "other", 1),
        ("decode_head.convs.*.conv", "other", 1),
        ("decode_head.fusion_conv.conv", "other", 1),
    ]


#: Layers whose map the paper's configurations declare instead of the input's positions: the
#: talking-head 1x1 convs of EfficientFormerV2 mix the heads of the (N x N) attention-score
#: tensor, which the authors' configs project as an N x N image (a dry forward finds no image
#: map there and refuses them unless the rule says so).
_DECLARED: dict[str, dict[str, Any]] = {
    "token_mixer.talking_head1": {"layout": "nchw"},
    "token_mixer.talking_head2": {"layout": "nchw"},
}


def _declared(glob: str) -> dict[str, Any]:
    return next((v for k, v in _DECLARED.items() if glob.endswith(k)), {})


def _authors_layers(model: str, scope: str, layers: list[_Layer]) -> list[_Layer]:
    """The layer table of the ``authors`` variant: what the authors' code really converted."""
    if model == "swinv2-small-w8":
        # mmcls 0.25's WindowMSAV2 reads qkv.weight and never calls the module.
        return [layer for layer in layers if not layer[0].endswith(".attn.w_msa.qkv")]
    if model == "segformer-mit-b0":
        # The set that fits Table 3. Kind "attn": LoRA converts the same layers as LoRA-all
        # (the paper's full-training LoRA and LoRA-all rows cost the same, 11976 vs 11971).
        p = "backbone.layers.3.1.*." if scope == "partial" else "backbone.layers.*.1.*."
        return [
            (p + "ffn.layers.0", "attn", 1),
            (p + "ffn.layers.4", "attn", 1),
            ("decode_head.fusion_conv.conv", "attn", 1),
        ]
    return layers


# model -> (layer table, partial-scope trainable globs, task-head globs, norm_eval)
_MODELS: dict[str, tuple[Any, list[str], list[str], bool]] = {
    "efficientformer-l1": (
        _efficientformer_layers,
        ["backbone.network.3.*", "head.*"],
        ["head.*"],
        True,
    ),
    "efficientformer-l7": (
        _efficientformer_layers,
        ["backbone.network.3.*", "head.*"],
        ["head.*"],
        True,
    ),
    "mini-efficientformer": (
        _efficientformer_layers,
        ["backbone.network.3.*", "head.*"],
        ["head.*"],
        True,
    ),
    "efficientformerv2-s0": (
        _efficientformerv2_layers,
        ["backbone.timm_model.stages.3.blocks.*", "head.*"],
        ["head.*"],
        True,
    ),
    "efficientformerv2-l": (
        _efficientformerv2_layers,
        ["backbone.timm_model.stages.3.blocks.*", "head.*"],
        ["head.*"],
        True,
    ),
    "swinv2-small-w8": (
        _swinv2_layers,
        ["backbone.stages.3.*", "head.*"],
        ["head.*"],
        False,  # LayerNorm only
    ),
    "segformer-mit-b0": (
        _segformer_layers,
        ["backbone.layers.3.*", "decode_head.*"],
        ["decode_head.conv_seg.*"],
        True,  # BatchNorm follows the decode head's LBP 1x1 convs
    ),
}


#: LoSA (``method="losa"``) per model: (containers whose parameter-holding children are the
#: taps, the output module). The taps are the blocks of the last stage -- the partial-training
#: scope, where the token count (and here the width) is constant, as LoSA's token mixer needs --
#: and the output is the backbone's final norm, the feature the neck and head read, so that no
#: backbone module runs in the backward. EfficientFormer: ``backbone.network.3`` (its
#: downsampling embedding, Meta4D blocks and Meta3D block; the parameter-free ``Flat`` is
#: skipped) and ``backbone.norm3`` (LayerNorm on the 49 tokens). EfficientFormerV2: timm
#: ``stages.3.blocks`` and the final BatchNorm ``norm``. SwinV2: ``stages.3.blocks`` (after
#: the patch merging) and ``norm3``. Segmentation (Segformer) has no LoSA preset.
_LOSA: dict[str, tuple[tuple[str, ...], str]] = {
    "efficientformer-l1": (("backbone.network.3",), "backbone.norm3"),
    "efficientformer-l7": (("backbone.network.3",), "backbone.norm3"),
    "mini-efficientformer": (("backbone.network.3",), "backbone.norm3"),
    "efficientformerv2-s0": (("backbone.timm_model.stages.3.blocks",), "backbone.timm_model.norm"),
    "efficientformerv2-l": (("backbone.timm_model.stages.3.blocks",), "backbone.timm_model.norm"),
    "swinv2-small-w8": (("backbone.stages.3.blocks",), "backbone.norm3"),
}


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")


def get_preset(
    model: str,
    method: str,
    scope: str,
    *,
    lbp: LBPConfig | None = None,
    lora: LoRAConfig | None = None,
    options: Any = None,
    lora_train: str = "adapters",
    variant: str = "corrected",
) -> Preset:
    """The conversion rules and trainable globs for ``model`` / ``method`` / ``scope``.

    Args:
        model: one of :data:`PRESET_MODELS`.
        method: one of :data:`METHODS` (``head_only``: no conversion, task head only).
        scope: ``"partial"`` (last stage + head) or ``"full"`` (whole model); ignored by
            ``head_only`` (the head trains alone in both).
        lbp: the :class:`~lbp_wht.config.LBPConfig` of every LBP-WHT rule (selection,
            radius or num_bases, order, padding), put into the rules as it is (``lbp=``);
            None: ``LBPConfig()``, the core's default. With ``selection="lhe"`` the layers profile
            ``g_y`` until their bases are set (``LBPMixin.set_bases``).
        lora: the :class:`~lbp_wht.config.LoRAConfig` per projection (``lora=``); fused
            layers (qkv) get a copy with rank and alpha multiplied by the number of fused
            projections. None: ``LoRAConfig()``, the core's default.
        options: a successor method's typed core config (``LoRAFAConfig``, ``VeLoRAConfig``,
            ``WTACRSConfig``), put into each rule under the method's name; a LoRA-FA config
            is scaled for fused layers as LoRA's. None: the core config's defaults.
        lora_train: what trains besides the adapters in the LoRA variants: ``"adapters"``
            (the task head only; LoRA's definition, our default) or ``"scope"`` (every
            parameter of the trained scope except the LoRA layers' frozen base weights: the
            freeze of the authors' configs, see ``results/cost/README.md``).
        variant: ``"corrected"`` (default) or ``"authors"``: the conversion the authors'
            code executed (module docstring, "Variants").

    Returns:
        A :class:`Preset`.
    """
    _check("model", model, PRESET_MODELS)
    spec = method_spec(method)  # a ValueError naming the known ids
    _check("scope", scope, SCOPES)
    _check("lora_train", lora_train, LORA_TRAIN)
    _check("variant", variant, VARIANTS)
    if (spec.has_bases and lbp is None) or (spec.has_lora and lora is None):
        from lbp_wht.config import LBPConfig, LoRAConfig  # the core's defaults

        lbp = LBPConfig() if lbp is None else lbp
        lora = LoRAConfig() if lora is None else lora
    if spec.has_options and options is None:
        from lbp_wht.conversion import SUCCESSOR_OPTIONS  # the core's defaults

        options = SUCCESSOR_OPTIONS[spec.conversion][0]()
    if spec.has_bases and lbp.selection == "lhe" and not spec.lhe:  # type: ignore[union-attr]
        raise ValueError(
            f"select='lhe' is not offered with {method!r} by the presets (the paper has no "
            "such row); use an LP selection, or convert with the library directly: "
            "dict(method='lbp_lora', selection='lhe', num_bases=R, lora_rank=k) and "
            "lbp_wht.lhe.LHEProfiler"
        )
    if spec.side_network and model not in _LOSA:
        raise ValueError(
            f"method {method!r} has no preset for {model!r} (segmentation); LoSA presets: "
            f"{sorted(_LOSA)}"
        )
    if scope not in spec.scopes:
        raise ValueError(
            f"method {method!r} {spec.scope_note}, i.e. scope="
            f"{' or '.join(map(repr, spec.scopes))}; scope={scope!r} is not defined for it"
        )
    layer_fn, partial_trainable, head, norm_eval = _MODELS[model]
    layers: list[_Layer] = layer_fn(scope)
    if variant == "authors":
        layers = _authors_layers(model, scope, layers)

    def fused_for(cfg: Any, fused: int) -> Any:  # a LoRA-style config of a fused qkv layer
        return cfg if fused == 1 else replace(cfg, rank=cfg.rank * fused, alpha=cfg.alpha * fused)

    # The spec's flags decide: which of the table's layers (``layers``), converted by which
    # core rule method (``conversion``), with LoRA options and / or WHT base options.
    rules: list[dict[str, Any]] = []
    for g, kind, f in layers if spec.converts else ():  # LoSA: a side network instead
        if spec.layers == "all" or spec.layers == kind:
            rule: dict[str, Any] = dict(target=g, method=spec.conversion)
            if spec.has_lora:
                rule["lora"] = fused_for(lora, f)
            if spec.has_bases:
                rule.update(lbp=lbp, **_declared(g))
            if spec.has_options:
                rule[spec.conversion] = fused_for(options, f) if spec.has_adapters else options
            rules.append(rule)

    if spec.trains == "head":
        trainable = list(head)
    elif spec.trains == "side":
        trainable = ["losa.*", *head]
    elif spec.trains == "scope":
        trainable = list(partial_trainable) if scope == "partial" else ["*"]
    else:  # LoRA variants (freeze() keeps LoRA base weights frozen whatever the globs)
        adapters = [f"{rule['target']}.lora_{ab}" for rule in rules for ab in ("A", "B")]
        if lora_train == "adapters":
            trainable = adapters + list(head)
        else:
            scope_globs = list(partial_trainable) if scope == "partial" else ["*"]
            trainable = adapters + scope_globs

    notes: list[str] = []
    if model == "swinv2-small-w8":
        notes.append("build the backbone as SwinTransformerV2Convertible (qkv called as module)")
        if variant == "authors":
            notes.append("authors' variant: attn.w_msa.qkv stays plain (mmcls 0.25 bypassed it)")
    if model == "segformer-mit-b0":
        notes.append("build the backbone as MixVisionTransformerConvertible (explicit q/k/v/proj)")
    if model.startswith("efficientformerv2"):
        notes.append("build the backbone as TimmEfficientFormerV2 (timm efficientformerv2)")
    containers, output = _LOSA[model] if spec.side_network else ((), "")
    return Preset(
        rules=rules,
        trainable=trainable,
        norm_eval=norm_eval,
        model=model,
        method=method,
        scope=scope,
        notes=tuple(notes),
        losa_containers=containers,
        losa_output=output,
        variant=variant,
        always_grad_x=variant == "authors" and spec.has_bases,
    )


#: How :func:`describe_preset` shows the typed configs of a rule (by their fields' values).
_SHOW_CONFIG: dict[str, Any] = {
    "lbp": lambda c: f"lbp={c.describe()} order={c.order} padding={c.padding}",
    "lora": lambda c: f"lora_rank={c.rank} lora_alpha={c.alpha:g}",
}


def _show(key: str, value: Any) -> str:
    """One rule option for :func:`describe_preset`."""
    show = _SHOW_CONFIG.get(key)
    return f"{key}={value}" if show is None else show(value)


def describe_preset(model: str, method: str, scope: str, **kwargs: Any) -> str:
    """A readable summary of :func:`get_preset` (same arguments): rules, trainable, norm_eval."""
    p = get_preset(model, method, scope, **kwargs)
    extra = f", variant={p.variant}" if p.variant != "corrected" else ""
    lines = [f"preset {model} / {method} / {scope}  (norm_eval={p.norm_eval}{extra})"]
    if p.rules:
        width = max(len(r["target"]) for r in p.rules)
        lines.append(f"  {len(p.rules)} conversion rules:")
        for rule in p.rules:
            opts = ", ".join(_show(k, v) for k, v in rule.items() if k not in ("target", "method"))
            lines.append(f"    {rule['target']:<{width}}  {rule['method']:<8} {opts}")
    elif p.losa_containers:
        lines.append(
            f"  no conversion; LoSA side network on the blocks of {', '.join(p.losa_containers)}"
            f", correcting {p.losa_output}"
        )
    else:
        lines.append("  no conversion (plain backprop)")
    lines.append(f"  trainable parameters ({len(p.trainable)} globs):")
    lines += [f"    {g}" for g in p.trainable]
    if p.always_grad_x:
        lines.append("  LBP-WHT layers compute g_x even where their input needs none")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Model configs the globs above are written against (plain dicts for mmpretrain / mmseg).
# ---------------------------------------------------------------------------------------------
def model_config(
    model: str,
    num_classes: int = 1000,
    *,
    training: bool = False,
    in_channels: int | None = None,
) -> dict[str, Any]:
    """The mmpretrain / mmseg model config whose module names the presets assume.

    The one definition of every model: the experiment configs' model bases
    (``configs/_base_/models/*.py``) are generated from ``model_config(model, training=True)``.

    Classification models are ``ImageClassifier``s (EfficientFormer heads without the
    distillation branch, which mmpretrain cannot train); Segformer is an ``EncoderDecoder``
    with mit-b0 and ``SegformerHead``. Backbone types named ``...Convertible`` /
    ``TimmEfficientFormerV2`` are registered by ``lbp_wht.integrations.models``. Drop path is
    0 for classification (the authors' fine-tuning setting) and mmseg's 0.1 for Segformer.

    Args:
        model: a model id of :data:`lbp_wht.experiments.vocab.MODELS`.
        num_classes: classes of the task head.
        training: the fine-tuning definition of the experiment configs: classification heads
            train with label smoothing 0.1; Segformer uses SyncBN (turned into BN when not
            distributed) and takes its data preprocessor from the dataset config. Without it
            (cost measurement, tests): the default loss, plain BN and the preprocessor in the
            model, so it builds and runs on one CPU as it is.
        in_channels: input channels when not 3 (the mini models' Fashion-MNIST: 1).

    Returns:
        A fresh dict each call.
    """
    check_model(model)

    def classifier(backbone: dict[str, Any], channels: int, neck_dim: int | None = None) -> dict:
        if in_channels is not None:
            backbone["in_channels"] = in_channels
        head: dict[str, Any] = dict(type="LinearClsHead", num_classes=num_classes)
        if backbone["type"] == "EfficientFormer":
            head = dict(type="EfficientFormerClsHead", num_classes=num_classes)
        head["in_channels"] = channels
        if backbone["type"] == "EfficientFormer":
            head["distillation"] = False
        if training:
            head["loss"] = dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original")
        # GlobalAveragePooling's default dim=2 pools (B, C, H, W) maps; EfficientFormer ends in
        # tokens (B, C, 49) after the LayerNorm of its token stage, hence 1-D pooling.
        neck = dict(type="GlobalAveragePooling")
        if neck_dim is not None:
            neck["dim"] = neck_dim
        return dict(type="ImageClassifier", backbone=backbone, neck=neck, head=head)

    if model in ("efficientformer-l1", "efficientformer-l7", "mini-efficientformer"):
        arch = {"efficientformer-l1": "l1", "efficientformer-l7": "l7"}.get(
            model, copy.deepcopy(MINI_EFFICIENTFORMER_ARCH)
        )
        channels = {"efficientformer-l1": 448, "efficientformer-l7": 768}.get(model, 64)
        backbone = dict(type="EfficientFormer", arch=arch, drop_path_rate=0.0)
        return classifier(backbone, channels, neck_dim=1)
    if model.startswith("efficientformerv2"):
        arch = model.split("-")[1]
        backbone = dict(type="TimmEfficientFormerV2", arch=arch, drop_path_rate=0.0)
        return classifier(backbone, {"s0": 176, "l": 384}[arch])
    if model == "swinv2-small-w8":
        backbone = dict(
            type="SwinTransformerV2Convertible",
            arch="small",
            img_size=256,
            window_size=[8, 8, 8, 8],
            drop_path_rate=0.0,
        )
        return classifier(backbone, 768)
    # Segformer (mmseg configs/_base_/models/segformer_mit-b0.py; mini: a CPU-sized MiT with
    # four 1-block stages and the same module names).
    mini = model == "mini-segformer"
    cfg: dict[str, Any] = dict(type="EncoderDecoder")
    if training:
        cfg["pretrained"] = None
    else:
        cfg["data_preprocessor"] = dict(
            type="SegDataPreProcessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
        )
    cfg["backbone"] = dict(
        type="MixVisionTransformerConvertible",
        in_channels=in_channels or 3,
        embed_dims=8 if mini else 32,
        num_stages=4,
        num_layers=[1, 1, 1, 1] if mini else [2, 2, 2, 2],
        # channels = embed_dims * num_heads
        num_heads=[1, 2, 4, 8] if mini else [1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=2 if mini else 4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0 if mini else 0.1,
    )
    # SyncBN for multi-GPU training, except the CPU mini model (it also trains distributed
    # on CPU, where SyncBN cannot run).
    norm = "SyncBN" if training and not mini else "BN"
    cfg["decode_head"] = dict(
        type="SegformerHead",
        in_channels=[8, 16, 32, 64] if mini else [32, 64, 160, 256],
        in_index=[0, 1, 2, 3],
        channels=32 if mini else 256,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=dict(type=norm, requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )
    cfg["train_cfg"] = dict()
    cfg["test_cfg"] = dict(mode="whole")
    return cfg
