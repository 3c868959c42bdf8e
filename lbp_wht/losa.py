"""LoSA, low-rank side adaptation: a trainable side network beside a frozen backbone.

LoSA (Mercea et al., "Time-, Memory- and Parameter-Efficient Visual Adaptation", CVPR 2024)
freezes the backbone and sends no gradient through it. A small side network reads the
backbone's per-block features (detached), refines them with low-rank mixers and hands its
result to the head. Backprop then touches only the side network and the head: the backbone
runs forward once, saving nothing for backward. This module implements it for any PyTorch
model, from the block outputs seen by forward hooks.

The side network
----------------
Blocks ``1 .. L`` (the *taps*) have outputs ``b_i``, each ``(B, N, C_i)`` tokens or a
``(B, C_i, H, W)`` map read as ``N = H * W`` tokens (row-major); all taps share ``N``. The
backbone's *output* feature ``o`` (the tensor the head reads: the last tap's output or a later
module such as a final norm) has ``(B, N, C_o)``. With ``b_i`` detached::

    c_0 = 0
    c_i = P_i c_{i-1} + f_i(P_i c_{i-1} + b_i)          i = 1 .. L
    o'  = o + P_o c_L                                    (the head reads o')

``c_i`` is the side state: the side network's accumulated correction (``h_i - h_0`` in the
paper's notation, whose state ``h_i = h_{i-1} + f_i(h_{i-1} + b_i)`` starts from the first
block's output). Carrying the correction rather than the features is what makes the adapted
model start *exactly* as the frozen one: ``c_1 = f_1(b_1)`` comes from the first block's
output alone, and with the mixers' output projections at zero every ``c_i`` is exactly 0, so
``o' = o`` bit for bit. ``P_i`` is the identity where the width does not change and a
bias-free rank-``r`` map ``C_{i-1} -> r -> C_i`` (:class:`LowRankMap`) where it does (likewise
``P_o``, ``C_L -> C_o``); a bias-free linear map of zero is zero, so any initialisation keeps
the start exact, and the rank keeps a change to a wide output (e.g. 320 -> 1280 channels) as
cheap as the mixers.

``f_i`` is a low-rank mixer: a channel mixer, then a token mixer, each a rank-``r``
bottleneck with a GELU between its two projections and a LayerNorm (over channels) before it,
as in MLP-Mixer (Tolstikhin et al. 2021)::

    u      = W_cu GELU(W_cd LN_c(x) + a_cd) + a_cu                  channel mixing, C -> r -> C
    t      = (W_tu GELU(W_td LN_t(x + u)^T + a_td) + a_tu)^T        token mixing,   N -> r -> N
    f(x)   = u + t

with ``W_cd (r, C)``, ``W_cu (C, r)``, ``W_td (r, N)``, ``W_tu (N, r)``. The up-projections
``W_cu, a_cu, W_tu, a_tu`` (the *output projections*) start at zero, the down-projections with
``nn.Linear``'s default initialisation, the LayerNorms at (1, 0). Hence at the start the
down-projections get no gradient (like LoRA's ``A`` with ``B = 0``) and the output
projections do.

Where the LoSA paper is silent (correction form, LayerNorms, GELU, biases, one rank, taps and
output, NCHW layouts), the choices are listed in ``docs/PAPER_NOTES.md``, "Beyond the paper:
LoSA". The token mixer fixes ``N``: an adapted model only takes inputs of the size it was built
for.

Use::

    side = attach_losa(model, blocks=["backbone.network.3.0", "backbone.network.3.2"],
                       output="backbone.norm3", rank=8, example_inputs=torch.zeros(1, 1, 28, 28))
    freeze(model, ["losa.*", "head.*"])   # or: side.trainable_parameters()
    ...
    detach_losa(model)                    # the plain model again

``attach_losa`` registers the side network as the submodule ``model.losa`` (its parameters
are saved with the model's state dict under ``losa.*``) and runs ``example_inputs`` once,
without gradients and in eval mode, to learn the feature shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "LowRankMixer", "LowRankMap", "LoSA", "attach_losa", "detach_losa", "find_blocks",
    "as_tokens", "DEFAULT_RANK",
]  # fmt: skip

#: Rank of the mixers' bottlenecks when none is given (the LoRA baselines' rank).
DEFAULT_RANK = 8


def as_tokens(t: torch.Tensor, what: str = "feature") -> torch.Tensor:
    """``(B, N, C)`` tokens as they are, a ``(B, C, H, W)`` map as ``(B, H*W, C)`` tokens
    (row-major); anything else is a ``ValueError`` naming ``what``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"LoSA: {what} is a {type(t).__name__}, expected a tensor")
    if t.dim() == 3:
        return t
    if t.dim() == 4:
        return t.flatten(2).transpose(1, 2)
    raise ValueError(
        f"LoSA: {what} has shape {tuple(t.shape)}; expected (B, N, C) tokens or a (B, C, H, W) map"
    )


