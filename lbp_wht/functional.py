"""The LBP-WHT autograd function (Algorithm 1) for linear layers and 1x1 convolutions.

Forward is the ordinary layer. Backward replaces the two full-rank matmuls of Eq. 2 by their
low-rank versions (Eq. 3-5):

    x_hat = p(x)          (B, P*R, Cx)   saved in forward instead of x
    g_hat = p(g_y) / n^2  (B, P*R, Cy)
    g_w   = g_hat^T x_hat                (Cy, Cx)     no reverse projection needed
    g_x   = p^-1(g_hat w)                back to (B, L, Cx)

The bias gradient is exact (a plain sum of g_y). Leading prefix tokens (class, distillation,
register tokens) are not part of the map: a *copy* of them (``(B, E, Cx)``, never a view, which
would keep all of ``x`` alive) is saved and they get exact gradients.

With LoRA adapters (``y = x w^T + s (x A^T) B^T``, Table 6 "LBP + LoRA-all") the adapter
gradients and the input gradient are computed in the same low-rank space:
``g_A = s (g_hat B)^T x_hat``, ``g_B = s g_hat^T (x_hat A^T)``,
``g_x = p^-1(g_hat w + s (g_hat B) A)``.

Layouts: ``tokens`` ``(B, E + H*W, C)``, ``nchw`` ``(B, C, H, W)`` (1x1 conv) and ``nhwc``
``(B, H, W, C)`` (a linear layer on a channels-last map, read without a copy where its strides
allow). The backward is first-order only: it is marked once-differentiable, so asking for a
second derivative (``create_graph=True`` and differentiating again) raises instead of silently
returning a wrong one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .projection import WHTProjector

__all__ = ["lbp_forward", "LAYOUTS"]

LAYOUTS = ("tokens", "nchw", "nhwc")


def _as_map(t: torch.Tensor, layout: str) -> tuple[torch.Tensor, str]:
    """``t`` in a layout the projector reads (``tokens`` or ``nchw``), without a copy if possible.

    NHWC ``(B, H, W, C)``: a contiguous tensor is a ``(B, H*W, C)`` view; a permuted NCHW tensor
    (e.g. ConvNeXt's ``x.permute(0, 2, 3, 1)``) is read back as NCHW.
    """
    if layout != "nhwc":
        return t, layout
    b, h, w, c = t.shape
    if t.is_contiguous():
        return t.view(b, h * w, c), "tokens"
    nchw = t.permute(0, 3, 1, 2)
    if nchw.is_contiguous():
        return nchw, "nchw"
    return t.reshape(b, h * w, c), "tokens"


class _LBPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, projector, layout, extra, scaling):
        cy, cx = weight.shape[0], weight.shape[1]
        if layout == "nchw":
            w4 = weight.view(cy, cx, 1, 1)
            y = F.conv2d(x, w4, bias)
            if lora_a is not None:
                t = F.conv2d(x, lora_a.view(-1, cx, 1, 1))
                y = y + scaling * F.conv2d(t, lora_b.view(cy, -1, 1, 1))
        else:
            y = F.linear(x, weight, bias)
            if lora_a is not None:
                y = y + scaling * F.linear(F.linear(x, lora_a), lora_b)
        need_w = weight.requires_grad
        need_lora = lora_a is not None and (lora_a.requires_grad or lora_b.requires_grad)
        x_hat = x_extra = None
        if need_w or need_lora:
            main = x[:, extra:] if extra else x
            # Only the projected input is kept for backward, as contiguous rows (B * P * R, Cx)
            # instead of x (B, L, Cx): the saved activation shrinks by L / (P * R).
            src, src_layout = _as_map(main, layout)
            x_hat = projector.project(src, src_layout).reshape(-1, cx)
            if extra:
                x_extra = x[:, :extra].clone()  # a copy: a view would keep all of x alive
        ctx.projector, ctx.layout, ctx.extra, ctx.scaling = projector, layout, extra, scaling
        ctx.x_dtype = x.dtype
        ctx.x_shape = tuple(x.shape)
        ctx.save_for_backward(x_hat, x_extra, weight, lora_a, lora_b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y):
        x_hat2, x_extra, weight, lora_a, lora_b = ctx.saved_tensors
        proj: WHTProjector = ctx.projector
        layout, extra, s = ctx.layout, ctx.extra, ctx.scaling
        bsz = ctx.x_shape[0]
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        dt = g_y.dtype
        cy, cx = weight.shape[0], weight.shape[1]
        # Casts are no-ops (no copy) unless autocast made g_y's dtype differ.
        w2 = weight.view(cy, cx).to(dt)
        a = lora_a.to(dt) if lora_a is not None else None
        b = lora_b.to(dt) if lora_b is not None else None
        if x_hat2 is not None:
            x_hat2 = x_hat2.to(dt)

        if extra:
            g_main, g_extra = g_y[:, extra:], g_y[:, :extra]
            ge2 = g_extra.reshape(-1, cy)
            xe2 = x_extra.reshape(-1, cx).to(dt) if x_extra is not None else None
        else:
            g_main, g_extra, ge2, xe2 = g_y, None, None, None
        # Eq. 3 (1/n^2 folded into the matrix) and, in the same GEMM, the exact bias gradient.
        g_src, g_layout = _as_map(g_main, layout)
        if need_b:
            g_hat, g_sum = proj.project(g_src, g_layout, grad=True, bias_sum=True)
        else:
            g_hat, g_sum = proj.project(g_src, g_layout, grad=True), None
        g_hat2 = g_hat.reshape(-1, cy)  # (B*P*R, Cy)

        grad_x = grad_w = grad_b = grad_a = grad_bb = None
        if need_b:
            grad_b = g_sum if ge2 is None else g_sum + ge2.sum(0)
        if need_w:  # Eq. 4: g_w = g_hat^T x_hat, one GEMM with K = B * P * R
            grad_w = torch.mm(g_hat2.t(), x_hat2)
            if ge2 is not None:
                grad_w = torch.addmm(grad_w, ge2.t(), xe2)
            grad_w = grad_w.view_as(weight).to(weight.dtype)
        gb = None  # g_hat B, shared by g_A and g_x
        if a is not None and (need_a or need_x):
            gb = g_hat2 @ b  # (N, r)
        if need_a:
            grad_a = s * (gb.t() @ x_hat2)
            if ge2 is not None:
                grad_a = grad_a + s * ((ge2 @ b).t() @ xe2)
            grad_a = grad_a.to(lora_a.dtype)
        if need_bb:
            grad_bb = s * (g_hat2.t() @ (x_hat2 @ a.t()))
            if ge2 is not None:
                grad_bb = grad_bb + s * (ge2.t() @ (xe2 @ a.t()))
            grad_bb = grad_bb.to(lora_b.dtype)
        if need_x:  # Eq. 4 (g_hat w) then Eq. 5 (reverse projection)
            gx_hat = torch.mm(g_hat2, w2)
            if gb is not None:
                gx_hat = torch.addmm(gx_hat, gb, a, alpha=s)
            back_layout = "nchw" if layout == "nchw" else "tokens"
            grad_x = proj.project_back(gx_hat.view(bsz, -1, cx), back_layout)
            if layout == "nhwc":
                grad_x = grad_x.view(ctx.x_shape)
            if extra:
                gx_extra = g_extra @ w2
                if a is not None:
                    gx_extra = gx_extra + s * ((g_extra @ b) @ a)
                grad_x = torch.cat([gx_extra, grad_x], dim=1)
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_w, grad_b, grad_a, grad_bb, None, None, None, None


def lbp_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    projector: WHTProjector,
    layout: str = "tokens",
    prefix_tokens: int = 0,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scaling: float = 1.0,
) -> torch.Tensor:
    """Apply a linear layer / 1x1 conv whose backward runs in the WHT low-rank space.

    Args:
        x: ``(B, E + H*W, Cx)`` tokens (``layout="tokens"``), ``(B, Cx, H, W)`` (``"nchw"``)
            or ``(B, H, W, Cx)`` (``"nhwc"``).
        weight: ``(Cy, Cx)`` or ``(Cy, Cx, 1, 1)``.
        bias: ``(Cy,)`` or None.
        projector: the :class:`WHTProjector` for the ``(H, W)`` map.
        layout: see above.
        prefix_tokens: ``E`` leading tokens excluded from the projection (exact gradients;
            tokens layout only).
        lora_a, lora_b: optional adapters ``(r, Cx)``, ``(Cy, r)`` with ``scaling = alpha / r``.

    Returns:
        ``y`` of shape ``(B, E + H*W, Cy)``, ``(B, Cy, H, W)`` or ``(B, H, W, Cy)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if prefix_tokens and layout != "tokens":
        raise ValueError(f"prefix_tokens={prefix_tokens} needs layout='tokens', got {layout!r}")
    return _LBPFunction.apply(
        x, weight, bias, lora_a, lora_b, projector, layout, prefix_tokens, scaling
    )
