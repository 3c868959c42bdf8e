"""Gradient fidelity: how close LBP-WHT's gradients are to exact backprop, layer by layer.

For a model, a set of its linear / 1x1-conv layers and a loss on a fixed batch, one exact
backward records per layer the input ``x``, the output gradient ``g_y``, the input gradient
``g_x`` and the weight gradient ``g_w``. Then, per base *selection* (which R of the 64 WHT bases
of an 8x8 patch are kept, and how maps are padded to whole patches), a copy of the model with
exactly those layers converted to LBP-WHT runs the same loss and backward, and every layer's
LBP-WHT ``g_w`` and ``g_x`` are compared with the exact ones:

* cosine similarity ``cos(a, b) = <a, b> / (|a| |b|)`` (1 = same direction);
* relative error ``|a - b| / |b|`` (b exact; 0 = equal);
* energy share of ``g_y`` in the selected bases: with ``E_ij`` the WHT energy spectrum of the
  exact ``g_y`` (the padded map cut into 8x8 patches, ``E_ij = sum (sum_patch g_y * B_ij)^2 /
  64`` summed over batch, patches and channels; Parseval: with zero padding ``sum E = |g_y|^2``),
  ``share = sum_{(i, j) kept} E_ij / sum_{all} E_ij`` (1 = nothing of ``g_y`` is dropped).

The comparison is end to end: a layer's LBP-WHT ``g_y`` already carries the approximation of
the LBP-WHT layers after it (their ``g_x``), as in training. With zero padding and all 64 bases
LBP-WHT is exact backprop, so every cosine is 1 and every error 0 (up to rounding). On a map
of whole patches (no padding) the kept bases span an orthogonal projection ``P`` of each patch
and the last layer's ``g_x`` is ``P`` applied to the exact one (cosine ``c``, relative error
``sqrt(1 - c^2)``); on a padded map (7x7 -> 8x8) the projection is cropped back to the map and
no longer orthogonal.

Selections (:func:`default_selections`): LP_L1-r (Eq. 8, r = 2..8: R = 3, 6, 10, 15, 21, 28,
36), LP_Linf-r (Eq. 9, r = 2..6: R = 4, 9, 16, 25, 36), LHE-R (the R bases with most energy in
*this batch's* exact ``g_y``, per layer, for the R of LP_L1: the best any R bases can keep of
this batch, an upper bound of training-time LHE, which profiles the first iterations), each
with reflect and zero padding, plus all 64 bases. Pure PyTorch; the mmengine side (a config's
model, checkpoint and batch) is :mod:`lbp_wht.integrations.fidelity`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .bases import select_bases
from .config import LBPConfig
from .conversion import convert
from .instant import calibration_steps
from .layers import LBPMixin
from .projection import WHTProjector

__all__ = [
    "Selection",
    "default_selections",
    "capture_gradients",
    "layer_type",
    "energy_share",
    "cosine",
    "relative_error",
    "gradient_fidelity",
    "rule_fidelity",
    "FIELDS",
]

#: Columns of a fidelity row (:func:`gradient_fidelity`), in CSV order.
FIELDS = (
    "layer",
    "layer_type",
    "selection",
    "family",
    "param",
    "num_bases",
    "padding",
    "cos_gw",
    "relerr_gw",
    "cos_gx",
    "relerr_gx",
    "energy_share",
)


@dataclass(frozen=True)
class Selection:
    """One base selection: ``family`` ``"lp_l1"`` / ``"lp_linf"`` (``param`` = radius r) or
    ``"lhe"`` (``param`` = R, chosen per layer from the exact ``g_y``), and the padding."""

    family: str
    param: int
    padding: str = "reflect"
    order: int = 8

    def __post_init__(self) -> None:
        if self.family not in ("lp_l1", "lp_linf", "lhe"):
            raise ValueError(f"unknown selection family {self.family!r}; lp_l1, lp_linf or lhe")
        if self.padding not in ("reflect", "zero"):
            raise ValueError(f"unknown padding {self.padding!r}; reflect or zero")
        if self.family == "lhe":
            if not 1 <= self.param <= self.order**2:
                raise ValueError(f"LHE-{self.param}: R must be in [1, {self.order**2}]")
        else:
            select_bases(self.family, radius=self.param, order=self.order)  # validates r

    @property
    def label(self) -> str:
        """``LP_L1-4``, ``LP_Linf-3``, ``LHE-10``."""
        name = {"lp_l1": "LP_L1", "lp_linf": "LP_Linf", "lhe": "LHE"}[self.family]
        return f"{name}-{self.param}"

    @property
    def num_bases(self) -> int:
        if self.family == "lhe":
            return self.param
        return len(select_bases(self.family, radius=self.param, order=self.order))

    def bases(self, energy: torch.Tensor | None = None) -> list[tuple[int, int]]:
        """The kept ``(i, j)``; LHE needs the layer's ``(order, order)`` energy spectrum."""
        if self.family == "lhe":
            if energy is None:
                raise ValueError(f"{self.label} needs the layer's g_y energy spectrum")
            return select_bases("lhe", order=self.order, num_bases=self.param, energy=energy)
        return select_bases(self.family, radius=self.param, order=self.order)


