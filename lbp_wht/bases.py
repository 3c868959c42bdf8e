"""Walsh-Hadamard bases and base selection (paper Sec. 3, Eq. 6-9).

An order-``n`` 2D WHT has ``n * n`` bases ``B_ij = outer(w_i, w_j)``, where ``w_k`` is the
k-th Walsh function in *sequency order* (``w_k`` changes sign ``k`` times). Small indices are
low spatial frequencies, which is what the low-pass selections below rely on.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["walsh_matrix", "select_bases", "basis_matrix", "SELECTIONS", "lp_l1_rank"]

SELECTIONS = ("lp_l1", "lp_linf", "lhe", "explicit")

BaseIndex = tuple[int, int]


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1 or order & (order - 1):
        raise ValueError(
            f"WHT order must be a power of two (1, 2, 4, 8, 16, ...), got {order!r}. "
            "The paper uses order 8 (8x8 patches)."
        )


def walsh_matrix(order: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Walsh matrix of size ``(order, order)`` with entries +-1, rows in sequency order.

    Built from the Sylvester-Hadamard matrix (natural order) by reordering its rows: the row
    with sequency ``k`` is the natural-order row at the bit-reversed Gray code of ``k``.
    """
    _check_order(order)
    hadamard = torch.ones(1, 1, dtype=torch.float64)
    while hadamard.shape[0] < order:
        hadamard = torch.cat(
            [torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0
        )
    bits = order.bit_length() - 1
    rows = []
    for k in range(order):
        gray = k ^ (k >> 1)
        rows.append(int(format(gray, f"0{bits}b")[::-1], 2) if bits else 0)
    return hadamard[rows].to(dtype)


def lp_l1_rank(radius: int, order: int = 8) -> int:
    """Number of bases R kept by LP_L1-r (Eq. 8): |{(i, j): i + j < r, 0 <= i, j < order}|."""
    return len(select_bases("lp_l1", radius=radius, order=order))


def select_bases(
    method: str,
    radius: int | None = None,
    order: int = 8,
    *,
    num_bases: int | None = None,
    energy: torch.Tensor | None = None,
    indices: Sequence[Sequence[int]] | None = None,
) -> list[BaseIndex]:
    """Choose which 2D WHT bases ``(i, j)`` span the low-rank space (Sec. 3.2).

    Args:
        method: ``"lp_l1"`` (Eq. 8, ``i + j < r``; r = 2, 4, 6, 7, 8 give R = 3, 10, 21, 28,
            36), ``"lp_linf"`` (Eq. 9, ``max(i, j) < r``, R = r^2), ``"lhe"`` (the
            ``num_bases`` bases with the largest g_y energy, ``energy`` an ``(order, order)`` tensor, e.g.
            ``LBPLinear.spectrum_energy`` after a few profiling steps) or ``"explicit"``
            (``indices``).
        radius: the paper's r of the low-pass selections (``LBPConfig.radius``).
        num_bases: R, the number of bases LHE keeps (``LBPConfig.num_bases``).
        order: WHT order n (patch side), a power of two.

    Returns:
        The selected ``(i, j)`` in sequency order (sorted by ``i + j``, then ``i``), except
        for ``lhe`` which is sorted by decreasing energy.
    """
    _check_order(order)
    grid = [(i, j) for i in range(order) for j in range(order)]
    if method in ("lp_l1", "lp_linf"):
        r = radius  # the paper's name, in the messages and the conditions of Eqs. 8-9
        if r is None or isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(
                f"select_bases({method!r}) needs an integer radius r >= 1, got radius={r!r}"
            )
        limit = 2 * order - 1 if method == "lp_l1" else order
        if r > limit:
            raise ValueError(
                f"select_bases({method!r}, radius={r}, order={order}): r must be at most "
                f"{limit} (r={limit} already keeps all {order * order} bases)"
            )
        keep = (lambda i, j: i + j < r) if method == "lp_l1" else (lambda i, j: max(i, j) < r)
        chosen = [ij for ij in grid if keep(*ij)]
    elif method == "lhe":
        if energy is None:
            raise ValueError("select_bases('lhe') needs energy=(order, order) tensor of g_y energy")
        if tuple(energy.shape) != (order, order):
            raise ValueError(
                f"select_bases('lhe'): energy has shape {tuple(energy.shape)}, "
                f"expected ({order}, {order})"
            )
        if (
            num_bases is None
            or isinstance(num_bases, bool)
            or not isinstance(num_bases, int)
            or not 1 <= num_bases <= order * order
        ):
            raise ValueError(
                f"select_bases('lhe') needs an int 1 <= num_bases <= {order * order}, "
                f"got {num_bases!r}"
            )
        flat = energy.detach().double().flatten().cpu()
        bad = int((~torch.isfinite(flat)).sum())
        if bad:
            # NaN compares false with everything, so a sort would rank it anywhere (often
            # first); a diverged profiling run must not silently pick bases.
            raise ValueError(
                f"select_bases('lhe'): the energy spectrum has {bad} non-finite entries "
                "(NaN/inf gradients during profiling?); cannot rank the bases"
            )
        if bool((flat < 0).any()):
            raise ValueError("select_bases('lhe'): energies are sums of squares, got negative ones")
        # Stable tie-break by sequency so identical spectra give identical selections.
        order_idx = sorted(range(order * order), key=lambda k: (-float(flat[k]), sum(grid[k])))
        return [grid[k] for k in order_idx[:num_bases]]
    elif method == "explicit":
        if not indices:
            raise ValueError("select_bases('explicit') needs a non-empty indices=[(i, j), ...]")
        chosen = []
        for ij in indices:
            if isinstance(ij, str | bytes) or not isinstance(ij, Sequence) or len(ij) != 2:
                raise TypeError(f"base index {ij!r} is not a pair (i, j)")
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in ij):
                raise TypeError(f"base index {tuple(ij)!r} must hold two ints (i, j)")
            i, j = (int(v) for v in ij)
            if not (0 <= i < order and 0 <= j < order):
                raise ValueError(f"base index {(i, j)} is outside an order-{order} WHT")
            if (i, j) in chosen:
                raise ValueError(f"base index {(i, j)} is listed twice")
            chosen.append((i, j))
        return chosen
    else:
        raise ValueError(f"unknown base selection {method!r}; choose one of {SELECTIONS}")
    return sorted(chosen, key=lambda ij: (ij[0] + ij[1], ij[0]))


def basis_matrix(
    bases: Sequence[BaseIndex], order: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The ``(order * order, R)`` matrix whose column k is the flattened basis ``B_{i_k j_k}``.

    Flattening is row-major over the ``order x order`` patch, matching how a ``(H, W)`` map is
    flattened to tokens. This is the matrix of Eq. 6 (projection) and, transposed, Eq. 7.
    """
    walsh = walsh_matrix(order, torch.float64)
    cols = [torch.outer(walsh[i], walsh[j]).flatten() for i, j in bases]
    return torch.stack(cols, 1).to(dtype)
