"""INSTANT (ICLR 2026, OpenReview P2q6Y7UweV): compressing gradients and activations onto
calibrated low-rank subspaces.

For a linear map ``y = x w^T + b`` on ``N`` token rows (``x (N, Cx)``, ``g_y (N, Cy)``,
``w (Cy, Cx)``), INSTANT projects the activation and the output gradient onto orthonormal
channel bases ``P_x (Cx, r_x)`` and ``P_g (Cy, r_g)`` (``P^T P = I``) and computes both
gradients in that subspace:

    x_hat = x P_x                     (N, r_x)   computed in forward; the only saved activation
    a     = g_y P_g                   (N, r_g)
    g_x   = a (P_g^T w)               (N, Cx)    = g_y P_g P_g^T w
    g_w   = P_g (a^T x_hat) P_x^T     (Cy, Cx)   = (g_y P_g P_g^T)^T (x P_x P_x^T)
    g_b   = sum_rows g_y                         (exact)

With ``r_x = Cx`` and ``r_g = Cy`` the bases are square orthogonal matrices and this is exact
backprop. FLOPs: ``2 N (Cx r_x + Cy r_g)`` for the projections, ``2 N r_g (r_x + Cx)`` for the
two low-rank products, ``2 Cy r_g (Cx + r_x) + 2 Cy r_x Cx`` for the basis-side products
(``P_g^T w``, ``P_g M``, ``(P_g M) P_x^T``), against ``4 N Cx Cy`` for exact backprop.

Calibration: the first ``calibration_batches`` training calls of a layer run exact backprop and
sum ``C_x = x^T x`` (in forward) and ``C_g = g_y^T g_y`` (in backward), in float32 or wider;
after the backward of the last one, ``P_x`` / ``P_g`` are the eigenvectors of the ``r_x`` /
``r_g`` largest eigenvalues of ``C_x`` / ``C_g`` (``torch.linalg.eigh``: the principal
subspace, i.e. a truncated SVD of the stacked calibration rows). After ``recalibrate_every``
projected calls (0: never) the layer calibrates again. Calibration costs ``2 N Cx^2`` (forward)
``+ 2 N Cy^2`` (backward) GEMM FLOPs per calibration call, reported by the cost model as a
separate ``calibration`` field (not part of the per-step total; amortise it over the
calibration period), plus the two eigendecompositions (``O(Cx^3 + Cy^3)``, not counted by
``FlopCounterMode`` nor by the model).

What the papers' text gave, and what was chosen here (see docs/SUCCESSORS.md): the abstract
and a summary give "project x and g_y onto calibrated orthonormal low-rank bases and compute in
the compressed representation", a "low-cost calibration", and that the per-step SVD is avoided.
The method section was not available; so: channel-space bases (not token-space: ``N`` changes
with the batch); covariance eigendecomposition over the calibration calls; one ``rank`` for
both sides, capped at each side's channel count (``r_x = min(r, Cx)``, ``r_g = min(r, Cy)``);
calibration calls are exact backprop (``g_y`` is only seen in backward); the bases and the
calibration sums are not persistent (state-dict keys stay the plain layer's; a reloaded model
calibrates again); ``convert``'s dry forward is not a calibration call
(:meth:`INSTANTMixin.reset_projection` runs after it). A layer called several times per step
counts each call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import INSTANTConfig
from .rowwise import RowwiseMixin, method_config

__all__ = [
    "INSTANTLinear",
    "INSTANTConv2d",
    "INSTANTMixin",
    "principal_basis",
    "instant_linear",
    "calibration_steps",
]


def principal_basis(cov: torch.Tensor, rank: int) -> torch.Tensor:
    """``(C, rank)``: orthonormal eigenvectors of the ``rank`` largest eigenvalues of the
    symmetric ``cov (C, C)``, largest first.

    Solved in float64 (a covariance of ReLU-type activations has many equal, often zero,
    eigenvalues, on which float32 ``eigh`` can fail to converge); if ``eigh`` still fails, the
    left singular vectors of the positive semi-definite ``cov`` (the same eigenvectors, in
    descending order) are used.

    Raises:
        FloatingPointError: ``cov`` holds NaN or inf (the calibration batch had non-finite
            activations or gradients).
    """
    c = cov.double()
    if not bool(torch.isfinite(c).all()):
        raise FloatingPointError(
            "INSTANT calibration: the covariance holds NaN or inf (non-finite activations or "
            "gradients in the calibration batch); fix the training's numerics first"
        )
    c = 0.5 * (c + c.t())
    try:
        _, vecs = torch.linalg.eigh(c)
        return vecs[:, -rank:].flip(1).to(cov.dtype)
    except torch.linalg.LinAlgError:
        vecs = torch.linalg.svd(c)[0]
        return vecs[:, :rank].to(cov.dtype).contiguous()


class _ProjectedLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        px: torch.Tensor,
        pg: torch.Tensor,
    ) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x_hat = x.mm(px) if need_w else None
        ctx.save_for_backward(w if need_x else None, x_hat, px if need_w else None, pg)
        ctx.has_bias = b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        w, x_hat, px, pg = ctx.saved_tensors
        gx = gw = gb = None
        pg = pg.to(g.dtype)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        a = g.mm(pg) if need_x or need_w else None
        if need_x:
            gx = a.mm(pg.t().mm(w.to(g.dtype)))
        if need_w:
            m = a.t().mm(x_hat.to(g.dtype))
            gw = pg.mm(m).mm(px.to(g.dtype).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None


def instant_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    px: torch.Tensor,
    pg: torch.Tensor,
) -> torch.Tensor:
    """``x w^T + b`` on rows ``x (N, Cx)``; backward in the subspace of the bases
    ``px (Cx, r_x)``, ``pg (Cy, r_g)`` (module docstring). Only ``x px`` is saved."""
    return _ProjectedLinear.apply(x, w, b, px, pg)


class _CalibratingLinear(torch.autograd.Function):
    """Exact backprop that adds ``g_y^T g_y`` to the layer's calibration sum in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, layer: Any
    ) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(w if need_x else None, x if need_w else None)
        ctx.layer, ctx.has_bias = layer, b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        w, x = ctx.saved_tensors
        ctx.layer._calibrate_backward(g)
        gx = g.mm(w.to(g.dtype)) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(x.to(g.dtype)) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def _covariance(t: torch.Tensor) -> torch.Tensor:
    """``t^T t`` of ``t (N, C)`` in float32 or wider (autocast off: a bfloat16 sum would lose
    the small eigenvalues' directions)."""
    t = t.detach()
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    with torch.autocast(t.device.type, enabled=False):
        return t.t().mm(t)


