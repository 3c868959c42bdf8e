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
import difflib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch.nn.modules.batchnorm import _BatchNorm

from lbp_wht.config import LBPConfig, LoRAConfig
from lbp_wht.conversion import SUCCESSOR_OPTIONS, keep_batchnorm_eval
from lbp_wht.experiments import presets as _presets
from lbp_wht.experiments.methods import METHOD_SPECS, SCOPES, method_spec
from lbp_wht.experiments.models import MODEL_SPECS, preset_models
from lbp_wht.experiments.vocab import LORA_TRAIN, SELECTIONS
from lbp_wht.losa import DEFAULT_RANK as LOSA_DEFAULT_RANK
from lbp_wht.projection import PADDINGS

__all__ = [
    "LBP_DEFAULTS",
    "LBP_SCHEMA",
    "LBPKey",
    "LBPBlock",
    "LBPConfigError",
    "LBPWHTModel",
    "TrainableOnlyOptimWrapperConstructor",
    "validate_lbp_cfg",
    "parse_lbp_block",
    "preset_for_block",
    "check_lbp_preset",
    "close_matches",
    "did_you_mean",
    "lbp_rank",
    "inject_lbp",
    "attach_side_network",
    "always_compute_input_grad",
    "lbp_layers",
    "uses_lbp",
]


