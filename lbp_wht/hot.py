"""HOT (Kim, Shin, Woo, Park, CVPR 2025, arXiv 2503.21261): Hadamard-based optimized training.

For a linear map ``y = x w^T + b`` on ``N`` token rows (``x (N, Cx)``, ``w (Cy, Cx)``), backprop
computes two products that HOT treats differently:

* weight gradient ``g_w = g_y^T x`` (contracted over the ``N`` rows): Hadamard low-rank
  approximation along the token axis (HLA). The rows are cut into ``nb = ceil(N / b)`` blocks
  of ``b`` consecutive rows (``b`` = ``hla_block``; the last block zero-padded). With
  ``S (r, b)`` the ``r`` lowest-sequency rows of the orthonormal Walsh matrix ``W_b / sqrt(b)``
  (``r`` = ``hla_rank``), each block ``X_k (b, Cx)`` becomes ``S X_k (r, Cx)`` and each
  ``G_k (b, Cy)`` becomes ``S G_k``; then

      g_w ~ sum_k (S G_k)^T (S X_k) = sum_k G_k^T (S^T S) X_k,

  one ``(Cy, nb r) x (nb r, Cx)`` GEMM. ``r = b`` is exact (``S^T S = I``). The forward saves
  only ``S X_k`` (``nb r`` rows instead of ``N``), compressed to ``act_bits``-bit integers
  (activation buffer compression: symmetric, one absmax scale per saved row, stored as
  ``int8`` plus a float32 scale per row) and dequantised in backward.
* input gradient ``g_x = g_y w`` (contracted over ``Cy``): Hadamard quantisation (HQ). With
  ``H`` the orthonormal Sylvester-Hadamard matrix of size ``h`` (``h`` = ``hq_block``;
  symmetric, ``H H = I``) applied block-diagonally along ``Cy`` (zero-padded to
  ``Cy' = ceil(Cy / h) h``),

      g_x = (g_y H) (H w) ~ s_g * (Q(g_y H) Q(H w)) * s_w,

  where ``Q`` rounds to ``grad_bits``-bit symmetric integers (``qmax = 2^(bits-1) - 1``) with
  absmax scales ``s_g`` (per row of ``g_y H``, or one per tensor) and ``s_w`` (per column of
  ``H w``, or one per tensor; ``hq_scale``). The transform spreads outliers over the block
  before rounding; no inverse is needed because the two transforms meet in the contraction.
  The integer product is simulated here as a float32 GEMM of integer-valued tensors (exact
  while ``Cy' qmax^2 < 2^24``); the cost model reports it as ``int_macs``, apart from the FP32
  FLOPs. ``grad_bits=None`` computes ``g_x = g_y w`` exactly, without transform.

``g_b = sum_rows g_y`` is exact. ``hla_rank = hla_block``, ``act_bits = None``,
``grad_bits = None`` is exact backprop.

What the papers' text gave, and what was chosen here (see docs/SUCCESSORS.md): the abstract and
summaries give the split (HQ with INT4 for ``g_x``, HLA with an INT8 activation buffer for
``g_w``) and name "layer-wise quantizer selection" without a rule that was available here. So:
the per-layer quantiser is a fixed choice per conversion rule (``hq_scale``: ``row``, the
default, or ``tensor``; different rules can give different layers different choices); HLA keeps
the lowest-sequency rows; blocks run over the flattened rows (batch and tokens together,
prefix tokens included; a block can straddle two images); rounding is to nearest (no
stochastic rounding); ``act_bits < 8`` still stores one value per ``int8`` byte (no sub-byte
packing). Defaults: ``hla_block = 16``, ``hla_rank = 8``, ``act_bits = 8``, ``grad_bits = 4``,
``hq_block = 16``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bases import walsh_matrix
from .config import HOTConfig
from .rowwise import RowwiseMixin, method_config

__all__ = [
    "HOTLinear",
    "HOTConv2d",
    "HOTMixin",
    "hadamard_matrix",
    "hla_rows",
    "hla_project",
    "quantize_symmetric",
    "hq_input_grad",
    "hot_linear",
]


def hadamard_matrix(size: int, dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix ``H (size, size)`` (natural order, entries
    ``+-1 / sqrt(size)``): symmetric, so ``H H = I``."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(size)).to(device=device, dtype=dtype)


def hla_rows(block: int, rank: int, dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """``S (rank, block)``: the ``rank`` lowest-sequency rows of the orthonormal Walsh matrix of
    size ``block`` (orthonormal rows, ``S^T S = I`` when ``rank == block``)."""
    w = walsh_matrix(block, torch.float64)[:rank] / math.sqrt(block)
    return w.to(device=device, dtype=dtype)


def hla_project(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(nb r, C)``: ``S T_k`` for the ``nb = ceil(N / b)`` blocks ``T_k (b, C)`` of
    consecutive rows of ``t (N, C)`` (the last block zero-padded), stacked block by block."""
    r, b = rows.shape
    n, c = t.shape
    nb = -(-n // b)
    if nb * b != n:
        t = F.pad(t, (0, 0, 0, nb * b - n))
    return torch.matmul(rows, t.reshape(nb, b, c)).reshape(nb * r, c)


def quantize_symmetric(
    t: torch.Tensor, bits: int, dim: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``t ~ q * scale``: ``q`` integer-valued in ``[-qmax, qmax]``
    (``qmax = 2^(bits-1) - 1``, float32), round to nearest; ``scale`` = absmax / qmax over
    the whole tensor (``dim=None``, shape ``()``) or along ``dim`` (kept as a size-1 dim), in
    float32 (1 where the absmax is 0)."""
    qmax = 2 ** (bits - 1) - 1
    t = t.float()
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = amax / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(t / scale).clamp_(-qmax, qmax), scale


#: Multiply-accumulates of the simulated integer products per layer (``id`` of the layer), while
#: :func:`count_int_macs` is active. ``FlopCounterMode`` sees that float32 GEMM as FP32 FLOPs;
#: :func:`lbp_wht.measure.measure_step` moves them to its ``int_macs``.
_INT_MACS: dict[int, int] | None = None


@contextlib.contextmanager
def count_int_macs() -> Iterator[dict[int, int]]:
    """Collect ``{id(layer): integer multiply-accumulates}`` of the HQ products run inside."""
    global _INT_MACS
    outer, _INT_MACS = _INT_MACS, {}
    try:
        yield _INT_MACS
    finally:
        _INT_MACS = outer


def hq_input_grad(
    g: torch.Tensor, w: torch.Tensor, bits: int, block: int, per_row: bool, owner: int = 0
) -> torch.Tensor:
    """HQ estimate of ``g_x = g_y w`` for ``g (N, Cy)``, ``w (Cy, Cx)`` (module docstring):
    ``s_g * (Q(g H) Q(H w)) * s_w`` with a block-diagonal Hadamard ``H`` of blocks ``block``
    along ``Cy`` (zero-padded); scales per row of ``g H`` and per column of ``H w`` if
    ``per_row``, else one per tensor. ``owner``: the layer the integer product is counted
    for (:func:`count_int_macs`)."""
    n, cy = g.shape
    cx = w.shape[1]
    nc = -(-cy // block)
    pad = nc * block - cy
    h = hadamard_matrix(block, torch.float32, g.device)
    gf, wf = g.float(), w.float()
    if pad:
        gf, wf = F.pad(gf, (0, pad)), F.pad(wf, (0, 0, 0, pad))
    gh = torch.matmul(gf.reshape(n, nc, block), h).reshape(n, nc * block)  # H symmetric
    wh = torch.matmul(h, wf.reshape(nc, block, cx)).reshape(nc * block, cx)
    qg, sg = quantize_symmetric(gh, bits, 1 if per_row else None)
    qw, sw = quantize_symmetric(wh, bits, 0 if per_row else None)
    # the integer GEMM, simulated in float32 on integer values
    if _INT_MACS is not None:
        _INT_MACS[owner] = _INT_MACS.get(owner, 0) + n * nc * block * cx
    return (qg.mm(qw) * sg * sw).to(g.dtype)


class _HOTFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        config: HOTConfig,
        owner: int,
    ) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        packed: tuple[torch.Tensor, ...] = ()
        if need_w:
            rows = hla_rows(config.hla_block, config.hla_rank, x.dtype, x.device)
            xl = hla_project(x, rows)
            if config.act_bits is not None:
                q, scale = quantize_symmetric(xl, config.act_bits, 1)
                packed = (q.to(torch.int8), scale)
            else:
                packed = (xl,)
        ctx.save_for_backward(w if need_x else None, *packed)
        ctx.config, ctx.has_bias, ctx.owner = config, b is not None, owner
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        w, *packed = ctx.saved_tensors
        c: HOTConfig = ctx.config
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if c.grad_bits is None:
                gx = g.mm(w.to(g.dtype))
            else:
                per_row = c.hq_scale == "row"
                gx = hq_input_grad(g, w, c.grad_bits, c.hq_block, per_row, ctx.owner)
        if ctx.needs_input_grad[1]:
            xl = packed[0].to(g.dtype) * packed[1].to(g.dtype) if len(packed) == 2 else packed[0]
            gl = hla_project(g, hla_rows(c.hla_block, c.hla_rank, g.dtype, g.device))
            gw = gl.t().mm(xl.to(g.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None


def hot_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    config: HOTConfig,
    owner: int = 0,
) -> torch.Tensor:
    """``x w^T + b`` on rows ``x (N, Cx)`` with HOT's backward (module docstring); ``owner``
    names the layer its integer products are counted for (:func:`count_int_macs`)."""
    return _HOTFunction.apply(x, w, b, config, owner)


class HOTMixin(RowwiseMixin):
    """HOT backward for a linear layer / 1x1 conv (module docstring)."""

    def _init_method(self, config: HOTConfig | None) -> None:
        self.hot_config = method_config(self, config, HOTConfig, "HOTConfig(hla_rank=...)")

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        return hot_linear(x, weight, bias, self.hot_config, id(self))

    def method_repr(self) -> str:
        c = self.hot_config
        return (
            f"hot hla_block={c.hla_block}, hla_rank={c.hla_rank}, act_bits={c.act_bits}, "
            f"grad_bits={c.grad_bits}, hq_block={c.hq_block}, hq_scale={c.hq_scale}"
        )


class HOTLinear(HOTMixin, nn.Linear):
    """``nn.Linear`` trained with HOT's backward (HLA + INT8 buffer for ``g_w``, HQ for ``g_x``)."""


class HOTConv2d(HOTMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` variant of :class:`HOTLinear` (rows: the ``B H W`` positions)."""
