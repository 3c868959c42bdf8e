"""WTA-CRS (Liu et al., NeurIPS 2023, arXiv 2305.15265): winner-take-all column-row sampling of
the weight gradient.

For ``y = x w^T + b`` on ``N`` token rows, ``g_w = g_y^T x = sum_i g_i^T x_i`` is a sum of ``N``
outer products (one per row ``i``). WTA-CRS estimates it from ``k < N`` rows, so that only
``k`` rows of ``x`` are saved for backward:

1. forward: probabilities ``p_i = ||x_i|| / sum_j ||x_j||`` from the activation row norms
   (``g_y`` is unknown in forward, so the norm product ``||g_i|| ||x_i||`` of optimal
   column-row sampling is replaced by ``||x_i||``);
2. the ``c`` rows of largest ``p_i`` are kept deterministically (the "winners", set ``C``,
   weight 1);
3. the other ``m = k - c`` rows are drawn i.i.d. with replacement from the remaining rows with
   ``q_j = p_j / (1 - P_C)`` (``P_C = sum_{i in C} p_i``), each with weight ``1 / (m q_j)``;
4. saved: the ``k`` selected rows of ``x`` already multiplied by their weights, and their row
   indices; backward ``g_w = g_y[idx]^T x_saved``. ``g_x = g_y w`` and ``g_b`` are exact.

The estimator is unbiased: ``E[(1 / (m q_j)) g_j^T x_j] = sum_{j not in C} g_j^T x_j / m`` per
draw, and the winners are exact. Keeping all ``N`` rows (``k = N``) is exact backprop.

Choices where the paper's details were not available here (see docs/SUCCESSORS.md): ``k`` is
``WTACRSConfig.keep`` rows or ``ceil(keep_fraction N)`` per call (default 0.3); the number of
winners is ``c = floor(winner_fraction k)`` (default 0.5) rather than a data-dependent
threshold; rows are sampled over all ``N`` rows of the call (batch and tokens together, prefix
tokens included); draws use the global torch RNG, or ``layer.generator`` when set. The
weighted rows are saved in ``x``'s dtype (in float16 a weight ``1 / (m q_j)`` of a tiny-norm row
could overflow; sampling makes that row unlikely). FLOPs: ``g_w`` costs ``2 k Cx Cy`` instead of
``2 N Cx Cy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .config import WTACRSConfig
from .rowwise import RowwiseMixin, compressed_input_linear, method_config

__all__ = ["WTACRSLinear", "WTACRSConv2d", "WTACRSMixin", "wta_crs_rows"]


def wta_crs_rows(
    x: torch.Tensor, kept: int, winners: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx (k,), weight (k,))``: the rows of ``x (N, C)`` WTA-CRS keeps and their weights, so
    that ``sum_t weight_t g_{idx_t}^T x_{idx_t}`` is an unbiased estimate of ``g^T x``.

    ``kept >= N`` keeps every row with weight 1. Otherwise the ``winners`` rows of largest norm
    are kept with weight 1 and ``kept - winners`` rows are sampled from the others (needs
    ``winners < kept``).
    """
    n = x.shape[0]
    dev = x.device
    if kept >= n:
        return torch.arange(n, device=dev), torch.ones(n, device=dev)
    if not 0 <= winners < kept:
        raise ValueError(f"wta_crs_rows: need 0 <= winners < kept, got {winners}, {kept}")
    norms = x.detach().float().norm(dim=1)
    total = norms.sum()
    p = norms / total if total > 0 else torch.full((n,), 1.0 / n, device=dev)
    order = torch.argsort(p, descending=True, stable=True)
    win, rest = order[:winners], order[winners:]
    p_rest = p[rest]
    mass = p_rest.sum()
    # Rows outside C with p = 0 have x = 0 and contribute nothing; if all do, any draw is exact.
    q = p_rest / mass if mass > 0 else torch.full_like(p_rest, 1.0 / p_rest.numel())
    m = kept - winners
    draw = torch.multinomial(q, m, replacement=True, generator=generator)
    idx = torch.cat([win, rest[draw]])
    weight = torch.cat([torch.ones(winners, device=dev), 1.0 / (m * q[draw])])
    return idx, weight


class _WTACRSCodec:
    """Saves the ``k`` selected rows, weighted, and their indices; ``g_w = g_y[idx]^T x_s``."""

    def __init__(self, config: WTACRSConfig, generator: torch.Generator | None) -> None:
        self.config, self.generator = config, generator

    def compress(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        kept = self.config.rows_kept(n)
        idx, weight = wta_crs_rows(x, kept, self.config.winners(kept, n), self.generator)
        return x.index_select(0, idx) * weight.to(x.dtype).unsqueeze(1), idx

    def weight_grad(self, g: torch.Tensor, *saved: torch.Tensor) -> torch.Tensor:
        xs, idx = saved
        return g.index_select(0, idx).t().mm(xs)


class WTACRSMixin(RowwiseMixin):
    """WTA-CRS weight gradient for a linear layer / 1x1 conv (module docstring)."""

    def _init_method(self, config: WTACRSConfig | None) -> None:
        config = method_config(self, config, WTACRSConfig, "WTACRSConfig(keep_fraction=...)")
        self.wta_config = config
        self.generator: torch.Generator | None = None

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        codec = _WTACRSCodec(self.wta_config, self.generator)
        return compressed_input_linear(x, weight, bias, codec)

    def method_repr(self) -> str:
        c = self.wta_config
        keep = f"keep={c.keep}" if c.keep is not None else f"keep_fraction={c.keep_fraction:g}"
        return f"wta_crs {keep}, winner_fraction={c.winner_fraction:g}"


class WTACRSLinear(WTACRSMixin, nn.Linear):
    """``nn.Linear`` whose weight gradient is estimated by WTA-CRS from ``k`` token rows."""


class WTACRSConv2d(WTACRSMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` variant of :class:`WTACRSLinear` (rows: the ``B H W`` positions)."""