def default_selections(order: int = 8) -> list[Selection]:
    """LP_L1-2..8, LP_Linf-2..6, LHE at LP_L1's R, and all bases, each reflect and zero."""
    full = 2 * order - 1
    out = []
    for padding in ("reflect", "zero"):
        out += [Selection("lp_l1", r, padding, order) for r in range(2, 9)]
        out += [Selection("lp_linf", r, padding, order) for r in range(2, 7)]
        lp_rs = sorted({len(select_bases("lp_l1", radius=r, order=order)) for r in range(2, 9)})
        out += [Selection("lhe", n, padding, order) for n in lp_rs]
        out.append(Selection("lp_l1", full, padding, order))
    return out


def layer_type(name: str, module: nn.Module) -> str:
    """A layer's type for grouping: its class (``Linear`` / ``Conv2d``; LBP classes map to the
    plain one) and the last two parts of its name, e.g. ``Conv2d mlp.fc1``,
    ``Linear token_mixer.qkv``."""
    cls = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
    return f"{cls} {'.'.join(name.split('.')[-2:])}"


def cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``<a, b> / (|a| |b|)`` in float64; NaN when either is missing or zero."""
    if a is None or b is None:
        return math.nan
    a, b = a.double().flatten(), b.double().flatten()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def relative_error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``|a - b| / |b|`` in float64 (``b`` the reference); NaN when missing or ``b = 0``."""
    if a is None or b is None:
        return math.nan
    a, b = a.double(), b.double()
    den = float(b.norm())
    return float((a - b).norm()) / den if den > 0 else math.nan


def gradient_errors(got: Mapping[str, Any], exact: Mapping[str, Any]) -> dict[str, float]:
    """``cos_gw``, ``relerr_gw``, ``cos_gx``, ``relerr_gx`` of one layer's captured gradients
    (:func:`capture_gradients` records) against the exact ones."""
    return dict(
        cos_gw=cosine(got["g_w"], exact["g_w"]),
        relerr_gw=relative_error(got["g_w"], exact["g_w"]),
        cos_gx=cosine(got["g_x"], exact["g_x"]),
        relerr_gx=relative_error(got["g_x"], exact["g_x"]),
    )


