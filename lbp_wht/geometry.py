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

:func:`lbp_wht.convert` fixes each layer's geometry before it returns (from the rule, a
family adapter, :mod:`lbp_wht.adapters`, or a dry forward, :mod:`lbp_wht.tracing`): a fixed
``hw`` or a :class:`MapSource` that follows the input size. Only a layer built by hand with
neither reads a square token count as a square map. A 4-D input to a linear layer needs
``layout="nhwc"`` or ``"tokens"``; every ambiguous case is an error that names the layer, the
shape and the option that fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .config import check_int

__all__ = [
    "LAYOUTS",
    "MapGeometry",
    "MapSource",
    "TracedMapSource",
    "ResolvedMap",
    "resolve_map",
    "record_input_size",
    "INPUT_SIZE_ATTR",
]

#: Attribute of a converted model's root module: the ``(H, W)`` of its latest image input.
INPUT_SIZE_ATTR = "_lbp_input_size"

#: ``auto``: a 1x1 conv reads NCHW, a linear layer 3-D tokens (4-D input is an error).
LAYOUTS = ("auto", "tokens", "nhwc", "nchw")


@dataclass(frozen=True)
class MapGeometry:
    """What a converted layer knows about its input map before it sees an input.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        prefix_tokens: ``E`` leading tokens outside the map (``tokens`` layout only).
        hw: a fixed map size ``(H, W)``; ``None`` to take it from a source or the input.
        token_order: ``tokens`` layout only: the map tokens are not in row-major order;
            ``order[k]`` is the input position (after the prefix tokens) of row-major map
            token ``k`` (e.g. Hiera's unrolled order, found by a dry forward). The layer
            gathers its input into row-major order and scatters its output back.
    """

    layout: str = "auto"
    prefix_tokens: int = 0
    hw: tuple[int, int] | None = None
    token_order: tuple[int, ...] | None = None

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
        if self.token_order is not None:
            order = tuple(check_int(v, "token_order[i]", 0) for v in self.token_order)
            if sorted(order) != list(range(len(order))):
                raise ValueError("token_order must be a permutation of 0 .. L-1")
            if self.layout in ("nhwc", "nchw"):
                raise ValueError(f"token_order needs token input, not layout {self.layout!r}")
            if self.hw is not None and len(order) != self.hw[0] * self.hw[1]:
                raise ValueError(
                    f"token_order has {len(order)} tokens, hw={self.hw} has "
                    f"{self.hw[0] * self.hw[1]}"
                )
            object.__setattr__(self, "token_order", order)

    def to_dict(self) -> dict[str, Any]:
        d = dict(
            layout=self.layout,
            prefix_tokens=self.prefix_tokens,
            hw=None if self.hw is None else list(self.hw),
        )
        if self.token_order is not None:
            d["token_order"] = list(self.token_order)
        return d


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


def record_input_size(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on a model: store the ``(H, W)`` of its first 4-D image input in
    :data:`INPUT_SIZE_ATTR` (read by :class:`TracedMapSource`). A module-level function, so
    deep copies of the model carry a working hook."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point():
            setattr(module, INPUT_SIZE_ATTR, (int(v.shape[-2]), int(v.shape[-1])))
            return


class TracedMapSource(MapSource):
    """The map a dry forward found (:mod:`lbp_wht.tracing`), following the input size.

    At the traced input size the map is the traced ``hw``. At another size the candidates are
    the traced ``hw`` (maps that do not scale, e.g. attention windows) and the traced ``hw``
    scaled by the input's size ratio, rounded down or up on each axis (stage maps); the token
    count must match exactly one of them (:func:`resolve_map`), else it is an error.
    """

    def __init__(
        self, root: torch.nn.Module, hw: tuple[int, int], input_hw: tuple[int, int]
    ) -> None:
        super().__init__(
            root,
            INPUT_SIZE_ATTR,
            f"the dry forward ({hw[0]}x{hw[1]} at a {input_hw[0]}x{input_hw[1]} input, "
            "scaled with the input size)",
        )
        self.hw, self.input_hw = hw, input_hw

    def __call__(self) -> list[tuple[int, int]]:  # type: ignore[override]
        now = getattr(self.module, self.attr, None)
        out = [self.hw]
        if now is not None and tuple(now) != self.input_hw:
            axes = []
            for n, h, h0 in zip(now, self.hw, self.input_hw, strict=True):
                exact = n * h / h0
                axes.append(sorted({max(1, math.floor(exact)), max(1, math.ceil(exact))}))
            out += [(a, b) for a in axes[0] for b in axes[1] if (a, b) != self.hw]
        return out


@dataclass(frozen=True)
class ResolvedMap:
    """The geometry of one input: ``layout`` is ``tokens``, ``nhwc`` or ``nchw``; ``lead`` the
    leading dims folded into the batch (tokens layout)."""

    hw: tuple[int, int]
    prefix_tokens: int
    layout: str
    lead: tuple[int, ...] = ()
    order: tuple[int, ...] | None = None  # see MapGeometry.token_order


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
    shape = tuple(int(s) for s in x.shape)
    layout = "nchw" if conv else geometry.layout
    if conv or layout == "nhwc":  # a linear layer declared "nchw" reads tokens
        if x.dim() != 4:
            expects = "expects an NCHW map (B, C, H, W)"
            if not conv:
                expects = "was declared layout='nhwc' and expects (B, H, W, C)"
            raise ValueError(f"{what} {expects}, got shape {shape}")
        hw = shape[2:] if conv else shape[1:3]
        if geometry.hw is not None and geometry.hw != hw:
            raise ValueError(
                f"{what}: input {shape} is a {hw} map but the layer has hw={geometry.hw}"
            )
        return ResolvedMap(hw, 0, layout)
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
        if isinstance(dynamic, list):
            fits = [c for c in dynamic if c[0] * c[1] == tokens]
            if len(fits) != 1:
                raise ValueError(
                    f"{what}: input {shape} has {tokens} map tokens after prefix_tokens="
                    f"{prefix}; the maps of {source.describe} that could hold them are "
                    f"{dynamic} ({'none fits' if not fits else 'several fit'}). Convert the "
                    "model with an example input of this size (convert(..., example_input=))."
                )
            dynamic = fits[0]
        if dynamic is not None:
            hw, origin = dynamic, f"the map size {dynamic} from {source.describe}"
        else:
            side = math.isqrt(tokens)
            if side * side != tokens:
                raise ValueError(
                    f"{what}: input {shape} has {tokens} map tokens after prefix_tokens={prefix}, "
                    "which is not a square map, so its (H, W) cannot be inferred. Give the "
                    "layer its geometry: prefix_tokens=E for E class / distillation / register "
                    "tokens and/or hw=(H, W) (convert() finds both itself from an example "
                    "input)."
                )
            return ResolvedMap((side, side), prefix, "tokens", lead)
    if hw[0] * hw[1] != tokens:
        raise ValueError(
            f"{what}: input {shape} has {shape[-2]} tokens, but {origin} plus "
            f"prefix_tokens={prefix} needs {hw[0] * hw[1] + prefix}; check the layer's "
            "hw / prefix_tokens"
        )
    order = geometry.token_order
    if order is not None and len(order) != tokens:
        raise ValueError(
            f"{what}: its tokens are in a non-row-major order known for {len(order)} map "
            f"tokens (the traced input size), but input {shape} has {tokens}; convert the "
            "model with an example input of this size"
        )
    return ResolvedMap((int(hw[0]), int(hw[1])), prefix, "tokens", lead, order)