def _core_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the core config dataclass ``cls`` (written there once)."""
    return next(f.default for f in fields(cls) if f.name == name)


class LBPConfigError(ValueError):
    """The ``lbp`` block of a config is invalid."""


@dataclass(frozen=True)
class LBPKey:
    """One key of the ``lbp`` block: its type, meaning, default and allowed values.

    Attributes:
        kind: ``"str"``, ``"int"``, ``"number"`` (int or float), ``"bool"``, ``"patterns"``
            (a list / tuple of glob strings) or ``"options"`` (a dict). ``bool`` is never
            accepted as an int or a number, and no string is converted: ``"False"`` is not
            False, ``"8"`` is not 8.
        help: what the key means (shown in errors).
        default: its value when the block does not set it (``method`` / ``model``: required).
        choices: allowed values (None: any value of the kind).
        nullable: None is allowed.
        minimum: smallest allowed value for ``int`` / ``number``; ``positive``: above it.
    """

    kind: str
    help: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    minimum: float | None = None
    positive: bool = False


#: Every key the ``lbp`` block may hold. Unknown keys are an error (a typo such as
#: ``lbp.rr=6`` must not silently run the default sweep point). The defaults of the LBP-WHT
#: and LoRA keys are the core's (:class:`~lbp_wht.config.LBPConfig` ``selection`` /
#: ``radius`` / ``order`` / ``padding``, :class:`~lbp_wht.config.LoRAConfig` ``rank`` /
#: ``alpha``), read from there.
LBP_SCHEMA: dict[str, LBPKey] = dict(
    method=LBPKey("str", "training method", choices=tuple(METHOD_SPECS)),
    model=LBPKey("str", "model name, a preset name unless lbp.preset is set"),
    # e.g. the CPU stand-in mini-segformer uses segformer-mit-b0's presets
    preset=LBPKey("str", "preset name when it differs from lbp.model", nullable=True),
    scope=LBPKey("str", "trained part: 'partial' (last stage + head) or 'full'", "partial", SCOPES),
    # lp_l1 (Eq. 8), lp_linf (Eq. 9), lhe
    select=LBPKey(
        "str", "WHT base selection, Sec. 3.2", _core_default(LBPConfig, "selection"), SELECTIONS
    ),
    r=LBPKey(
        "int",
        "LP radius; lp_l1 r=2,4,6,8 keeps R=3,10,21,36 bases",
        LBPConfig.DEFAULT_RADIUS,
        minimum=1,
    ),  # fmt: skip
    rank=LBPKey("int", "number of bases for select='lhe'", nullable=True, minimum=1),
    order=LBPKey(
        "int",
        "WHT order, the patch side, a power of two",
        _core_default(LBPConfig, "order"),
        minimum=1,
    ),  # fmt: skip
    padding=LBPKey(
        "str",
        "how maps are padded to whole patches",
        _core_default(LBPConfig, "padding"),
        PADDINGS,
    ),  # fmt: skip
    lora_rank=LBPKey("int", "LoRA rank", _core_default(LoRAConfig, "rank"), minimum=1),
    lora_alpha=LBPKey(
        "number",
        "LoRA alpha; the adapter scaling is alpha / rank",
        _core_default(LoRAConfig, "alpha"),
        minimum=0,
        positive=True,
    ),  # fmt: skip
    losa_rank=LBPKey(
        "int", "LoSA: rank of the side network's low-rank mixers", LOSA_DEFAULT_RANK, minimum=1
    ),
    # {}: the core config's defaults
    options=LBPKey(
        "options",
        "a successor method's options, keys of its lbp_wht.convert rule "
        "(wta_crs: keep, keep_fraction, winner_fraction; velora: subtoken_size)",
        {},
    ),
    # 'adapters': + the task head (LoRA's definition); 'scope': the authors' freeze
    lora_train=LBPKey("str", "what trains beside the LoRA adapters", "adapters", LORA_TRAIN),
    norm_eval=LBPKey(
        "bool", "BatchNorm on running statistics; None: as the preset says", nullable=True
    ),
    variant=LBPKey(
        "str",
        "conversion variant: 'corrected' (default; every preset layer runs converted) or "
        "'authors' (what the authors' code executed, to compare costs with the paper: "
        "SwinV2 qkv left plain, Segformer MixFFN 1x1 + fusion conv only, LBP-WHT layers "
        "always compute g_x)",
        "corrected",
        _presets.VARIANTS,
    ),
    # LHE profiles g_y energy for this many iterations, then fixes the bases
    lhe_iters=LBPKey("int", "LHE: iterations of spectrum profiling", 100, minimum=1),
    # Figure 5; spectrum_iters None: the whole run
    spectrum_layer=LBPKey("str", "module whose g_y spectrum is recorded", nullable=True),
    spectrum_iters=LBPKey("int", "iterations of spectrum recording", nullable=True, minimum=1),
    # mini / from-scratch configs only
    allow_random_init=LBPKey("bool", "permit load_from=None, a randomly initialised model", False),
    # e.g. the demo's lighter mini model; the model-name check then compares backbone types only
    model_variant=LBPKey(
        "str",
        "how the model this config builds differs from lbp.model's definition (a declared "
        "variant, e.g. a lighter size); None: it is lbp.model exactly",
        nullable=True,
    ),
    strict_load=LBPKey("bool", "load_from: missing non-adapter keys are an error", True),
    # keys that may be missing / unexpected / of another shape (left at initialisation)
    reinit_keys=LBPKey(
        "patterns",
        "load_from: head keys left at initialisation",
        ("head.*", "decode_head.conv_seg.*", "auxiliary_head.*"),
    ),  # fmt: skip
    # e.g. ['head.*'] for a fresh head
    drop_keys=LBPKey("patterns", "load_from: checkpoint keys never loaded", ()),
)
#: Every key of the block with its default.
LBP_DEFAULTS: dict[str, Any] = {k: key.default for k, key in LBP_SCHEMA.items()}


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance (edits incl. transpositions) between ``a`` and ``b``."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def close_matches(name: str, candidates: Iterable[str], fuzzy: bool = True) -> list[str]:
    """Candidates that ``name`` is probably a misspelling of (closest first).

    A candidate matches if it is within 1 edit (names up to 4 characters) or 2 edits (longer
    names; an edit is an insertion, deletion, substitution or swap of neighbours), or, with
    ``fuzzy``, if ``difflib`` finds it similar (ratio >= 0.75).
    """
    cands = list(dict.fromkeys(candidates))
    limit = 1 if len(name) <= 4 else 2
    scored = sorted((_edits(name, c), c) for c in cands if c != name)
    near = [c for dist, c in scored if dist <= limit]
    if fuzzy:
        near += [c for c in difflib.get_close_matches(name, cands, n=3, cutoff=0.75) if c != name]
    return list(dict.fromkeys(near))


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` or ``""``."""
    near = close_matches(name, candidates)
    return f" (did you mean {' or '.join(repr(c) for c in near[:2])}?)" if near else ""