def capture_gradients(
    model: nn.Module, layers: Sequence[str], loss_fn: Callable[[nn.Module], torch.Tensor]
) -> dict[str, dict[str, torch.Tensor | None]]:
    """Run ``loss_fn(model).backward()`` once; per named layer: ``x`` (its input), ``g_y``,
    ``g_x`` (None when its input needs no gradient) and ``g_w`` (its weight's ``.grad``, None
    if the weight is frozen). Gradients already on the model are cleared first.

    Raises:
        ValueError: a name that is not a module of ``model``.
        RuntimeError: a layer that did not run exactly once in the forward.
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"gradient fidelity: the model has no layer(s) {missing}")
    model.zero_grad(set_to_none=True)
    out: dict[str, dict[str, Any]] = {n: dict(x=None, g_y=None, g_x=None, calls=0) for n in layers}
    # Tensor hooks too are removed afterwards: a leaf input (the batch itself) outlives this
    # call, and a hook left on it would overwrite this record in the next call. Gradients are
    # cloned: a leaf's gradient buffer becomes its ``.grad``, which a later backward adds to.
    handles: list[Any] = []
    for name in layers:
        rec = out[name]

        def pre(m: nn.Module, args: Any, rec: dict = rec) -> None:
            x = args[0]
            rec["x"], rec["calls"] = x.detach(), rec["calls"] + 1
            if x.requires_grad:
                handles.append(
                    x.register_hook(lambda g, r=rec: r.__setitem__("g_x", g.detach().clone()))
                )

        def post(m: nn.Module, args: Any, y: torch.Tensor, rec: dict = rec) -> None:
            if y.requires_grad:
                handles.append(
                    y.register_hook(lambda g, r=rec: r.__setitem__("g_y", g.detach().clone()))
                )

        handles.extend(
            [
                modules[name].register_forward_pre_hook(pre),
                modules[name].register_forward_hook(post),
            ]
        )
    try:
        loss_fn(model).backward()
    finally:
        for h in handles:
            h.remove()
    bad = {n: r["calls"] for n, r in out.items() if r["calls"] != 1}
    if bad:
        raise RuntimeError(f"gradient fidelity: layers must run once per forward, got {bad}")
    for name, rec in out.items():
        rec.pop("calls")
        w = modules[name].weight.grad
        rec["g_w"] = None if w is None else w.detach().clone()
    return out


def _spectrum(layer: LBPMixin, x: torch.Tensor, g_y: torch.Tensor, padding: str) -> torch.Tensor:
    """``(order, order)`` WHT energy of ``g_y`` on ``layer``'s map (prefix tokens dropped)."""
    m = layer.resolve_map(x)
    if m.layout == "tokens":
        g, layout = g_y.reshape(-1, g_y.shape[-2], g_y.shape[-1])[:, m.prefix_tokens :], "tokens"
    elif m.layout == "nhwc":
        g, layout = g_y.permute(0, 3, 1, 2), "nchw"
    else:
        g, layout = g_y, "nchw"
    proj = WHTProjector(m.hw, [(0, 0)], layer.order, padding, "patch")
    return proj.spectrum(g, layout)


def energy_share(energy: torch.Tensor, bases: Sequence[tuple[int, int]]) -> float:
    """Share of the total of an ``(n, n)`` spectrum on the bases ``(i, j)``."""
    total = float(energy.sum())
    return sum(float(energy[i, j]) for i, j in bases) / total if total > 0 else math.nan


