"""VeLoRA (Miles et al., NeurIPS 2024, arXiv 2405.17991): rank-1 sub-token projections of the
activation saved for the weight gradient.

For a linear map ``y = x w^T + b`` on ``N`` token rows, backprop needs ``x`` only for
``g_w = g_y^T x``. VeLoRA saves a compressed ``x`` instead:

1. each row of ``x`` (``Cx`` channels) is cut into ``G = Cx / d`` sub-tokens of ``d``
   consecutive channels (``d`` = ``VeLoRAConfig.subtoken_size``);
2. every sub-token ``s`` is projected onto one fixed unit vector ``v`` (``d`` values, shared by
   all sub-tokens of the layer); only the coefficient ``c = <s, v>`` is saved, ``N G`` values
   instead of ``N Cx`` (a factor ``d`` smaller);
3. backward reconstructs ``x_rec`` with sub-tokens ``c v`` and computes ``g_w = g_y^T x_rec``;
   ``g_x = g_y w`` and ``g_b = sum_rows g_y`` are exact (they do not need ``x``).

Choices where the paper's details were not available here (the abstract was; see
docs/SUCCESSORS.md): ``v`` is the normalised mean sub-token of the first training batch the
layer sees (over all rows and all ``G`` groups; ``1 / sqrt(d)`` in every entry if that mean is
zero), then kept fixed. It is a non-persistent buffer (``velora_v``): state-dict keys stay those
of the plain layer, and a reloaded model re-initialises ``v`` from its first training batch
(``v`` shapes only the gradient approximation, never the forward). ``convert``'s dry forward
does not count as the first batch (:meth:`VeLoRAMixin.reset_projection` is called after it).
The weight gradient is the ordinary GEMM on the reconstructed input (the method saves memory,
not FLOPs); computing the coefficients adds ``2 N Cx`` forward FLOPs. ``d = 1`` is exact
backprop (a 1-channel sub-token is its own coefficient times ``v = +-1``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .config import VeLoRAConfig
from .rowwise import RowwiseMixin, compressed_input_linear, method_config

__all__ = ["VeLoRALinear", "VeLoRAConv2d", "VeLoRAMixin", "velora_coefficients", "initial_vector"]


def velora_coefficients(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(N, G)`` coefficients of the ``d``-channel sub-tokens of ``x (N, Cx)`` on ``v (d,)``."""
    d = v.numel()
    return torch.mm(x.reshape(-1, d), v.view(d, 1)).view(x.shape[0], -1)


def initial_vector(x: torch.Tensor, d: int) -> torch.Tensor:
    """The unit vector ``v`` from a batch ``x (N, Cx)``: its normalised mean sub-token."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.detach().reshape(-1, d).mean(0, dtype=dtype)
    norm = mean.norm()
    if not torch.isfinite(norm) or norm == 0:
        return torch.full((d,), 1.0 / math.sqrt(d), device=x.device)
    return mean / norm


class _VeLoRACodec:
    """Saves the sub-token coefficients (and ``v``); ``g_w = g_y^T x_rec``."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def compress(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return velora_coefficients(x, self.v), self.v

    def weight_grad(self, g: torch.Tensor, *saved: torch.Tensor) -> torch.Tensor:
        coeff, v = saved
        x_rec = (coeff.unsqueeze(-1) * v).view(coeff.shape[0], -1)
        return g.t().mm(x_rec)


class VeLoRAMixin(RowwiseMixin):
    """VeLoRA backward for a linear layer / 1x1 conv (module docstring)."""

    def _init_method(self, config: VeLoRAConfig | None) -> None:
        config = method_config(self, config, VeLoRAConfig, "VeLoRAConfig(subtoken_size=...)")
        cx, d = int(self.weight.shape[1]), config.subtoken_size  # type: ignore[attr-defined]
        if cx % d:
            raise ValueError(
                f"{type(self).__name__}: VeLoRA subtoken_size={d} does not divide the {cx} "
                f"input channels; choose a divisor of {cx}"
            )
        self.velora_config = config
        w = self.weight  # type: ignore[attr-defined]
        v = torch.zeros(d, device=w.device, dtype=w.dtype)
        self.register_buffer("velora_v", v, persistent=False)  # type: ignore[attr-defined]
        self.velora_ready = False

    def reset_projection(self) -> None:
        """Forget ``v``: the next training batch initialises it again."""
        self.velora_ready = False

    def _rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        if not self.velora_ready:
            v = initial_vector(x, self.velora_config.subtoken_size)
            self.velora_v.copy_(v.to(self.velora_v.dtype))
            self.velora_ready = True
        return compressed_input_linear(x, weight, bias, _VeLoRACodec(self.velora_v.to(x.dtype)))

    def method_repr(self) -> str:
        return f"velora_subtoken_size={self.velora_config.subtoken_size}"


class VeLoRALinear(VeLoRAMixin, nn.Linear):
    """``nn.Linear`` whose weight gradient uses VeLoRA-compressed inputs."""


class VeLoRAConv2d(VeLoRAMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` variant of :class:`VeLoRALinear` (sub-tokens over channels)."""