_KIND_TEXT = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "bool": "True or False",
    "patterns": "a list of glob patterns, e.g. ['head.*']",
    "options": "a dict of option names to values, e.g. dict(keep_fraction=0.3)",
}


def _unquoted_hint(key: str, value: Any, kind: str) -> str:
    """How to write a quoted value the schema wants unquoted (``'False'``, ``'8'``, a glob)."""
    if not isinstance(value, str) or kind == "str":
        return ""
    if kind == "patterns":
        return f" Write a single pattern as a list: lbp.{key}=['{value}']."
    text = value.strip()
    meant = {"true": "True", "false": "False"}.get(text.lower()) if kind == "bool" else None
    if kind in ("int", "number"):
        try:
            meant = str(int(text)) if kind == "int" else str(float(text)).removesuffix(".0")
        except ValueError:
            meant = None
    if meant is None:
        return ""
    return f" Write lbp.{key}={meant} (no quotes)."


def _check_lbp_value(key: str, value: Any, spec: LBPKey) -> None:
    if value is None:
        if spec.nullable:
            return
        raise LBPConfigError(f"lbp.{key}=None: expected {_KIND_TEXT[spec.kind]} ({spec.help})")
    kind = spec.kind
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "patterns": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
        "options": isinstance(value, Mapping) and all(isinstance(k, str) for k in value),
    }[kind]
    if not ok:
        expected = _KIND_TEXT[kind] + (" or None" if spec.nullable else "")
        raise LBPConfigError(
            f"lbp.{key}={value!r} is a {type(value).__name__}, expected {expected} "
            f"(lbp.{key}: {spec.help}).{_unquoted_hint(key, value, kind)}"
        )
    if spec.choices is not None and value not in spec.choices:
        raise LBPConfigError(
            f"lbp.{key}={value!r}{did_you_mean(str(value), map(str, spec.choices))}; choose "
            f"one of {list(spec.choices)}"
        )
    if spec.minimum is not None:
        low = value <= spec.minimum if spec.positive else value < spec.minimum
        if low or not math.isfinite(value):
            bound = f"{'>' if spec.positive else '>='} {spec.minimum}"
            raise LBPConfigError(f"lbp.{key}={value!r}: must be finite and {bound} ({spec.help})")


