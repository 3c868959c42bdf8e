"""Model-build-time injection of LBP-WHT / LoRA into OpenMMLab models.

Why at build time (and not in a ``before_run`` hook)
----------------------------------------------------
mmengine's ``Runner.__init__`` builds the model and wraps it in DDP, and ``Runner.train()``
builds the optimizer *before* it calls the ``before_run`` hooks; ``load_from`` is loaded even
later, in ``Runner.load_or_resume``. A hook that swaps layers or flips ``requires_grad`` in
``before_run`` would leave DDP and the optimizer holding the old parameters. So, like
mmpretrain's ``LoRAModel`` (``mmpretrain/models/peft/lora.py``), the conversion happens while
the model is *built*: the registered builder :func:`LBPWHTModel` builds the configured model,
converts it with :func:`lbp_wht.convert`, freezes it with :func:`lbp_wht.freeze` and switches
BatchNorm to running statistics, all before the Runner sees it. Unlike ``LoRAModel`` it returns
the converted model itself, not a wrapper around it, so parameter names and state-dict keys
stay exactly those of the unconverted model (LoRA only *adds* ``lora_A`` / ``lora_B``) and an
ImageNet / ADE20K checkpoint of the plain model loads with ``load_from``.

The config declares the method in a top-level ``lbp = dict(...)`` block (so that
``--cfg-options lbp.r=6`` is the whole of a sweep); :func:`inject_lbp` (called by
:class:`~lbp_wht.integrations.runner.LBPWHTRunner` and the tools) turns
``model = dict(...)`` into ``model = dict(type='LBPWHTModel', model=<that>, lbp=<cfg.lbp>)``
after the command-line options are merged, and adds the training-time hooks.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch.nn.modules.batchnorm import _BatchNorm

from lbp_wht import presets as _presets
from lbp_wht.bases import select_bases
from lbp_wht.config import LBPConfig, LoRAConfig
from lbp_wht.conversion import keep_batchnorm_eval

__all__ = [
    "LBP_DEFAULTS",
    "METHODS",
    "SCOPES",
    "SELECTS",
    "LBPConfigError",
    "LBPWHTModel",
    "TrainableOnlyOptimWrapperConstructor",
    "validate_lbp_cfg",
    "lbp_rank",
    "lbp_config_from_block",
    "lora_config_from_block",
    "inject_lbp",
    "enable_norm_eval",
    "lbp_layers",
    "uses_lbp",
]

#: Allowed values of lbp.method / scope / lora_train / select: the core's, defined once there.
METHODS, SCOPES, LORA_TRAIN, SELECTS = (
    _presets.METHODS,
    _presets.SCOPES,
    _presets.LORA_TRAIN,
    _presets.SELECTIONS,
)

#: Every key the ``lbp`` block may hold, with its default. Unknown keys are an error (a typo
#: such as ``lbp.rr=6`` must not silently run the default sweep point).
LBP_DEFAULTS: dict[str, Any] = dict(
    method=None,  # required: one of METHODS
    model=None,  # required: model name (preset name unless lbp.preset is set), e.g. 'efficientformer-l1'
    preset=None,  # preset name for get_preset when it differs from model (e.g. CPU stand-ins)
    scope="partial",  # 'partial' = last stage + head (Sec. 4.1), 'full' = whole model
    select="lp_l1",  # base selection (Sec. 3.2): lp_l1 (Eq. 8), lp_linf (Eq. 9), lhe
    r=4,  # LP radius (lp_l1 r=2,4,6,8 -> R=3,10,21,36)
    rank=None,  # number of bases for select='lhe' (Table 4: 10)
    order=8,  # WHT order (8x8 patches)
    padding="reflect",  # how a 7x7 map is padded to 8x8
    lora_rank=8,
    lora_alpha=8,
    # LoRA variants: 'adapters' (+ task head; LoRA's definition) or 'scope' (the authors'
    # freeze: every non-LoRA parameter of the trained scope trains too)
    lora_train="adapters",
    norm_eval=None,  # None: the preset's choice (BatchNorm on running statistics)
    lhe_iters=100,  # LHE: profile g_y energy for this many iterations, then fix the bases
    spectrum_layer=None,  # record g_y WHT spectrum of this module (Figure 5)
    spectrum_iters=None,  # ... for this many iterations (None: the whole run)
    allow_random_init=False,  # permit load_from=None (mini / from-scratch configs only)
    strict_load=True,  # load_from: missing non-adapter keys are an error
    # load_from: keys that may be missing / unexpected / of another shape (left at init)
    reinit_keys=("head.*", "decode_head.conv_seg.*", "auxiliary_head.*"),
    drop_keys=(),  # load_from: checkpoint keys never loaded (e.g. ['head.*'] for a fresh head)
)


class LBPConfigError(ValueError):
    """The ``lbp`` block of a config is invalid."""


def validate_lbp_cfg(lbp: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check the ``lbp`` block and return it completed with :data:`LBP_DEFAULTS`.

    Raises:
        LBPConfigError: unknown keys, unknown method / scope / select, or missing fields.
    """
    if lbp is None:
        raise LBPConfigError(
            "the config has no `lbp = dict(method=..., model=..., scope=...)` block; "
            "inherit configs/_base_/method.py and set lbp.method, lbp.model and lbp.scope"
        )
    lbp = dict(lbp)
    unknown = sorted(set(lbp) - set(LBP_DEFAULTS))
    if unknown:
        raise LBPConfigError(
            f"unknown key(s) {unknown} in the `lbp` block; valid keys: {sorted(LBP_DEFAULTS)}"
        )
    out = {**copy.deepcopy(LBP_DEFAULTS), **lbp}
    if out["method"] not in METHODS:
        raise LBPConfigError(f"lbp.method={out['method']!r}; choose one of {list(METHODS)}")
    if out["scope"] not in SCOPES:
        raise LBPConfigError(f"lbp.scope={out['scope']!r}; choose one of {list(SCOPES)}")
    if out["lora_train"] not in LORA_TRAIN:
        raise LBPConfigError(
            f"lbp.lora_train={out['lora_train']!r}; choose one of {list(LORA_TRAIN)}"
        )
    if not out["model"]:
        raise LBPConfigError("lbp.model is required (the preset name, e.g. 'efficientformer-l1')")
    if uses_lbp(out["method"]):
        if out["select"] not in SELECTS:
            raise LBPConfigError(f"lbp.select={out['select']!r}; choose one of {list(SELECTS)}")
        if out["select"] == "lhe":
            if uses_lora(out["method"]):
                raise LBPConfigError(
                    "lbp.select='lhe' is not available with lbp.method='lbp_wht+lora_all' "
                    "(use an LP selection)"
                )
            if not isinstance(out["rank"], int) or not 1 <= out["rank"] <= out["order"] ** 2:
                raise LBPConfigError(
                    f"lbp.select='lhe' needs lbp.rank, an int in [1, {out['order'] ** 2}]; "
                    f"got {out['rank']!r}"
                )
            if not isinstance(out["lhe_iters"], int) or out["lhe_iters"] < 1:
                raise LBPConfigError(f"lbp.lhe_iters must be an int >= 1, got {out['lhe_iters']!r}")
        else:
            try:  # validates r against order with the core's message
                select_bases(out["select"], r=out["r"], order=out["order"])
            except ValueError as err:
                raise LBPConfigError(f"lbp.select/r/order: {err}") from err
    out["reinit_keys"] = tuple(out["reinit_keys"] or ())
    out["drop_keys"] = tuple(out["drop_keys"] or ())
    return out


