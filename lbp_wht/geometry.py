"""Map geometry of a converted layer: which axes of its input form the ``H x W`` feature map.

LBP-WHT projects over the spatial map (Eq. 3-7), so every converted layer must know, for each
input, the map size ``(H, W)``, how many leading "prefix" tokens are not part of the map
(class, distillation and register tokens; they keep exact gradients) and the memory layout.
Three layouts exist:

========  ======================  ==========================================================
layout    input                   used by
========  ======================  ==========================================================
tokens    ``(..., E + H*W, C)``   ViT / Swin / EfficientFormer linears; leading dims are batch
nhwc      ``(B, H, W, C)``        linears on channels-last maps (ConvNeXt MLP, Swin merging)
nchw      ``(B, C, H, W)``        1x1 convolutions
========  ======================  ==========================================================

The geometry is never guessed from an ambiguous shape. A 1x1 convolution's input is a map by
construction. A linear layer's 3-D input is tokens; its map size comes, in this order, from a
fixed ``hw``, from a :class:`MapSource` (set by the model-family adapters of
:mod:`lbp_wht.integrations.geometry`, which follow variable input sizes), or from a square
token count. A 4-D input to a linear layer is an error unless the layer was declared
``layout="nhwc"`` (channels-last map) or ``layout="tokens"`` (leading dims are batch-like,
e.g. ``(B, windows, tokens, C)``); a token count that fits no map is an error. Every error names
the layer, the shape and the option that fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .config import check_int

__all__ = ["LAYOUTS", "MapGeometry", "MapSource", "ResolvedMap", "resolve_map"]

#: ``auto``: a 1x1 conv reads NCHW, a linear layer 3-D tokens (4-D input is an error).
LAYOUTS = ("auto", "tokens", "nhwc", "nchw")


@dataclass(frozen=True)
class MapGeometry:
    """What a converted layer knows about its input map before it sees an input.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        prefix_tokens: ``E`` leading tokens outside the map (``tokens`` layout only).
        hw: a fixed map size ``(H, W)``; ``None`` to take it from a source or the input.
    """

    layout: str = "auto"
    prefix_tokens: int = 0
    hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {list(LAYOUTS)}")
        object.__setattr__(self, "prefix_tokens", check_int(self.prefix_tokens, "prefix_tokens", 0))
        if self.prefix_tokens and self.layout in ("nhwc", "nchw"):
            raise ValueError(
                f"prefix_tokens={self.prefix_tokens} needs token input; a {self.layout} map "
                "has no prefix tokens"
            )
        if self.hw is not None:
            if isinstance(self.hw, str | bytes) or len(self.hw) != 2:  # type: ignore[arg-type]
                raise TypeError(f"hw must be a pair (H, W), got {self.hw!r}")
            hw = (check_int(self.hw[0], "hw[0]", 1), check_int(self.hw[1], "hw[1]", 1))
            object.__setattr__(self, "hw", hw)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            layout=self.layout,
            prefix_tokens=self.prefix_tokens,
            hw=None if self.hw is None else list(self.hw),
        )


class MapSource:
    """Reads a layer's current map size from attribute ``attr`` of ``module``.

    Family adapters keep the attribute up to date (e.g. a pre-hook on a ViT's patch embedding
    stores the patch grid of each input), so variable input sizes keep working. The source
    holds the module itself, not a closure, so ``copy.deepcopy`` of the whole model gives
    copies that read their own module. ``describe`` says where the size comes from (errors).
    """

    def __init__(self, module: torch.nn.Module, attr: str, describe: str) -> None:
        self.module, self.attr, self.describe = module, attr, describe

    def __call__(self) -> tuple[int, int] | None:
        hw = getattr(self.module, self.attr, None)
        return None if hw is None else (int(hw[0]), int(hw[1]))

    def __repr__(self) -> str:
        return f"MapSource({self.describe})"


@dataclass(frozen=True)
class ResolvedMap:
    """The geometry of one input: ``layout`` is ``tokens``, ``nhwc`` or ``nchw``; ``lead`` the
    leading dims folded into the batch (tokens layout)."""

    hw: tuple[int, int]
    prefix_tokens: int
    layout: str
    lead: tuple[int, ...] = ()


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def resolve_map(
    x: torch.Tensor,
    geometry: MapGeometry,
    *,
    conv: bool,
    what: str,
    source: MapSource | None = None,
) -> ResolvedMap:
    """The map geometry of input ``x`` of a layer, or a ``ValueError`` saying what is missing.

    Args:
        x: the layer's input.
        geometry: the layer's declared geometry.
        conv: True for a 1x1 convolution (NCHW input).
        what: the layer's name and type, for error messages.
        source: dynamic map size (see :class:`MapSource`).
    """
    shape = _shape(x)
    if conv:
        if x.dim() != 4:
            raise ValueError(f"{what} expects an NCHW map (B, C, H, W), got shape {shape}")
        hw = (shape[2], shape[3])
        if geometry.hw is not None and geometry.hw != hw:
            raise ValueError(
                f"{what}: input {shape} is a {hw} map but the layer has hw={geometry.hw}"
            )
        return ResolvedMap(hw, 0, "nchw")
    layout = geometry.layout
    if layout == "nhwc":
        if x.dim() != 4:
            raise ValueError(
                f"{what} was declared layout='nhwc' and expects (B, H, W, C), got shape {shape}"
            )
        hw = (shape[1], shape[2])
        if geometry.hw is not None and geometry.hw != hw:
            raise ValueError(
                f"{what}: input {shape} is a {hw} map but the layer has hw={geometry.hw}"
            )
        return ResolvedMap(hw, 0, "nhwc")
    if x.dim() < 3:
        raise ValueError(
            f"{what} needs token input (B, L, C) to project over the token map, got shape "
            f"{shape}; convert only layers applied to feature maps (not heads on pooled features)"
        )
    if layout == "auto" and x.dim() != 3:
        raise ValueError(
            f"{what}: a {x.dim()}-D input {shape} to a linear layer is ambiguous. If it is a "
            "channels-last map (B, H, W, C), convert the layer with layout='nhwc'; if the "
            "leading dims are batch-like and dim -2 holds the tokens (e.g. (B, windows, "
            "tokens, C)), use layout='tokens'. If it is not a spatial map at all (e.g. "
            "MobileViTv2's unfolded (B, C, P, N)), leave the layer unconverted."
        )
    prefix = geometry.prefix_tokens
    tokens = shape[-2] - prefix
    lead = shape[:-2]
    if tokens < 1:
        raise ValueError(
            f"{what}: input {shape} has {shape[-2]} tokens, not more than prefix_tokens={prefix}"
        )
    if geometry.hw is not None:
        hw, origin = geometry.hw, f"hw={geometry.hw}"
    else:
        dynamic = source() if source is not None else None
        if dynamic is not None:
            hw, origin = dynamic, f"the map size {dynamic} from {source.describe}"
        else:
            side = math.isqrt(tokens)
            if side * side != tokens:
                raise ValueError(
                    f"{what}: input {shape} has {tokens} map tokens after prefix_tokens={prefix}, "
                    "which is not a square map, so its (H, W) cannot be inferred. Give the "
                    "layer its geometry in the conversion rule: prefix_tokens=E for E class / "
                    "distillation / register tokens and/or hw=(H, W). (convert() finds both "
                    "itself for the model families in lbp_wht.integrations.geometry.)"
                )
            return ResolvedMap((side, side), prefix, "tokens", lead)
    if hw[0] * hw[1] != tokens:
        raise ValueError(
            f"{what}: input {shape} has {shape[-2]} tokens, but {origin} plus "
            f"prefix_tokens={prefix} needs {hw[0] * hw[1] + prefix}; check the layer's "
            "hw / prefix_tokens"
        )
    return ResolvedMap((int(hw[0]), int(hw[1])), prefix, "tokens", lead)