class _Settings(Mapping):
    """A read-only mapping (unlike ``MappingProxyType`` it deep-copies and pickles, as
    ``model.lbp_info`` must: tools deep-copy built models). A nested dict (``options``) is
    handed out as a copy: the parsed block is shared by every parse of the same content."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        value = self._items[key]
        return copy.deepcopy(value) if isinstance(value, dict) else value

    def __iter__(self) -> Any:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


@dataclass(frozen=True)
class LBPBlock:
    """A config's ``lbp`` block, parsed and validated once (:func:`parse_lbp_block`).

    The typed configs are built here and flow unchanged into the preset's rules and from
    there into the converted layers: ``lbp`` is the very object each LBP-WHT layer holds as
    ``lbp_config`` (``lbp.r`` -> ``LBPConfig.radius``; for ``select='lhe'``, ``lbp.rank`` ->
    ``LBPConfig.num_bases``), ``lora`` the per-projection LoRA config (``lbp.lora_rank`` /
    ``lbp.lora_alpha`` -> ``LoRAConfig.rank`` / ``alpha``; fused qkv layers get a copy with
    both times 3).

    Attributes:
        method, model, scope, variant, lora_train: as in the block.
        preset_name: ``lbp.preset`` or, unset, ``lbp.model``.
        lbp: None for methods without WHT bases.
        lora: None for methods without LoRA adapters.
        options: a successor method's typed core config (``LoRAFAConfig``,
            ``VeLoRAConfig``, ``WTACRSConfig``) from ``lbp.options`` (LoRA-FA: from
            ``lbp.lora_rank`` / ``lbp.lora_alpha``); None for the other methods.
        settings: the whole block completed with :data:`LBP_DEFAULTS` (read-only), for the
            keys the hooks and tools read (``lhe_iters``, ``reinit_keys``, ...).
    """

    method: str
    model: str
    preset_name: str
    scope: str
    variant: str
    lora_train: str
    lbp: LBPConfig | None
    lora: LoRAConfig | None
    settings: Mapping[str, Any]
    options: Any = None

    @property
    def num_bases(self) -> int | None:
        """R, the number of WHT bases (None for methods without LBP-WHT)."""
        return None if self.lbp is None else self.lbp.num_bases


def _lbp_config(out: Mapping[str, Any], spec: Any) -> LBPConfig | None:
    """The block's :class:`LBPConfig`; its construction validates selection, r / rank, order
    and padding together (the core's messages, prefixed with the block keys)."""
    if not spec.has_bases:
        return None
    lhe = out["select"] == "lhe"
    if lhe and not spec.lhe:
        raise LBPConfigError(
            f"lbp.select='lhe' is not available with lbp.method={spec.id!r} (use an LP selection)"
        )
    size = dict(num_bases=out["rank"]) if lhe else dict(radius=out["r"])
    try:
        return LBPConfig(
            selection=out["select"], order=out["order"], padding=out["padding"], **size
        )
    except ValueError as err:
        n2 = out["order"] ** 2
        if lhe and (out["rank"] is None or out["rank"] > n2):
            raise LBPConfigError(
                f"lbp.select='lhe' needs lbp.rank, an int in [1, {n2}]; got {out['rank']!r}"
            ) from err
        raise LBPConfigError(f"lbp.select/{'rank' if lhe else 'r'}/order: {err}") from err


#: The block keys of a method with adapters (LoRA's, LoRA-FA's), outside ``lbp.options``.
_ADAPTER_KEYS = ("lora_rank", "lora_alpha")


def _successor_config(out: Mapping[str, Any], spec: Any) -> Any:
    """The typed core config of a successor method from ``lbp.options`` (keys of its core rule;
    LoRA-FA's rank and alpha are ``lbp.lora_rank`` / ``lbp.lora_alpha``, as LoRA's)."""
    given = dict(out["options"])
    if not spec.has_options:
        if given:
            raise LBPConfigError(
                f"lbp.options={given!r}: lbp.method={spec.id!r} takes no options (they are "
                "for the successor methods); remove lbp.options"
            )
        return None
    cls, names = SUCCESSOR_OPTIONS[spec.conversion]
    if spec.has_adapters:
        for key in _ADAPTER_KEYS:
            if key in given:
                raise LBPConfigError(f"lbp.options.{key}: set lbp.{key} instead (as for LoRA)")
        given.update(lora_rank=out["lora_rank"], lora_alpha=out["lora_alpha"])
    for key in given:
        if key not in names:
            valid = [k for k in names if not (spec.has_adapters and k in _ADAPTER_KEYS)]
            raise LBPConfigError(
                f"lbp.options: unknown key {key!r} for lbp.method={spec.id!r}"
                f"{did_you_mean(key, valid)}; valid keys: {valid}"
            )
    try:
        return cls(**{names[k]: v for k, v in given.items()})
    except (TypeError, ValueError) as err:
        raise LBPConfigError(f"lbp.options (lbp.method={spec.id!r}): {err}") from err


#: Blocks parsed so far, by content (:func:`_content_key`): the launcher, the builder, the
#: runner, the hooks and the run record all ask for the same block; it is parsed once.
_PARSED: dict[Any, LBPBlock] = {}


def _content_key(value: Any) -> Any:
    """A hashable key equal for equal contents of the same types (1, 1.0 and True differ, as
    the schema's checks do; a list is not a tuple); TypeError for unhashable leaves."""
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return (Mapping, tuple((repr(k), type(k), _content_key(v)) for k, v in items))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_content_key(v) for v in value))
    hash(value)
    return (type(value), value)