def uses_lbp(method: str) -> bool:
    """Whether ``method`` puts LBP-WHT layers (low-rank backward) into the model."""
    return method.startswith("lbp_wht")


def uses_lora(method: str) -> bool:
    return "lora" in method


def lbp_config_from_block(lbp: Mapping[str, Any]) -> LBPConfig | None:
    """The typed :class:`~lbp_wht.config.LBPConfig` of a validated ``lbp`` block (None for
    methods without LBP-WHT). Block keys map as ``select`` -> selection, ``r`` -> radius,
    ``rank`` -> num_bases (LHE), ``order``, ``padding``."""
    if not uses_lbp(lbp["method"]):
        return None
    if lbp["select"] == "lhe":
        return LBPConfig(selection="lhe", num_bases=lbp["rank"], order=lbp["order"],
                         padding=lbp["padding"])  # fmt: skip
    return LBPConfig(
        selection=lbp["select"], radius=lbp["r"], order=lbp["order"], padding=lbp["padding"]
    )


def lora_config_from_block(lbp: Mapping[str, Any]) -> LoRAConfig | None:
    """The per-projection :class:`~lbp_wht.config.LoRAConfig` of an ``lbp`` block (fused qkv
    layers get rank and alpha times 3 in the presets)."""
    if not uses_lora(lbp["method"]):
        return None
    return LoRAConfig(rank=lbp["lora_rank"], alpha=lbp["lora_alpha"])


