"""Model conversion as data: ``convert(model, rules)`` and ``freeze(model, trainable)``.

A rule is a dict ``dict(target="<glob>", method="lbp" | "lora" | "lbp_lora", **options)``;
the glob (``fnmatch``, ``*`` also matches dots) runs over the qualified names of
``model.named_modules()``; options go to the layer's ``from_module``. Like ``peft``'s
``inject_adapter_in_model``, conversion returns a report of what changed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch.nn as nn

from .layers import LBPConv2d, LBPLinear, LBPMixin
from .lora import LBPLoRAConv2d, LBPLoRALinear, LoRAConv2d, LoRALinear, LoRAMixin

__all__ = ["convert", "freeze", "ConversionReport", "Replacement", "CONVERSIONS"]

#: method -> (class for nn.Linear, class for 1x1 nn.Conv2d)
CONVERSIONS: dict[str, tuple[type, type]] = {
    "lbp": (LBPLinear, LBPConv2d),
    "lora": (LoRALinear, LoRAConv2d),
    "lbp_lora": (LBPLoRALinear, LBPLoRAConv2d),
}


@dataclass
class Replacement:
    name: str
    old_type: str
    new_type: str
    method: str
    shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionReport:
    """What :func:`convert` replaced, one :class:`Replacement` per module."""

    replaced: list[Replacement] = field(default_factory=list)

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
        if not self.replaced:
            return "convert: nothing replaced"
        width = max(len(r.name) for r in self.replaced)
        lines = [f"{'module':<{width}}  {'from':<8} {'to':<14} weight"]
        for r in self.replaced:
            lines.append(f"{r.name:<{width}}  {r.old_type:<8} {r.new_type:<14} {r.shape}")
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items()))
        lines.append(f"{len(self.replaced)} modules replaced: {summary}")
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


def convert(
    model: nn.Module, rules: Sequence[dict[str, Any]], strict: bool = True
) -> ConversionReport:
    """Replace the ``nn.Linear`` / 1x1 ``nn.Conv2d`` modules that the rules target, in place.

    Args:
        model: any ``nn.Module``.
        rules: ``[dict(target=glob, method="lbp"|"lora"|"lbp_lora", **options), ...]``.
            Containers and non-linear modules matched by a wildcard are ignored; a matched
            ``nn.Conv2d`` that is not 1x1 is an error (it is not a linear layer over tokens).
        strict: a rule that matches no convertible module raises ``ValueError`` listing the
            closest module names (set False to skip such rules).

    Returns:
        A :class:`ConversionReport`. A module targeted by two rules, or already converted,
        is an error.
    """
    modules = dict(model.named_modules())
    planned: dict[str, tuple[int, dict[str, Any]]] = {}
    for k, rule in enumerate(rules):
        rule = dict(rule)
        if "target" not in rule or "method" not in rule:
            raise ValueError(f"rule {k} {rule} needs 'target' (a glob) and 'method'")
        target, method = rule.pop("target"), rule.pop("method")
        if method not in CONVERSIONS:
            raise ValueError(
                f"rule {k}: unknown method {method!r}; choose one of {list(CONVERSIONS)}"
            )
        hits = [n for n, m in modules.items() if n and fnmatchcase(n, target) and _is_target(m)]
        if not hits:
            if strict:
                raise ValueError(
                    f"rule {k} (target={target!r}, method={method!r}) matches no nn.Linear or "
                    f"nn.Conv2d in {type(model).__name__}. Closest module names: "
                    f"{_closest(target, modules)}"
                )
            continue
        for name in hits:
            if name in planned:
                raise ValueError(
                    f"module {name!r} is targeted by rule {planned[name][0]} and rule {k}; "
                    "make the globs disjoint"
                )
            if isinstance(modules[name], LBPMixin | LoRAMixin):
                raise ValueError(
                    f"module {name!r} is already converted ({type(modules[name]).__name__})"
                )
            planned[name] = (k, dict(rule, method=method))

    report = ConversionReport()
    for name, (_, opts) in planned.items():
        method = opts.pop("method")
        old = modules[name]
        cls = CONVERSIONS[method][0 if isinstance(old, nn.Linear) else 1]
        try:
            new = cls.from_module(old, **opts)
        except (TypeError, ValueError) as err:
            raise type(err)(f"converting {name!r} with method={method!r}: {err}") from err
        if isinstance(new, LBPMixin):
            new.lbp_name = name
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
        report.replaced.append(
            Replacement(
                name, type(old).__name__, cls.__name__, method, tuple(old.weight.shape), opts
            )
        )
    return report


def freeze(model: nn.Module, trainable: Sequence[str], strict: bool = True) -> list[str]:
    """Make exactly the parameters whose names match a glob in ``trainable`` trainable.

    LoRA layers stay adapters-only: their base ``weight``/``bias`` are frozen even when a
    pattern matches them. A pattern that matches no parameter raises ``ValueError`` with the
    closest parameter names (``strict=False`` skips it).

    Returns:
        The names of the trainable parameters.
    """
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