def gradient_fidelity(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: Callable[[nn.Module], torch.Tensor],
    selections: Sequence[Selection] | None = None,
    *,
    geometry: dict[str, dict[str, Any]] | None = None,
    example_input: Any = "auto",
) -> list[dict[str, Any]]:
    """LBP-WHT vs exact gradients of ``layers`` for every selection (module docstring).

    Args:
        model: the plain (unconverted) model, in the mode training uses (``train()``, BatchNorm
            as training keeps it); it is not modified (copies are converted).
        layers: names of its ``nn.Linear`` / 1x1 ``nn.Conv2d`` layers to compare.
        loss_fn: ``loss_fn(model) -> scalar`` on a fixed batch (deterministic).
        selections: default :func:`default_selections`.
        geometry: per layer, extra options of its conversion rule (``prefix_tokens``, ``hw``,
            ``layout``) where :func:`lbp_wht.convert` cannot infer the map.
        example_input: what :func:`lbp_wht.convert` traces the layers' maps on (the model's
            input, e.g. the batch ``loss_fn`` uses); ``"auto"`` lets it build one from the
            model's declared input size.

    Returns:
        One dict per (selection, layer) with the keys of :data:`FIELDS`.
    """
    selections = list(default_selections() if selections is None else selections)
    layers = list(layers)
    geometry = geometry or {}
    exact = capture_gradients(copy.deepcopy(model), layers, loss_fn)
    for name, rec in exact.items():
        if rec["g_y"] is None:
            raise RuntimeError(f"gradient fidelity: layer {name!r} received no output gradient")

    def rules(sel: Selection, bases: dict[str, list] | None) -> list[dict[str, Any]]:
        out = []
        for name in layers:
            if bases is not None:
                cfg = LBPConfig(
                    selection="explicit", bases=tuple(bases[name]), order=sel.order,
                    padding=sel.padding,
                )  # fmt: skip
            elif sel.family == "lhe":
                cfg = LBPConfig(selection="lhe", num_bases=sel.param, padding=sel.padding)
            else:
                cfg = LBPConfig(
                    selection=sel.family, radius=sel.param, order=sel.order, padding=sel.padding
                )
            out.append(dict(target=name, method="lbp", lbp=cfg, **geometry.get(name, {})))
        return out

    # The layers' map geometry (as the conversion infers it) for the spectra.
    probe = copy.deepcopy(model)
    convert(
        probe, rules(Selection("lp_l1", 2), None), batchnorm_guard=False,
        example_input=example_input,
    )  # fmt: skip
    probe_layers = dict(probe.named_modules())
    spectra = {
        (name, padding): _spectrum(probe_layers[name], rec["x"], rec["g_y"], padding)
        for name, rec in exact.items()
        for padding in {s.padding for s in selections}
    }
    kinds = {name: layer_type(name, m) for name, m in model.named_modules() if name in exact}

    rows = []
    for sel in selections:
        bases = {n: sel.bases(spectra[(n, sel.padding)]) for n in layers}
        conv = copy.deepcopy(model)
        convert(
            conv, rules(sel, bases if sel.family == "lhe" else None), batchnorm_guard=False,
            example_input=example_input,
        )  # fmt: skip
        got = capture_gradients(conv, layers, loss_fn)
        for name in layers:
            e, g = exact[name], got[name]
            rows.append(
                dict(
                    layer=name,
                    layer_type=kinds[name],
                    selection=sel.label,
                    family=sel.family,
                    param=sel.param,
                    num_bases=sel.num_bases,
                    padding=sel.padding,
                    **gradient_errors(g, e),
                    energy_share=energy_share(spectra[(name, sel.padding)], bases[name]),
                )
            )
    return rows


def rule_fidelity(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: Callable[[nn.Module], torch.Tensor],
    rule_sets: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    example_input: Any = "auto",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Gradients of ``layers`` under any conversion against exact backprop: for every
    ``label -> rules`` of ``rule_sets`` a copy of ``model`` is converted by ``rules``
    (:func:`lbp_wht.convert`), run once as a warm-up (layers that calibrate on their first
    training batches, e.g. INSTANT's, or fix a projection from it, e.g. VeLoRA's, do so on this
    batch) and once measured, the global RNG seeded with ``seed`` first (methods that sample,
    e.g. WTA-CRS, draw the same rows for the same seed).

    Returns:
        One dict per (label, layer): ``layer``, ``layer_type``, ``method`` (the label),
        ``cos_gw`` / ``relerr_gw`` (NaN where the converted layer's weight is frozen, as
        under LoRA), ``cos_gx`` / ``relerr_gx`` (NaN where the input needs no gradient).
    """
    layers = list(layers)
    torch.manual_seed(seed)
    exact = capture_gradients(copy.deepcopy(model), layers, loss_fn)
    kinds = {name: layer_type(name, m) for name, m in model.named_modules() if name in exact}
    rows = []
    for label, rules in rule_sets.items():
        conv = copy.deepcopy(model)
        if rules:
            convert(conv, list(rules), batchnorm_guard=False, example_input=example_input)
        for _ in range(max(1, calibration_steps(conv))):
            loss_fn(conv).backward()
        torch.manual_seed(seed)
        got = capture_gradients(conv, layers, loss_fn)
        for name in layers:
            e, g = exact[name], got[name]
            rows.append(
                dict(
                    layer=name,
                    layer_type=kinds[name],
                    method=label,
                    **gradient_errors(g, e),
                )
            )
    return rows
