"""Find each layer's input map by a dry forward: position tags that travel with the data.

LBP-WHT projects a layer's input over its spatial map, so a converted layer must know which
axes of its input are the map, in which order the tokens lie, and which tokens are not on it
(class / distillation / register tokens). A token count is no evidence of any of that: 196
tokens may be a 14x14 map, a 7x28 one, 196 pooled vectors or a 14x14 block of attention scores.
This module establishes it by running the model once on an example input (batch 1 is enough)
and following every pixel position through the computation.

Each traced tensor ``t`` gets a *shadow*: an int64 tensor of ``t``'s shape whose entries say
where the value came from. A tag is either

* a position ``(grid, i, j)``: row ``i`` and column ``j`` of the ``H x W`` grid ``grid``
  (grids are identified by their size, so two paths that reach the same resolution agree);
* :data:`NONE`: not from the image (class tokens, parameters, constants);
* :data:`MIXED`: a combination of different positions (pooling over space, token mixing);
* :data:`PAD`: padding added to fill whole windows (its gradient is discarded by plain
  backprop, so a map that includes it is refused);
* a position with the :data:`PAIR` flag: an entry that depends on a second position too
  (attention scores ``q k^T``; their rows stay the query's position).

Data-movement ops (``view``, ``permute``, ``cat``, indexing, ``roll`` ...) are applied to the
shadow itself, so any re-layout is followed exactly (window partitions, class tokens, NHWC
permutes, unrolled orders). Elementwise ops combine the tags of their inputs; ops that mix
values along an axis (``linear`` over channels, ``matmul``, attention, reductions) keep a tag
only where it is the same along the mixed axis. Convolutions, pooling and interpolation write a
fresh grid of their output size. Anything not understood gives :data:`MIXED`: the trace may
refuse a map, never invent one.

:func:`trace_layers` returns, for each target ``nn.Linear`` / ``nn.Conv2d``, every call seen:
the :class:`~lbp_wht.geometry.ResolvedMap` of its input or the reason it has none, and whether
the call went through the module's forward or read its weight directly from another module's
forward (a *bypass*: ``F.linear(x, self.qkv.weight, bias)``), see :class:`LayerCall`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from .geometry import ResolvedMap

__all__ = [
    "PAD", "LayerCall", "LayerTrace", "trace_layers", "map_of", "call_model", "preserved",
    "NONE", "MIXED", "PAIR",
]  # fmt: skip

NONE = -1
MIXED = -2
PAD = -3
PAIR = 1 << 61
_POS = 20  # bits per coordinate
_CMASK = (1 << _POS) - 1
_GMASK = (1 << 20) - 1
_OFF = 1 << (_POS - 1)  # coordinates are stored offset, so padding can extend a grid leftwards
#: At most this many distinct positions may share one token's channel axis (a patch-merging
#: layer concatenates a 2x2 group of tokens; token-mixing layers carry whole rows).
MAX_GROUP = 16


def _full(shape: Any, tag: int) -> torch.Tensor:
    return torch.full(shape, tag, dtype=torch.long)


def _tag(grid: int, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return (grid << (2 * _POS)) | ((i + _OFF) << _POS) | (j + _OFF)


def _decode(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = t & ~PAIR
    return (t >> (2 * _POS)) & _GMASK, ((t >> _POS) & _CMASK) - _OFF, (t & _CMASK) - _OFF


# ---- what a layer input is -------------------------------------------------------------------
def _rows_grid(
    rows: torch.Tensor,
) -> tuple[int, tuple[int, int], tuple[int, ...] | None] | str:
    """``rows`` ``(N, L)`` tags of N token sequences: ``(prefix, (H, W), order)`` if every row
    is ``E`` non-image tokens followed by the tokens of one evenly spaced grid, all rows in the
    same layout (``order``: ``None`` for row-major, else the permutation that reads the grid
    in row-major order), else why not."""
    if (rows == MIXED).any():
        return "its tokens mix several positions (pooled or token-mixed): not a map"
    if (rows == PAD).any():
        return (
            "its tokens include padding added to fill whole windows (plain backprop discards "
            "their gradients; a projection would mix them into the map)"
        )
    if ((rows >= 0) & ((rows & PAIR) != 0)).any():
        return "it is a pairwise token tensor (attention scores): not a map"
    on = rows >= 0
    if not on.any():
        return "its input does not come from the image (no spatial position)"
    prefix = int((~on[0]).long().cumprod(0).sum())
    if not bool(on[:, prefix:].all()) or bool(on[:, :prefix].any()):
        return "image tokens and other tokens are interleaved (only leading extra tokens work)"
    if not bool((rows[:, :prefix] == NONE).all()):
        return "its leading extra tokens differ between sequences"
    grid, i, j = _decode(rows[:, prefix:])
    if not bool((grid == grid[:, :1]).all()):
        return "its tokens come from maps of different sizes"
    i, j = i - i[:, :1], j - j[:, :1]
    if not (bool((i == i[:1]).all()) and bool((j == j[:1]).all())):
        return "its sequences are laid out differently (no common map)"
    ii, jj = i[0], j[0]
    ui, uj = torch.unique(ii), torch.unique(jj)
    h, w = int(ui.numel()), int(uj.numel())
    if h * w != ii.numel():
        return f"its {ii.numel()} tokens are not a full grid ({h} rows x {w} columns)"
    for u in (ui, uj):
        if u.numel() > 2 and not bool((u.diff() == u[1] - u[0]).all()):
            return "its token positions are not evenly spaced"
    rank = torch.searchsorted(ui, ii.contiguous()) * w + torch.searchsorted(uj, jj.contiguous())
    if torch.unique(rank).numel() != rank.numel():
        return "several of its tokens sit at the same position"
    if bool((rank == torch.arange(rank.numel())).all()):
        return prefix, (h, w), None
    # A full grid in another order (e.g. Hiera's unrolled tokens): the permutation that
    # reads it in row-major order.
    return prefix, (h, w), tuple(int(v) for v in torch.argsort(rank))


def _channel_problem(shadow: torch.Tensor, channel_dim: int) -> str | None:
    """Why the channel axis disqualifies the input (``None`` if it does not)."""
    first = shadow.narrow(channel_dim, 0, 1)
    if bool((shadow == first).all()):
        return None
    pos = shadow.masked_fill(shadow < 0, -1)
    distinct = torch.sort(pos.movedim(channel_dim, -1), dim=-1).values
    count = (distinct.diff(dim=-1) != 0).sum(-1) + 1
    if int(count.max()) > MAX_GROUP:
        return "its channel axis carries many positions (a token-mixing layer): not a map"
    return None  # a small group per token (patch merging): the token is where its group is


def map_of(shadow: torch.Tensor, *, conv: bool, order: int = 8) -> ResolvedMap | str:
    """The map of a layer input whose position tags are ``shadow``, or why it has none.

    Args:
        shadow: the input's tags (its shape).
        conv: the layer is a 1x1 convolution (NCHW input) rather than a linear layer.
        order: the WHT patch side; maps with a side under ``order // 2`` are refused (a pooled
            map: reflect padding would repeat its few tokens over the whole patch).
    """
    shape = tuple(shadow.shape)
    if conv and shadow.dim() != 4:
        return f"its input {shape} is not an NCHW map"
    if not conv and shadow.dim() < 3:
        return f"its input {shape} has no token axis (pooled features)"
    problem = _channel_problem(shadow, 1 if conv else -1)
    if problem:
        return problem
    if conv:
        got = _rows_grid(shadow[:, 0].reshape(shape[0], -1))
        if isinstance(got, str):
            return got
        prefix, hw, perm = got
        if prefix or perm is not None or hw != shape[2:]:
            return f"its NCHW input {shape} is not one {shape[2]}x{shape[3]} map"
        res = ResolvedMap(hw, 0, "nchw")
    else:
        tok = shadow[..., 0]
        res = None
        if shadow.dim() == 4:  # (B, H, W, C): both middle axes together may be the map
            got = _rows_grid(tok.reshape(shape[0], -1))
            if not isinstance(got, str) and got[0] == 0 and got[1] == shape[1:3] and not got[2]:
                res = ResolvedMap(got[1], 0, "nhwc")
        if res is None:
            got = _rows_grid(tok.reshape(-1, shape[-2]))
            if isinstance(got, str):
                return got
            res = ResolvedMap(got[1], got[0], "tokens", shape[:-2], got[2])
    if min(res.hw) < order // 2:
        return (
            f"its map is {res.hw[0]}x{res.hw[1]}, smaller than half an {order}x{order} patch "
            "(e.g. pooled): reflect padding would repeat its tokens across the patch"
        )
    return res


# ---- the tracer ------------------------------------------------------------------------------
@dataclass
class LayerCall:
    """One call of a target layer during the trace.

    Attributes:
        geometry: the input's map, or the reason it has none.
        parent: ``None`` if the layer's own forward ran; else the qualified name of the module
            whose forward read the layer's weight directly (``F.linear(x, layer.weight, b)``).
        op: the op that used the weight (``linear``, ``conv2d``, or another op: then the call
            cannot be redirected to the converted layer).
        input_shape: the shape of the input.
    """

    geometry: ResolvedMap | str
    parent: str | None
    op: str
    input_shape: tuple[int, ...]


@dataclass
class LayerTrace:
    """Every call of one target layer (an empty list: it never ran on the example input),
    and the ``(H, W)`` of the traced image input."""

    calls: list[LayerCall] = field(default_factory=list)
    input_hw: tuple[int, int] | None = None


_SHAPE_OPS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "movedim",
    "moveaxis", "swapaxes", "swapdims", "unsqueeze", "squeeze", "expand", "expand_as",
    "repeat", "tile", "split", "split_with_sizes", "chunk", "unbind", "tensor_split",
    "narrow", "select", "__getitem__", "flip", "cat", "concat", "concatenate", "stack",
    "contiguous", "clone", "detach", "index_select", "gather", "take_along_dim",
    "repeat_interleave", "view_as", "reshape_as", "unfold", "hstack", "vstack", "diagonal",
    "masked_select", "__reversed__", "T", "mT",
}  # fmt: skip
#: The output's positions are the first argument's: a cyclic shift keeps grid positions
#: (Swin's shifted windows); casts and moves keep everything.
_KEEP_OPS = {
    "roll", "to", "type_as", "type", "float", "double", "half", "bfloat16", "cpu", "cuda",
    "requires_grad_", "detach_",
}  # fmt: skip
_REDUCE_OPS = {
    "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
    "nanmean", "nansum", "median", "std_mean", "var_mean",
}  # fmt: skip
_GRID_OPS = {
    "conv2d", "avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "lp_pool2d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "conv_transpose2d",
}  # fmt: skip
_NO_SHADOW = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "randint_like",
    "argmax", "argmin", "argsort", "nonzero", "eq", "ne", "lt", "le", "gt", "ge",
    "isnan", "isinf", "isfinite", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
}  # fmt: skip


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # property getters (Tensor.T, Tensor.shape ...)
        name = getattr(getattr(func, "__self__", None), "__name__", "") or ""
    return name


def _is_data(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


class _Tracer(TorchFunctionMode):
    """Propagates position tags (module docstring) and records target-layer calls."""

    def __init__(self, weights: Mapping[int, str], stack: list[str]) -> None:
        super().__init__()
        self.shadows = WeakIdKeyDictionary()
        self.weights = weights  # id(weight Parameter) -> layer name
        self.stack = stack  # qualified names of the modules whose forward is running
        self.calls: dict[str, list[LayerCall]] = {}
        self._grids: dict[tuple[int, int], int] = {}
        self.areas = torch.zeros(1, dtype=torch.long)  # area[grid id]: positions per grid

    # -- tags of a fresh grid
    def grid_tags(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Tags of a tensor whose last two axes are a fresh ``H x W`` grid."""
        h, w = shape[-2], shape[-1]
        gid = self._grids.setdefault((h, w), len(self._grids) + 1)
        if gid == len(self.areas):  # a new grid
            self.areas = torch.cat([self.areas, torch.tensor([h * w])])
        i = torch.arange(h).view(h, 1)
        j = torch.arange(w).view(1, w)
        return _tag(gid, i, j).expand(shape)

    def get(self, t: Any) -> torch.Tensor | None:
        return self.shadows.get(t) if isinstance(t, torch.Tensor) else None

    def shadow_or_none(self, t: torch.Tensor) -> torch.Tensor:
        s = self.get(t)
        return s if s is not None else _full(t.shape, NONE)

    # -- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        flat_out, _ = tree_flatten(out)
        if not any(isinstance(t, torch.Tensor) for t in flat_out) and name != "__setitem__":
            return out  # shape / device / dtype queries
        flat_in, _ = tree_flatten((args, kwargs))
        self._note_weights(name, args, kwargs, flat_in)
        traced = [t for t in flat_in if isinstance(t, torch.Tensor) and t in self.shadows]
        if not traced or name in _NO_SHADOW:
            return out
        try:
            self._propagate(name, func, args, kwargs, out)
        except Exception:  # noqa: BLE001 - an op the rules do not cover: positions are lost
            for t in flat_out:
                if _is_data(t):
                    self.shadows[t] = _full(t.shape, MIXED)
        return out

    def _note_weights(self, name: str, args: tuple, kwargs: dict, flat_in: list) -> None:
        hits = [self.weights[id(t)] for t in flat_in if id(t) in self.weights]
        if not hits:
            return
        inner = self.stack[-1] if self.stack else None
        if inner in (None, hits[0]) and name not in ("linear", "conv2d"):
            return  # the layer's own forward touching its weight (casts, shape checks)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        layer = self.weights.get(id(weight)) if name in ("linear", "conv2d") else None
        if layer is not None:
            x = args[0] if args else kwargs["input"]
            shadow = self.get(x)
            geo = map_of(shadow, conv=name == "conv2d", order=0) if shadow is not None else None
            geo = "its input does not come from the image" if geo is None else geo
            call = LayerCall(geo, None if inner == layer else inner, name, tuple(x.shape))
        else:
            layer = hits[0]
            parent = None if inner == layer else inner
            call = LayerCall(f"its weight is read by {name!r}", parent or "?", name, ())
        self.calls.setdefault(layer, []).append(call)

    def _propagate(self, name, func, args, kwargs, out) -> None:
        sh = self.shadows
        if name == "__setitem__":
            target, index, value = args[0], args[1], args[2]
            base = self.shadow_or_none(target).clone()
            val = self.get(value) if isinstance(value, torch.Tensor) else None
            base[index] = val if val is not None else NONE
            sh[target] = base
        elif name in _KEEP_OPS:
            s = self.get(args[0]) if isinstance(out, torch.Tensor) else None
            if s is not None and s.shape == out.shape:
                sh[out] = s
        elif func is F.unfold or func is F.fold:  # im2col / col2im: no int64 kernels
            rest = {k: v for k, v in kwargs.items() if k != "input"}
            x = args[0] if args else kwargs["input"]
            sh[out] = _by_entry(func, self.shadow_or_none(x), args[1:], rest)
        elif name in _SHAPE_OPS:
            s_args, s_kwargs = tree_map(
                lambda t: self.shadow_or_none(t) if _is_data(t) else t, (args, kwargs)
            )
            if name == "view":
                s_out = s_args[0].reshape(*s_args[1:], **s_kwargs)
            elif name == "view_as":
                s_out = s_args[0].reshape(args[1].shape)
            else:
                s_out = func(*s_args, **s_kwargs)
            for o, s in zip(tree_flatten(out)[0], tree_flatten(s_out)[0], strict=True):
                if isinstance(o, torch.Tensor) and isinstance(s, torch.Tensor):
                    sh[o] = s
        elif name == "pad":
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            sh[out] = _pad(self.shadow_or_none(args[0]), list(pad))
        elif name == "linear":
            x = args[0] if args else kwargs["input"]
            sh[out] = _group(self.shadow_or_none(x)).expand(out.shape)
        elif name in ("matmul", "__matmul__", "bmm", "mm", "__rmatmul__"):
            a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
            sh[out] = self._matmul(a, b, out)
        elif name == "scaled_dot_product_attention":
            sh[out] = self._mix(self.shadow_or_none(args[0]), -1).expand(out.shape)
        elif name == "einsum":
            sh[out] = self._einsum(args, out)
        elif name in _REDUCE_OPS:
            self._reduce(args, kwargs, out)
        elif name == "conv2d" and _pointwise(args, kwargs):  # mixes channels only, per pixel
            s = self.shadow_or_none(args[0])
            sh[out] = _group(s.movedim(1, -1)).movedim(-1, 1).expand(out.shape)
        elif name in _GRID_OPS:
            s = self.shadow_or_none(args[0])
            o = out[0] if isinstance(out, tuple) else out
            crop = _crop_pad(s) if s.dim() == 4 and o.dim() == 4 else None
            if crop is not None and isinstance(map_of(crop, conv=True, order=0), ResolvedMap):
                sh[o] = self.grid_tags(tuple(o.shape))
            else:
                sh[o] = _full(o.shape, MIXED)
        else:
            self._elementwise(name, args, kwargs, out)

    def _elementwise(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Everything else: elementwise if every traced input broadcasts to the output."""
        sh = self.shadows
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for o in outs:
            if not _is_data(o):
                continue
            acc = None
            for t in flat_in:
                s = self.get(t)
                if s is None:
                    continue
                try:
                    fits = torch.broadcast_shapes(s.shape, o.shape) == o.shape
                except RuntimeError:
                    fits = False
                if not fits:
                    acc = _full(o.shape, MIXED)
                    break
                s = s.expand(o.shape)
                acc = s if acc is None else _combine(acc, s, self.areas)
            if acc is not None:
                sh[o] = acc
        if name.endswith("_") and not name.startswith("__") and args and outs:
            if isinstance(args[0], torch.Tensor) and args[0] is not outs[0]:
                sh[args[0]] = sh.get(outs[0])

    # -- mixing rules
    @staticmethod
    def _mix(s: torch.Tensor, dim: int) -> torch.Tensor:
        """The tag that survives mixing along ``dim`` (kept where constant, else MIXED);
        the result keeps ``dim`` with size 1. Pair flags are dropped: contracting over the
        keys of an attention tensor leaves the query's position."""
        s = torch.where(s >= 0, s & ~PAIR, s)
        hi, lo = s.amax(dim, keepdim=True), s.amin(dim, keepdim=True)
        return torch.where(hi == lo, hi, torch.full_like(hi, MIXED))

    def _matmul(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        sa, sb = self.get(a), self.get(b)
        if a.dim() < 2 or b.dim() < 2:
            return _full(out.shape, MIXED)
        rows = self._mix(sa, -1).expand(out.shape) if sa is not None else None  # (..., m, 1)
        cols = self._mix(sb, -2).expand(out.shape) if sb is not None else None  # (..., 1, n)
        if rows is None:
            return cols
        if cols is None:
            return rows
        return _pair(rows, cols)

    def _einsum(self, args: tuple, out: torch.Tensor) -> torch.Tensor:
        eq = args[0].replace(" ", "")
        ops = (
            list(args[1])
            if len(args) == 2 and isinstance(args[1], list | tuple)
            else list(args[1:])
        )
        lhs, rhs = eq.split("->")
        result = None
        for spec, t in zip(lhs.split(","), ops, strict=True):
            s = self.get(t)
            if s is None or "." in spec:
                if s is not None:
                    return _full(out.shape, MIXED)
                continue
            for k, ch in reversed(list(enumerate(spec))):
                if ch not in rhs:
                    s = self._mix(s, k).squeeze(k)
            kept = [ch for ch in spec if ch in rhs]
            s = s.permute(*[kept.index(ch) for ch in rhs if ch in kept])
            view = [
                s.shape[[c for c in rhs if c in kept].index(ch)] if ch in kept else 1 for ch in rhs
            ]
            s = s.reshape(view).expand(out.shape)
            result = s if result is None else _pair(result, s)
        return result if result is not None else _full(out.shape, NONE)

    def _reduce(self, args: tuple, kwargs: dict, out: Any) -> None:
        s = self.shadow_or_none(args[0])
        dim = kwargs.get(
            "dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None
        )
        keep = bool(
            kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        )
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if dim is None:
            red = self._mix(s.reshape(1, -1), -1).reshape(())
        else:
            dims = [d % s.dim() for d in ((dim,) if isinstance(dim, int) else tuple(dim))]
            # All reduced axes at once: pooling a small group of neighbours keeps the group's
            # first position, pooling more of the map mixes it.
            rest = [d for d in range(s.dim()) if d not in dims]
            flat = s.permute(*rest, *dims).reshape(*(s.shape[d] for d in rest), -1)
            red = _group(flat).squeeze(-1)
            if keep:
                for d in sorted(dims):
                    red = red.unsqueeze(d)
        for o in outs:
            if _is_data(o) and tuple(o.shape) == tuple(red.shape):
                self.shadows[o] = red


def _by_entry(func: Any, s: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Tags after a data-movement op that has no int64 kernel (``F.unfold``, ``F.fold``: e.g.
    mmpretrain's patch merging, MobileViT's patches): the op moves float64 entry numbers
    (1-based, exact below 2**53) and the tags are gathered. Zero padding is :data:`PAD`; an
    entry that sums several (an overlapping ``fold``) is MIXED."""
    n = s.numel()
    number = torch.arange(1, n + 1, dtype=torch.float64).view(s.shape)
    moved = func(number, *args, **kwargs).round().long()
    count = func(torch.ones_like(number), *args, **kwargs).round().long()
    tags = torch.cat([_full((1,), PAD), s.reshape(-1)])[moved.clamp(0, n)]
    return torch.where(count > 1, torch.full_like(tags, MIXED), tags)


def _pointwise(args: tuple, kwargs: dict) -> bool:
    """Whether a ``conv2d`` call is a 1x1 convolution with stride 1 and no padding."""
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    opts = dict(zip(("stride", "padding", "dilation"), args[3:6], strict=False))
    opts.update({k: v for k, v in kwargs.items() if k in ("stride", "padding", "dilation")})

    def ones(v: Any, one: int) -> bool:
        return v is None or all(int(e) == one for e in ((v,) if isinstance(v, int) else v))

    return (
        isinstance(w, torch.Tensor)
        and tuple(w.shape[-2:]) == (1, 1)
        and ones(opts.get("stride"), 1)
        and (opts.get("padding") in (None, "valid") or ones(opts.get("padding"), 0))
        and ones(opts.get("dilation"), 1)
    )


def _group(s: torch.Tensor) -> torch.Tensor:
    """Tags after mixing the channel (last) axis with a linear layer: a constant tag stays;
    a small group of positions concatenated into the channels (patch merging: a 2x2 group of
    tokens) becomes the group's first position; anything more is MIXED."""
    first = s[..., :1]
    same = (s == first).all(-1, keepdim=True)
    if bool(same.all()):
        return first
    distinct = (torch.sort(s, dim=-1).values.diff(dim=-1) != 0).sum(-1, keepdim=True) + 1
    ok = same | ((distinct <= MAX_GROUP) & (s >= 0).all(-1, keepdim=True))
    return torch.where(ok, first, torch.full_like(first, MIXED))


def _combine(a: torch.Tensor, b: torch.Tensor, area: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise combination of two tag tensors (same shape).

    The stronger tag wins: a position over :data:`MIXED` (an elementwise op does not move
    data, so a map multiplied by a pooled gate, as in squeeze-excite, or added to a
    token-mixed branch keeps its layout), MIXED over :data:`NONE` (parameters, constants),
    NONE over :data:`PAD` (a padding zero added to a class token is that token). Two
    positions of grids with different numbers of positions (``area[grid id]``): the finer
    grid's (a residual stream plus a branch computed from a pooled map, as GCViT's global
    query, stays on the stream's map); two different positions otherwise are MIXED.
    """
    ra, rb = _rank(a), _rank(b)
    out = torch.where(ra >= rb, a, b)
    both = (ra == 3) & (rb == 3) & (a != b)
    if area is not None and bool(both.any()):
        sa, sb = area[_decode(a.clamp(min=0))[0]], area[_decode(b.clamp(min=0))[0]]
        out = torch.where(both & (sa > sb), a, torch.where(both & (sb > sa), b, out))
        both = both & (sa == sb)
    return torch.where(both, torch.full_like(out, MIXED), out)


def _rank(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 3, torch.where(t == MIXED, 2, torch.where(t == NONE, 1, 0)))


def _pair(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Tags of a product of traced rows with traced columns (``q k^T``, ``attn v``).

    A row on the map keeps its position: with a column on the map too the entry is a pair
    (attention scores); a column that mixes positions along the contracted axis (the values
    an attention row sums over) does not move the row. A row off the map (a class token's
    query) stays off it, whatever it reads. A mixed row (a channel-mixing matrix computed
    from pooled statistics, as in channel attention) takes the column's position.
    """
    out = torch.where((rows >= 0) & (cols >= 0), rows | PAIR, rows)
    return torch.where((rows == MIXED) & (cols >= 0), cols, out)


def _crop_pad(s: torch.Tensor) -> torch.Tensor:
    """An NCHW shadow without its all-:data:`PAD` border rows and columns: a convolution
    or pooling behind explicit padding (TF "same" padding, as in EfficientNet) reads a map."""
    if s.dim() != 4:
        return s
    for d in (2, 3):
        keep = (s != PAD).movedim(d, 0).reshape(s.shape[d], -1).any(1).nonzero()
        if keep.numel():
            s = s.narrow(d, int(keep[0]), int(keep[-1]) - int(keep[0]) + 1)
    return s


def _pad(s: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """Tags after ``F.pad``: new entries are :data:`PAD` (cropping them again gives the
    original tags back); negative padding crops."""
    for k in range(len(pad) // 2):
        before, after = pad[2 * k], pad[2 * k + 1]
        d = s.dim() - 1 - k
        if before < 0 or after < 0:
            s = s.narrow(d, -min(before, 0), s.shape[d] + min(before, 0) + min(after, 0))
            before, after = max(before, 0), max(after, 0)
        if before or after:
            lead, tail = s.shape[:d], s.shape[d + 1 :]
            edge = [_full((*lead, m, *tail), PAD) for m in (before, after)]
            s = torch.cat([edge[0], s, edge[1]], dim=d)
    return s


# ---- running it ------------------------------------------------------------------------------
def call_model(model: nn.Module, example: Any) -> Any:
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Leave no trace of a dry forward: buffers (BatchNorm statistics), train/eval flags and
    the random number generator are restored."""
    buffers = {
        k: v.detach().clone()
        for k, v in model.state_dict(keep_vars=True).items()
        if not isinstance(v, nn.Parameter)
    }
    modes = {m: m.training for m in model.modules()}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                own = model.state_dict(keep_vars=True)
                for k, v in buffers.items():
                    if k in own and isinstance(own[k], torch.Tensor):
                        own[k].copy_(v)
            for m, t in modes.items():
                m.training = t


def trace_layers(
    model: nn.Module,
    example: Any,
    targets: Mapping[str, nn.Module],
) -> dict[str, LayerTrace]:
    """Run ``model`` once on ``example`` and report how each target layer was called.

    Args:
        model: the model (not modified: buffers, modes and the RNG are restored).
        example: the model's input: a tensor (an ``(B, C, H, W)`` image), a tuple of
            positional arguments or a dict of keyword arguments (e.g. ``pixel_values``);
            every 4-D floating tensor among them is tagged as an image.
        targets: qualified name -> ``nn.Linear`` / ``nn.Conv2d`` to report on.

    Returns:
        name -> :class:`LayerTrace` for every target (no calls: it never ran).

    Raises:
        RuntimeError: the model's forward failed on ``example`` (the message says so).
    """
    weights = {id(m.weight): n for n, m in targets.items()}
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def push(module: nn.Module, args: Any) -> None:
        stack.append(names.get(id(module), "?"))

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        if stack:
            stack.pop()

    tracer = _Tracer(weights, stack)
    input_hw = None
    for t in tree_flatten(example)[0]:
        if _is_data(t) and t.dim() == 4:
            tracer.shadows[t] = tracer.grid_tags(tuple(t.shape))
        if input_hw is None and t in tracer.shadows:
            input_hw = (int(t.shape[-2]), int(t.shape[-1]))
    pre = torch.nn.modules.module.register_module_forward_pre_hook(push)
    post = torch.nn.modules.module.register_module_forward_hook(pop, always_call=True)
    try:
        with preserved(model), torch.no_grad(), tracer:
            model.eval()
            call_model(model, example)
    except Exception as err:
        raise RuntimeError(
            f"the dry forward of {type(model).__name__} on the example input failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        pre.remove()
        post.remove()
    return {n: LayerTrace(tracer.calls.get(n, []), input_hw) for n in targets}
