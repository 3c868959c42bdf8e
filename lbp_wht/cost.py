"""The analytic FLOP model of backpropagation (paper Sec. 3.3, Table 1), per layer and per model.

One linear layer ``y = x w^T`` with ``x`` of shape ``(L, Cx)`` and ``w`` of shape ``(Cy, Cx)``
(a 1x1 convolution is the same with ``L = H * W``). Backpropagation computes (Eq. 2)

    g_x = g_y w        (L, Cx)     2 Cx Cy L FLOPs
    g_w = g_y^T x      (Cy, Cx)    2 Cx Cy L FLOPs

so vanilla BP costs ``4 Cx Cy L`` (Table 1, one multiply-add = 2 FLOPs). LBP-WHT (Eq. 3-5)
replaces the two products by their low-rank versions on ``R`` WHT bases per ``n x n`` patch
(``P`` patches, ``P R`` low-rank tokens):

=====================  ==========================  =================================
component              Table 1 (paper)             as executed here ("gemm")
=====================  ==========================  =================================
projection p(x), p(g)  ``(Cx + Cy) L R``           ``2 (Cx + Cy) L' R``
low-rank MM            ``4 Cx Cy R``               ``4 Cx Cy P R``
reverse projection     ``Cx L R``                  ``2 Cx L' R``
=====================  ==========================  =================================

Two accounting conventions, selected with ``convention=``:

* ``"table1"``: the paper's Table 1. The bases are +-1, so projecting one value onto one basis
  is one addition: a projection costs one FLOP per (element, basis) pair. Matrix products cost
  2 FLOPs per multiply-add.
* ``"gemm"``: what :mod:`lbp_wht.projection` actually executes and what
  ``torch.utils.flop_counter.FlopCounterMode`` counts: every projection is a GEMM with the
  (padded) basis matrix, 2 FLOPs per multiply-add. ``L'`` is the number of tokens the GEMM
  contracts over: ``H * W`` for the single-patch ``dense`` path (padding folded into the
  matrix) and the padded ``Hp * Wp`` for the multi-patch ``patch`` path.

So the counted overhead is exactly twice Table 1's on single-patch maps (the known, stated
difference); the low-rank MM is identical. For a 7x7 map (one 8x8 patch) ``P = 1``; for a 56x56
map ``P = 49``, which is why "``R``" in Table 1 must be read as ``P R`` beyond one patch.

LoRA (Hu et al. 2022, ``y = x w^T + s (x A^T) B^T``, rank ``k``) trained with ordinary autograd
costs ``2 Cx Cy L`` for ``g_x`` through the frozen ``w`` (only where ``x`` needs a gradient)
plus ``2 k L (2 Cy + Cx)`` for the adapter gradients and ``2 k L Cx`` more for the adapter's
share of ``g_x``; its extra *forward* is ``2 k L (Cx + Cy)`` (reported separately: it is
forward, not backprop). LBP-WHT + LoRA (Table 6) does all of that in the low-rank space
(see :mod:`lbp_wht.functional`).

The successor methods (:mod:`lbp_wht.lora_fa`, :mod:`lbp_wht.velora`, :mod:`lbp_wht.wta_crs`)
are costed as executed: LoRA-FA is LoRA without ``g_A`` (:func:`lora_fa_flops`); VeLoRA is
vanilla BP (``g_w`` on the reconstructed input) plus ``2 L Cx`` training-forward FLOPs for the
sub-token coefficients (its ``projection``); WTA-CRS computes ``g_w`` from ``k`` of the ``L`` rows
(:func:`wta_crs_flops`). HOT (:mod:`lbp_wht.hot`, :func:`hot_flops`) and INSTANT
(:mod:`lbp_wht.instant`, :func:`instant_flops`) add two fields that are not FP32 backprop
FLOPs and stay out of :attr:`LayerCost.total`: ``int_macs`` (HOT's low-bit multiply-accumulates
of ``g_x``; simulated on float here, so ``FlopCounterMode`` counts them as ``2 int_macs`` FLOPs)
and ``calibration`` (INSTANT's covariance GEMMs in a calibration call).

Bias gradients (a sum over tokens) and the ``1 / n^2`` scaling of ``g_hat`` are elementwise and
not counted, in line with Table 1 and the FLOP counter.

Pure PyTorch / standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "CONVENTIONS",
    "LayerCost",
    "LayerGeometry",
    "vanilla_bp_flops",
    "lbp_flops",
    "lora_flops",
    "lbp_lora_flops",
    "lora_fa_flops",
    "velora_flops",
    "wta_crs_flops",
    "hot_flops",
    "instant_flops",
    "table1",
    "layer_cost",
    "trace_linear_layers",
    "LinearLayerTracer",
    "model_cost",
    "speedup",
]

CONVENTIONS = ("table1", "gemm")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")


@dataclass
class LayerCost:
    """Backprop FLOPs of one layer, split like Table 1.

    ``vanilla``: the full-rank matrix products (plain layers, and LoRA's ``g_x`` through the
    frozen weight); ``projection`` / ``low_rank_mm`` / ``reverse_projection``: LBP-WHT's
    components; ``adapter``: LoRA adapter gradients (and their share of ``g_x``);
    ``forward_extra``: forward FLOPs the method adds on top of the plain layer (LoRA branch;
    not part of :attr:`total`, since it is forward work that inference also pays unless merged).
    ``int_macs``: low-bit integer multiply-accumulates (HOT's quantised ``g_x`` product), not
    FP32 FLOPs, so not part of :attr:`total`. ``calibration``: FP32 FLOPs of a calibration call
    (INSTANT's ``x^T x`` and ``g_y^T g_y``), paid once per calibration period, not per step, so
    not part of :attr:`total` either.
    """

    vanilla: float = 0.0
    projection: float = 0.0
    low_rank_mm: float = 0.0
    reverse_projection: float = 0.0
    adapter: float = 0.0
    forward_extra: float = 0.0
    int_macs: float = 0.0
    calibration: float = 0.0

    @property
    def overhead(self) -> float:
        """Projection + reverse projection (the paper's "overhead")."""
        return self.projection + self.reverse_projection

    @property
    def total(self) -> float:
        """Backprop FLOPs: everything but :attr:`forward_extra`."""
        return (
            self.vanilla
            + self.projection
            + self.low_rank_mm
            + self.reverse_projection
            + self.adapter
        )

    def __add__(self, other: LayerCost) -> LayerCost:
        return LayerCost(
            **{k: getattr(self, k) + getattr(other, k) for k in asdict(self)}  # type: ignore[arg-type]
        )

    def scaled(self, factor: float) -> LayerCost:
        return LayerCost(**{k: v * factor for k, v in asdict(self).items()})

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["overhead"] = self.overhead
        d["total"] = self.total
        return d


def vanilla_bp_flops(
    cx: int, cy: int, tokens: int, *, need_input_grad: bool = True, need_weight_grad: bool = True
) -> LayerCost:
    """Table 1 "Vanilla BP": ``2 Cx Cy L`` for ``g_x`` plus ``2 Cx Cy L`` for ``g_w``.

    Args:
        cx, cy: input / output channels.
        tokens: ``L`` (times the batch size for a batch): rows of ``x``.
        need_input_grad: False when ``x`` needs no gradient (e.g. the first trainable layer in
            partial training): ``g_x`` is skipped.
        need_weight_grad: False for a frozen weight.
    """
    mm = 2.0 * cx * cy * tokens
    return LayerCost(vanilla=mm * (int(need_input_grad) + int(need_weight_grad)))


def _projection_macs(
    tokens: int,
    rank: int,
    proj_tokens: int | None,
    convention: str,
    proj_macs: tuple[int, int, int, int] | None,
) -> tuple[float, tuple[int, int, int, int]]:
    """FLOPs per multiply-add of a projection (1 in Table 1: the bases are +-1; 2 as GEMMs)
    and the multiply-adds per channel of ``(p(x), p(g_y), bias row, reverse)``: ``L' R`` each
    (``L'`` for the bias row) unless ``proj_macs`` gives the executed ones ("gemm" only)."""
    if convention == "table1":
        per, lp = 1.0, tokens
    else:
        per, lp = 2.0, tokens if proj_tokens is None else proj_tokens
    if proj_macs is not None and convention == "gemm":
        return per, proj_macs
    return per, (lp * rank, lp * rank, lp, lp * rank)


def lbp_flops(
    cx: int,
    cy: int,
    tokens: int,
    rank: int,
    *,
    patches: int = 1,
    proj_tokens: int | None = None,
    extra_tokens: int = 0,
    need_input_grad: bool = True,
    need_weight_grad: bool = True,
    bias_row: bool = False,
    convention: str = "table1",
    proj_macs: tuple[int, int, int, int] | None = None,
) -> LayerCost:
    """Backprop FLOPs of an LBP-WHT layer (Table 1 rows 2-4; Eq. 3-5).

    Args:
        cx, cy: channels.
        tokens: ``L = H * W`` map tokens (per image; multiply the result by the batch).
        rank: ``R`` bases per patch.
        patches: ``P`` patches of the (padded) map; low-rank tokens are ``P * R``.
        proj_tokens: tokens a projection GEMM contracts over (``L'``, "gemm" convention only;
            default ``tokens``); use the padded ``Hp * Wp`` for the multi-patch path.
        extra_tokens: class/distillation tokens outside the map; they get exact gradients
            (``2 Cx Cy E`` per product).
        need_input_grad / need_weight_grad: as in :func:`vanilla_bp_flops`. Without an input
            gradient there is no ``g_hat w`` product and no reverse projection; the projection
            of ``x`` is needed only for ``g_w``.
        bias_row: "gemm" only: the bias gradient (a sum of ``g_y`` over tokens) is computed in
            the same GEMM as ``p(g_y)`` by an extra all-ones row of the projection matrix
            (what :meth:`WHTProjector.project` with ``bias_sum=True`` does on the dense path), adding
            ``2 Cy L'`` counted FLOPs. Table 1 does not count bias gradients.
        convention: ``"table1"`` or ``"gemm"`` (module docstring).
        proj_macs: "gemm" only: the multiply-adds per image and channel of ``p(x)``,
            ``p(g_y)``, the bias row and the reverse projection as executed
            (:func:`lbp_wht.functional.executed_macs`); replaces the ``L' R`` estimate.
    """
    _check_convention(convention)
    if not (need_input_grad or need_weight_grad):
        return LayerCost()
    lr = patches * rank
    per, (m_x, m_g, m_b, m_rev) = _projection_macs(tokens, rank, proj_tokens, convention, proj_macs)
    proj = per * cy * m_g  # p(g_y): always needed
    if need_weight_grad:
        proj += per * cx * m_x  # p(x): only for g_w
    mm = 2.0 * cx * cy * lr * (int(need_input_grad) + int(need_weight_grad))
    rev = per * cx * m_rev if need_input_grad else 0.0
    if bias_row and convention == "gemm":
        proj += per * cy * m_b
    exact = 2.0 * cx * cy * extra_tokens * (int(need_input_grad) + int(need_weight_grad))
    return LayerCost(vanilla=exact, projection=proj, low_rank_mm=mm, reverse_projection=rev)


def lora_flops(
    cx: int, cy: int, tokens: int, lora_rank: int, *, need_input_grad: bool = True
) -> LayerCost:
    """Backprop FLOPs of a LoRA layer trained with autograd (frozen ``w``, adapters ``A``, ``B``).

    ``g_x = g_y w + s (g_y B) A`` (``2 Cx Cy L + 2 k L Cx`` where ``x`` needs a gradient);
    ``g_B = s g_y^T (x A^T)`` (``2 Cy k L``), ``g_t = s g_y B`` (``2 L Cy k``),
    ``g_A = g_t^T x`` (``2 k Cx L``). ``forward_extra = 2 k L (Cx + Cy)``.
    """
    k = lora_rank
    adapter = 2.0 * k * tokens * (2 * cy + cx) + (2.0 * k * tokens * cx if need_input_grad else 0)
    return LayerCost(
        vanilla=2.0 * cx * cy * tokens if need_input_grad else 0.0,
        adapter=adapter,
        forward_extra=2.0 * k * tokens * (cx + cy),
    )


def lora_fa_flops(
    cx: int, cy: int, tokens: int, lora_rank: int, *, need_input_grad: bool = True
) -> LayerCost:
    """Backprop FLOPs of a LoRA-FA layer (frozen ``w`` and ``A``, trained ``B``).

    ``g_B = s g_y^T (x A^T)`` (``2 Cy k L``); where ``x`` needs a gradient also ``g_y w``
    (``2 Cx Cy L``, ``vanilla``) and ``s (g_y B) A`` (``2 L Cy k + 2 L k Cx``). No ``g_A``.
    ``forward_extra = 2 k L (Cx + Cy)`` as LoRA's.
    """
    k = lora_rank
    adapter = 2.0 * k * tokens * cy + (2.0 * k * tokens * (cy + cx) if need_input_grad else 0)
    return LayerCost(
        vanilla=2.0 * cx * cy * tokens if need_input_grad else 0.0,
        adapter=adapter,
        forward_extra=2.0 * k * tokens * (cx + cy),
    )


def velora_flops(
    cx: int, cy: int, tokens: int, *, need_input_grad: bool = True, need_weight_grad: bool = True
) -> LayerCost:
    """VeLoRA: vanilla BP (``g_w`` is the full GEMM on the reconstructed input; the
    reconstruction is elementwise) plus ``projection = 2 L Cx`` for the sub-token coefficients
    (only where ``g_w`` is needed). Like LBP-WHT's projection of ``x``, that GEMM runs in the
    training forward and counts as backprop work (``StepMeasurement.backprop_flops``)."""
    out = vanilla_bp_flops(
        cx, cy, tokens, need_input_grad=need_input_grad, need_weight_grad=need_weight_grad
    )
    out.projection = 2.0 * tokens * cx if need_weight_grad else 0.0
    return out


def wta_crs_flops(
    cx: int,
    cy: int,
    tokens: int,
    kept: int,
    *,
    need_input_grad: bool = True,
    need_weight_grad: bool = True,
) -> LayerCost:
    """WTA-CRS: ``g_x = g_y w`` on all ``L`` rows (``2 Cx Cy L``), ``g_w`` from the ``k`` kept
    rows (``2 Cx Cy k``), both reported as ``vanilla`` (plain GEMMs). Row norms, sampling and
    the row weights are elementwise and not counted."""
    mm = 2.0 * cx * cy
    return LayerCost(vanilla=mm * (tokens * int(need_input_grad) + kept * int(need_weight_grad)))


def hot_flops(
    cx: int,
    cy: int,
    tokens: int,
    *,
    hla_block: int,
    hla_rank: int,
    grad_bits: int | None,
    hq_block: int,
    blocks: int | None = None,
    need_input_grad: bool = True,
    need_weight_grad: bool = True,
) -> LayerCost:
    """HOT (:mod:`lbp_wht.hot`), as executed, for ``L`` = ``tokens`` rows.

    Where ``g_w`` is needed (``nb`` = ``blocks``, default ``ceil(L / b)``, ``b`` = ``hla_block``,
    ``r`` = ``hla_rank``): ``projection`` ``2 nb r b (Cx + Cy)`` (the HLA of ``x`` in forward and
    of ``g_y`` in backward) and ``low_rank_mm`` ``2 Cx Cy nb r``. Where ``g_x`` is needed: with
    ``grad_bits`` set, ``projection`` ``2 L Cy' h + 2 Cy' h Cx`` (block Hadamard of ``g_y`` and
    ``w``, ``h`` = ``hq_block``, ``Cy' = ceil(Cy / h) h``) and ``int_macs`` ``L Cy' Cx`` (not FP32
    FLOPs: outside :attr:`LayerCost.total`); without, ``vanilla`` ``2 L Cy Cx``. Quantisation
    and dequantisation are elementwise and not counted.
    """
    nb = -(-tokens // hla_block) if blocks is None else blocks
    out = LayerCost()
    if need_weight_grad:
        out.projection += 2.0 * nb * hla_rank * hla_block * (cx + cy)
        out.low_rank_mm += 2.0 * cx * cy * nb * hla_rank
    if need_input_grad:
        if grad_bits is None:
            out.vanilla += 2.0 * tokens * cy * cx
        else:
            cyp = -(-cy // hq_block) * hq_block
            out.projection += 2.0 * tokens * cyp * hq_block + 2.0 * cyp * hq_block * cx
            out.int_macs += float(tokens) * cyp * cx
    return out


def instant_flops(
    cx: int,
    cy: int,
    tokens: int,
    rank_x: int,
    rank_g: int,
    *,
    calibrating: bool = False,
    need_input_grad: bool = True,
    need_weight_grad: bool = True,
) -> LayerCost:
    """INSTANT (:mod:`lbp_wht.instant`), as executed, for ``L`` = ``tokens`` rows.

    A projected call: ``projection`` ``2 L Cx r_x`` (``x P_x`` in forward, where ``g_w`` is
    needed) ``+ 2 L Cy r_g`` (``a = g_y P_g``); ``low_rank_mm`` ``2 L r_g Cx`` (``a (P_g^T w)``,
    for ``g_x``) ``+ 2 L r_g r_x`` (``a^T x_hat``, for ``g_w``); ``reverse_projection``
    ``2 r_g Cy Cx`` (``P_g^T w``) and ``2 Cy r_g r_x + 2 Cy r_x Cx`` (``P_g M P_x^T``).
    A calibration call (``calibrating``) is exact backprop (``vanilla``) plus
    ``calibration`` ``2 L (Cx^2 + Cy^2)`` (outside :attr:`LayerCost.total`; the
    eigendecompositions are not counted).
    """
    nx, nw = need_input_grad, need_weight_grad
    if calibrating:
        out = vanilla_bp_flops(cx, cy, tokens, need_input_grad=nx, need_weight_grad=nw)
        out.calibration = 2.0 * tokens * (cx * cx + cy * cy)
        return out
    out = LayerCost()
    if not (nx or nw):
        return out
    out.projection = 2.0 * tokens * cy * rank_g + (2.0 * tokens * cx * rank_x if nw else 0.0)
    if nx:
        out.low_rank_mm += 2.0 * tokens * rank_g * cx
        out.reverse_projection += 2.0 * rank_g * cy * cx
    if nw:
        out.low_rank_mm += 2.0 * tokens * rank_g * rank_x
        out.reverse_projection += 2.0 * cy * rank_g * rank_x + 2.0 * cy * rank_x * cx
    return out


def lbp_lora_flops(
    cx: int,
    cy: int,
    tokens: int,
    rank: int,
    lora_rank: int,
    *,
    patches: int = 1,
    proj_tokens: int | None = None,
    extra_tokens: int = 0,
    need_input_grad: bool = True,
    convention: str = "table1",
    proj_macs: tuple[int, int, int, int] | None = None,
) -> LayerCost:
    """LBP-WHT + LoRA (Table 6): frozen ``w``; adapter grads and ``g_x`` in the low-rank space.

    With ``N = P R`` low-rank tokens (see :mod:`lbp_wht.functional`): ``g_hat B`` (``2 N Cy k``),
    ``g_A`` (``2 k N Cx``), ``x_hat A^T`` (``2 N Cx k``) and ``g_B`` (``2 Cy N k``); where ``x``
    needs a gradient also ``g_hat w`` (``2 N Cy Cx``, reported as ``low_rank_mm``),
    ``(g_hat B) A`` (``2 N k Cx``) and the reverse projection. Projections of ``x`` and ``g_y``
    as in :func:`lbp_flops`.

    ``extra_tokens`` ``E`` prefix tokens (class, distillation, registers) outside the map get
    exact gradients: the adapter gradients ``4 E k (Cx + Cy)`` and, where ``x`` needs a
    gradient, ``g_y w`` (``2 E Cy Cx``, reported as ``vanilla``) plus ``(g_y B) A``
    (``2 E k Cx``; ``g_y B`` is shared with ``g_A``).
    """
    _check_convention(convention)
    n = patches * rank
    k = lora_rank
    per, (m_x, m_g, _, m_rev) = _projection_macs(tokens, rank, proj_tokens, convention, proj_macs)
    adapter = 2.0 * n * k * (2 * cy + 2 * cx) + (2.0 * n * k * cx if need_input_grad else 0.0)
    e = extra_tokens
    adapter += 4.0 * e * k * (cx + cy) + (2.0 * e * k * cx if need_input_grad else 0.0)
    return LayerCost(
        vanilla=2.0 * e * cy * cx if need_input_grad else 0.0,
        projection=per * (cx * m_x + cy * m_g),
        low_rank_mm=2.0 * n * cy * cx if need_input_grad else 0.0,
        reverse_projection=per * cx * m_rev if need_input_grad else 0.0,
        adapter=adapter,
        forward_extra=2.0 * k * tokens * (cx + cy),
    )


def table1(
    cx: int = 3072, cy: int = 768, tokens: int = 49, rank: int = 8, convention: str = "table1"
) -> dict[str, float]:
    """Table 1 for one layer (default: the paper's SwinV2-small example, Sec. 3.3).

    Returns FLOPs: ``vanilla``, ``projection``, ``low_rank_mm``, ``reverse_projection``,
    ``overhead``, ``lbp_total``, ``speedup`` (vanilla / lbp_total). Paper: 462.3 vs 78.2 MFLOPs
    (1.5 / 75.5 / 1.2).
    """
    van = vanilla_bp_flops(cx, cy, tokens).total
    lbp = lbp_flops(cx, cy, tokens, rank, convention=convention)
    return dict(
        vanilla=van,
        projection=lbp.projection,
        low_rank_mm=lbp.low_rank_mm,
        reverse_projection=lbp.reverse_projection,
        overhead=lbp.overhead,
        lbp_total=lbp.total,
        speedup=van / lbp.total,
    )


# ------------------------------------------------------------------------------------------
# Per-model: find every linear layer / 1x1 conv, its geometry and what it has to compute
# ------------------------------------------------------------------------------------------
@dataclass
class LayerGeometry:
    """What one forward call of a linear layer / 1x1 conv looked like (per batch).

    ``tokens``: rows of the GEMM (batch x spatial/tokens, leading dims flattened);
    ``images``: the batch size the call belonged to (for per-image figures);
    ``method``: ``plain`` / ``lbp`` / ``lora`` / ``lbp_lora``; ``hw``, ``rank``, ``patches``,
    ``proj_tokens``, ``extra_tokens`` for LBP layers; ``lora_rank`` for LoRA (and LoRA-FA)
    layers; ``kept_rows`` (``k``) for WTA-CRS layers that compute ``g_w``. ``method`` is also
    ``lora_fa``, ``velora``, ``wta_crs``, ``hot`` or ``instant`` (those run plain in eval mode /
    without grad). ``options``: what the model needs of a HOT layer (its config as a dict, plus
    ``blocks``, the HLA blocks summed over calls) or an INSTANT layer (``rank_x``, ``rank_g``,
    ``calibrating``).
    ``need_input_grad`` / ``need_weight_grad``: whether backprop computes ``g_x`` / ``g_w``.
    """

    name: str
    kind: str
    method: str
    cx: int
    cy: int
    tokens: int
    need_input_grad: bool
    need_weight_grad: bool
    calls: int = 1
    hw: tuple[int, int] | None = None
    rank: int | None = None
    patches: int | None = None
    proj_tokens: int | None = None
    extra_tokens: int = 0
    lora_rank: int | None = None
    bias_row: bool = False
    proj_macs: tuple[int, int, int, int] | None = None
    kept_rows: int | None = None
    options: dict[str, Any] | None = None


_LORA_LIKE = ("lora", "lbp_lora", "lora_fa")


def _method_of(module: nn.Module) -> str:
    # Local imports keep this module importable on its own and avoid import cycles.
    from .hot import HOTMixin
    from .instant import INSTANTMixin
    from .layers import LBPMixin
    from .lora import LoRAMixin
    from .lora_fa import LoRAFAMixin
    from .velora import VeLoRAMixin
    from .wta_crs import WTACRSMixin

    successors = (
        (LoRAFAMixin, "lora_fa"),
        (VeLoRAMixin, "velora"),
        (WTACRSMixin, "wta_crs"),
        (HOTMixin, "hot"),
        (INSTANTMixin, "instant"),
    )
    for cls, name in successors:
        if isinstance(module, cls):
            return name
    is_lbp, is_lora = isinstance(module, LBPMixin), isinstance(module, LoRAMixin)
    if is_lbp and is_lora:
        return "lbp_lora"
    if is_lbp:
        return "lbp"
    if is_lora:
        return "lora"
    return "plain"


def _is_linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and module.groups == 1
    )


def layer_cost(geom: LayerGeometry, convention: str = "table1") -> LayerCost:
    """Analytic backprop FLOPs of one traced layer call (for the whole traced batch).

    LBP layers that run plain (eval mode, no grad, or LHE still profiling) have ``rank=None``
    and are costed as plain layers.
    """
    _check_convention(convention)
    nx, nw = geom.need_input_grad, geom.need_weight_grad
    grads = dict(need_input_grad=nx, need_weight_grad=nw)
    if geom.method in ("lbp", "lbp_lora") and geom.rank is not None:
        hw = geom.hw[0] * geom.hw[1]
        images = geom.tokens // (hw + geom.extra_tokens)
        common = dict(
            patches=geom.patches or 1,
            proj_tokens=geom.proj_tokens,
            extra_tokens=geom.extra_tokens,
            need_input_grad=nx,
            convention=convention,
            proj_macs=geom.proj_macs,
        )
        if geom.method == "lbp":
            one = lbp_flops(
                geom.cx, geom.cy, hw, geom.rank, need_weight_grad=nw, bias_row=geom.bias_row,
                **common,
            )  # fmt: skip
        else:
            one = lbp_lora_flops(geom.cx, geom.cy, hw, geom.rank, geom.lora_rank or 0, **common)
        return one.scaled(images)
    if geom.method == "lora_fa":
        return lora_fa_flops(geom.cx, geom.cy, geom.tokens, geom.lora_rank or 0, need_input_grad=nx)
    if geom.method in ("lora", "lbp_lora"):
        return lora_flops(geom.cx, geom.cy, geom.tokens, geom.lora_rank or 0, need_input_grad=nx)
    if geom.method == "velora":
        return velora_flops(geom.cx, geom.cy, geom.tokens, **grads)
    if geom.method == "wta_crs" and geom.kept_rows is not None:
        return wta_crs_flops(geom.cx, geom.cy, geom.tokens, geom.kept_rows, **grads)
    if geom.method == "hot" and geom.options is not None:
        keys = ("hla_block", "hla_rank", "grad_bits", "hq_block", "blocks")
        return hot_flops(
            geom.cx, geom.cy, geom.tokens, **{k: geom.options[k] for k in keys}, **grads
        )
    if geom.method == "instant" and geom.options is not None:
        o = geom.options
        return instant_flops(
            geom.cx, geom.cy, geom.tokens, o["rank_x"], o["rank_g"],
            calibrating=o["calibrating"], **grads,
        )  # fmt: skip
    return vanilla_bp_flops(geom.cx, geom.cy, geom.tokens, **grads)


class LinearLayerTracer:
    """Context manager recording every linear layer / 1x1 conv call made inside it.

    Whether a call needs ``g_x`` is read from the autograd state of its input at call time
    (``x.requires_grad``), whether it needs ``g_w`` from ``weight.requires_grad`` (LoRA layers:
    never; their adapters are costed separately). Layers called several times (shared modules)
    are merged into one entry with their tokens summed, so trace exactly one forward pass.
    After the context, :attr:`geoms` lists the :class:`LayerGeometry` of each layer.

    Args:
        model: the (converted) model.
        names: restrict to these qualified module names (default: all).
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        self.model = model
        self.wanted = set(names) if names is not None else None
        self.found: dict[str, LayerGeometry] = {}
        self.handles: list[Any] = []

    @property
    def geoms(self) -> list[LayerGeometry]:
        return list(self.found.values())

    def _hook_for(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            method = _method_of(module)
            w = module.weight
            cy, cx = int(w.shape[0]), int(w.shape[1])
            grad_on = torch.is_grad_enabled()
            nx = bool(grad_on and x.requires_grad)
            weight_methods = ("plain", "lbp", "velora", "wta_crs", "hot", "instant")
            nw = bool(grad_on and w.requires_grad and method in weight_methods)
            rowwise = ("velora", "wta_crs", "hot", "instant")
            if method in rowwise and not (grad_on and module.training):
                method = "plain"  # these layers run plain outside training
            if method in _LORA_LIKE:
                adapters = module.lora_A.requires_grad or module.lora_B.requires_grad
                nw = False
                if not (grad_on and (adapters or nx)):
                    nx = False
            if isinstance(module, nn.Conv2d):
                kind, tokens = "conv1x1", x.numel() // x.shape[1]
            else:
                kind, tokens = "linear", x.numel() // x.shape[-1]
            geom = LayerGeometry(name, kind, method, cx, cy, tokens, nx, nw)
            if method in _LORA_LIKE:
                geom.lora_rank = int(module.lora_rank)
            if method == "wta_crs" and nw:
                geom.kept_rows = module.wta_config.rows_kept(tokens)
            if method == "hot":
                c = module.hot_config
                geom.options = dict(c.to_dict(), blocks=-(-tokens // c.hla_block))
            if method == "instant":
                rx, rg = module.instant_ranks
                geom.options = dict(rank_x=rx, rank_g=rg, calibrating=module.calibrates_next())
            # The layer's public plan: None when it runs plain (eval, no grad), no projector
            # while LHE still profiles (costed as plain, rank None).
            plan = module.lbp_plan(x) if method in ("lbp", "lbp_lora") else None
            if plan is not None and plan.projector is not None:
                proj = plan.projector
                geom.hw, geom.rank, geom.patches = plan.map.hw, proj.rank, proj.num_patches
                geom.proj_tokens = proj.h * proj.w
                geom.extra_tokens = plan.map.prefix_tokens
                b = module.bias
                # Both projection implementations sum the bias gradient in the GEMM that reads
                # g_y (an all-ones row); the executed multiply-adds come from the function.
                geom.bias_row = bool(b is not None and b.requires_grad and grad_on)
                from .functional import executed_macs

                xi = x.detach()
                if plan.map.layout == "tokens" and xi.dim() != 3:
                    xi = xi.reshape(-1, *xi.shape[-2:])
                geom.proj_macs = executed_macs(
                    proj, xi, w, b, plan.map.layout, plan.map.prefix_tokens
                )
            old = self.found.get(name)
            if old is None:
                self.found[name] = geom
            else:
                old.tokens += geom.tokens
                if geom.kept_rows is not None:
                    old.kept_rows = (old.kept_rows or 0) + geom.kept_rows
                if geom.options is not None and old.options is not None and "blocks" in old.options:
                    old.options["blocks"] += geom.options["blocks"]
                old.calls += 1
                old.need_input_grad |= geom.need_input_grad
                old.need_weight_grad |= geom.need_weight_grad

        return hook

    def __enter__(self) -> LinearLayerTracer:
        for name, module in self.model.named_modules():
            if _is_linear_like(module) and (self.wanted is None or name in self.wanted):
                self.handles.append(module.register_forward_pre_hook(self._hook_for(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def trace_linear_layers(
    model: nn.Module, run: Callable[[], Any], names: Iterable[str] | None = None
) -> list[LayerGeometry]:
    """Run ``run()`` (one training-mode forward) under a :class:`LinearLayerTracer`."""
    with LinearLayerTracer(model, names) as tracer:
        run()
    return tracer.geoms


def _adapters_train(model: nn.Module, name: str) -> bool:
    mod = model.get_submodule(name)
    return bool(
        getattr(mod, "lora_A", None) is not None
        and (mod.lora_A.requires_grad or mod.lora_B.requires_grad)
    )


def model_cost(
    model: nn.Module,
    geoms: list[LayerGeometry],
    convention: str = "table1",
) -> dict[str, LayerCost]:
    """Analytic backprop cost of every traced layer that backprop touches, by module name.

    Layers that need neither ``g_x`` nor ``g_w`` (frozen layers with no gradient flowing in) and
    LoRA layers whose adapters are frozen are omitted.
    """
    out: dict[str, LayerCost] = {}
    for g in geoms:
        if g.method in _LORA_LIKE:
            if not _adapters_train(model, g.name) and not g.need_input_grad:
                continue
        elif not (g.need_input_grad or g.need_weight_grad):
            continue
        out[g.name] = layer_cost(g, convention)
    return out


def speedup(vanilla: float, method: float) -> float:
    """``vanilla / method`` (``nan`` when ``method`` is 0)."""
    return vanilla / method if method else math.nan
