"""Model conversion as data, peft-style: ``convert`` / ``unconvert`` / ``freeze`` / summaries.

A rule is a dict ``dict(target="<glob>" | "all-linear", method="lbp" | "lora" | "lbp_lora",
**options)``. The glob (``fnmatch``, ``*`` also matches dots) runs over the qualified names of
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
geometry             ``layout``, ``prefix_tokens``, ``hw`` (rarely needed: the adapters of
                     :mod:`lbp_wht.integrations.geometry` and the input shape provide them)
===================  =====================================================================

The spelling of the paper's presets is accepted too: ``select`` (selection), ``r`` (radius),
``indices`` (bases), ``extra_tokens`` (prefix_tokens), ``alpha`` (lora_alpha), ``lhe_rank``
(num_bases) and ``rank``, which is the LoRA rank for ``lora`` / ``lbp_lora`` and the number of
bases for ``lbp``. Rules are normalised to the canonical names (:meth:`Rule.to_dict`), which
is what :attr:`ConversionReport.rules` and the saved rules of :mod:`lbp_wht.saving` hold.

``convert`` returns a :class:`ConversionReport` (what was replaced, what was skipped and why).
``unconvert`` puts plain ``nn.Linear`` / ``nn.Conv2d`` back (LoRA merged or dropped), with
the original state-dict keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch.nn as nn

from .config import LBPConfig, LoRAConfig
from .geometry import MapGeometry
from .layers import BatchNormGuard, LBPConv2d, LBPLinear, LBPMixin, conv1x1_problem, shell_like
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear, LoRAMixin

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
]

#: method -> (class for nn.Linear, class for 1x1 nn.Conv2d)
CONVERSIONS: dict[str, tuple[type, type]] = {
    "lbp": (LBPLinear, LBPConv2d),
    "lora": (LoRALinear, LoRAConv2d),
    "lbp_lora": (LBPLoRALinear, LBPLoRAConv2d),
}
#: The target that selects every convertible layer.
ALL_LINEAR = "all-linear"

_LBP_KEYS = ("selection", "radius", "num_bases", "bases", "order", "padding", "impl")
_LORA_KEYS = {"lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
_GEOMETRY_KEYS = ("layout", "prefix_tokens", "hw")
_COMMON_KEYS = ("target", "method", "exclude")


def _legacy(method: str) -> dict[str, str]:
    """The presets' spelling -> canonical key, for ``method``."""
    names = {"select": "selection", "r": "radius", "indices": "bases"}
    names.update(extra_tokens="prefix_tokens", lhe_rank="num_bases", alpha="lora_alpha")
    names["dropout"] = "lora_dropout"
    names["rank"] = "num_bases" if method == "lbp" else "lora_rank"
    return names


def _valid_keys(method: str) -> list[str]:
    keys = list(_COMMON_KEYS)
    if method in ("lbp", "lbp_lora"):
        keys += [*_LBP_KEYS, *_GEOMETRY_KEYS, "lbp"]
    if method in ("lora", "lbp_lora"):
        keys += [*_LORA_KEYS, "lora"]
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
        for k, v in self.geometry.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def make_geometry(self, base: MapGeometry | None) -> MapGeometry:
        """The rule's geometry options on top of ``base`` (an adapter's geometry or None)."""
        fields = base.to_dict() if base is not None else {}
        fields.update(self.geometry)
        if fields.get("hw") is not None:
            fields["hw"] = tuple(fields["hw"])
        return MapGeometry(**fields)


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
    if method not in CONVERSIONS:
        raise ValueError(
            f"rule {index}: unknown method {method!r}; choose one of {list(CONVERSIONS)}"
        )
    legacy = _legacy(method)
    valid = _valid_keys(method)
    opts: dict[str, Any] = {}
    for key, value in rule.items():
        if key in ("target", "method"):
            continue
        canon = key if key in valid else legacy.get(key, key)
        if canon not in valid:
            others = [m for m in CONVERSIONS if canon in _valid_keys(m)]
            if others:
                hint = f" (it applies to method {' / '.join(map(repr, others))})"
            else:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"rule {index} (target={target!r}, method={method!r}): unknown key {key!r}"
                f"{hint}; valid keys: {sorted(valid)}"
            )
        if canon in opts:
            raise ValueError(
                f"rule {index}: {canon!r} is given twice (as {key!r} and another name)"
            )
        opts[canon] = value
    exclude = opts.pop("exclude", ())
    if isinstance(exclude, str):
        exclude = (exclude,)
    if not all(isinstance(e, str) for e in exclude):
        raise TypeError(f"rule {index}: exclude must be a list of globs, got {exclude!r}")
    where = f"rule {index} (target={target!r}, method={method!r})"
    try:
        lbp = lora = None
        if method in ("lbp", "lbp_lora"):
            lbp = _config_from(opts, "lbp", LBPConfig, {k: k for k in _LBP_KEYS}, where)
        if method in ("lora", "lbp_lora"):
            lora = _config_from(opts, "lora", LoRAConfig, _LORA_KEYS, where)
        geometry = {k: opts.pop(k) for k in _GEOMETRY_KEYS if k in opts}
        if geometry:
            MapGeometry(**{**geometry, "hw": geometry.get("hw")})  # validate now
            if geometry.get("hw") is not None:
                geometry["hw"] = tuple(int(v) for v in geometry["hw"])
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from err
    return Rule(index, target, method, tuple(exclude), lbp, lora, geometry)


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

    def __len__(self) -> int:
        return len(self.replaced)

    def names(self, method: str | None = None) -> list[str]:
        return [r.name for r in self.replaced if method is None or r.method == method]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.replaced:
            out[r.new_type] = out.get(r.new_type, 0) + 1
        return out

    def __str__(self) -> str:
        lines = []
        if self.replaced:
            width = max(len(r.name) for r in self.replaced)
            lines.append(f"{'module':<{width}}  {'from':<8} {'to':<14} {'weight':<18} geometry")
            for r in self.replaced:
                lines.append(
                    f"{r.name:<{width}}  {r.old_type:<8} {r.new_type:<14} "
                    f"{str(r.shape):<18} {r.geometry}"
                )
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items()))
        lines.append(f"{len(self.replaced)} modules replaced" + (f": {summary}" if summary else ""))
        for s in self.skipped:
            lines.append(f"skipped {s.name}: {s.reason}")
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