def lbp_rank(lbp: Mapping[str, Any]) -> int | None:
    """R, the number of WHT bases of the method (None for full BP and plain LoRA)."""
    config = lbp_config_from_block(lbp)
    return None if config is None else config.num_bases


def lbp_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The LBP-WHT layers of ``model`` (anything with ``set_bases`` and ``record_spectrum``)."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP & co.
        model = model.module
    return {
        n: m
        for n, m in model.named_modules()
        if hasattr(m, "set_bases") and hasattr(m, "record_spectrum")
    }


def enable_norm_eval(model: nn.Module) -> None:
    """Keep every BatchNorm of ``model`` on running statistics, whatever ``train()`` says.

    ``norm_eval=True`` of the authors' configs: BatchNorm in train mode does not commute with
    the low-rank projection of the gradient. This is :func:`lbp_wht.keep_batchnorm_eval`: a
    forward pre-hook on the *top-level* model that sets ``training=False`` on all
    ``_BatchNorm`` modules before every forward, so it survives ``model.train()`` calls of any
    training loop and mmengine's ``revert_sync_batchnorm`` (which replaces SyncBN children but
    not the root), and needs no subclassing of the model.
    """
    keep_batchnorm_eval(model)


def LBPWHTModel(  # noqa: N802 - registry type name
    model: dict, lbp: dict, data_preprocessor: dict | None = None
) -> nn.Module:
    """Build ``model`` (an mmpretrain / mmseg model config) with the ``lbp`` method injected.

    Steps, all before the Runner wraps the model or builds the optimizer:
    1. build the model from the registry of the current default scope;
    2. ``convert(model, preset.rules)`` (Linear / 1x1 Conv2d -> LBP / LoRA layers that share
       the original parameters, so state-dict keys are unchanged);
    3. ``freeze(model, preset.trainable)`` (partial: last stage + head; LoRA: adapters);
    4. BatchNorm on running statistics (:func:`enable_norm_eval`) when the preset says so.

    ``data_preprocessor``: the Runner puts a top-level ``data_preprocessor`` config on the
    outer model dict; it belongs to the inner model (``setdefault``, as the Runner does).

    Returns the converted model itself (no wrapper, no key prefix), with ``model.lbp_info``
    (dict: cfg, rank, preset, report, trainable) for hooks and tools.
    """
    from lbp_wht import convert, freeze
    from lbp_wht.presets import get_preset

    cfg = validate_lbp_cfg(lbp)
    model = copy.deepcopy(model)
    if data_preprocessor is not None:
        model.setdefault("data_preprocessor", data_preprocessor)
    net = MODELS.build(model)
    preset_kwargs = dict(
        select=cfg["select"],
        r=cfg["r"],
        order=cfg["order"],
        padding=cfg["padding"],
        lora_rank=cfg["lora_rank"],
        lora_alpha=cfg["lora_alpha"],
        lora_train=cfg["lora_train"],
    )
    if uses_lbp(cfg["method"]) and cfg["select"] == "lhe":
        preset_kwargs["r"] = cfg["rank"]  # get_preset takes the LHE rank as r
    preset_name = cfg["preset"] or cfg["model"]
    preset = get_preset(preset_name, cfg["method"], cfg["scope"], **preset_kwargs)
    try:  # refuse attention modules whose projections a conversion would silently bypass
        from .models import assert_convertible
    except ImportError:  # pragma: no cover - models.py imports mmseg; classification-only envs
        assert_convertible = None
    if assert_convertible is not None and preset.rules:
        assert_convertible(net)
    # This builder warns about train-mode BatchNorm itself (below, also into the log).
    report = convert(net, preset.rules, batchnorm_guard=False)
    trainable = freeze(net, preset.trainable)
    norm_eval = preset.norm_eval if cfg["norm_eval"] is None else bool(cfg["norm_eval"])
    if norm_eval:
        enable_norm_eval(net)
    has_bn = any(isinstance(m, _BatchNorm) for m in net.modules())
    trains_lbp = any(p.requires_grad for m in lbp_layers(net).values() for p in m.parameters())
    if trains_lbp and has_bn and not norm_eval:
        msg = (
            "lbp: LBP-WHT layers train while BatchNorm layers are in train mode (norm_eval "
            "False). Batch statistics do not commute with the low-rank gradient projection; "
            "measured on EfficientNet-Lite0 this costs up to 40 accuracy points. Set "
            "lbp.norm_eval=True (the paper's setting) unless you know why not."
        )
        warnings.warn(msg, stacklevel=2)
        print_log(msg, logger="current", level=30)
    net.lbp_info = dict(  # type: ignore[assignment]
        cfg=cfg,
        lbp_config=lbp_config_from_block(cfg),
        lora_config=lora_config_from_block(cfg),
        preset=preset_name,
        rank=lbp_rank(cfg),
        norm_eval=norm_eval,
        rules=list(preset.rules),
        trainable_patterns=list(preset.trainable),
        report=report,
        trainable=trainable,
    )
    print_log(
        f"lbp: method={cfg['method']} scope={cfg['scope']} model={cfg['model']} "
        f"rank={lbp_rank(cfg)} norm_eval={norm_eval}; {len(report)} modules converted, "
        f"{len(trainable)} trainable parameter tensors",
        logger="current",
    )
    return net


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOnlyOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, but the optimizer receives only ``requires_grad``
    parameters (mmengine's default hands it every parameter, frozen ones included).

    With partial training most of the model is frozen; keeping frozen tensors out of the
    optimizer keeps its state small and makes "what does the optimizer train" checkable.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if hasattr(model, "module"):
            model = model.module
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer_cfg = self.optimizer_cfg.copy()
        if not self.paramwise_cfg:
            params: list = [p for p in model.parameters() if p.requires_grad]
        else:
            groups: list = []
            self.add_params(groups, model)
            params = [g for g in groups if g["params"][0].requires_grad]
        if not params:
            raise ValueError(
                "the optimizer would get no trainable parameter: check lbp.method / lbp.scope"
            )
        optimizer_cfg["params"] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))


