"""LoRA baselines (Hu et al. 2022, the paper's "LoRA" / "LoRA-all") and LBP-WHT + LoRA (Table 6).

``y = x w^T + b + (alpha / r) (x A^T) B^T`` with ``A`` (r, in) Kaiming-initialised and ``B``
(out, r) zero-initialised, so a freshly converted layer computes exactly the original output.
The base weight and bias are frozen; only ``lora_A`` and ``lora_B`` train.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import LBPMixin, shell_like

__all__ = ["LoRALinear", "LoRAConv2d", "LBPLoRALinear", "LBPLoRAConv2d", "LoRAMixin"]


class LoRAMixin:
    """Adapter parameters and merging, shared by the linear and the 1x1-conv variant."""

    def _init_lora(self, rank: int = 8, alpha: float = 8.0) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        cy, cx = self.weight.shape[0], self.weight.shape[1]
        self.lora_rank, self.lora_alpha = rank, float(alpha)
        self.scaling = float(alpha) / rank
        w = self.weight
        self.lora_A = nn.Parameter(torch.empty(rank, cx, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(cy, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in the shape of ``weight``."""
        return (self.lora_B @ self.lora_A * self.scaling).view_as(self.weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapters into ``weight`` for inference (idempotent)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def lora_extra_repr(self) -> str:
        return f"lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha:g}, merged={self.merged}"


class LoRALinear(nn.Linear, LoRAMixin):
    """``nn.Linear`` with a trainable low-rank adapter; backward is ordinary autograd."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 8,
        alpha: float = 8.0,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_lora(rank, alpha)

    @classmethod
    def from_module(cls, module: nn.Linear, rank: int = 8, alpha: float = 8.0) -> LoRALinear:
        """Wrap ``module`` (sharing weight and bias) and add adapters ``lora_A``/``lora_B``."""
        new = shell_like(cls, module)
        new._init_lora(rank, alpha)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self.lora_extra_repr()}"


class LoRAConv2d(nn.Conv2d, LoRAMixin):
    """1x1 ``nn.Conv2d`` with a trainable low-rank adapter (the hybrid models' "linear" layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        rank: int = 8,
        alpha: float = 8.0,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, 1, bias=bias)
        self._init_lora(rank, alpha)

    @classmethod
    def from_module(cls, module: nn.Conv2d, rank: int = 8, alpha: float = 8.0) -> LoRAConv2d:
        new = shell_like(cls, module)
        new._init_lora(rank, alpha)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias)
        if self.merged:
            return y
        r, cx, cy = self.lora_rank, self.in_channels, self.out_channels
        t = F.conv2d(x, self.lora_A.view(r, cx, 1, 1))
        return y + self.scaling * F.conv2d(t, self.lora_B.view(cy, r, 1, 1))

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self.lora_extra_repr()}"


class LBPLoRALinear(LoRALinear, LBPMixin):
    """LoRA adapters trained with LBP-WHT backward (paper Table 6, "LP_L1-r + LoRA-all").

    The frozen weight is never updated; ``g_x`` and the adapters' gradients are computed from
    the projected input and output gradient (see :mod:`lbp_wht.functional`).
    """

    @classmethod
    def from_module(
        cls, module: nn.Linear, rank: int = 8, alpha: float = 8.0, **lbp
    ) -> LBPLoRALinear:
        new = shell_like(cls, module)
        new._init_lora(rank, alpha)
        new._init_lbp(**lbp)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return self._lbp_apply(
            x, super().forward, lora_a=self.lora_A, lora_b=self.lora_B, scaling=self.scaling
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.lbp_extra_repr()}"


class LBPLoRAConv2d(LoRAConv2d, LBPMixin):
    """1x1-conv variant of :class:`LBPLoRALinear`."""

    _layout = "nchw"

    @classmethod
    def from_module(
        cls, module: nn.Conv2d, rank: int = 8, alpha: float = 8.0, **lbp
    ) -> LBPLoRAConv2d:
        new = shell_like(cls, module)
        new._init_lora(rank, alpha)
        new._init_lbp(**lbp)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.conv2d(x, self.weight, self.bias)
        return self._lbp_apply(
            x, super().forward, lora_a=self.lora_A, lora_b=self.lora_B, scaling=self.scaling
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.lbp_extra_repr()}"