def _is_target(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d)


_HEAD_NAMES = ("head", "head_dist", "classifier", "fc", "lm_head", "cls_head")


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


def _geometry_plan(model: nn.Module, geometry: str | None) -> Any:
    if geometry is None:
        return None
    if geometry != "auto":
        raise ValueError(f"convert: geometry must be 'auto' or None, got {geometry!r}")
    # Duck-typed adapters for timm / transformers families; they import neither library.
    from .integrations.geometry import plan_geometry

    return plan_geometry(model)


def convert(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    strict: bool = True,
    *,
    geometry: str | None = "auto",
    batchnorm_guard: bool = True,
) -> ConversionReport:
    """Replace the ``nn.Linear`` / 1x1 ``nn.Conv2d`` modules that the rules target, in place.

    Args:
        model: any ``nn.Module``.
        rules: a list of rule dicts (module docstring). A rule naming a module that cannot be
            converted (a non-1x1 conv, a layer the family adapter knows is not on a map) is
            an error; ``target="all-linear"`` skips such modules with a report line.
        strict: a rule that matches no convertible module raises ``ValueError`` listing the
            closest module names (set False to skip such rules).
        geometry: ``"auto"`` lets the model-family adapters of
            :mod:`lbp_wht.integrations.geometry` give each layer its map geometry (timm
            ViT/DeiT/EVA/BEiT, Swin, ConvNeXt, MobileViTv2, transformers ViT); ``None`` uses
            only the rules and the input shapes.
        batchnorm_guard: warn once, at the first LBP training step, if BatchNorm layers are
            in train mode (see :class:`~lbp_wht.layers.BatchNormGuard`).

    Returns:
        A :class:`ConversionReport`. A module targeted by two rules, or already converted,
        is an error (``all-linear`` skips it). All rules are checked before anything changes.
    """
    if isinstance(rules, Mapping) or not isinstance(rules, Sequence) or isinstance(rules, str):
        raise TypeError(
            f"convert: rules must be a list of rule dicts, got {type(rules).__name__}"
            + (
                " (wrap the single rule in a list: [dict(...)])"
                if isinstance(rules, Mapping)
                else ""
            )
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    parsed = [parse_rule(r, k) for k, r in enumerate(rules)]
    modules = dict(model.named_modules())
    plan = _geometry_plan(model, geometry)
    heads = _head_prefixes(model)
    report = ConversionReport()
    planned: dict[str, tuple[Rule, MapGeometry | None]] = {}

    for rule in parsed:
        every = rule.target == ALL_LINEAR
        hits = [
            n
            for n, m in modules.items()
            if n and _is_target(m) and (every or fnmatchcase(n, rule.target))
        ]
        found = 0
        for name in hits:
            module = modules[name]

            def skip(reason: str, name: str = name, index: int = rule.index) -> None:
                report.skipped.append(Skipped(name, reason, index))

            if any(fnmatchcase(name, e) for e in rule.exclude):
                skip(f"excluded by rule {rule.index}")
                continue
            if name in planned:
                if every:
                    skip(f"already targeted by rule {planned[name][0].index}")
                    continue
                raise ValueError(
                    f"module {name!r} is targeted by rule {planned[name][0].index} and rule "
                    f"{rule.index}; make the globs disjoint"
                )
            if isinstance(module, LBPMixin | LoRAMixin):
                if every:
                    skip(f"already converted ({type(module).__name__})")
                    continue
                raise ValueError(f"module {name!r} is already converted ({type(module).__name__})")
            problem = conv1x1_problem(module) if isinstance(module, nn.Conv2d) else None
            if problem is not None and every:
                skip(f"Conv2d with {problem}: not a per-pixel linear layer")
                continue
            if every and _under(name, heads):
                skip("task head (the model's classifier); target it explicitly to convert it")
                continue
            adapted = plan.geometry_for(name) if plan is not None else None
            if isinstance(adapted, str) and rule.method == "lora":
                adapted = None  # plain LoRA needs no map
            if isinstance(adapted, str):  # the family adapter says: not a map
                if every:
                    skip(adapted)
                    continue
                if not rule.geometry:
                    raise ValueError(
                        f"rule {rule.index} targets {name!r}, which cannot take LBP-WHT: "
                        f"{adapted}. Exclude it, or give its layout / prefix_tokens / hw in the "
                        "rule if you know better."
                    )
                adapted = None
            planned[name] = (rule, adapted)
            found += 1
        if not found and strict:
            raise ValueError(
                f"rule {rule.index} (target={rule.target!r}, method={rule.method!r}) matches no "
                f"nn.Linear or nn.Conv2d that it can convert in {type(model).__name__}. Closest module "
                f"names: {_closest(rule.target, modules)}"
            )

    # Build every replacement before touching the model, so a bad option changes nothing.
    built: list[tuple[str, nn.Module, Rule]] = []
    for name, (rule, adapted) in planned.items():
        old = modules[name]
        cls = CONVERSIONS[rule.method][0 if isinstance(old, nn.Linear) else 1]
        try:
            if rule.method == "lora":
                new = cls.from_module(old, rule.lora)
            else:
                geo = rule.make_geometry(adapted)
                if rule.method == "lbp":
                    new = cls.from_module(old, rule.lbp, geometry=geo)
                else:
                    new = cls.from_module(old, rule.lbp, rule.lora, geometry=geo)
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting {name!r} with method={rule.method!r}: {err}") from err
        built.append((name, new, rule))

    guard = BatchNormGuard(model) if batchnorm_guard else None
    for name, new, rule in built:
        old = modules[name]
        geo_text = ""
        if isinstance(new, LBPMixin):
            new.lbp_name = name
            new.batchnorm_guard = guard
            if plan is not None:
                plan.attach(name, new)
            g = new.geometry
            if isinstance(new, nn.Conv2d):
                geo_text = "NCHW map"
            else:
                src = f", hw from {new.map_source.describe}" if new.map_source else ""
                geo_text = f"layout={g.layout} prefix={g.prefix_tokens}" + (
                    f" hw={g.hw}" if g.hw else src
                )
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
        report.replaced.append(
            Replacement(
                name,
                type(old).__name__,
                type(new).__name__,
                rule.method,
                tuple(old.weight.shape),
                rule.to_dict(),
                geo_text,
            )
        )
    if plan is not None and built:
        plan.install()
    report.rules = [r.to_dict() for r in parsed]
    if built:
        recorded = list(getattr(model, "lbp_rules", []))
        model.lbp_rules = recorded + report.rules  # type: ignore[assignment]
    return report


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
    restored = []
    for name, module in list(model.named_modules()):
        if not name or not isinstance(module, LBPMixin | LoRAMixin):
            continue
        if isinstance(module, LoRAMixin):
            module.merge() if lora == "merge" else module.unmerge()
        new = shell_like(nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear, module)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        restored.append(name)
    from .integrations.geometry import remove_geometry_hooks

    remove_geometry_hooks(model)
    if "lbp_rules" in vars(model):
        del model.lbp_rules
    return restored


def freeze(model: nn.Module, trainable: Sequence[str], strict: bool = True) -> list[str]:
    """Make exactly the parameters whose names match a glob in ``trainable`` trainable.

    LoRA layers stay adapters-only: their base ``weight``/``bias`` are frozen even when a
    pattern matches them. A pattern that matches no parameter raises ``ValueError`` with the
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
            module.weight.requires_grad_(False)
            if module.bias is not None:
                module.bias.requires_grad_(False)
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