def _like(c: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Tokens ``c (B, N, C)`` in the layout of ``ref`` (tokens, or NCHW of the same size)."""
    if ref.dim() == 3:
        return c
    b, ch, h, w = ref.shape
    return c.transpose(1, 2).reshape(b, ch, h, w)


class LowRankMap(nn.Sequential):
    """A bias-free rank-``r`` linear map ``x -> (x V^T) U^T`` with ``V (r, a)``, ``U (b, r)``
    (``nn.Linear`` initialisation): LoSA's side state crossing a change of width ``a -> b``."""

    def __init__(self, a: int, b: int, rank: int) -> None:
        super().__init__(nn.Linear(a, rank, bias=False), nn.Linear(rank, b, bias=False))


class LowRankMixer(nn.Module):
    """``f(x) = u + t``: a rank-``r`` channel mixer ``u``, then a rank-``r`` token mixer ``t``
    on ``x + u`` (equations in the module docstring). Input and output ``(B, N, C)``: ``tokens``
    N, ``channels`` C, ``rank`` r of both bottlenecks; ``zero_init``: output projections at zero
    (``f = 0`` until they train).
    """

    def __init__(self, tokens: int, channels: int, rank: int, zero_init: bool = True) -> None:
        super().__init__()
        for name, v in (("tokens", tokens), ("channels", channels), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LowRankMixer: {name} must be a positive int, got {v!r}")
        self.tokens, self.channels, self.rank = tokens, channels, rank
        self.channel_norm = nn.LayerNorm(channels)
        self.channel_down = nn.Linear(channels, rank)
        self.channel_up = nn.Linear(rank, channels)
        self.token_norm = nn.LayerNorm(channels)
        self.token_down = nn.Linear(tokens, rank)
        self.token_up = nn.Linear(rank, tokens)
        self.act = nn.GELU()
        if zero_init:
            for layer in (self.channel_up, self.token_up):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.tokens or x.shape[2] != self.channels:
            raise ValueError(
                f"LowRankMixer built for (B, {self.tokens}, {self.channels}) tokens got "
                f"{tuple(x.shape)} (an input of another size than the model was adapted for?)"
            )
        u = self.channel_up(self.act(self.channel_down(self.channel_norm(x))))
        z = self.token_norm(x + u).transpose(1, 2)  # (B, C, N)
        t = self.token_up(self.act(self.token_down(z))).transpose(1, 2)
        return u + t

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, channels={self.channels}, rank={self.rank}"


class LoSA(nn.Module):
    """The side network: one :class:`LowRankMixer` per tap, width transitions, and the hooks
    that feed it (equations in the module docstring): ``tokens`` N shared by every tap and the
    output, ``tap_channels`` ``C_1 .. C_L``, ``out_channels`` ``C_o``, ``rank`` r of every mixer.

    :meth:`forward` maps the tap features (tokens or maps, detached by the caller or not) to the
    correction ``P_o c_L``, ``(B, N, C_o)``. The hooks installed by :func:`attach_losa` call it
    and add the result to the output feature.
    """

    def __init__(
        self,
        tokens: int,
        tap_channels: Sequence[int],
        out_channels: int,
        rank: int = DEFAULT_RANK,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        tap_channels = [int(c) for c in tap_channels]
        if not tap_channels:
            raise ValueError("LoSA needs at least one tap (block output)")
        self.tokens, self.rank = int(tokens), int(rank)
        self.tap_channels, self.out_channels = tap_channels, int(out_channels)
        self.mixers = nn.ModuleList(
            LowRankMixer(self.tokens, c, self.rank, zero_init) for c in tap_channels
        )
        widths = [tap_channels[0], *tap_channels]  # c_0 has the first tap's width
        self.transitions = nn.ModuleList(
            nn.Identity() if a == b else LowRankMap(a, b, self.rank)
            for a, b in zip(widths[:-1], widths[1:])
        )
        last = tap_channels[-1]
        self.out_transition = (
            nn.Identity()
            if last == self.out_channels
            else LowRankMap(last, self.out_channels, self.rank)
        )
        # Hook state (not parameters): set by attach_losa.
        self.tap_names: list[str] = []
        self.output_name = ""
        self._feats: list[torch.Tensor | None] = []

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.mixers):
            raise ValueError(f"LoSA has {len(self.mixers)} taps, got {len(feats)} features")
        c = self.mixers[0](as_tokens(feats[0], "tap 0"))  # c_0 = 0: the first step is f_1(b_1)
        for i in range(1, len(feats)):
            c = self.transitions[i](c)
            c = c + self.mixers[i](c + as_tokens(feats[i], f"tap {i}"))
        return self.out_transition(c)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The side network's parameters (what an optimizer of LoSA gets, besides the head)."""
        return list(self.parameters())

    def extra_repr(self) -> str:
        return (
            f"tokens={self.tokens}, taps={self.tap_channels}, out_channels={self.out_channels}, "
            f"rank={self.rank}"
        )

    # ---- hooks ----------------------------------------------------------------------------
    # The hooks are a bound method and partials of one (not closures), so that a deep copy of
    # the adapted model hooks into its own copy of the side network.
    def _tap_hook(self, i: int, module: nn.Module, args: Any, out: Any) -> None:
        self._feats[i] = out.detach() if isinstance(out, torch.Tensor) else out

    def _output_hook(self, module: nn.Module, args: Any, out: Any) -> torch.Tensor:
        feats, self._feats = self._feats, [None] * len(self.mixers)
        missing = [self.tap_names[i] for i, f in enumerate(feats) if f is None]
        if missing:
            raise RuntimeError(
                f"LoSA: the output module {self.output_name!r} ran before the taps {missing} "
                "in this forward (are the taps blocks that run before it?)"
            )
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"LoSA: the output module {self.output_name!r} returned a "
                f"{type(out).__name__}; it must return the feature tensor the head reads"
            )
        base = out.detach()
        tokens = as_tokens(base, f"output {self.output_name!r}")
        if tokens.shape[1:] != (self.tokens, self.out_channels):
            raise ValueError(
                f"LoSA: output {self.output_name!r} gives {tuple(tokens.shape[1:])} (tokens, "
                f"channels); the side network was built for ({self.tokens}, "
                f"{self.out_channels}) (an input of another size?)"
            )
        return base + _like(self(feats), base)

    def remove_hooks(self, model: nn.Module) -> int:
        """Remove this side network's hooks from every module of ``model``; returns how many.

        Found by owner rather than by handle, so this works on a deep copy of the model too."""
        removed = 0
        for m in model.modules():
            for key, hook in list(m._forward_hooks.items()):
                owner = hook.args[0] if isinstance(hook, functools.partial) else None
                owner = getattr(hook, "__self__", owner)
                if owner is self:
                    del m._forward_hooks[key]
                    m._forward_hooks_with_kwargs.pop(key, None)
                    m._forward_hooks_always_called.pop(key, None)
                    removed += 1
        self._feats = []
        return removed


def find_blocks(model: nn.Module, container: str) -> list[str]:
    """The qualified names of the direct children of module ``container`` that hold
    parameters, in order (parameter-free reshapes such as EfficientFormer's ``Flat`` are
    skipped: their output repeats the previous block's).

    Raises:
        ValueError: ``container`` is not a module of ``model`` (close names listed), or has no
            such child.
    """
    modules = dict(model.named_modules())
    if container not in modules:
        near = [n for n in modules if n.endswith(container.split(".")[-1])][:5]
        raise ValueError(f"LoSA: model has no module {container!r}; similar: {near}")
    names = [
        f"{container}.{n}"
        for n, child in modules[container].named_children()
        if any(True for _ in child.parameters())
    ]
    if not names:
        raise ValueError(f"LoSA: module {container!r} has no child block with parameters")
    return names


def _record_shapes(
    model: nn.Module, names: Sequence[str], example_inputs: Any
) -> dict[str, torch.Size]:
    """Run ``model(*example_inputs)`` once (eval mode, no grad) and return the output shape
    of each module in ``names``; training flags are restored afterwards."""
    modules = dict(model.named_modules())
    shapes: dict[str, torch.Size] = {}
    handles = []
    for name in names:

        def hook(m: nn.Module, a: Any, out: Any, name: str = name) -> None:
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"LoSA: module {name!r} returns a {type(out).__name__}, not a tensor; "
                    "taps and the output must be modules that return one feature tensor"
                )
            shapes[name] = out.shape

        handles.append(modules[name].register_forward_hook(hook))
    flags = {m: m.training for m in model.modules()}
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    not_run = [n for n in names if n not in shapes]
    if not_run:
        raise RuntimeError(f"LoSA: modules {not_run} did not run on the example inputs")
    return shapes