def parse_lbp_block(lbp: Mapping[str, Any] | None) -> LBPBlock:
    """Check the ``lbp`` block against :data:`LBP_SCHEMA`, complete it with the defaults and
    build its typed configs, once per content: a block equal to one parsed before (or to its
    completed ``settings``) returns that same frozen :class:`LBPBlock`.

    Every key is checked by type (no string is converted), allowed values and range, then
    the combinations (LHE needs ``rank``; ``r`` fits ``order``: checked by constructing the
    :class:`~lbp_wht.config.LBPConfig`). Whether the model has a preset is
    :func:`check_lbp_preset`'s question.

    Raises:
        LBPConfigError: naming the key: unknown keys (with a close match and the valid keys),
            wrong types, unknown values, missing fields.
    """
    try:
        key = _content_key(lbp)
    except TypeError:  # an unhashable value: parsed (and refused by the schema) every time
        return _parse(lbp)
    block = _PARSED.get(key)
    if block is None:
        block = _parse(lbp)
        if len(_PARSED) > 256:
            _PARSED.clear()
        # a block whose completed settings were parsed before gets that object
        block = _PARSED.setdefault(_content_key(block.settings), block)
        _PARSED[key] = block
    return block


def _parse(lbp: Mapping[str, Any] | None) -> LBPBlock:
    if lbp is None:
        raise LBPConfigError(
            "the config has no `lbp = dict(method=..., model=..., scope=...)` block; "
            "inherit configs/_base_/method.py and set lbp.method, lbp.model and lbp.scope"
        )
    if not isinstance(lbp, Mapping):
        raise LBPConfigError(f"lbp must be a dict of settings, got {type(lbp).__name__}: {lbp!r}")
    lbp = dict(lbp)
    unknown = sorted(set(lbp) - set(LBP_DEFAULTS))
    if unknown:
        hints = "; ".join(f"lbp.{k}{did_you_mean(str(k), LBP_DEFAULTS)}" for k in unknown)
        raise LBPConfigError(
            f"unknown key(s) in the `lbp` block: {hints}. Valid keys: {sorted(LBP_DEFAULTS)}"
        )
    out = {**copy.deepcopy(LBP_DEFAULTS), **lbp}
    for key in ("method", "model"):
        if out[key] is None:
            raise LBPConfigError(f"lbp.{key} is required ({LBP_SCHEMA[key].help})")
    for key, value in out.items():
        _check_lbp_value(key, value, LBP_SCHEMA[key])
    spec = method_spec(out["method"])
    if out["scope"] not in spec.scopes:
        raise LBPConfigError(
            f"lbp.method={spec.id!r} with lbp.scope={out['scope']!r}: {spec.label} "
            f"{spec.scope_note}; use lbp.scope={' or '.join(map(repr, spec.scopes))}"
        )
    lbp_config = _lbp_config(out, spec)
    lora_config = None
    if spec.has_lora:  # lora_rank / lora_alpha are checked by the schema above
        lora_config = LoRAConfig(rank=out["lora_rank"], alpha=out["lora_alpha"])
    options = _successor_config(out, spec)
    out["options"] = dict(out["options"])
    out["reinit_keys"] = tuple(out["reinit_keys"])
    out["drop_keys"] = tuple(out["drop_keys"])
    return LBPBlock(
        method=out["method"],
        model=out["model"],
        preset_name=out["preset"] or out["model"],
        scope=out["scope"],
        variant=out["variant"],
        lora_train=out["lora_train"],
        lbp=lbp_config,
        lora=lora_config,
        settings=_Settings(out),
        options=options,
    )


