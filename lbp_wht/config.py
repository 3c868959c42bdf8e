"""Typed, validated configuration of LBP-WHT layers and of LoRA adapters.

Three numbers that the paper and earlier code all called "r" or "rank" have distinct names here:

* ``radius``: the ``r`` of the low-pass selections, LP_L1-r (Eq. 8, bases with ``i + j < r``)
  and LP_Linf-r (Eq. 9, ``max(i, j) < r``);
* ``num_bases``: ``R``, how many WHT bases span the low-rank space (LP_L1-4 keeps R = 10 of
  the 64 bases of an order-8 WHT; LHE keeps the ``R`` strongest);
* LoRA's ``rank``: the inner dimension ``k`` of the adapters ``A (k, Cx)``, ``B (Cy, k)``.

Both configs are frozen dataclasses, checked once in ``__post_init__`` (types included: a bool
or a float where an int is meant is an error), so a layer never meets an invalid value. The
selected bases of a low-pass or explicit selection are computed once, at construction.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .bases import SELECTIONS, BaseIndex, select_bases

__all__ = [
    "LBPConfig",
    "LoRAConfig",
    "LoRAFAConfig",
    "VeLoRAConfig",
    "WTACRSConfig",
    "HOTConfig",
    "INSTANTConfig",
    "IMPLS",
    "check_int",
]

#: Implementations of the projection (same values, different speed; see ``WHTProjector``).
IMPLS = ("auto", "dense", "patch")


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    """``value`` as an int, or a ``TypeError`` / ``ValueError`` naming ``what``.

    Booleans and floats are refused (``True`` is an int to Python, ``1.5`` would be truncated).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _check_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")
    return value


def _bases_tuple(bases: Any, order: int) -> tuple[BaseIndex, ...]:
    if isinstance(bases, str | bytes) or not isinstance(bases, Sequence):
        raise TypeError(
            f"bases must be a sequence of (i, j) pairs, got {bases!r} ({type(bases).__name__})"
        )
    out = []
    for k, ij in enumerate(bases):
        if isinstance(ij, str | bytes) or not isinstance(ij, Sequence) or len(ij) != 2:
            raise TypeError(f"bases[{k}]={ij!r}: each base is a pair of ints (i, j)")
        out.append((check_int(ij[0], f"bases[{k}][0]"), check_int(ij[1], f"bases[{k}][1]")))
    # select_bases checks the range and duplicates with its own messages.
    return tuple(select_bases("explicit", order=order, indices=out))


