"""LoRA-FA (Zhang et al., arXiv 2308.03303): LoRA with the down-projection ``A`` frozen.

``y = x w^T + b + s (x A^T) B^T`` (``s = alpha / r``) as in :mod:`lbp_wht.lora`, but only ``B``
trains: ``A`` keeps its random initialisation (LoRA's Kaiming-uniform) and ``w`` / ``b`` stay
frozen. Plain LoRA saves ``x`` (``N x Cx``) for ``g_A``; without ``g_A`` the backward needs
only the ``N x r`` projection ``x A^T``:

* ``g_B = s g_y^T (x A^T)``;
* ``g_x = g_y w + s (g_y B) A`` (exact: it needs only parameters).

:class:`_LoRAFAFunction` saves ``x A^T`` (and the parameters) instead of ``x``. Merging,
unmerging and the merged-state key are LoRA's (these layers are :class:`LoRAMixin` layers, so
:func:`lbp_wht.unconvert` merges or drops them like LoRA). ``lora_A`` stays a Parameter with
``requires_grad=False`` (same state-dict keys as LoRA); :func:`lbp_wht.freeze` never unfreezes
it, :func:`lbp_wht.trainable_state_dict` includes it (a random ``A`` that is not saved could not
be restored), and a training forward with a trainable ``lora_A`` or base weight is an error
(this backward computes neither gradient).

Choices where the paper's details were not available here (see docs/SUCCESSORS.md): ``A`` is
initialised as in LoRA and never orthogonalised; no dropout on the adapter input (its mask
would have to be saved at ``N x Cx``); eval mode and no-grad forwards use the plain LoRA path
(same values).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .config import LoRAConfig, LoRAFAConfig
from .lora import LoRAConv2d, LoRALinear, LoRAMixin
from .rowwise import PlainShell, method_config, to_rows

__all__ = ["LoRAFALinear", "LoRAFAConv2d", "LoRAFAMixin"]


class _LoRAFAFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        a: torch.Tensor,
        bb: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        xa = F.linear(x, a)
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        ctx.save_for_backward(
            xa if need_b else None, w if need_x else None, a if need_x else None,
            bb if need_x else None,
        )  # fmt: skip
        ctx.scaling, ctx.has_bias = scaling, b is not None
        return torch.addmm(F.linear(x, w, b), xa, bb.t(), alpha=scaling)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        # Casts are no-ops unless autocast made g_y's dtype differ from the saved tensors'.
        xa, w, a, bb = (t.to(g.dtype) if t is not None else None for t in ctx.saved_tensors)
        gx = gb = g_bb = None
        if ctx.needs_input_grad[0]:
            gx = torch.addmm(g.mm(w), g.mm(bb), a, alpha=ctx.scaling)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        if ctx.needs_input_grad[4]:
            g_bb = g.t().mm(xa) * ctx.scaling
        return gx, None, gb, None, g_bb, None


class LoRAFAMixin(PlainShell, LoRAMixin):
    """LoRA-FA on top of :class:`LoRAMixin` (module docstring); constructors as
    :class:`~lbp_wht.rowwise.PlainShell`'s (``config`` a :class:`LoRAFAConfig`)."""

    #: parameters :func:`lbp_wht.freeze` keeps frozen
    FROZEN = ("weight", "bias", "lora_A")

    def _init_method(self, config: LoRAFAConfig | None) -> None:
        config = method_config(self, config, LoRAFAConfig, "LoRAFAConfig(rank=..., alpha=...)")
        self.lora_fa_config = config
        self._init_lora(LoRAConfig(rank=config.rank, alpha=config.alpha))
        self.lora_A.requires_grad_(False)

    def _forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        self._check_features(x)
        if self.merged or not (self.training and torch.is_grad_enabled()):
            return self._lora_forward(x, bias)
        trainable = [n for n in ("weight", "lora_A") if getattr(self, n).requires_grad]
        if trainable:
            raise RuntimeError(
                f"{type(self).__name__}: LoRA-FA trains only lora_B (and the bias), but "
                f"{trainable} require grad; freeze them (lbp_wht.freeze keeps them frozen)"
            )
        self.converted_calls += 1
        w = self.weight
        rows, back = to_rows(x, self._conv)
        y = _LoRAFAFunction.apply(
            rows, w.view(w.shape[0], w.shape[1]), bias, self.lora_A, self.lora_B, self.scaling
        )
        return back(y)

    def lora_extra_repr(self) -> str:
        c = self.lora_fa_config
        return f"lora_fa_rank={c.rank}, lora_alpha={c.alpha:g}, merged={self.merged}"


class LoRAFALinear(LoRAFAMixin, LoRALinear):
    """``nn.Linear`` with a LoRA-FA adapter (frozen ``lora_A``, trainable ``lora_B``)."""


class LoRAFAConv2d(LoRAFAMixin, LoRAConv2d):
    """1x1 ``nn.Conv2d`` with a LoRA-FA adapter."""
