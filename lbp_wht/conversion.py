"""Model conversion as data, peft-style: ``convert`` / ``unconvert`` / ``freeze`` / summaries.

A rule is a dict ``dict(target="<glob>" | "all-linear", method="lbp" | "lora" | "lbp_lora" |
"lora_fa" | "velora" | "wta_crs" | "hot" | "instant", **options)``. The glob (``fnmatch``, ``*`` also matches dots) runs over the qualified names of
``model.named_modules()``. ``"all-linear"`` targets every ``nn.Linear`` and 1x1 ``nn.Conv2d``
and skips, with a report line each, what cannot be converted: other convolutions (patch
embeddings, depthwise and strided convs), the task head (``get_classifier()`` / ``head`` /
``classifier`` ...), layers the model-family adapters know are not on a map, and names matching
the rule's ``exclude`` globs.

Rule options (each has one name; see :class:`~lbp_wht.config.LBPConfig` and
:class:`~lbp_wht.config.LoRAConfig` for meaning and defaults):

===================  =====================================================================
``exclude``          globs of module names the rule leaves alone
LBP-WHT              ``selection``, ``radius``, ``num_bases``, ``bases``, ``order``,
                     ``padding``, ``impl`` (or ``lbp=LBPConfig(...)``)
LoRA                 ``lora_rank``, ``lora_alpha``, ``lora_dropout`` (or ``lora=LoRAConfig``)
LoRA-FA              ``lora_rank``, ``lora_alpha`` (or ``lora_fa=LoRAFAConfig(...)``)
VeLoRA               ``subtoken_size`` (or ``velora=VeLoRAConfig(...)``)
WTA-CRS              ``keep``, ``keep_fraction``, ``winner_fraction`` (or
                     ``wta_crs=WTACRSConfig(...)``)
HOT                  ``hla_block``, ``hla_rank``, ``act_bits``, ``grad_bits``, ``hq_block``,
                     ``hq_scale`` (or ``hot=HOTConfig(...)``)
INSTANT              ``instant_rank``, ``calibration_batches``, ``recalibrate_every`` (or
                     ``instant=INSTANTConfig(...)``)
geometry             ``layout``, ``prefix_tokens``, ``hw`` (rarely needed: the dry forward
                     on ``example_input`` and the adapters of :mod:`lbp_wht.adapters` find them)
===================  =====================================================================

Each option has exactly one name: the presets' old spellings (``select``, ``r``, ``rank``
-- once the LoRA rank for ``lora`` / ``lbp_lora`` but the number of bases for ``lbp`` --,
``alpha``, ``dropout``, ``lhe_rank``, ``indices``, ``extra_tokens``) are refused, with the
canonical name in the error. The harness passes typed configs (``lbp=``, ``lora=``).
:meth:`Rule.to_dict` gives a rule in these names, which is what
:attr:`ConversionReport.rules` and the saved rules of :mod:`lbp_wht.saving` hold.

``convert`` returns a :class:`ConversionReport` (what was replaced, what was skipped and why).
``unconvert`` puts plain ``nn.Linear`` / ``nn.Conv2d`` back (LoRA merged or dropped), with
the original state-dict keys.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from .adapters import plan_geometry, remove_geometry_hooks
from .callsite import redirect_call_sites, remove_call_sites
from .config import (
    HOTConfig,
    INSTANTConfig,
    LBPConfig,
    LoRAConfig,
    LoRAFAConfig,
    VeLoRAConfig,
    WTACRSConfig,
)
from .geometry import MapGeometry, MapSource, TracedMapSource, record_input_size
from .hot import HOTConv2d, HOTLinear
from .instant import INSTANTConv2d, INSTANTLinear, INSTANTMixin
from .layers import (
    BatchNormGuard,
    ConvertedLayer,
    LBPConv2d,
    LBPLinear,
    LBPMixin,
    conv1x1_problem,
    shell_like,
)
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear, LoRAMixin
from .lora_fa import LoRAFAConv2d, LoRAFALinear
from .tracing import LayerTrace, call_model, preserved, trace_layers
from .velora import VeLoRAConv2d, VeLoRALinear, VeLoRAMixin
from .wta_crs import WTACRSConv2d, WTACRSLinear

__all__ = [
    "convert",
    "unconvert",
    "freeze",
    "trainable_summary",
    "keep_batchnorm_eval",
    "parse_rule",
    "Rule",
    "ConversionReport",
    "Replacement",
    "Skipped",
    "TrainableSummary",
    "CONVERSIONS",
    "ALL_LINEAR",
    "SUCCESSOR_OPTIONS",
]

#: method -> (class for nn.Linear, class for 1x1 nn.Conv2d)
CONVERSIONS: dict[str, tuple[type, type]] = {
    "lbp": (LBPLinear, LBPConv2d),
    "lora": (LoRALinear, LoRAConv2d),
    "lbp_lora": (LBPLoRALinear, LBPLoRAConv2d),
    "lora_fa": (LoRAFALinear, LoRAFAConv2d),
    "velora": (VeLoRALinear, VeLoRAConv2d),
    "wta_crs": (WTACRSLinear, WTACRSConv2d),
    "hot": (HOTLinear, HOTConv2d),
    "instant": (INSTANTLinear, INSTANTConv2d),
}
#: The target that selects every convertible layer.
ALL_LINEAR = "all-linear"

_LBP_KEYS = ("selection", "radius", "num_bases", "bases", "order", "padding", "impl")
_LORA_KEYS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
_GEOMETRY_KEYS = ("layout", "prefix_tokens", "hw")
_COMMON_KEYS = ("target", "method", "exclude")
#: The successor methods: method -> (config class, rule key -> config field). Each also takes
#: its config object under the method's own name (``velora=VeLoRAConfig(...)``).
SUCCESSOR_OPTIONS: dict[str, tuple[type, dict[str, str]]] = {
    "lora_fa": (LoRAFAConfig, {"lora_rank": "rank", "lora_alpha": "alpha"}),
    "velora": (VeLoRAConfig, {"subtoken_size": "subtoken_size"}),
    "wta_crs": (
        WTACRSConfig,
        {"keep": "keep", "keep_fraction": "keep_fraction", "winner_fraction": "winner_fraction"},
    ),
    "hot": (
        HOTConfig,
        {k: k for k in ("hla_block", "hla_rank", "act_bits", "grad_bits", "hq_block", "hq_scale")},
    ),
    "instant": (
        INSTANTConfig,
        {"instant_rank": "rank", **{k: k for k in ("calibration_batches", "recalibrate_every")}},
    ),
}
#: Methods that need no map (their layers work on token rows, wherever they are).
_MAPLESS = ("lora", *SUCCESSOR_OPTIONS)
#: The configs each method's layer takes, in ``from_module``'s order (a successor: its options).
_METHOD_CONFIGS = {
    "lora": lambda r: (r.lora,),
    "lbp": lambda r: (r.lbp,),
    "lbp_lora": lambda r: (r.lbp, r.lora),
}


def _renamed(key: str, method: str) -> str | None:
    """The canonical name of an old (preset) spelling of a rule key, for the error message."""
    names = {"select": "selection", "r": "radius", "indices": "bases"}
    names.update(extra_tokens="prefix_tokens", lhe_rank="num_bases", alpha="lora_alpha")
    names.update(dropout="lora_dropout", rank="num_bases" if method == "lbp" else "lora_rank")
    return names.get(key)


def _valid_keys(method: str) -> list[str]:
    keys = list(_COMMON_KEYS)
    if method in ("lbp", "lbp_lora"):
        keys += [*_LBP_KEYS, *_GEOMETRY_KEYS, "lbp"]
    if method in ("lora", "lbp_lora"):
        keys += [*_LORA_KEYS, "lora"]
    if method in SUCCESSOR_OPTIONS:
        keys += [*SUCCESSOR_OPTIONS[method][1], method]
    return keys


@dataclass(frozen=True)
class Rule:
    """A validated conversion rule (see the module docstring)."""

    index: int
    target: str
    method: str
    exclude: tuple[str, ...] = ()
    lbp: LBPConfig | None = None
    lora: LoRAConfig | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    #: the config of a successor method (LoRAFAConfig, VeLoRAConfig, WTACRSConfig, HOTConfig,
    #: INSTANTConfig)
    options: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The rule in canonical keys, JSON-ready; ``parse_rule`` of it gives the same rule."""
        d: dict[str, Any] = dict(target=self.target, method=self.method)
        if self.exclude:
            d["exclude"] = list(self.exclude)
        if self.lbp is not None:
            lbp = self.lbp.to_dict()
            if self.lbp.selection != "explicit":
                lbp.pop("bases")
            if self.lbp.selection != "lhe":  # derived from the selection
                lbp.pop("num_bases")
            d.update({k: v for k, v in lbp.items() if v is not None})
        if self.lora is not None:
            d.update({k: getattr(self.lora, f) for k, f in _LORA_KEYS.items()})
        if self.options is not None:
            names = SUCCESSOR_OPTIONS[self.method][1]
            values = {k: getattr(self.options, f) for k, f in names.items()}
            # None is dropped where it is the default (WTA-CRS keep), kept where it is a
            # choice (HOT act_bits=None: no quantisation), so that the rule round-trips.
            defaults = {f.name: f.default for f in fields(self.options)}
            d.update(
                {k: v for k, v in values.items() if v is not None or defaults[names[k]] is not None}
            )
        for k, v in self.geometry.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d