def attach_losa(
    model: nn.Module,
    blocks: Sequence[str],
    output: str | None = None,
    *,
    rank: int = DEFAULT_RANK,
    example_inputs: Any,
    name: str = "losa",
    zero_init: bool = True,
) -> LoSA:
    """Build a :class:`LoSA` side network for ``model`` and hook it in.

    Args:
        model: any ``nn.Module``; ``model(*example_inputs)`` must run it.
        blocks: qualified names of the tap modules (e.g. from :func:`find_blocks`), in
            forward order; each returns ``(B, N, C_i)`` tokens or a ``(B, C_i, H, W)`` map
            with the same ``N``.
        output: the module whose output the head reads and the correction is added to
            (default: the last tap).
        rank: r of the mixers.
        example_inputs: one input (or a tuple of positional inputs) of the size training will
            use; run once without gradients to learn the shapes.
        name: attribute under which the side network is registered on ``model``.
        zero_init: output projections at zero (the adapted model starts as the frozen one).

    Returns:
        The side network, registered as ``model.<name>``. Nothing is frozen here: freeze the
        backbone (e.g. ``lbp_wht.freeze(model, ["losa.*", "head.*"])``); gradients cannot
        reach it anyway, as every feature the side network reads is detached.

    Raises:
        ValueError: unknown module names, a name already taken, no taps, shapes that do not
            share a token count.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoSA rank must be a positive int, got {rank!r}")
    blocks = list(blocks)
    if not blocks:
        raise ValueError("attach_losa needs at least one block (tap)")
    output = output or blocks[-1]
    if hasattr(model, name):
        raise ValueError(
            f"model already has an attribute {name!r} (LoSA attached twice?); detach_losa first "
            "or pass another name="
        )
    modules = dict(model.named_modules())
    unknown = [n for n in [*blocks, output] if n not in modules]
    if unknown:
        raise ValueError(f"attach_losa: model has no module(s) {unknown}")
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"attach_losa: blocks listed twice in {blocks}")
    shapes = _record_shapes(model, list(dict.fromkeys([*blocks, output])), example_inputs)
    tok = {n: as_tokens(torch.empty(shapes[n], device="meta"), n).shape for n in shapes}
    counts = {n: s[1] for n, s in tok.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"LoSA: the taps and the output must share one token count (the token mixer mixes a "
            f"fixed N); got {counts}. Tap the blocks of one stage."
        )
    side = LoSA(counts[output], [tok[n][2] for n in blocks], tok[output][2], rank, zero_init)
    ref = next(model.parameters(), None)
    if ref is not None:
        side.to(device=ref.device, dtype=ref.dtype)
    model.add_module(name, side)
    side.tap_names, side.output_name = blocks, output
    side._feats = [None] * len(blocks)
    for i, b in enumerate(blocks):
        modules[b].register_forward_hook(functools.partial(LoSA._tap_hook, side, i))
    modules[output].register_forward_hook(side._output_hook)
    return side


def detach_losa(model: nn.Module, name: str = "losa") -> LoSA:
    """Remove the side network ``model.<name>`` and its hooks; returns it (trained weights
    included), leaving ``model`` as it was before :func:`attach_losa`.

    Raises:
        ValueError: ``model`` has no LoSA side network under ``name``.
    """
    side = getattr(model, name, None)
    if not isinstance(side, LoSA):
        raise ValueError(f"model has no LoSA side network named {name!r}")
    side.remove_hooks(model)
    delattr(model, name)
    return side