class INSTANTMixin(RowwiseMixin):
    """INSTANT backward for a linear layer / 1x1 conv (module docstring).

    State (not in the state dict): ``instant_px (Cx, r_x)`` and ``instant_pg (Cy, r_g)``
    (non-persistent buffers), ``instant_ready`` (bases calibrated), the calibration sums while
    calibrating, and ``instant_calls`` (projected calls since the last calibration).
    """

    def _init_method(self, config: INSTANTConfig | None) -> None:
        config = method_config(self, config, INSTANTConfig, "INSTANTConfig(rank=...)")
        self.instant_config = config
        w = self.weight  # type: ignore[attr-defined]
        cy, cx = int(w.shape[0]), int(w.shape[1])
        self.instant_ranks = (min(config.rank, cx), min(config.rank, cy))
        kw = dict(device=w.device, dtype=w.dtype)
        px = torch.zeros(cx, self.instant_ranks[0], **kw)
        pg = torch.zeros(cy, self.instant_ranks[1], **kw)
        self.register_buffer("instant_px", px, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("instant_pg", pg, persistent=False)  # type: ignore[attr-defined]
        self.reset_projection()

    def reset_projection(self) -> None:
        """Forget the bases: the next training calls calibrate them again."""
        self.instant_ready = False
        self.instant_calls = 0
        self._cov_x: torch.Tensor | None = None
        self._cov_g: torch.Tensor | None = None
        self._seen_g = 0

    def _calibrate_backward(self, g: torch.Tensor) -> None:
        cov = _covariance(g)
        self._cov_g = cov if self._cov_g is None else self._cov_g + cov
        self._seen_g += 1
        if self._seen_g >= self.instant_config.calibration_batches and self._cov_x is not None:
            rx, rg = self.instant_ranks
            self.instant_px.copy_(principal_basis(self._cov_x, rx).to(self.instant_px.dtype))
            self.instant_pg.copy_(principal_basis(self._cov_g, rg).to(self.instant_pg.dtype))
            self._cov_x = self._cov_g = None  # free the C^2 sums
            self._seen_g = 0
            self.instant_ready, self.instant_calls = True, 0

    def calibrates_next(self) -> bool:
        """Whether the next training call calibrates (exact backprop) instead of projecting."""
        every = self.instant_config.recalibrate_every
        return not self.instant_ready or bool(every and self.instant_calls >= every)

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        if self.instant_ready and self.calibrates_next():
            self.reset_projection()
        if not self.instant_ready:
            cov = _covariance(x)
            self._cov_x = cov if self._cov_x is None else self._cov_x + cov
            return _CalibratingLinear.apply(x, weight, bias, self)
        self.instant_calls += 1
        px, pg = self.instant_px.to(x.dtype), self.instant_pg.to(x.dtype)
        return instant_linear(x, weight, bias, px, pg)

    def method_repr(self) -> str:
        c = self.instant_config
        return (
            f"instant rank={c.rank}, calibration_batches={c.calibration_batches}, "
            f"recalibrate_every={c.recalibrate_every}"
        )


def calibration_steps(model: nn.Module) -> int:
    """Training steps ``model``'s INSTANT layers run exact backprop for while they calibrate
    (the most ``calibration_batches`` among them; 0 without INSTANT layers): a measurement
    of the projected step runs this many steps first."""
    return max(
        (
            m.instant_config.calibration_batches
            for m in model.modules()
            if isinstance(m, INSTANTMixin)
        ),
        default=0,
    )


class INSTANTLinear(INSTANTMixin, nn.Linear):
    """``nn.Linear`` whose gradients are computed on calibrated low-rank channel subspaces."""


class INSTANTConv2d(INSTANTMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` variant of :class:`INSTANTLinear` (rows: the ``B H W`` positions)."""
