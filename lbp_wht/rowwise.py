"""Layers whose backward works on the token rows of a linear map (LoRA-FA, VeLoRA, WTA-CRS,
HOT, INSTANT).

A linear layer on ``(..., Cx)`` and a 1x1 convolution on ``(B, Cx, H, W)`` are both one GEMM
over ``N`` rows of ``Cx`` channels (``N`` = all leading dims, resp. ``B H W`` positions).
:func:`to_rows` flattens an input to that ``(N, Cx)`` matrix and gives the inverse for the
output, so a method's autograd function is written once, for ``(N, Cx) -> (N, Cy)``.
:class:`PlainShell` is the shared construction (fresh, or sharing a module's ``weight`` /
``bias``, so state-dict keys stay those of the plain layer); :class:`RowwiseMixin` adds the
input check and the plain operation outside training (eval mode or no grad), where no method
changes anything.
:func:`compressed_input_linear` is the autograd function of methods that only change what is
saved for ``g_w`` (VeLoRA, WTA-CRS): ``g_x`` and ``g_b`` stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvertedLayer, shell_like

__all__ = [
    "InputCodec",
    "RowwiseMixin",
    "compressed_input_linear",
    "PlainShell",
    "method_config",
    "to_rows",
]


def to_rows(
    x: torch.Tensor, conv: bool
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(rows (N, C), back)``: ``back(y_rows)`` puts an ``(N, C')`` result into ``x``'s shape
    (channels last for a linear input, in dim 1 for an NCHW conv input)."""
    if conv:
        xt = x.movedim(1, -1)
        lead = xt.shape[:-1]
        return xt.reshape(-1, xt.shape[-1]), lambda y: y.reshape(*lead, y.shape[-1]).movedim(-1, 1)
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1]), lambda y: y.reshape(*lead, y.shape[-1])


class InputCodec(Protocol):
    """What a method saves of ``x (N, Cx)`` for the weight gradient, and how it uses it."""

    def compress(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors saved for backward in place of ``x``."""
        ...

    def weight_grad(self, g: torch.Tensor, *saved: torch.Tensor) -> torch.Tensor:
        """``g_w (Cy, Cx)`` (exact or estimated) from ``g_y (N, Cy)`` and the saved tensors."""
        ...


class _CompressedInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, codec: InputCodec
    ) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        packed = codec.compress(x) if need_w else ()
        ctx.save_for_backward(w if need_x else None, *packed)
        ctx.codec, ctx.has_bias = codec, b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        w, *packed = ctx.saved_tensors
        # Casts are no-ops unless autocast made g_y's dtype differ from the saved tensors'.
        gx = g.mm(w.to(g.dtype)) if ctx.needs_input_grad[0] else None
        packed = [t.to(g.dtype) if t.is_floating_point() else t for t in packed]
        gw = ctx.codec.weight_grad(g, *packed) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def compressed_input_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, codec: InputCodec
) -> torch.Tensor:
    """``x w^T + b`` on rows ``x (N, Cx)``; backward: ``g_x = g_y w``, ``g_b = sum g_y`` exact,
    ``g_w = codec.weight_grad(g_y, *codec.compress(x))`` (``compress`` runs in forward, only
    when ``w`` needs a gradient; ``x`` itself is not saved)."""
    return _CompressedInputLinear.apply(x, w, b, codec)


def method_config(layer: nn.Module, config: Any, cls: type, example: str) -> Any:
    """``config`` (``cls()`` for None), or a ``TypeError`` naming ``layer`` and ``example``."""
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise TypeError(
            f"{type(layer).__name__}: options must be a {cls.__name__}, got "
            f"{type(config).__name__} (build one with {example})"
        )
    return config


class PlainShell:
    """Construction of a converted layer: the plain ``nn.Linear`` / 1x1 ``nn.Conv2d``
    constructor (or, with :meth:`from_module`, the weight and bias Parameters of an existing
    module), then ``_init_method(config)``, which the method defines."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: Any = None,
        *,
        device: object = None,
        dtype: object = None,
    ) -> None:
        kw: dict[str, Any] = dict(bias=bias, device=device, dtype=dtype)
        if self._conv:
            nn.Conv2d.__init__(self, in_features, out_features, 1, **kw)  # type: ignore[arg-type]
        else:
            nn.Linear.__init__(self, in_features, out_features, **kw)  # type: ignore[arg-type]
        self._init_method(config)

    @classmethod
    def from_module(cls, module: nn.Module, config: Any = None) -> Any:
        """Wrap ``module`` (sharing its weight and bias Parameters)."""
        new = shell_like(cls, module)
        new._init_method(config)
        return new

    def _init_method(self, config: Any) -> None:
        raise NotImplementedError


class RowwiseMixin(PlainShell, ConvertedLayer):
    """Shared shell of :mod:`lbp_wht.velora`, :mod:`lbp_wht.wta_crs`, :mod:`lbp_wht.hot` and
    :mod:`lbp_wht.instant` layers.

    A subclass defines ``_init_method(config)`` (store and check the config),
    ``_rows(x (N, Cx), weight (Cy, Cx), bias) -> (N, Cy)`` (the training computation) and
    ``method_repr()``; the concrete classes only add ``nn.Linear`` / ``nn.Conv2d`` as a base.
    """

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        raise NotImplementedError

    def method_repr(self) -> str:
        return ""

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        self._check_features(x)
        if not (self.training and torch.is_grad_enabled()):  # type: ignore[attr-defined]
            return self._plain(x, bias)
        self.converted_calls += 1
        rows, back = to_rows(x, self._conv)
        return back(self._rows(rows, w.view(w.shape[0], w.shape[1]), bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.method_repr()}"  # type: ignore[misc]