def parse_rule(rule: Mapping[str, Any], index: int = 0) -> Rule:
    """Validate one rule dict and return it typed; errors name the rule and the key."""
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, Mapping):
        raise TypeError(
            f"rule {index} must be a dict(target=..., method=..., ...), got "
            f"{type(rule).__name__} {rule!r}"
        )
    if "target" not in rule or "method" not in rule:
        raise ValueError(f"rule {index} {dict(rule)} needs 'target' (a glob) and 'method'")
    target, method = rule["target"], rule["method"]
    if not isinstance(target, str) or not target:
        raise TypeError(f"rule {index}: target must be a non-empty glob string, got {target!r}")
    if not isinstance(method, str) or method not in CONVERSIONS:
        raise ValueError(
            f"rule {index}: unknown method {method!r}; choose one of {list(CONVERSIONS)}"
        )
    valid = _valid_keys(method)
    opts: dict[str, Any] = {}
    for key, value in rule.items():
        if key in ("target", "method"):
            continue
        if key not in valid:
            others = [m for m in CONVERSIONS if key in _valid_keys(m)]
            renamed = _renamed(key, method)
            if renamed in valid:
                hint = f" (the old spelling of {renamed!r}: write {renamed}=...)"
            elif others:
                hint = f" (it applies to method {' / '.join(map(repr, others))})"
            else:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"rule {index} (target={target!r}, method={method!r}): unknown key {key!r}"
                f"{hint}; valid keys: {sorted(valid)}"
            )
        opts[key] = value
    exclude = opts.pop("exclude", ())
    if isinstance(exclude, str):
        exclude = (exclude,)
    if not isinstance(exclude, list | tuple) or not all(isinstance(e, str) for e in exclude):
        raise TypeError(f"rule {index}: exclude must be a list of globs, got {exclude!r}")
    where = f"rule {index} (target={target!r}, method={method!r})"
    try:
        lbp = lora = None
        if method in ("lbp", "lbp_lora"):
            lbp = _config_from(opts, "lbp", LBPConfig, {k: k for k in _LBP_KEYS}, where)
        if method in ("lora", "lbp_lora"):
            lora = _config_from(opts, "lora", LoRAConfig, _LORA_KEYS, where)
        options = None
        if method in SUCCESSOR_OPTIONS:
            cls, names = SUCCESSOR_OPTIONS[method]
            options = _config_from(opts, method, cls, names, where)
        geometry = {k: opts.pop(k) for k in _GEOMETRY_KEYS if k in opts}
        if geometry:
            MapGeometry(**{**geometry, "hw": geometry.get("hw")})  # validate now
            if geometry.get("hw") is not None:
                geometry["hw"] = tuple(int(v) for v in geometry["hw"])
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from err
    return Rule(index, target, method, tuple(exclude), lbp, lora, geometry, options)


