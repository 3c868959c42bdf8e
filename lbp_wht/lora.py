"""LoRA baselines (Hu et al. 2022, the paper's "LoRA" / "LoRA-all") and LBP-WHT + LoRA (Table 6).

``y = x w^T + b + (alpha / k) (dropout(x) A^T) B^T`` with ``A`` (k, in) Kaiming-initialised and
``B`` (out, k) zero-initialised, so a freshly converted layer computes exactly the original
output. The base weight and bias are frozen; only ``lora_A`` and ``lora_B`` train. The options
are a :class:`~lbp_wht.config.LoRAConfig` (``rank`` k, ``alpha``, ``dropout``).

Merging folds ``(alpha / k) B A`` into ``weight`` for inference. A merged layer's state dict
carries ``<layer>.lora_merged`` (a bool tensor), so loading it into a fresh layer does not add
the adapters a second time; loading any state dict first un-merges, so partial loads (adapters
only) always combine with the pure base weight.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LBPConfig, LoRAConfig
from .geometry import MapGeometry
from .layers import ConvertedLayer, LBPMixin, shell_like

__all__ = [
    "LoRALinear",
    "LoRAConv2d",
    "LBPLoRALinear",
    "LBPLoRAConv2d",
    "LoRAMixin",
    "MERGED_KEY",
]

#: State-dict key suffix present (True) only on merged LoRA layers.
MERGED_KEY = "lora_merged"

_L = TypeVar("_L", bound=nn.Module)


class LoRAMixin(ConvertedLayer):
    """Adapter parameters, dropout and merging, shared by the linear and the 1x1-conv variant."""

    #: parameters :func:`lbp_wht.freeze` keeps frozen whatever the patterns say
    FROZEN: tuple[str, ...] = ("weight", "bias")

    def _init_lora(self, config: LoRAConfig | None) -> None:
        config = LoRAConfig() if config is None else config
        if not isinstance(config, LoRAConfig):
            raise TypeError(
                f"{type(self).__name__}: LoRA options must be a LoRAConfig, got "
                f"{type(config).__name__} (build one with LoRAConfig(rank=..., alpha=...))"
            )
        cy, cx = self.weight.shape[0], self.weight.shape[1]
        self.lora_config = config
        self.lora_rank, self.lora_alpha = config.rank, config.alpha
        self.scaling = config.scaling
        w = self.weight
        self.lora_A = nn.Parameter(torch.empty(config.rank, cx, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(cy, config.rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / k) B A`` in the shape of ``weight``."""
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

    def _adapter(self, x: torch.Tensor) -> torch.Tensor:
        """``s B A dropout(x)`` through the layer's own operation (linear or 1x1 conv)."""
        p = self.lora_config.dropout
        if p:
            x = F.dropout(x, p, self.training)
        if self._conv:
            k, cx, cy = self.lora_rank, self.in_channels, self.out_channels
            t = F.conv2d(x, self.lora_A.view(k, cx, 1, 1))
            return self.scaling * F.conv2d(t, self.lora_B.view(cy, k, 1, 1))
        return self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    @classmethod
    def from_module(cls: type[_L], module: nn.Module, config: LoRAConfig | None = None) -> _L:
        """Wrap ``module`` (sharing weight and bias) and add adapters ``lora_A``/``lora_B``."""
        new = shell_like(cls, module)
        new._init_lora(config)  # type: ignore[attr-defined]
        return new

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        self._check_features(x)
        return self._lora_forward(x, bias)

    def _lora_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = self._plain(x, bias)
        if self.merged:
            return y
        self.converted_calls += 1
        return y + self._adapter(x)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if self.merged:
            destination[prefix + MERGED_KEY] = torch.tensor(True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # args: local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        key = prefix + MERGED_KEY
        names = ("weight", "bias", "lora_A", "lora_B", MERGED_KEY)
        if not any(prefix + n in state_dict for n in names):  # nothing for this layer
            super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
            return
        incoming_merged = bool(state_dict[key]) if key in state_dict else False
        was_merged = self.merged
        self.unmerge()  # so that what is loaded combines with the pure base weight
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        if key in args[3]:  # unexpected_keys
            args[3].remove(key)
        has_weight = prefix + "weight" in state_dict
        if incoming_merged and has_weight:
            self.merged = True  # the loaded weight already holds the adapters
        elif incoming_merged or (was_merged and not has_weight):
            self.merge()  # adapters loaded onto a pure weight: merge as before

    def lora_extra_repr(self) -> str:
        c = self.lora_config
        return f"lora_rank={c.rank}, lora_alpha={c.alpha:g}, dropout={c.dropout:g}, merged={self.merged}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.lora_extra_repr()}"  # type: ignore[misc]


class LoRALinear(LoRAMixin, nn.Linear):
    """``nn.Linear`` with a trainable low-rank adapter; backward is ordinary autograd."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: LoRAConfig | None = None,
        *,
        device: object = None,
        dtype: object = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_lora(config)


class LoRAConv2d(LoRAMixin, nn.Conv2d):
    """1x1 ``nn.Conv2d`` with a trainable low-rank adapter (the hybrid models' "linear" layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        config: LoRAConfig | None = None,
        *,
        device: object = None,
        dtype: object = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype
        )
        self._init_lora(config)


class _LBPLoRAMixin(LBPMixin):
    """LoRA adapters trained with LBP-WHT backward (paper Table 6, "LP_L1-r + LoRA-all").

    The frozen weight is never updated; ``g_x`` and the adapters' gradients are computed from
    the projected input and output gradient (see :mod:`lbp_wht.functional`).
    """

    @classmethod
    def from_module(  # type: ignore[override]
        cls: type[_L],
        module: nn.Module,
        config: LBPConfig | None = None,
        lora: LoRAConfig | None = None,
        *,
        geometry: MapGeometry | None = None,
    ) -> _L:
        new: Any = shell_like(cls, module)
        new._init_lora(lora)
        if new.lora_config.dropout:
            raise ValueError(
                f"{cls.__name__}: LoRA dropout={new.lora_config.dropout} cannot be "
                "combined with LBP-WHT backward (the elementwise dropout mask has no low-rank "
                "form); use dropout=0 (as in the paper's Table 6) or method='lora'"
            )
        new._init_lbp(config, geometry)
        return new

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.merged:  # type: ignore[attr-defined]
            self._check_features(x)
            return self._plain(x, bias)
        return self._lbp_apply(
            x, bias, self._lora_forward, lora_a=self.lora_A, lora_b=self.lora_B,  # type: ignore[attr-defined]
            scaling=self.scaling,  # type: ignore[attr-defined]
        )  # fmt: skip


class LBPLoRALinear(_LBPLoRAMixin, LoRALinear):
    """LoRA adapters on an ``nn.Linear`` trained with LBP-WHT backward (Table 6)."""


class LBPLoRAConv2d(_LBPLoRAMixin, LoRAConv2d):
    """1x1-conv variant of :class:`LBPLoRALinear`."""
