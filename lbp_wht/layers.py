"""``LBPLinear`` and ``LBPConv2d``: drop-in layers whose backward is LBP-WHT (Algorithm 1).

Like ``loralib``'s layers they subclass the torch layer they replace and keep its parameters
(the *same* ``Parameter`` objects when built with ``from_module``), so state-dict keys are
unchanged and pretrained checkpoints load into converted models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bases import select_bases
from .functional import lbp_forward
from .projection import PADDINGS, WHTProjector

__all__ = ["LBPLinear", "LBPConv2d", "LBPMixin", "check_conv1x1", "shell_like"]


def check_conv1x1(conv: nn.Conv2d, what: str) -> None:
    """Raise a clear error unless ``conv`` is a plain 1x1 convolution (a per-pixel linear)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{what} needs an nn.Conv2d, got {type(conv).__name__}")
    k, s, p = tuple(conv.kernel_size), tuple(conv.stride), conv.padding
    bad = []
    if k != (1, 1):
        bad.append(f"kernel_size={k}")
    if s != (1, 1):
        bad.append(f"stride={s}")
    if p not in ((0, 0), "valid", 0):
        bad.append(f"padding={p}")
    if tuple(conv.dilation) != (1, 1):
        bad.append(f"dilation={tuple(conv.dilation)}")
    if conv.groups != 1:
        bad.append(f"groups={conv.groups}")
    if bad:
        raise ValueError(
            f"{what} supports only 1x1 convolutions (stride 1, no padding, groups 1); "
            f"Conv2d({conv.in_channels}, {conv.out_channels}) has {', '.join(bad)}. "
            "Leave this layer unconverted (it is not a linear layer over tokens)."
        )


_CONV_ATTRS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
    "_reversed_padding_repeated_twice",
)