def _config_from(
    opts: dict[str, Any], obj_key: str, cls: type, names: Mapping[str, str], where: str
) -> Any:
    flat = {field_: opts.pop(key) for key, field_ in names.items() if key in opts}
    if flat.get("bases") is not None:
        flat["bases"] = tuple(tuple(b) for b in flat["bases"])
    given = opts.pop(obj_key, None)
    if given is not None:
        if not isinstance(given, cls):
            raise TypeError(f"{obj_key}= must be a {cls.__name__}, got {type(given).__name__}")
        if flat:
            raise ValueError(
                f"give either {obj_key}={cls.__name__}(...) or {sorted(flat)}, not both"
            )
        return given
    return cls(**flat)


@dataclass
class Replacement:
    name: str
    old_type: str
    new_type: str
    method: str
    shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    geometry: str = ""
    #: where the map comes from: "rule", "adapter", "example input" or "nchw input" (a 1x1
    #: conv named by a rule without a dry forward); "no map needed" for plain LoRA
    map_source: str = ""
    #: the module whose forward applies this layer's weight itself, routed through the layer
    call_site: str | None = None
    note: str = ""


@dataclass
class Skipped:
    name: str
    reason: str
    rule: int


@dataclass
class ConversionReport:
    """What :func:`convert` replaced (:class:`Replacement`) and skipped (:class:`Skipped`)."""

    replaced: list[Replacement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    #: the example input of the dry forwards (or why there was none)
    example: str = ""

    def __len__(self) -> int:
        return len(self.replaced)

    def names(self, method: str | None = None) -> list[str]:
        return [r.name for r in self.replaced if method is None or r.method == method]

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.new_type for r in self.replaced))

    def __str__(self) -> str:
        lines = []
        if self.replaced:
            width = max(len(r.name) for r in self.replaced)
            lines.append(f"{'module':<{width}}  {'from':<8} {'to':<14} {'weight':<18} map (source)")
            for r in self.replaced:
                where = r.geometry or "-"
                extra = f"; called by {r.call_site}" if r.call_site is not None else ""
                lines.append(
                    f"{r.name:<{width}}  {r.old_type:<8} {r.new_type:<14} "
                    f"{str(r.shape):<18} {where} ({r.map_source}{extra})"
                )
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items()))
        lines.append(f"{len(self.replaced)} modules replaced" + (f": {summary}" if summary else ""))
        for s in self.skipped:
            lines.append(f"skipped {s.name}: {s.reason}")
        if self.example:
            lines.append(f"example input: {self.example}")
        return "\n".join(lines)