def validate_lbp_cfg(lbp: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``lbp`` block checked and completed with the defaults, as a plain dict: a copy of
    the ``settings`` of :func:`parse_lbp_block` (same checks, same errors)."""
    return copy.deepcopy(dict(parse_lbp_block(lbp).settings))


def preset_for_block(block: LBPBlock) -> Any:
    """The :class:`~lbp_wht.experiments.presets.Preset` of a parsed block: its rules carry
    ``block.lbp`` / ``block.lora`` themselves (``lbp=`` / ``lora=`` rule options). The parse
    checked the method's arguments; ``preset_of`` checks only the model (and LoSA's taps)."""
    return _presets.preset_of(
        block.preset_name,
        method_spec(block.method),
        block.scope,
        block.lbp,
        block.lora,
        block.options,
        block.lora_train,
        block.variant,
    )


def check_lbp_preset(lbp: Mapping[str, Any]) -> None:
    """Refuse an ``lbp`` block whose model (or ``lbp.preset``) has no preset, before anything is
    built (the builder would refuse it too, after building the model).

    Raises:
        LBPConfigError: naming the key, with a close match and the preset names.
    """
    preset = lbp.get("preset") or lbp.get("model")
    known = preset_models()  # read from the model registry now (a model added is one entry)
    if preset not in known:
        which = "lbp.preset" if lbp.get("preset") else "lbp.model"
        raise LBPConfigError(
            f"{which}={preset!r} has no preset{did_you_mean(str(preset), known)}; "
            f"choose one of {list(known)} (or set lbp.preset to one of them)"
        )


def uses_lbp(method: str) -> bool:
    """Whether ``method`` puts LBP-WHT layers (low-rank backward) into the model."""
    return method_spec(method).has_bases


def lbp_rank(lbp: Mapping[str, Any]) -> int | None:
    """R, the number of WHT bases of the method (None for full BP and plain LoRA)."""
    return parse_lbp_block(lbp).num_bases


def lbp_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The LBP-WHT layers of ``model`` (anything with ``set_bases`` and ``record_spectrum``)."""
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP & co.
        model = model.module
    return {
        n: m
        for n, m in model.named_modules()
        if hasattr(m, "set_bases") and hasattr(m, "record_spectrum")
    }


def _input_requires_grad(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad:
        if torch.is_grad_enabled():
            return (x.detach().requires_grad_(True), *args[1:])
    return None


def always_compute_input_grad(modules: Iterable[nn.Module]) -> list[Any]:
    """Make each module compute the gradient of its input in training, even where nothing
    before it trains (``lbp.variant='authors'``: the authors' LBP-WHT op always returned
    ``g_x``, so the first trained layer of a partially trained model paid for one).

    A forward pre-hook hands the module a grad-requiring copy (``detach().requires_grad_()``)
    of a first positional input that requires no grad, while grad mode is on; the gradient
    it receives is discarded, training is unchanged and only the cost is the authors'.

    Returns:
        The hook handles (``.remove()`` undoes it).
    """
    return [m.register_forward_pre_hook(_input_requires_grad) for m in modules]


def LBPWHTModel(  # noqa: N802 - registry type name
    model: dict, lbp: dict, data_preprocessor: dict | None = None
) -> nn.Module:
    """Build ``model`` (an mmpretrain / mmseg model config) with the ``lbp`` method injected.

    Steps, all before the Runner wraps the model or builds the optimizer:
    1. build the model from the registry of the current default scope;
    2. ``convert(model, preset.rules)`` (Linear / 1x1 Conv2d -> LBP / LoRA layers that share
       the original parameters, so state-dict keys are unchanged);
    3. ``lbp.method='losa'``: attach the LoSA side network (:func:`attach_side_network`);
       ``freeze(model, preset.trainable)`` (partial: last stage + head; LoRA: adapters; LoSA:
       the side network ``losa.*`` + head);
    4. BatchNorm on running statistics (:func:`lbp_wht.keep_batchnorm_eval`) when the preset says so;
    5. ``lbp.variant='authors'`` with LBP-WHT: :func:`always_compute_input_grad` on the LBP-WHT
       layers.

    ``data_preprocessor``: the Runner puts a top-level ``data_preprocessor`` config on the
    outer model dict; it belongs to the inner model (``setdefault``, as the Runner does).

    Returns the converted model itself (no wrapper, no key prefix), with ``model.lbp_info``
    (dict: cfg, rank, preset, report, trainable) for hooks and tools.
    """
    from lbp_wht import convert, freeze

    block = parse_lbp_block(lbp)
    cfg = copy.deepcopy(dict(block.settings))  # the parse is shared (memoised): a copy
    model = copy.deepcopy(model)
    if data_preprocessor is not None:
        model.setdefault("data_preprocessor", data_preprocessor)
    net = MODELS.build(model)
    preset_name = block.preset_name
    preset = preset_for_block(block)
    try:  # refuse attention modules whose projections a conversion would silently bypass
        from .models import assert_convertible
    except ImportError:  # pragma: no cover - models.py imports mmseg; classification-only envs
        assert_convertible = None
    if assert_convertible is not None and preset.rules:
        assert_convertible(net)
    # This builder warns about train-mode BatchNorm itself (below, also into the log). The
    # dry forwards that establish every layer's map run on an image of the model's size.
    example = example_image(cfg, model) if preset.rules else None
    report = convert(net, preset.rules, batchnorm_guard=False, example_input=example)
    if method_spec(cfg["method"]).side_network:
        attach_side_network(net, preset, cfg, model)
    trainable = freeze(net, preset.trainable)
    if preset.always_grad_x:
        always_compute_input_grad(lbp_layers(net).values())
    norm_eval = preset.norm_eval if cfg["norm_eval"] is None else bool(cfg["norm_eval"])
    if norm_eval:  # survives model.train() and revert_sync_batchnorm (a hook on the root)
        keep_batchnorm_eval(net)
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
        block=block,
        lbp_config=block.lbp,  # the object every LBP-WHT layer of the model holds
        lora_config=block.lora,
        preset=preset_name,
        variant=block.variant,
        rank=block.num_bases,
        norm_eval=norm_eval,
        rules=list(preset.rules),
        trainable_patterns=list(preset.trainable),
        report=report,
        trainable=trainable,
    )
    print_log(
        f"lbp: method={cfg['method']} scope={cfg['scope']} model={cfg['model']} "
        f"rank={block.num_bases} norm_eval={norm_eval}; {len(report)} modules converted, "
        f"{len(trainable)} trainable parameter tensors",
        logger="current",
    )
    return net