@dataclass(frozen=True)
class LBPConfig:
    """How an LBP-WHT layer projects: base selection, patch order, padding, implementation.

    Examples::

        LBPConfig()                                   # LP_L1-4: R = 10 bases (the paper's default)
        LBPConfig(selection="lp_linf", radius=3)      # LP_Linf-3: R = 9
        LBPConfig(selection="lhe", num_bases=10)      # 10 strongest bases, chosen by profiling
        LBPConfig(selection="explicit", bases=((0, 0), (0, 1)))
        LBPConfig(radius=15, padding="zero")          # all 64 bases: exactly plain backprop
    """

    #: The radius of a low-pass selection given none (LP_L1-4, the paper's default). The one
    #: place this default is written: the harness (``lbp.r``) reads it from here.
    DEFAULT_RADIUS: ClassVar[int] = 4

    selection: str = field(
        default="lp_l1",
        metadata={
            "help": "Which 2D WHT bases span the low-rank space: 'lp_l1' (Eq. 8, i + j < "
            "radius), 'lp_linf' (Eq. 9, max(i, j) < radius), 'lhe' (the num_bases bases "
            "with the largest gradient energy, chosen after profiling; see lbp_wht.lhe) or "
            "'explicit' (the given bases)."
        },
    )
    radius: int | None = field(
        default=None,
        metadata={
            "help": "r of LP_L1-r / LP_Linf-r (None: DEFAULT_RADIUS; LP_L1 r = 2, 4, 6, 8 "
            "keep R = 3, 10, 21, 36 bases, r = 2*order - 1 keeps all). Only for 'lp_l1' "
            "and 'lp_linf'."
        },
    )
    num_bases: int | None = field(
        default=None,
        metadata={
            "help": "R, the number of bases. Required for 'lhe'; for the other selections "
            "it is derived (giving it anyway checks it)."
        },
    )
    bases: tuple[BaseIndex, ...] | None = field(
        default=None,
        metadata={"help": "The (i, j) bases of an 'explicit' selection, in sequency order."},
    )
    order: int = field(
        default=8,
        metadata={"help": "WHT order n: the map is cut into n x n patches (8 in the paper)."},
    )
    padding: str = field(
        default="reflect",
        metadata={
            "help": "How a map is padded to whole patches: 'reflect' (the paper's "
            "experiments) or 'zero' (with all order**2 bases this is exact backprop)."
        },
    )
    impl: str = field(
        default="auto",
        metadata={
            "help": "Projection implementation: 'dense' (one matrix over the whole map), "
            "'patch' (separable per-patch projection) or 'auto' (the cheaper of the two by "
            "lbp_wht.projection.projection_cost). Same values."
        },
    )

    def __post_init__(self) -> None:
        from .bases import _check_order

        set_ = object.__setattr__  # frozen: normalised values are written once, here
        _check_choice(self.selection, "selection", SELECTIONS)
        set_(self, "order", check_int(self.order, "order", 1))
        _check_order(self.order)
        _check_choice(self.padding, "padding", ("reflect", "zero"))
        _check_choice(self.impl, "impl", IMPLS)
        low_pass = self.selection in ("lp_l1", "lp_linf")
        if self.radius is not None and not low_pass:
            raise ValueError(
                f"radius applies only to selection 'lp_l1' / 'lp_linf', not {self.selection!r}"
            )
        if self.bases is not None and self.selection != "explicit":
            raise ValueError(
                f"bases are used only with selection='explicit' (got selection={self.selection!r})"
            )
        n2 = self.order * self.order
        if self.num_bases is not None:
            set_(self, "num_bases", check_int(self.num_bases, "num_bases", 1))
            if self.num_bases > n2:
                raise ValueError(
                    f"num_bases={self.num_bases} exceeds the {n2} bases of order {self.order}"
                )
        if low_pass:
            radius = self.radius
            radius = self.DEFAULT_RADIUS if radius is None else check_int(radius, "radius", 1)
            set_(self, "radius", radius)
            chosen: tuple[BaseIndex, ...] | None = tuple(
                select_bases(self.selection, radius=radius, order=self.order)
            )
        elif self.selection == "explicit":
            if self.bases is None:
                raise ValueError("selection='explicit' needs bases=((i, j), ...)")
            chosen = _bases_tuple(self.bases, self.order)
            set_(self, "bases", chosen)
        else:  # lhe: chosen after profiling
            if self.num_bases is None:
                raise ValueError("selection='lhe' needs num_bases=R (how many bases to keep)")
            chosen = None
        if chosen is not None:
            if self.num_bases is not None and self.num_bases != len(chosen):
                raise ValueError(
                    f"num_bases={self.num_bases} does not match selection {self.describe()} "
                    f"(which keeps {len(chosen)} bases); leave num_bases out"
                )
            set_(self, "num_bases", len(chosen))
        set_(self, "_selected", chosen)

    @property
    def selected_bases(self) -> tuple[BaseIndex, ...] | None:
        """The selected ``(i, j)`` (sequency order); ``None`` for LHE (chosen by profiling)."""
        return self._selected  # type: ignore[attr-defined]

    def describe(self) -> str:
        """Short name, e.g. ``LP_L1-4``, ``LP_Linf-3``, ``LHE-10``, ``explicit-2``."""
        if self.selection == "lp_l1":
            return f"LP_L1-{self.radius}"
        if self.selection == "lp_linf":
            return f"LP_Linf-{self.radius}"
        if self.selection == "lhe":
            return f"LHE-{self.num_bases}"
        return f"explicit-{len(self.bases or ())}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``LBPConfig(**d)`` rebuilds the same config."""
        d = asdict(self)
        if d["bases"] is not None:
            d["bases"] = [list(b) for b in d["bases"]]
        return d


@dataclass(frozen=True)
class _LowRankAdapter:
    """``rank`` and ``alpha`` of an adapter ``(alpha / rank) B A`` (LoRA, LoRA-FA)."""

    _NAME: ClassVar[str] = "LoRA"

    rank: int = field(
        default=8,
        metadata={"help": "Inner dimension k of the adapters A (k, in) and B (out, k)."},
    )
    alpha: float = field(
        default=8.0,
        metadata={"help": "Scaling numerator: the adapter output is multiplied by alpha / rank."},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", check_int(self.rank, f"{self._NAME} rank", 1))
        object.__setattr__(self, "alpha", _check_real(self.alpha, f"{self._NAME} alpha"))

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoRAConfig(_LowRankAdapter):
    """LoRA adapters ``y = x w^T + b + (alpha / rank) B A dropout(x)`` (Hu et al. 2022)."""

    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout probability on the adapter's input (training only). Must be 0 "
            "with LBP-WHT backward (an elementwise mask has no low-rank form)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        p = _check_real(self.dropout, "LoRA dropout")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {p}")
        object.__setattr__(self, "dropout", p)


