"""Layers whose backward works on the token rows of a linear map (LoRA-FA, VeLoRA, WTA-CRS).

A linear layer on ``(..., Cx)`` and a 1x1 convolution on ``(B, Cx, H, W)`` are both one GEMM
over ``N`` rows of ``Cx`` channels (``N`` = all leading dims, resp. ``B H W`` positions).
:func:`to_rows` flattens an input to that ``(N, Cx)`` matrix and gives the inverse for the
output, so a method's autograd function is written once, for ``(N, Cx) -> (N, Cy)``.
:class:`RowwiseMixin` is the shared layer shell: construction (fresh or sharing a module's
``weight`` / ``bias``, so state-dict keys stay those of the plain layer), the input check, and
the plain operation outside training (eval mode or no grad), where no method changes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvertedLayer, check_input_features, shell_like

__all__ = ["RowwiseMixin", "to_rows"]


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


class RowwiseMixin(ConvertedLayer):
    """Shared shell of :mod:`lbp_wht.velora` and :mod:`lbp_wht.wta_crs` layers.

    A subclass defines ``_init_method(config)`` (store and check the config),
    ``_rows(x (N, Cx), weight (Cy, Cx), bias) -> (N, Cy)`` (the training computation) and
    ``method_repr()``; the concrete classes only add ``nn.Linear`` / ``nn.Conv2d`` as a base.
    """

    _conv = False

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

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        raise NotImplementedError

    def method_repr(self) -> str:
        return ""

    def _plain(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._conv:
            return F.conv2d(x, self.weight, bias)  # type: ignore[attr-defined]
        return F.linear(x, self.weight, bias)  # type: ignore[attr-defined]

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        check_input_features(
            self, x, f"{type(self).__name__} {tuple(w.shape)}", 1 if self._conv else -1
        )
        if not (self.training and torch.is_grad_enabled()):  # type: ignore[attr-defined]
            return self._plain(x, bias)
        self.converted_calls += 1
        rows, back = to_rows(x, self._conv)
        return back(self._rows(rows, w.view(w.shape[0], w.shape[1]), bias))

    def extra_repr(self) -> str:
        base = nn.Conv2d.extra_repr(self) if self._conv else nn.Linear.extra_repr(self)  # type: ignore[arg-type]
        return f"{base}, {self.method_repr()}"
