"""Straightforward NumPy implementation of Algorithm 1, written from the paper's equations.

Deliberately independent of ``lbp_wht``: the Walsh bases come from scipy's Sylvester-Hadamard
matrix sorted by sign changes, padding from ``numpy.pad``, and every patch is handled in an
explicit loop. Tests compare the library against it.
"""

from __future__ import annotations

import numpy as np

try:  # scipy is absent on some machines (the lent GPU's Python); Sylvester's rule is the same
    from scipy.linalg import hadamard as _hadamard
except ImportError:  # pragma: no cover - depends on the environment

    def _hadamard(n: int) -> np.ndarray:
        h = np.ones((1, 1))
        while h.shape[0] < n:
            h = np.block([[h, h], [h, -h]])
        return h


def walsh_sequency(n: int) -> np.ndarray:
    """Rows of the order-n Hadamard matrix sorted by their number of sign changes."""
    h = _hadamard(n)
    changes = [(np.diff(row) != 0).sum() for row in h]
    return h[np.argsort(changes, kind="stable")].astype(np.float64)


def bases_matrix(indices, n: int) -> np.ndarray:
    """(n*n, R) with column k = flattened outer(w_i, w_j)."""
    w = walsh_sequency(n)
    return np.stack([np.outer(w[i], w[j]).ravel() for i, j in indices], axis=1)


def _pad(m: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, int, int]:
    """Pad (H, W, C) centred (extra row/col at top/left) to multiples of n."""
    h, w = m.shape[:2]
    ph, pw = -h % n, -w % n
    top, left = (ph + 1) // 2, (pw + 1) // 2
    widths = ((top, ph - top), (left, pw - left), (0, 0))
    padded = np.pad(m, widths, mode="reflect" if mode == "reflect" else "constant")
    return padded, top, left


def lbp_backward_reference(x, w, g_y, hw, indices, n=8, padding="reflect", lora=None):
    """Algorithm 1 for y = x w^T on a (H, W) token map.

    Args:
        x: (B, H*W, Cx); w: (Cy, Cx); g_y: (B, H*W, Cy) (NumPy float64).
        lora: optional (A (r, Cx), Bm (Cy, r), s) for y += s (x A^T) Bm^T (Table 6).

    Returns:
        dict with g_x (B, H*W, Cx), g_w (Cy, Cx) and, with lora, g_A, g_B.
    """
    h, wd = hw
    basis = bases_matrix(indices, n)  # (n*n, R)
    bsz, _, cx = x.shape
    cy = w.shape[0]
    g_w = np.zeros((cy, cx))
    g_x = np.zeros_like(x)
    out = {}
    if lora is not None:
        a, bm, s = lora
        out["g_A"], out["g_B"] = np.zeros_like(a), np.zeros_like(bm)
    for b in range(bsz):
        xm, top, left = _pad(x[b].reshape(h, wd, cx), n, padding)
        gm, _, _ = _pad(g_y[b].reshape(h, wd, cy), n, padding)
        gx_pad = np.zeros_like(xm)
        for pi in range(xm.shape[0] // n):
            for pj in range(xm.shape[1] // n):
                sl = (slice(pi * n, (pi + 1) * n), slice(pj * n, (pj + 1) * n))
                xp = xm[sl].reshape(n * n, cx)
                gp = gm[sl].reshape(n * n, cy)
                x_hat = basis.T @ xp  # Eq. 3 / 6: (R, Cx)
                g_hat = basis.T @ gp / (n * n)  # (R, Cy)
                g_w += g_hat.T @ x_hat  # Eq. 4
                gx_hat = g_hat @ w
                if lora is not None:
                    gb = g_hat @ bm
                    gx_hat = gx_hat + s * gb @ a
                    out["g_A"] += s * gb.T @ x_hat
                    out["g_B"] += s * g_hat.T @ (x_hat @ a.T)
                gx_pad[sl] = (basis @ gx_hat).reshape(n, n, cx)  # Eq. 5 / 7
        g_x[b] = gx_pad[top : top + h, left : left + wd].reshape(h * wd, cx)
    out.update(g_x=g_x, g_w=g_w)
    return out