def _closest(pattern: str, names: Iterable[str], n: int = 5) -> list[str]:
    names = list(names)
    literal = pattern.replace("*", "").replace("?", "")
    close = difflib.get_close_matches(literal, names, n=n, cutoff=0.3)
    if not close:  # fall back to names sharing the longest literal prefix
        prefix = pattern.split("*")[0]
        while prefix and not close:
            close = [m for m in names if m.startswith(prefix)][:n]
            prefix = prefix[:-1]
    return close


_HEAD_NAMES = (
    "head", "head_dist", "classifier", "fc", "lm_head", "cls_head", "cls_classifier",
    "distillation_classifier",
)  # fmt: skip


def _head_prefixes(model: nn.Module) -> set[str]:
    """Qualified names of the task head(s): what ``all-linear`` never converts."""
    ids = set()
    for getter in ("get_classifier", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                got = fn()
            except Exception:  # noqa: BLE001 - a model's own getter may need set-up; skip it
                got = None
            for m in got if isinstance(got, tuple | list) else [got]:
                if isinstance(m, nn.Module):
                    ids.add(id(m))
    out = {n for n, m in model.named_modules() if id(m) in ids and n}
    out |= {n for n, _ in model.named_children() if n in _HEAD_NAMES}
    return out


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


#: Where a converted layer's map comes from (``Replacement.map_source``).
MAP_SOURCES = ("rule", "adapter", "example input", "nchw input")


@dataclass
class _Decision:
    geometry: MapGeometry | None  # None: plain LoRA, no map needed
    source: str
    parent: str | None = None  # the module whose forward applies the weight itself
    note: str = ""
    map_source: MapSource | None = None  # a traced token map that follows the input size


def _example(model: nn.Module, example_input: Any) -> tuple[Any, str, bool]:
    """``(example or None, description, given by the user)``; ``"auto"``: a seeded normal
    ``(1, c, h, w)`` input on the model's device and dtype, of the size the model declares (a
    timm patch embedding's ``img_size`` wins over ``pretrained_cfg['input_size']``)."""
    if example_input is None:
        return None, "none (example_input=None)", False
    if not isinstance(example_input, str):
        return example_input, _describe_example(example_input), True
    if example_input != "auto":
        raise ValueError(
            f"convert: example_input must be a tensor, a tuple of arguments, a dict of "
            f"keyword arguments, 'auto' or None, got {example_input!r}"
        )
    cfg, pcfg = getattr(model, "config", None), getattr(model, "pretrained_cfg", None)
    if getattr(cfg, "image_size", None) is not None and hasattr(cfg, "num_channels"):
        size, c, where = cfg.image_size, cfg.num_channels, "config.image_size"
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    elif isinstance(pcfg, Mapping) and "input_size" in pcfg:
        (c, h, w), where = pcfg["input_size"], "pretrained_cfg input_size"
        img = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img is not None and len(img) == 2 and all(isinstance(v, int) for v in img):
            h, w = img
    else:
        return None, "none (the model declares no input size; pass example_input=)", False
    x = torch.randn(1, int(c), int(h), int(w), generator=torch.Generator().manual_seed(0))
    p = next(iter(model.parameters()), None)
    ex = x if p is None else x.to(device=p.device, dtype=p.dtype)
    if where == "config.image_size":
        ex = dict(pixel_values=ex)
    return ex, f"{_describe_example(ex)} from the model's {where}", False


def _describe_example(ex: Any) -> str:
    if isinstance(ex, torch.Tensor):
        return f"tensor {tuple(ex.shape)}"
    if isinstance(ex, Mapping):
        return "kwargs(" + ", ".join(f"{k}={_describe_example(v)}" for k, v in ex.items()) + ")"
    if isinstance(ex, tuple):
        return "args(" + ", ".join(_describe_example(v) for v in ex) + ")"
    return type(ex).__name__


def example_spec(example: Any) -> Any:
    """A JSON description of an example input (tensors by shape and dtype, no values; plain
    numbers, strings and None by value)."""
    if example is None or isinstance(example, bool | int | float | str):
        return dict(value=example)
    if isinstance(example, torch.Tensor):
        return dict(shape=list(example.shape), dtype=str(example.dtype).removeprefix("torch."))
    if isinstance(example, dict):
        return dict(kwargs={k: example_spec(v) for k, v in example.items()})
    if isinstance(example, tuple | list):
        return dict(args=[example_spec(v) for v in example])
    raise TypeError(
        f"cannot describe an example input of type {type(example).__name__}: example_input "
        "takes tensors, tuples, lists and dicts of them, numbers, strings and None"
    )


def example_from_spec(spec: Any, device: torch.device | None = None) -> Any:
    """A zero example input, on ``device``, of the shapes :func:`example_spec` described."""
    if "value" in spec:
        return spec["value"]
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]), device=device)
    if "kwargs" in spec:
        return {k: example_from_spec(v, device) for k, v in spec["kwargs"].items()}
    return tuple(example_from_spec(v, device) for v in spec["args"])