def _cfg_get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if hasattr(obj, "get") else default


def inject_lbp(cfg: Any) -> Any:
    """Rewrite a loaded mmengine ``Config`` (in place) so the Runner builds the LBP model.

    - validates ``cfg.lbp`` (unknown keys are an error);
    - ``cfg.model`` -> ``dict(type='LBPWHTModel', model=cfg.model, lbp=cfg.lbp)`` (idempotent;
      an already wrapped model gets the current ``cfg.lbp`` so ``--cfg-options lbp.*`` wins);
    - the optimizer receives only trainable parameters
      (:class:`TrainableOnlyOptimWrapperConstructor`) unless the config chose a constructor;
    - adds ``LBPWHTHook`` and ``RunRecordHook`` to ``custom_hooks`` if absent.
    """
    validate_lbp_cfg(_cfg_get(cfg, "lbp"))  # fail early, before anything is built
    # Keep the user's spelling in cfg.lbp (dumped configs stay short); the builder completes it.
    user_lbp = dict(cfg.lbp)
    for key in ("reinit_keys", "drop_keys"):
        if key in user_lbp:
            user_lbp[key] = list(user_lbp[key])
    model = cfg.model
    if model.get("type") == "LBPWHTModel":
        model["lbp"] = user_lbp
    else:
        cfg.model = dict(type="LBPWHTModel", model=model, lbp=user_lbp)
    optim = _cfg_get(cfg, "optim_wrapper")
    if optim is not None and "constructor" not in optim:
        optim["constructor"] = "TrainableOnlyOptimWrapperConstructor"
    hooks = list(_cfg_get(cfg, "custom_hooks", None) or [])
    types = {h.get("type") for h in hooks}
    if "LBPWHTHook" not in types:
        hooks.append(dict(type="LBPWHTHook"))
    if "RunRecordHook" not in types:
        hooks.append(dict(type="RunRecordHook"))
    cfg.custom_hooks = hooks
    return cfg


# Registered in mmengine's root registry: mmpretrain's and mmseg's child registries fall back to
# their parent, so `type='LBPWHTModel'` resolves under either default scope, and the inner
# `MODELS.build(model)` switches to the default scope's registry (ImageClassifier,
# EncoderDecoder, ...).
MODELS.register_module(name="LBPWHTModel", module=LBPWHTModel, force=True)