def attach_side_network(
    net: nn.Module, preset: Any, cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]
) -> nn.Module:
    """``lbp.method='losa'``: attach LoSA's side network to the built model (before freezing,
    so ``losa.*`` is among the parameters the optimizer gets).

    The taps are the blocks of ``preset.losa_containers`` (:func:`lbp_wht.losa.find_blocks`),
    the corrected feature ``preset.losa_output``; the feature shapes come from one no-grad
    forward of a zero image at the model's input size (:data:`~lbp_wht.experiments.models.MODEL_SPECS`
    ``img_size``; channels from ``backbone.in_channels``, else 3). Returns the side network.
    """
    from lbp_wht.losa import attach_losa, find_blocks

    blocks = [b for c in preset.losa_containers for b in find_blocks(net, c)]
    what = "lbp.method='losa' (the side network's token mixer is sized from it)"
    example = example_image(cfg, model_cfg, what)
    return attach_losa(
        net, blocks, preset.losa_output, rank=cfg["losa_rank"], example_inputs=example
    )


def example_image(cfg: dict, model_cfg: dict, what: str = "lbp") -> Any:
    """A zero ``(1, C, S, S)`` image at the model's input size: side ``S`` from
    :data:`~lbp_wht.experiments.models.MODEL_SPECS` ``img_size``, channels from the config's
    ``backbone.in_channels`` (else 3). :func:`lbp_wht.convert` traces every layer's map on it;
    LoSA sizes its side network from it."""
    import torch

    info = MODEL_SPECS.get(cfg["model"]) or MODEL_SPECS.get(cfg["preset"] or "")
    if info is None:
        raise LBPConfigError(
            f"{what}: no input size known for lbp.model={cfg['model']!r}; use a model of "
            "lbp_wht.experiments.models.MODEL_SPECS"
        )
    channels = int((model_cfg.get("backbone") or {}).get("in_channels", 3))
    return torch.zeros(1, channels, info.img_size, info.img_size)


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