def _decide(
    model: nn.Module,
    name: str,
    module: nn.Module,
    rule: Rule,
    adapted: MapGeometry | str | None,
    trace: LayerTrace | None,
) -> _Decision | str:
    """How ``name`` converts (its map, where the map comes from, its call site) or why not."""
    conv = isinstance(module, nn.Conv2d)
    parent = None
    if trace is not None:
        calls = trace.calls
        if not calls:
            return "its forward never runs on the example input (and no op reads its weight)"
        for c in calls:
            if c.op not in ("linear", "conv2d"):
                return f"{c.geometry} in {c.parent!r}, where a converted layer cannot take over"
        parents = {c.parent for c in calls if c.parent is not None}
        if len(parents) > 1:
            return f"its weight is applied directly by several modules ({sorted(parents)})"
        if parents:
            parent = parents.pop()
            if not name.startswith(parent + ".") and parent != "":
                return f"its weight is applied directly by {parent!r}, which does not contain it"
    if rule.method in _MAPLESS:
        return _Decision(None, "no map needed", parent)
    order = rule.lbp.order if rule.lbp is not None else 8
    if rule.geometry:  # the rule's options on top of the family adapter's geometry, if any
        base = adapted if isinstance(adapted, MapGeometry) else MapGeometry()
        return _Decision(replace(base, **rule.geometry), "rule", parent)
    if trace is not None:
        geos = [c.geometry for c in trace.calls]
        for g in geos:
            if isinstance(g, str):
                return g
        seen = {(g.layout, g.prefix_tokens, g.hw, g.order) for g in geos}
        if len(seen) > 1:
            return f"it is called on different maps {sorted(x[:3] for x in seen)}"
        g = geos[0]
        if min(g.hw) < order // 2:
            return (
                f"its map is {g.hw[0]}x{g.hw[1]}, smaller than half an {order}x{order} patch "
                "(e.g. pooled): reflect padding would repeat its few tokens across the patch"
            )
        if conv:  # any map size at run time; the trace showed the input is a real map
            return _Decision(MapGeometry(), "example input", parent)
        if g.layout == "nhwc":  # the input's shape is the map at any size
            traced, source = MapGeometry("nhwc"), None
        else:
            traced = MapGeometry("tokens", g.prefix_tokens, token_order=g.order)
            source = TracedMapSource(model, g.hw, trace.input_hw or g.hw)
        if isinstance(adapted, MapGeometry):
            same = adapted.layout in ("auto", traced.layout) and (
                adapted.prefix_tokens == traced.prefix_tokens
            )
            if same and adapted.hw in (None, g.hw) and g.order is None:
                return _Decision(adapted, "adapter", parent, "agrees with the example input")
            note = f"the family adapter said {adapted}"
            return _Decision(traced, "example input", parent, note, source)
        return _Decision(traced, "example input", parent, map_source=source)
    if isinstance(adapted, str):
        return adapted
    if isinstance(adapted, MapGeometry):
        return _Decision(adapted, "adapter", parent)
    if conv and rule.target != ALL_LINEAR:
        return _Decision(MapGeometry(), "nchw input", parent)
    return (
        "no example input, family adapter or rule geometry establishes its map: pass "
        "example_input= to convert() (or give layout= / prefix_tokens= / hw= in the rule)"
    )