def shell_like(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance that *shares* ``module``'s weight and bias Parameters.

    Sharing (not copying) keeps state-dict keys and optimizer identity, so checkpoints of the
    unconverted model load into the converted one. ``cls`` subclasses nn.Linear or nn.Conv2d.
    """
    if issubclass(cls, nn.Conv2d):
        check_conv1x1(module, cls.__name__)
        attrs = _CONV_ATTRS
    else:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{cls.__name__} needs an nn.Linear, got {type(module).__name__}")
        attrs = ("in_features", "out_features")
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for attr in attrs:
        setattr(new, attr, getattr(module, attr))
    new.weight, new.bias = module.weight, module.bias
    new.train(module.training)
    return new


class LBPMixin:
    """Shared state of the LBP-WHT layers: base selection, geometry, spectrum recording.

    Attributes:
        bases: selected ``(i, j)``; ``None`` while an LHE selection is still profiling (the
            layer then runs exact backprop and records the spectrum of ``g_y``).
        record_spectrum: when True, every backward adds the ``(order, order)`` WHT energy
            spectrum of ``g_y`` to ``spectrum_energy`` and increments ``spectrum_steps``.
        lbp_name: qualified name inside the converted model (set by ``convert``), used in
            error messages.
    """

    _layout = "tokens"

    def _init_lbp(
        self,
        select: str = "lp_l1",
        r: int | None = 4,
        order: int = 8,
        padding: str = "reflect",
        hw: tuple[int, int] | None = None,
        extra_tokens: int = 0,
        rank: int | None = None,
        indices: Sequence[Sequence[int]] | None = None,
        impl: str = "auto",
        lhe_rank: int | None = None,
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose one of {PADDINGS}")
        if extra_tokens < 0:
            raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
        if hw is not None:
            hw = (int(hw[0]), int(hw[1]))
        self.select, self.r, self.order = select, r, order
        # Not ``padding``: nn.Conv2d already has an attribute of that name.
        self.wht_padding = padding
        self.hw, self.extra_tokens, self.impl = hw, int(extra_tokens), impl
        self.lbp_name = type(self).__name__
        # ``lhe_rank`` is the same as ``rank``; LBP+LoRA layers need it because their ``rank``
        # argument is the adapter rank.
        rank = lhe_rank if lhe_rank is not None else rank
        if select == "lhe":
            if rank is None:
                raise ValueError("select='lhe' needs rank=R (number of bases to keep)")
            select_bases("lp_l1", r=1, order=order)  # validates order early
            self.bases = None  # chosen after profiling, see set_bases / LBPWHTHook
        else:
            self.bases = select_bases(select, r=r, order=order, indices=indices)
        self.lhe_rank = rank
        self.record_spectrum = False
        self.spectrum_energy: torch.Tensor | None = None
        self.spectrum_steps = 0
        self._projectors: dict[tuple[int, int], WHTProjector] = {}

    # ---- bases ------------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        """R, the number of bases (None while LHE is profiling)."""
        return None if self.bases is None else len(self.bases)

    def set_bases(self, bases: Sequence[Sequence[int]]) -> None:
        """Fix the bases (e.g. after LHE profiling); validated like an explicit selection."""
        self.bases = select_bases("explicit", order=self.order, indices=bases)
        self._projectors.clear()

    def reset_spectrum(self) -> None:
        self.spectrum_energy, self.spectrum_steps = None, 0

    def lbp_extra_repr(self) -> str:
        sel = f"{self.select}-{self.r}" if self.select in ("lp_l1", "lp_linf") else self.select
        return (
            f"lbp={sel}, R={self.rank}, order={self.order}, padding={self.wht_padding}, "
            f"hw={self.hw}, extra_tokens={self.extra_tokens}"
        )

    # ---- geometry ---------------------------------------------------------------------
    def _map_size(self, x: torch.Tensor) -> tuple[int, int]:
        what = f"{self.lbp_name} ({type(self).__name__}, weight {tuple(self.weight.shape)})"
        if self._layout == "nchw":
            if x.dim() != 4:
                raise ValueError(f"{what} expects NCHW input, got shape {tuple(x.shape)}")
            return int(x.shape[2]), int(x.shape[3])
        if x.dim() < 3:
            raise ValueError(
                f"{what} needs token input (B, L, C) to project over the token map, got shape "
                f"{tuple(x.shape)}; convert only layers applied to feature maps"
            )
        tokens = int(x.shape[-2]) - self.extra_tokens
        if self.hw is not None:
            if self.hw[0] * self.hw[1] != tokens:
                raise ValueError(
                    f"{what}: input {tuple(x.shape)} has {x.shape[-2]} tokens, but hw={self.hw} "
                    f"plus extra_tokens={self.extra_tokens} needs "
                    f"{self.hw[0] * self.hw[1] + self.extra_tokens}"
                )
            return self.hw
        side = math.isqrt(max(tokens, 0))
        if tokens < 1 or side * side != tokens:
            raise ValueError(
                f"{what}: input {tuple(x.shape)} has {tokens} map tokens "
                f"(after {self.extra_tokens} extra), not a perfect square, so the map size "
                "cannot be inferred; pass hw=(H, W) (and extra_tokens) when converting"
            )
        return side, side

    def _projector(self, hw: tuple[int, int]) -> WHTProjector:
        if hw not in self._projectors:
            self._projectors[hw] = WHTProjector(
                hw, self.bases, self.order, self.wht_padding, self.impl
            )
        return self._projectors[hw]

    def _record(self, g_y: torch.Tensor, hw: tuple[int, int]) -> None:
        if self._layout == "tokens":
            g_y = g_y.reshape(-1, g_y.shape[-2], g_y.shape[-1])[:, self.extra_tokens :]
        proj = WHTProjector(hw, [(0, 0)], self.order, self.wht_padding, "patch")
        spec = proj.spectrum(g_y.detach(), self._layout).cpu()
        self.spectrum_energy = spec if self.spectrum_energy is None else self.spectrum_energy + spec
        self.spectrum_steps += 1

    def _wants_lbp(self, x: torch.Tensor) -> bool:
        return (
            self.training
            and torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        )

    def _lbp_apply(self, x: torch.Tensor, plain, **lora) -> torch.Tensor:
        """Run ``plain(x)`` or the LBP function, with spectrum recording where asked."""
        if not self._wants_lbp(x):
            return plain(x)
        hw = self._map_size(x)
        if self.bases is None:  # LHE still profiling: exact backprop
            y = plain(x)
        else:
            lead = x.shape[:-2] if self._layout == "tokens" else None
            x3 = x.reshape(-1, x.shape[-2], x.shape[-1]) if lead is not None else x
            y = lbp_forward(
                x3,
                self.weight,
                self.bias,
                self._projector(hw),
                self._layout,
                self.extra_tokens,
                **lora,
            )
            if lead is not None:
                y = y.reshape(*lead, *y.shape[-2:])
        if self.record_spectrum and y.requires_grad:
            y.register_hook(lambda g: self._record(g, hw))
        return y


class LBPLinear(nn.Linear, LBPMixin):
    """``nn.Linear`` over a token map whose backward uses LBP-WHT.

    Input ``(..., E + H*W, in_features)``; leading dims are flattened into the batch (so
    Swin's ``(B * windows, 64, C)`` works with ``hw=(8, 8)`` or inferred).
    """

    _layout = "tokens"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **lbp) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_lbp(**lbp)

    @classmethod
    def from_module(cls, module: nn.Linear, **lbp) -> LBPLinear:
        """Wrap ``module`` sharing its weight and bias (same state-dict keys)."""
        new = shell_like(cls, module)
        new._init_lbp(**lbp)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lbp_apply(x, lambda t: F.linear(t, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self.lbp_extra_repr()}"


class LBPConv2d(nn.Conv2d, LBPMixin):
    """1x1 ``nn.Conv2d`` (NCHW) whose backward uses LBP-WHT; any other kernel is an error."""

    _layout = "nchw"

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, **lbp) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, 1, bias=bias)
        self._init_lbp(**lbp)

    @classmethod
    def from_module(cls, module: nn.Conv2d, **lbp) -> LBPConv2d:
        """Wrap the 1x1 conv ``module`` sharing its weight and bias (same state-dict keys)."""
        new = shell_like(cls, module)
        new._init_lbp(**lbp)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lbp_apply(x, lambda t: F.conv2d(t, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self.lbp_extra_repr()}"