@dataclass(frozen=True)
class LoRAFAConfig(_LowRankAdapter):
    """LoRA-FA adapters (Zhang et al. 2023): ``y = x w^T + b + (alpha / rank) (x A^T) B^T`` with
    ``A`` frozen at its random initialisation and only ``B`` trained (see
    :mod:`lbp_wht.lora_fa`). No dropout: a dropout mask on ``x`` would have to be saved at full
    size, which is what LoRA-FA avoids."""

    _NAME: ClassVar[str] = "LoRA-FA"


@dataclass(frozen=True)
class VeLoRAConfig:
    """VeLoRA (Miles et al. 2024): the input saved for ``g_w`` is cut into sub-tokens of
    ``subtoken_size`` consecutive channels, each stored as one coefficient on a fixed unit
    vector ``v`` (see :mod:`lbp_wht.velora`)."""

    subtoken_size: int = field(
        default=16,
        metadata={
            "help": "d, the channels per sub-token; must divide the layer's input channels. "
            "The saved activation shrinks by the factor d (d = 1 is exact backprop)."
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "subtoken_size", check_int(self.subtoken_size, "VeLoRA subtoken_size", 1)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WTACRSConfig:
    """WTA-CRS (Liu et al. 2023): ``g_w = g_y^T x`` estimated from ``k`` of the ``N`` token rows
    of ``x`` (see :mod:`lbp_wht.wta_crs`). Give ``keep`` (k) or ``keep_fraction`` (k = ceil(
    fraction N) per call), not both; neither means ``keep_fraction=0.3``."""

    keep: int | None = field(
        default=None,
        metadata={
            "help": "k, the number of token rows kept for g_w (an error at run time if a "
            "call has fewer than k rows)."
        },
    )
    keep_fraction: float | None = field(
        default=None,
        metadata={"help": "k as a fraction of the call's rows, in (0, 1]: k = ceil(f N)."},
    )
    winner_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Share of the k kept rows taken deterministically (the highest-probability "
            "'winners'), in [0, 1); the rest are sampled, so the estimator stays unbiased."
        },
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.keep is not None and self.keep_fraction is not None:
            raise ValueError(
                f"WTA-CRS: give keep (k rows) or keep_fraction, not both (got keep={self.keep}, "
                f"keep_fraction={self.keep_fraction})"
            )
        if self.keep is not None:
            set_(self, "keep", check_int(self.keep, "WTA-CRS keep", 1))
        else:
            f = 0.3 if self.keep_fraction is None else self.keep_fraction
            f = _check_real(f, "WTA-CRS keep_fraction")
            if not 0.0 < f <= 1.0:
                raise ValueError(f"WTA-CRS keep_fraction must be in (0, 1], got {f}")
            set_(self, "keep_fraction", f)
        w = _check_real(self.winner_fraction, "WTA-CRS winner_fraction")
        if not 0.0 <= w < 1.0:
            raise ValueError(
                f"WTA-CRS winner_fraction must be in [0, 1) (1 would keep only the top rows: "
                f"a biased estimator), got {w}"
            )
        set_(self, "winner_fraction", w)

    def rows_kept(self, rows: int) -> int:
        """``k`` for a call with ``rows`` token rows (``ValueError`` if ``keep`` exceeds them)."""
        if self.keep is not None:
            if self.keep > rows:
                raise ValueError(
                    f"WTA-CRS keep={self.keep} exceeds the {rows} token rows of this call; "
                    "use a smaller keep or keep_fraction"
                )
            return self.keep
        # rounded first, so that 0.1 * 30 (3.0000000000000004 in floating point) keeps 3 rows
        k = math.ceil(round(self.keep_fraction * rows, 9))  # type: ignore[operator]
        return max(1, min(rows, k))

    def winners(self, kept: int, rows: int) -> int:
        """How many of the ``kept`` rows are taken deterministically (all when ``kept == rows``)."""
        if kept >= rows:
            return rows
        return min(kept, int(self.winner_fraction * kept))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_bits(value: Any, what: str) -> int | None:
    if value is None:
        return None
    bits = check_int(value, what, 2)
    if bits > 8:
        raise ValueError(f"{what} must be in [2, 8] or None (no quantisation), got {bits}")
    return bits


def _check_power_of_two(value: Any, what: str) -> int:
    value = check_int(value, what, 1)
    if value & (value - 1):
        raise ValueError(f"{what} must be a power of two (a Walsh-Hadamard size), got {value}")
    return value


@dataclass(frozen=True)
class HOTConfig:
    """HOT (Kim et al. 2025): the weight gradient from a Hadamard low-rank approximation along
    the token rows (HLA) with an INT8 activation buffer, the input gradient from
    Hadamard-transformed low-bit operands (HQ); see :mod:`lbp_wht.hot`.

    ``hla_rank == hla_block`` with ``act_bits=None`` and ``grad_bits=None`` is exact backprop.
    """

    hla_block: int = field(
        default=16,
        metadata={
            "help": "b, the token rows per Walsh-Hadamard block of the HLA (a power of two; "
            "the last block is zero-padded)."
        },
    )
    hla_rank: int = field(
        default=8,
        metadata={
            "help": "r, the lowest-sequency rows kept per block, 1 <= r <= b (r = b: g_w is "
            "exact up to the activation quantisation)."
        },
    )
    act_bits: int | None = field(
        default=8,
        metadata={
            "help": "Bits of the saved low-rank activation (symmetric, one absmax scale per "
            "row); None saves it unquantised."
        },
    )
    grad_bits: int | None = field(
        default=4,
        metadata={
            "help": "Bits of g_y and w in the HQ product g_x = g_y w (after the Hadamard "
            "transform); None computes g_x exactly, without transform."
        },
    )
    hq_block: int = field(
        default=16,
        metadata={
            "help": "Size of the block Hadamard transform along the contracted Cy axis of "
            "g_x = g_y w (a power of two; Cy is zero-padded to a multiple)."
        },
    )
    hq_scale: str = field(
        default="row",
        metadata={
            "help": "Quantiser granularity of HQ: 'row' (one scale per row of g_y and per "
            "column of w) or 'tensor' (one scale each); the fixed per-layer choice."
        },
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        block = _check_power_of_two(self.hla_block, "HOT hla_block")
        rank = check_int(self.hla_rank, "HOT hla_rank", 1)
        if rank > block:
            raise ValueError(
                f"HOT hla_rank must be <= hla_block (rows kept per block), got hla_rank={rank}, "
                f"hla_block={block}"
            )
        set_(self, "hla_block", block)
        set_(self, "hla_rank", rank)
        set_(self, "act_bits", _check_bits(self.act_bits, "HOT act_bits"))
        set_(self, "grad_bits", _check_bits(self.grad_bits, "HOT grad_bits"))
        set_(self, "hq_block", _check_power_of_two(self.hq_block, "HOT hq_block"))
        set_(self, "hq_scale", _check_choice(self.hq_scale, "HOT hq_scale", ("row", "tensor")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class INSTANTConfig:
    """INSTANT (ICLR 2026): ``x`` and ``g_y`` projected onto calibrated orthonormal channel
    bases ``P_x (Cx, r_x)``, ``P_g (Cy, r_g)``; both gradients computed in that subspace (see
    :mod:`lbp_wht.instant`). ``rank >= max(Cx, Cy)`` is exact backprop."""

    rank: int = field(
        default=32,
        metadata={
            "help": "r, the basis size on each side (r_x = min(r, Cx), r_g = min(r, Cy)); the "
            "saved activation shrinks by Cx / r_x."
        },
    )
    calibration_batches: int = field(
        default=1,
        metadata={
            "help": "Training calls (forward and backward) of exact backprop whose x^T x and "
            "g_y^T g_y are summed before the bases are computed."
        },
    )
    recalibrate_every: int = field(
        default=0,
        metadata={
            "help": "Projected training calls after which the bases are calibrated again "
            "(0: never)."
        },
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "rank", check_int(self.rank, "INSTANT rank", 1))
        n = check_int(self.calibration_batches, "INSTANT calibration_batches", 1)
        set_(self, "calibration_batches", n)
        every = check_int(self.recalibrate_every, "INSTANT recalibrate_every", 0)
        set_(self, "recalibrate_every", every)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