def convert(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    strict: bool = True,
    *,
    example_input: Any = "auto",
    geometry: str | None = "auto",
    batchnorm_guard: bool = True,
) -> ConversionReport:
    """Replace the ``nn.Linear`` / 1x1 ``nn.Conv2d`` modules that the rules target, in place.

    Every layer's map is decided before this returns, from (in this order) the rule's own
    ``layout`` / ``prefix_tokens`` / ``hw``, the model-family adapters of
    :mod:`lbp_wht.adapters` (timm ViT-like, Swin, ConvNeXt, MobileViTv2, transformers ViT /
    DeiT; they follow the input size at run time), or a dry forward on ``example_input`` that
    follows every pixel position to each layer (:mod:`lbp_wht.tracing`). A token count is never
    taken as evidence of a map. The dry forward also finds layers whose forward never runs
    because their parent applies the weight itself (``F.linear(x, self.qkv.weight, b)``): such
    call sites are routed through the converted layer (:mod:`lbp_wht.callsite`). A second dry
    forward then checks that every converted layer really runs its converted path.

    Args:
        model: any ``nn.Module`` (not changed if an error is raised).
        rules: a list of rule dicts (module docstring). ``target="all-linear"`` skips, with a
            reason in the report, every layer whose map cannot be established or that is not
            on an image map (pooled features, attention scores, maps under half a patch,
            token-mixing layers, layers that never run); a rule naming such a layer is an error.
        strict: a rule that matches no convertible module raises ``ValueError`` listing the
            closest module names (set False to skip such rules).
        example_input: the model's input for the dry forwards: a tensor (e.g. ``(1, 3, 224,
            224)``), a tuple of positional arguments or a dict of keyword arguments
            (transformers: ``dict(pixel_values=x)``). ``"auto"`` (default) builds one from the
            input size the model declares (timm ``pretrained_cfg``, transformers
            ``config.image_size``), if any; ``None`` runs no dry forward.
        geometry: ``"auto"`` uses the family adapters; ``None`` does not.
        batchnorm_guard: warn once, at the first LBP training step, if BatchNorm layers are
            in train mode (see :class:`~lbp_wht.layers.BatchNormGuard`).

    Returns:
        A :class:`ConversionReport`: each replaced layer with its map and the map's source,
        each skipped layer with its reason. A module targeted by two rules, or already
        converted, is an error (``all-linear`` skips it).
    """
    if isinstance(rules, Mapping | str) or not isinstance(rules, Sequence):
        hint = " (wrap the single rule in a list: [dict(...)])"
        raise TypeError(
            f"convert: rules must be a list of rule dicts, got {type(rules).__name__}"
            + (hint if isinstance(rules, Mapping) else "")
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    parsed = [parse_rule(r, k) for k, r in enumerate(rules)]
    modules = dict(model.named_modules())
    if geometry not in ("auto", None):
        raise ValueError(f"convert: geometry must be 'auto' or None, got {geometry!r}")
    plan = plan_geometry(model) if geometry == "auto" else None
    heads = _head_prefixes(model)
    report = ConversionReport()
    planned: dict[str, tuple[Rule, MapGeometry | str | None]] = {}

    for rule in parsed:
        every = rule.target == ALL_LINEAR
        hits = [
            n
            for n, m in modules.items()
            if n and isinstance(m, nn.Linear | nn.Conv2d) and (every or fnmatchcase(n, rule.target))
        ]
        found = 0
        for name in hits:
            module, skip = modules[name], None
            problem = conv1x1_problem(module) if isinstance(module, nn.Conv2d) else None
            adapted = plan.layers.get(name) if plan is not None else None
            if isinstance(adapted, str) and rule.method in _MAPLESS:
                adapted = None  # plain LoRA and the successor methods need no map
            if any(fnmatchcase(name, e) for e in rule.exclude):
                skip = f"excluded by rule {rule.index}"
            elif name in planned:
                if not every:
                    raise ValueError(
                        f"module {name!r} is targeted by rule {planned[name][0].index} and rule "
                        f"{rule.index}; make the globs disjoint"
                    )
                skip = f"already targeted by rule {planned[name][0].index}"
            elif isinstance(module, ConvertedLayer):
                if not every:
                    raise ValueError(
                        f"module {name!r} is already converted ({type(module).__name__})"
                    )
                skip = f"already converted ({type(module).__name__})"
            elif problem is not None and every:
                skip = f"Conv2d with {problem}: not a per-pixel linear layer"
            elif every and _under(name, heads):
                skip = "task head (the model's classifier); target it explicitly to convert it"
            elif isinstance(adapted, str) and every:  # the family adapter says: not a map
                skip = adapted
            if skip is not None:
                report.skipped.append(Skipped(name, skip, rule.index))
                continue
            planned[name] = (rule, adapted)
            found += 1
        if not found and strict:
            raise ValueError(
                f"rule {rule.index} (target={rule.target!r}, method={rule.method!r}) matches no "
                f"nn.Linear or nn.Conv2d that it can convert in {type(model).__name__}. Closest module "
                f"names: {_closest(rule.target, modules)}"
            )

    # Decide every layer's map before touching the model, so a refusal changes nothing.
    example, report.example, given = _example(model, example_input)
    traces: dict[str, LayerTrace] | None = None
    if example is not None and planned:
        try:
            traces = trace_layers(model, example, {n: modules[n] for n in planned})
        except RuntimeError as err:
            if given:
                raise ValueError(f"convert: {err}") from err
            report.example = f"none ({report.example}: {err})"
            example = None
    decided: dict[str, tuple[Rule, _Decision]] = {}
    for name, (rule, adapted) in planned.items():
        trace = traces[name] if traces is not None else None
        decision = _decide(model, name, modules[name], rule, adapted, trace)
        if isinstance(decision, str):
            if rule.target == ALL_LINEAR:
                report.skipped.append(Skipped(name, decision, rule.index))
                continue
            raise ValueError(
                f"rule {rule.index} targets {name!r}, which cannot take {rule.method}: "
                f"{decision}. Exclude it, or give its layout / prefix_tokens / hw in the rule "
                "if you know better."
            )
        decided[name] = (rule, decision)

    # Build every replacement before touching the model, so a bad option changes nothing.
    built: dict[str, tuple[nn.Module, Rule, _Decision]] = {}
    for name, (rule, decision) in decided.items():
        old = modules[name]
        cls = CONVERSIONS[rule.method][0 if isinstance(old, nn.Linear) else 1]
        # from_module(old, the method's configs (a None one: its default), [geometry=] on a map)
        configs = _METHOD_CONFIGS.get(rule.method, lambda r: (r.options,))(rule)
        on_map = {} if rule.method in _MAPLESS else dict(geometry=decision.geometry)
        try:
            built[name] = (cls.from_module(old, *configs, **on_map), rule, decision)
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting {name!r} with method={rule.method!r}: {err}") from err

    # what load_adapted re-traces a fresh model on; described now, as it may refuse the input
    spec = example_spec(example) if example is not None and built else None
    guard = BatchNormGuard(model) if batchnorm_guard else None
    sites: dict[str, list[str]] = {}
    for name, (new, _rule, decision) in built.items():
        if isinstance(new, LBPMixin):
            new.lbp_name = name
            new.batchnorm_guard = guard
            if plan is not None and decision.source == "adapter":
                plan.attach(name, new)
            if decision.map_source is not None:
                new.map_source = decision.map_source
                if record_input_size not in model._forward_pre_hooks.values():
                    model.register_forward_pre_hook(record_input_size, with_kwargs=True)
        _swap(modules, name, new)
        if decision.parent is not None:
            sites.setdefault(decision.parent, []).append(name[len(decision.parent) + 1 :])
    for parent, names in sites.items():
        redirect_call_sites(modules[parent] if parent else model, names)
    if plan is not None and built:
        plan.install()
    if example is not None and built:
        try:
            _verify(model, example, {name: new for name, (new, _r, _d) in built.items()})
        except Exception:
            for name in built:
                _swap(modules, name, modules[name])
            remove_call_sites(model)
            raise
    for name, (new, rule, decision) in built.items():
        old = modules[name]
        report.replaced.append(
            Replacement(
                name,
                type(old).__name__,
                type(new).__name__,
                rule.method,
                tuple(old.weight.shape),
                rule.to_dict(),
                _geometry_text(new),
                decision.source,
                decision.parent,
                decision.note,
            )
        )
    report.rules = [r.to_dict() for r in parsed]
    if built:
        recorded = list(getattr(model, "lbp_rules", []))
        model.lbp_rules = recorded + report.rules  # type: ignore[assignment]
        if spec is not None:
            model.lbp_example = spec  # type: ignore[assignment]
    return report


def _swap(modules: Mapping[str, nn.Module], name: str, new: nn.Module) -> None:
    """Put ``new`` at ``name``; ``modules`` is ``dict(model.named_modules())`` (``""``: model)."""
    parent, _, child = name.rpartition(".")
    setattr(modules[parent], child, new)


def _geometry_text(new: nn.Module) -> str:
    if not isinstance(new, LBPMixin):
        return ""
    g = new.geometry
    if isinstance(new, nn.Conv2d):
        return "NCHW map"
    src = f", hw from {new.map_source.describe}" if new.map_source else ""
    order = " unrolled order" if g.token_order is not None else ""
    return f"layout={g.layout} prefix={g.prefix_tokens}{order}" + (f" hw={g.hw}" if g.hw else src)


def _verify(model: nn.Module, example: Any, layers: Mapping[str, nn.Module]) -> None:
    """A dry forward on ``example`` with the converted layers in training mode (the rest in
    eval mode, so BatchNorm uses running statistics even at batch 1): every converted layer
    must run its converted path (``converted_calls``), else the conversion is refused."""
    guards = {name: getattr(new, "batchnorm_guard", None) for name, new in layers.items()}
    warned = {name: getattr(new, "_warned_no_bases", None) for name, new in layers.items()}
    for name, new in layers.items():
        new.converted_calls = 0
        # the warnings belong to the first real training step
        if guards[name] is not None:
            new.batchnorm_guard = None
        if warned[name] is not None:
            new._warned_no_bases = True
    with preserved(model), torch.enable_grad():
        model.eval()
        for new in layers.values():
            new.train()
        ex = tree_map(
            lambda t: (
                t.detach().clone().requires_grad_(True)
                if isinstance(t, torch.Tensor) and t.is_floating_point()
                else t
            ),
            example,
        )
        try:
            call_model(model, ex)
        except Exception as err:
            raise RuntimeError(
                f"convert: the converted {type(model).__name__} fails on the example input: "
                f"{type(err).__name__}: {err}"
            ) from err
        finally:
            for name, new in layers.items():
                if guards[name] is not None:
                    new.batchnorm_guard = guards[name]
                if warned[name] is not None:
                    new._warned_no_bases = warned[name]
    idle = [name for name, new in layers.items() if new.converted_calls == 0]
    for new in layers.values():
        new.converted_calls = 0
        if isinstance(new, VeLoRAMixin | INSTANTMixin):
            # v / the bases come from the first training batches, not the dry forward
            new.reset_projection()
    if idle:
        raise RuntimeError(
            f"convert: {len(idle)} converted layers did not run their converted path on the "
            f"example input: {idle[:10]}. This is a bug in lbp_wht's call-site detection; "
            "please report it with the model. Exclude these layers to go on."
        )


def unconvert(model: nn.Module, lora: str = "merge") -> list[str]:
    """Replace every converted layer by a plain ``nn.Linear`` / ``nn.Conv2d``, in place.

    Args:
        model: a model converted by :func:`convert`.
        lora: ``"merge"`` folds each LoRA adapter into the weight (``w + (alpha / k) B A``:
            the model computes what the adapted model computed) or ``"drop"`` discards the
            adapters (the base model again).

    Returns:
        The names of the restored modules. State-dict keys are those of the unconverted model
        (no ``lora_A`` / ``lora_B`` / ``lbp_bases``); the Parameters are the same objects, with
        their ``requires_grad`` as they are now. Geometry hooks of the family adapters and the
        recorded rules are removed.
    """
    if lora not in ("merge", "drop"):
        raise ValueError(f"unconvert: lora must be 'merge' or 'drop', got {lora!r}")
    restored, modules = [], dict(model.named_modules())
    for name, module in modules.items():
        if not name or not isinstance(module, ConvertedLayer):
            continue
        if isinstance(module, LoRAMixin):
            module.merge() if lora == "merge" else module.unmerge()
        plain = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
        _swap(modules, name, shell_like(plain, module))
        restored.append(name)
    remove_geometry_hooks(model)
    remove_call_sites(model)
    for attr in ("lbp_rules", "lbp_example"):
        if attr in vars(model):
            delattr(model, attr)
    return restored


def freeze(model: nn.Module, trainable: Sequence[str], strict: bool = True) -> list[str]:
    """Make exactly the parameters whose names match a glob in ``trainable`` trainable.

    LoRA layers stay adapters-only: their base ``weight``/``bias`` (and LoRA-FA's ``lora_A``)
    are frozen even when a pattern matches them. A pattern that matches no parameter raises ``ValueError`` with the
    closest parameter names (``strict=False`` skips it).

    Returns:
        The names of the trainable parameters.
    """
    if isinstance(trainable, str) or not isinstance(trainable, Sequence):
        raise TypeError(
            f"freeze: trainable must be a list of globs, got {type(trainable).__name__} "
            f"{trainable!r}" + (f" (use [{trainable!r}])" if isinstance(trainable, str) else "")
        )
    bad = [p for p in trainable if not isinstance(p, str)]
    if bad:
        raise TypeError(f"freeze: every trainable pattern must be a string glob, got {bad!r}")
    params = dict(model.named_parameters())
    for pat in trainable:
        if strict and not any(fnmatchcase(n, pat) for n in params):
            raise ValueError(
                f"freeze: trainable pattern {pat!r} matches no parameter. Closest: "
                f"{_closest(pat, params)}"
            )
    for name, p in params.items():
        p.requires_grad_(any(fnmatchcase(name, pat) for pat in trainable))
    for module in model.modules():
        if isinstance(module, LoRAMixin):
            for frozen in module.FROZEN:
                p = getattr(module, frozen)
                if p is not None:
                    p.requires_grad_(False)
    return [n for n, p in model.named_parameters() if p.requires_grad]


@dataclass(frozen=True)
class TrainableSummary:
    """Trainable parameter count of a model (``str()``: one line, peft style)."""

    trainable: int
    total: int
    tensors: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {self.percent:.4f} ({self.tensors} tensors)"
        )


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """How many parameters train (``parameters()`` counts shared Parameters once)."""
    trainable = total = tensors = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            tensors += 1
    return TrainableSummary(trainable, total, tensors)


def _norm_eval_pre_hook(module: nn.Module, args: Any) -> None:
    # Uses the hooked module (not a closure), so deep copies (e.g. EMA models) stay correct.
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.training = False


def keep_batchnorm_eval(model: nn.Module) -> None:
    """Keep every BatchNorm of ``model`` on running statistics, whatever ``train()`` says.

    The paper's ``norm_eval=True``: train-mode BatchNorm does not commute with the low-rank
    projection of the gradient. A forward pre-hook on ``model`` sets ``training=False`` on all
    BatchNorm modules before every forward, so it survives the ``model.train()`` calls of any
    training loop. LayerNorm is unaffected; BatchNorm affine parameters still train if they
    are trainable. Idempotent.
    """
    if getattr(model, "_lbp_norm_eval", False):
        return
    model._lbp_norm_eval = True  # type: ignore[assignment]
    model.register_forward_pre_hook(_norm_eval_pre_hook)
