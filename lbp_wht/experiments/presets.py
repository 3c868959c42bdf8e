"""Which layers get LBP-WHT / LoRA and which parameters train, per model, method and scope.

Standard library only: ``get_preset(...)`` returns the ``rules`` for :func:`lbp_wht.convert`
and the ``trainable`` globs for :func:`lbp_wht.freeze`, read from the model's
:class:`~lbp_wht.experiments.models.ModelSpec` (layer table, partial scope, task head,
``norm_eval``, LoSA taps, notes) and the method's
:class:`~lbp_wht.experiments.methods.MethodSpec` flags (``conversion`` and ``layers`` give
the rules, ``trains`` the globs); this module names no model and no method. Globs are over
the qualified names of the whole OpenMMLab model of :func:`model_config`; ``*`` also matches
dots. Why the tables hold what they hold (the authors' experiment configurations,
``docs/PAPER_NOTES.md``):

* LBP-WHT (order-8 WHT on 8x8 patches; 7x7 maps reflect-padded to 8x8) goes on the attention
  projections and FFN layers of the trained blocks, SwinV2's patch merging and
  EfficientFormerV2's talking heads and attention downsampling. Segformer's set is not in
  the notes; chosen here: attention, the MixFFN 1x1 convs and the decode head's 1x1 convs,
  because the head's 1024->256 fusion conv at 128x128 alone costs ~8.6 GMAC to back-propagate,
  about 40% of partial training's Full BP, so a method that leaves it exact cannot reach
  Table 3's low-rank costs. The classifier ``conv_seg`` stays exact (the task head, like
  ``head.*`` in classification). Which layers the authors converted is not documented; the
  ``authors`` variant below is the set that fits Table 3's costs.
* Partial training trains the last stage and the head (EfficientFormerV2: the authors'
  ``network.6`` = timm ``stages.3.blocks``; its attention downsampling, the authors'
  ``network.5``, stays frozen; Segformer: also the decode head). Final backbone norms lie
  outside those modules and stay frozen, as in the authors' configs ("everything else
  frozen").
* LoRA baselines: rank 8, alpha 8 (scaling 1); a fused qkv layer gets rank 24 and alpha 24.
  "LoRA" = attention projections only; "LoRA-all" = every layer that LBP-WHT converts. They
  train only the adapters and the (new) task head, as in LoRA (Hu et al.): Segformer's decode
  head stays frozen under LoRA (it carries adapters under LoRA-all), which matches Table 3's
  LoRA cost (the frozen decoder still back-propagates ``g_x`` through its fusion conv).
  ``lora_train="scope"`` (``lbp.lora_train``) follows the authors' configs instead: every
  parameter of the trained scope trains beside the adapters, except the LoRA layers' frozen
  base weights; with it our LoRA-all costs come within about 10% of Table 7's
  (``results/cost/README.md``, item 3).
* ``head_only`` (linear probe) and ``losa`` (:mod:`lbp_wht.losa`: a side network tapping the
  last stage's blocks, ``Preset.losa_containers``, and correcting the backbone's final
  feature, ``Preset.losa_output``; classification, partial training) are not paper rows: the
  CPU mini-reproduction reports them, the probe to show that adapting the backbone matters.
  Both convert nothing; the probe trains the task head whatever the scope, LoSA its side
  network and the task head (no gradient reaches the backbone).

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

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .methods import SCOPES, MethodSpec, method_spec
from .models import MINI_EFFICIENTFORMER_ARCH, MODEL_SPECS, ModelSpec, model_spec, preset_models
from .vocab import LORA_TRAIN

if TYPE_CHECKING:  # the core configs import torch; this module stays standard-library only
    from lbp_wht.config import LBPConfig, LoRAConfig

__all__ = [
    "Preset",
    "get_preset",
    "describe_preset",
    "preset_of",
    "model_config",
    "VARIANTS",
    "MINI_EFFICIENTFORMER_ARCH",
]

#: Conversion variants (``get_preset(variant=...)``, config key ``lbp.variant``): the corrected
#: conversion (default) and what the authors' code executed (see the module docstring).
VARIANTS: tuple[str, ...] = ("corrected", "authors")


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
    """The conversion rules and trainable globs for ``model`` / ``method`` / ``scope``, the
    library's entry: checks its arguments, then :func:`preset_of`.

    Args:
        model: a model with presets of its own (:func:`~lbp_wht.experiments.models.preset_models`).
        method: a method id (``head_only``: no conversion, task head only).
        scope: ``"partial"`` (last stage + head) or ``"full"`` (whole model); ignored by
            ``head_only`` (the head trains alone in both).
        lbp: the :class:`~lbp_wht.config.LBPConfig` of every LBP-WHT rule, put into the rules
            as it is (``lbp=``); None: ``LBPConfig()``. With ``selection="lhe"`` the layers
            profile ``g_y`` until their bases are set (``LBPMixin.set_bases``).
        lora: the :class:`~lbp_wht.config.LoRAConfig` per projection (``lora=``); fused
            layers (qkv) get a copy with rank and alpha multiplied by the number of fused
            projections. None: ``LoRAConfig()``.
        options: a successor method's typed core config (``LoRAFAConfig``, ``VeLoRAConfig``,
            ...), put into each rule under the method's name; a LoRA-FA config is scaled for
            fused layers as LoRA's. None: the core config's defaults.
        lora_train: what trains besides the adapters in the LoRA variants: ``"adapters"``
            (the task head only; LoRA's definition, our default) or ``"scope"`` (every
            parameter of the trained scope except the LoRA layers' frozen base weights: the
            freeze of the authors' configs, see ``results/cost/README.md``).
        variant: ``"corrected"`` (default) or ``"authors"`` (module docstring, "Variants").
    """
    mspec = _preset_model(model)
    spec = method_spec(method)  # a ValueError naming the known ids
    _check("scope", scope, SCOPES)
    _check("lora_train", lora_train, LORA_TRAIN)
    _check("variant", variant, VARIANTS)
    _check_losa(mspec, spec)
    if spec.has_bases and lbp is not None and lbp.selection == "lhe" and not spec.lhe:
        raise ValueError(
            f"select='lhe' is not offered with {method!r} by the presets (the paper has no "
            "such row); use an LP selection, or convert with the library directly: "
            "dict(method='lbp_lora', selection='lhe', num_bases=R, lora_rank=k) and "
            "lbp_wht.lhe.LHEProfiler"
        )
    if scope not in spec.scopes:
        raise ValueError(
            f"method {method!r} {spec.scope_note}, i.e. scope="
            f"{' or '.join(map(repr, spec.scopes))}; scope={scope!r} is not defined for it"
        )
    return preset_of(model, spec, scope, lbp, lora, options, lora_train, variant)


def _preset_model(model: str) -> ModelSpec:
    mspec = MODEL_SPECS.get(model)
    if mspec is None or not mspec.has_preset:
        _check("model", model, preset_models())
    assert mspec is not None
    return mspec


def _check_losa(mspec: ModelSpec, spec: MethodSpec) -> None:
    if spec.side_network and mspec.losa is None:
        raise ValueError(
            f"method {spec.id!r} has no preset for {mspec.id!r} (segmentation); LoSA presets: "
            f"{sorted(m.id for m in MODEL_SPECS.values() if m.losa is not None)}"
        )


def preset_of(
    model: str,
    spec: MethodSpec,
    scope: str,
    lbp: LBPConfig | None,
    lora: LoRAConfig | None,
    options: Any,
    lora_train: str,
    variant: str,
) -> Preset:
    """:func:`get_preset` for arguments already validated (a parsed ``lbp`` block,
    :func:`lbp_wht.integrations.build.preset_for_block`): checks only what that parse does
    not, that ``model`` has presets and, for LoSA, taps."""
    mspec = _preset_model(model)
    _check_losa(mspec, spec)
    if (spec.has_bases and lbp is None) or (spec.has_lora and lora is None):
        from lbp_wht.config import LBPConfig, LoRAConfig  # the core's defaults

        lbp = LBPConfig() if lbp is None else lbp
        lora = LoRAConfig() if lora is None else lora
    if spec.has_options and options is None:
        from lbp_wht.conversion import SUCCESSOR_OPTIONS  # the core's defaults

        options = SUCCESSOR_OPTIONS[spec.conversion][0]()
    head = mspec.head
    scope_globs = list(mspec.partial) if scope == "partial" else ["*"]

    def fused_for(cfg: Any, fused: int) -> Any:  # a LoRA-style config of a fused qkv layer
        return cfg if fused == 1 else replace(cfg, rank=cfg.rank * fused, alpha=cfg.alpha * fused)

    # The spec's flags decide: which of the table's layers (``layers``), converted by which
    # core rule method (``conversion``), with LoRA options and / or WHT base options. LoSA
    # converts nothing (a side network instead).
    rules: list[dict[str, Any]] = []
    for layer in mspec.layer_table(scope, variant) if spec.converts else ():
        if spec.layers == "all" or spec.layers == layer.kind:
            rule: dict[str, Any] = dict(target=layer.glob, method=spec.conversion)
            if spec.has_lora:
                rule["lora"] = fused_for(lora, layer.fused)
            if spec.has_bases:
                rule["lbp"] = lbp
                if layer.layout:  # the map the paper's configurations declare
                    rule["layout"] = layer.layout
            if spec.has_options:
                rule[spec.conversion] = (
                    fused_for(options, layer.fused) if spec.has_adapters else options
                )
            rules.append(rule)

    # LoRA variants: freeze() keeps LoRA base weights frozen whatever the globs
    trainable = spec.trainable_globs(
        head,
        scope_globs,
        [rule["target"] for rule in rules],
        adapters_with_scope=lora_train != "adapters",
    )

    notes = mspec.notes + (mspec.authors_notes if variant == "authors" else ())
    containers, output = mspec.losa if spec.side_network else ((), "")  # type: ignore[misc]
    return Preset(
        rules=rules,
        trainable=trainable,
        norm_eval=mspec.norm_eval,
        model=mspec.id,
        method=spec.id,
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
# Model configs the specs' globs are written against (plain dicts for mmpretrain / mmseg),
# one builder per architecture (ModelSpec.arch) fed the spec's definition.
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
        model: a model id of :data:`~lbp_wht.experiments.models.MODEL_SPECS`.
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
    spec = model_spec(model)  # a ValueError naming the known ids
    return _BUILDERS[spec.arch](spec, spec.builder_args(), num_classes, training, in_channels)


def _classifier(
    backbone: dict[str, Any],
    channels: int,
    num_classes: int,
    training: bool,
    in_channels: int | None,
    neck_dim: int | None = None,
) -> dict[str, Any]:
    """An ``ImageClassifier`` around ``backbone`` (EfficientFormer heads without the
    distillation branch, which mmpretrain cannot train)."""
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


def _efficientformer(
    spec: ModelSpec, args: dict, num_classes: int, training: bool, in_channels: int | None
) -> dict[str, Any]:
    """mmpretrain ``EfficientFormer`` (``arch``: its name or an arch dict; ``channels``)."""
    backbone = dict(type="EfficientFormer", arch=args["arch"], drop_path_rate=0.0)
    return _classifier(backbone, args["channels"], num_classes, training, in_channels, 1)


def _efficientformerv2(
    spec: ModelSpec, args: dict, num_classes: int, training: bool, in_channels: int | None
) -> dict[str, Any]:
    """timm's EfficientFormerV2 as ``TimmEfficientFormerV2`` (``arch``: s0 / l; ``channels``)."""
    backbone = dict(type="TimmEfficientFormerV2", arch=args["arch"], drop_path_rate=0.0)
    return _classifier(backbone, args["channels"], num_classes, training, in_channels)


def _swinv2(
    spec: ModelSpec, args: dict, num_classes: int, training: bool, in_channels: int | None
) -> dict[str, Any]:
    """mmpretrain SwinV2 as ``SwinTransformerV2Convertible`` (qkv called as a module)."""
    channels = args.pop("channels")
    backbone = dict(type="SwinTransformerV2Convertible", **args, drop_path_rate=0.0)
    return _classifier(backbone, channels, num_classes, training, in_channels)


def _segformer(
    spec: ModelSpec, args: dict, num_classes: int, training: bool, in_channels: int | None
) -> dict[str, Any]:
    """mmseg ``EncoderDecoder`` with a ``MixVisionTransformerConvertible`` encoder and a
    ``SegformerHead`` (mmseg ``configs/_base_/models/segformer_mit-b0.py``)."""
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
        embed_dims=args["embed_dims"],
        num_stages=4,
        num_layers=args["num_layers"],
        num_heads=args["num_heads"],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=args["mlp_ratio"],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=args["drop_path_rate"],
    )
    norm = "SyncBN" if training and args["sync_bn"] else "BN"
    cfg["decode_head"] = dict(
        type="SegformerHead",
        in_channels=args["decoder_in_channels"],
        in_index=[0, 1, 2, 3],
        channels=args["decoder_channels"],
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=dict(type=norm, requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )
    cfg["train_cfg"] = dict()
    cfg["test_cfg"] = dict(mode="whole")
    return cfg


#: ``model_config``'s builder per architecture (:data:`lbp_wht.experiments.models.ARCHS`):
#: ``builder(spec, args, num_classes, training, in_channels)``, ``args`` a copy of the spec's
#: ``definition``.
_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "EfficientFormer": _efficientformer,
    "EfficientFormerV2": _efficientformerv2,
    "SwinV2": _swinv2,
    "Segformer": _segformer,
}
