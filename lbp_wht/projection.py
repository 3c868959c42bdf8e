"""Patch-wise WHT projection ``p`` and reverse projection ``p^-1`` (paper Eq. 3, 5, 6, 7).

A feature map of ``H x W`` tokens is padded (centred) to whole ``n x n`` patches, every patch
is projected onto the same ``R`` selected bases, and the reverse projection maps ``R``
coefficients per patch back to the patch and crops the padding away.

Both directions are linear maps over the token axis, so they are computed as GEMMs:

* ``dense`` path (one patch, e.g. the 7x7 / 8x8 last stages of the paper's models): padding,
  patching and the basis are folded into one ``(R, L)`` matrix, so projecting is a single
  matmul with no copies.
* ``patch`` path (many patches, e.g. 56x56 maps in full training): pad by index gather, view
  as patches and contract the ``n x n`` patch axes with the ``(n, n, R)`` basis tensor, so the
  cost stays ``O(L * R * C)`` instead of ``O(P * L * R * C)`` for ``P`` patches.

Low-rank tensors always use the layout ``(B, P * R, C)`` ("low-rank tokens", patch-major),
whatever the layout of the full map, so linear layers and 1x1 convolutions share all of the
backward code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .bases import basis_matrix

__all__ = ["WHTProjector", "PADDINGS", "LAYOUTS"]

PADDINGS = ("reflect", "zero")
#: ``tokens``: ``(B, L, C)`` with ``L = H * W`` row-major; ``nchw``: ``(B, C, H, W)``.
LAYOUTS = ("tokens", "nchw")


def _pad_amounts(size: int, order: int) -> tuple[int, int, int]:
    """Padded size and (before, after) padding, centred with the extra one before (top/left)."""
    padded = math.ceil(size / order) * order
    total = padded - size
    return padded, (total + 1) // 2, total // 2


def _axis_source(size: int, order: int, padding: str) -> torch.Tensor:
    """For each padded position along one axis, the source index in ``[0, size)`` or -1 (zero).

    Reflect padding mirrors about the edge without repeating it (``numpy``'s ``reflect``),
    repeated as often as needed, so even maps smaller than half a patch are well defined.
    """
    padded, before, _ = _pad_amounts(size, order)
    src = []
    for p in range(padded):
        i = p - before
        if 0 <= i < size:
            src.append(i)
        elif padding == "zero":
            src.append(-1)
        elif size == 1:
            src.append(0)
        else:
            period = 2 * (size - 1)
            i %= period
            src.append(i if i < size else period - i)
    return torch.tensor(src, dtype=torch.long)


class WHTProjector:
    """Projection onto ``R`` WHT bases per ``order x order`` patch of an ``(H, W)`` map.

    Args:
        hw: map size ``(H, W)``.
        bases: selected ``(i, j)`` indices (see :func:`lbp_wht.select_bases`).
        order: patch side ``n`` (power of two).
        padding: ``"reflect"`` (the paper's experiments) or ``"zero"`` (with all ``n * n``
            bases this reproduces exact backprop, since the bases are complete and orthogonal).
        impl: ``"auto"`` (``dense`` for a single patch, else ``patch``), ``"dense"`` or
            ``"patch"``; both give the same result and exist for speed.

    Normalisation (so that the full basis with zero padding is exact): ``x_hat = sum x * B``
    and ``g_hat = sum g * B / n^2``; see :meth:`project` and :meth:`reverse`.
    """

    def __init__(
        self,
        hw: tuple[int, int],
        bases: Sequence[tuple[int, int]],
        order: int = 8,
        padding: str = "reflect",
        impl: str = "auto",
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose one of {PADDINGS}")
        if impl not in ("auto", "dense", "patch"):
            raise ValueError(f"unknown impl {impl!r}; choose 'auto', 'dense' or 'patch'")
        h, w = (int(v) for v in hw)
        if h < 1 or w < 1:
            raise ValueError(f"feature map size must be positive, got {hw}")
        self.h, self.w, self.order, self.padding = h, w, order, padding
        self.bases = [tuple(b) for b in bases]
        self.rank = len(self.bases)
        self.hp, self.top, _ = _pad_amounts(h, order)
        self.wp, self.left, _ = _pad_amounts(w, order)
        self.num_patches = (self.hp // order) * (self.wp // order)
        self.impl = ("dense" if self.num_patches == 1 else "patch") if impl == "auto" else impl
        self._src_h = _axis_source(h, order, padding)
        self._src_w = _axis_source(w, order, padding)
        self._basis = basis_matrix(self.bases, order)  # (n*n, R), float64
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def low_rank_tokens(self) -> int:
        """``P * R``: the token count of the low-rank space."""
        return self.num_patches * self.rank

    def __repr__(self) -> str:
        return (
            f"WHTProjector(hw=({self.h}, {self.w}), order={self.order}, R={self.rank}, "
            f"patches={self.num_patches}, padding={self.padding!r}, impl={self.impl!r})"
        )

    # ---- constant matrices -------------------------------------------------------------
    def _axis_pad_matrix(self, src: torch.Tensor, size: int) -> torch.Tensor:
        mat = torch.zeros(len(src), size, dtype=torch.float64)
        valid = src >= 0
        mat[torch.arange(len(src))[valid], src[valid]] = 1.0
        return mat

    def _dense_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P*R, L)`` projection (padding folded in) and ``(L, P*R)`` reverse (crop folded in)."""
        n = self.order
        ph, pw = self.hp // n, self.wp // n
        basis = self._basis.reshape(n, n, self.rank)
        # Block structure: low-rank row (a, b, k) sees only padded pixels of patch (a, b).
        full = torch.einsum(
            "ac,bd,uvk->abkcudv",
            torch.eye(ph, dtype=torch.float64),
            torch.eye(pw, dtype=torch.float64),
            basis,
        ).reshape(ph * pw * self.rank, self.hp * self.wp)
        pad = torch.kron(
            self._axis_pad_matrix(self._src_h, self.h), self._axis_pad_matrix(self._src_w, self.w)
        )  # (Hp*Wp, L)
        crop_h = torch.zeros(self.h, self.hp, dtype=torch.float64)
        crop_h[torch.arange(self.h), torch.arange(self.h) + self.top] = 1.0
        crop_w = torch.zeros(self.w, self.wp, dtype=torch.float64)
        crop_w[torch.arange(self.w), torch.arange(self.w) + self.left] = 1.0
        crop = torch.kron(crop_h, crop_w)  # (L, Hp*Wp)
        return full @ pad, crop @ full.T

    def _const(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        if key not in self._cache:
            if name in ("proj", "rev", "proj_g", "proj_gb"):
                proj, rev = self._dense_matrices()
                n2 = float(self.order * self.order)
                # ``proj_g`` folds the 1/n^2 of g_hat into the matrix (no extra pass over the
                # result); ``proj_gb`` appends a row of ones, so the same GEMM that reads g_y
                # also yields the bias gradient (one pass over the largest tensor, not two).
                ones = torch.ones(1, proj.shape[1], dtype=torch.float64)
                mats = {
                    "proj": proj,
                    "rev": rev,
                    "proj_g": proj / n2,
                    "proj_gb": torch.cat([proj / n2, ones], 0),
                }
                for k, v in mats.items():
                    self._cache[(k, dtype, device)] = v.to(device=device, dtype=dtype)
            elif name == "basis_g":
                n = self.order
                basis = self._basis.reshape(n, n, self.rank) / float(n * n)
                self._cache[key] = basis.to(device, dtype)
            elif name == "basis":
                n = self.order
                self._cache[key] = self._basis.reshape(n, n, self.rank).to(device, dtype)
            elif name in ("src_h", "src_w"):
                self._cache[key] = getattr(self, "_" + name).to(device)
            elif name == "src_flat":  # reflect padding as one index into the flattened map
                flat = self._src_h[:, None] * self.w + self._src_w[None, :]
                self._cache[key] = flat.flatten().to(device)
        return self._cache[key]

    # ---- layout helpers ----------------------------------------------------------------
    def _check(self, x: torch.Tensor, layout: str) -> None:
        if layout == "tokens":
            if x.dim() != 3 or x.shape[1] != self.h * self.w:
                raise ValueError(
                    f"expected tokens (B, {self.h * self.w}, C) for a {self.h}x{self.w} map, "
                    f"got {tuple(x.shape)}"
                )
        elif layout == "nchw":
            if x.dim() != 4 or tuple(x.shape[2:]) != (self.h, self.w):
                raise ValueError(
                    f"expected (B, C, {self.h}, {self.w}) for a {self.h}x{self.w} map, "
                    f"got {tuple(x.shape)}"
                )
        else:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")

    def _padded_bhwc(self, x: torch.Tensor, layout: str) -> torch.Tensor:
        """``(B, Hp, Wp, C)`` view/copy of the padded map."""
        b = x.shape[0]
        x4 = x.reshape(b, self.h, self.w, -1) if layout == "tokens" else x.permute(0, 2, 3, 1)
        if self.hp == self.h and self.wp == self.w:
            return x4
        if self.padding == "zero":
            out = x4.new_zeros(b, self.hp, self.wp, x4.shape[-1])
            out[:, self.top : self.top + self.h, self.left : self.left + self.w] = x4
            return out
        # One gather over the flattened map (a single copy) instead of one per axis.
        flat = self._const("src_flat", torch.long, x.device)
        c = x4.shape[-1]
        if layout == "tokens":
            return (
                x.reshape(b, self.h * self.w, c).index_select(1, flat).view(b, self.hp, self.wp, c)
            )
        # NCHW: gather along the contiguous last axis, then a (B, Hp, Wp, C) strided view.
        out = x.reshape(b, c, self.h * self.w).index_select(2, flat)
        return out.view(b, c, self.hp, self.wp).permute(0, 2, 3, 1)

    # ---- the two maps ------------------------------------------------------------------
    def project(self, x: torch.Tensor, layout: str = "tokens") -> torch.Tensor:
        """Eq. 6: ``(B, L, C)`` tokens or ``(B, C, H, W)`` -> ``(B, P*R, C)``, unnormalised.

        Multiply by ``1 / order**2`` for the gradient projection ``g_hat`` (see class doc).
        """
        self._check(x, layout)
        if self.impl == "dense":
            proj = self._const("proj", x.dtype, x.device)  # (P*R, L)
            if layout == "tokens":
                return torch.matmul(proj, x)
            b, c = x.shape[:2]
            # (B*C, L) @ (L, P*R): one GEMM, then a transpose of the small result.
            return (x.reshape(b * c, -1) @ proj.T).view(b, c, -1).transpose(1, 2)
        n = self.order
        xp = self._padded_bhwc(x, layout)
        b, c = xp.shape[0], xp.shape[-1]
        patches = xp.reshape(b, self.hp // n, n, self.wp // n, n, c)
        basis = self._const("basis", x.dtype, x.device)
        out = torch.einsum("bpuqvc,uvk->bpqkc", patches, basis)
        return out.reshape(b, self.low_rank_tokens, c)

    def reverse(self, g_hat: torch.Tensor, layout: str = "tokens") -> torch.Tensor:
        """Eq. 7 then crop: ``(B, P*R, C)`` -> ``(B, L, C)`` tokens or ``(B, C, H, W)``."""
        if g_hat.dim() != 3 or g_hat.shape[1] != self.low_rank_tokens:
            raise ValueError(
                f"expected low-rank tokens (B, {self.low_rank_tokens}, C), got {tuple(g_hat.shape)}"
            )
        b, _, c = g_hat.shape
        if self.impl == "dense":
            rev = self._const("rev", g_hat.dtype, g_hat.device)  # (L, P*R)
            if layout == "tokens":
                return torch.matmul(rev, g_hat)
            out = torch.matmul(g_hat.transpose(1, 2), rev.T)  # (B, C, L)
            return out.reshape(b, c, self.h, self.w)
        n = self.order
        basis = self._const("basis", g_hat.dtype, g_hat.device)
        lr = g_hat.view(b, self.hp // n, self.wp // n, self.rank, c)
        full = torch.einsum("bpqkc,uvk->bpuqvc", lr, basis).reshape(b, self.hp, self.wp, c)
        full = full[:, self.top : self.top + self.h, self.left : self.left + self.w]
        if layout == "tokens":
            return full.reshape(b, self.h * self.w, c)
        return full.permute(0, 3, 1, 2).contiguous()

    # ---- fast path for the autograd function (lbp_wht.functional) --------------------------
    # Low-rank tensors here are 2D "rows" ``(B * P * R, C)``, contiguous, ordered like the
    # ``(B, P*R, C)`` low-rank tokens, so the two low-rank products of Eq. 4 are single GEMMs
    # over the whole batch (``K = B * P * R``) with no further reshapes or copies.
    @staticmethod
    def _tokens_view(x: torch.Tensor, layout: str) -> torch.Tensor:
        """``(B, L, C)`` view of ``x`` without a copy: NCHW becomes a transposed view (BLAS
        takes it as a transposed operand), channels-last NCHW a contiguous one."""
        if layout == "tokens":
            return x
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)

    @staticmethod
    def _left_mm(mat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``mat (K, L) @ t (B, L, C) -> (B, K, C)``; batch 1 as one plain GEMM."""
        if t.shape[0] == 1:
            return torch.mm(mat, t[0]).unsqueeze(0)
        return torch.matmul(mat, t)

    def project_rows(self, x: torch.Tensor, layout: str = "tokens") -> torch.Tensor:
        """Eq. 6 for the saved activation: ``x_hat`` as contiguous rows ``(B * P * R, C)``.

        Same values as ``project(x, layout).reshape(-1, C)``; the dense path reads ``x`` once
        in one (batched) GEMM whatever the layout.
        """
        self._check(x, layout)
        c = x.shape[-1] if layout == "tokens" else x.shape[1]
        if self.impl == "dense":
            proj = self._const("proj", x.dtype, x.device)
            out = self._left_mm(proj, self._tokens_view(x, layout))
        else:
            out = self.project(x, layout)
        return out.reshape(-1, c)

    def project_grad(
        self, g: torch.Tensor, layout: str = "tokens", with_sum: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``g_hat = p(g) / n^2`` as contiguous rows ``(B * P * R, C)`` (Eq. 3 for ``g_y``).

        With ``with_sum`` also returns ``g.sum`` over batch and map, ``(C,)`` (the exact bias
        gradient); on the dense path it comes out of the same GEMM (an extra all-ones row in the
        projection matrix), so ``g_y``, the largest tensor of the backward, is read once.
        """
        self._check(g, layout)
        c = g.shape[-1] if layout == "tokens" else g.shape[1]
        if self.impl == "dense":
            mat = self._const("proj_gb" if with_sum else "proj_g", g.dtype, g.device)
            out = self._left_mm(mat, self._tokens_view(g, layout))  # (B, P*R (+1), C)
            if not with_sum:
                return out.reshape(-1, c), None
            total = out[0, -1].clone() if out.shape[0] == 1 else out[:, -1].sum(0)
            return out[:, :-1].reshape(-1, c), total
        n = self.order
        xp = self._padded_bhwc(g, layout)
        b = xp.shape[0]
        patches = xp.reshape(b, self.hp // n, n, self.wp // n, n, c)
        basis = self._const("basis_g", g.dtype, g.device)
        g_hat = torch.einsum("bpuqvc,uvk->bpqkc", patches, basis).reshape(-1, c)
        total = None
        if with_sum:
            total = g.sum(dim=(0, 1)) if layout == "tokens" else g.sum(dim=(0, 2, 3))
        return g_hat, total

    def reverse_rows(self, rows: torch.Tensor, batch: int, layout: str = "tokens") -> torch.Tensor:
        """Eq. 7 then crop, from rows ``(B * P * R, C)`` to ``(B, L, C)`` tokens or contiguous
        ``(B, C, H, W)``; same values as ``reverse(rows.view(B, P*R, C), layout)``."""
        c = rows.shape[-1]
        if self.impl != "dense":
            return self.reverse(rows.view(batch, self.low_rank_tokens, c), layout)
        rev = self._const("rev", rows.dtype, rows.device)  # (L, P*R)
        if layout == "tokens":
            if batch == 1:
                return torch.mm(rev, rows).unsqueeze(0)
            return torch.matmul(rev, rows.view(batch, self.low_rank_tokens, c))
        # NCHW: (C, P*R) @ (P*R, L) per image, both as transposed operands: the output is
        # written directly in contiguous NCHW order.
        if batch == 1:
            out = torch.mm(rows.t(), rev.t())
        else:
            out = torch.matmul(rows.view(batch, self.low_rank_tokens, c).transpose(1, 2), rev.t())
        return out.reshape(batch, c, self.h, self.w)

    def spectrum(self, g: torch.Tensor, layout: str = "tokens") -> torch.Tensor:
        """Energy of ``g`` on every one of the ``n x n`` bases, summed over batch, patches and
        channels: ``E_ij = sum (sum_patch g * B_ij)^2 / n^2`` (Parseval: with zero padding
        ``sum E_ij = sum g^2``). Returns a float64 ``(n, n)`` tensor. Used by LHE (Sec. 3.2)
        and Figure 5.
        """
        n = self.order
        xp = self._padded_bhwc(g, layout).double()
        b, c = xp.shape[0], xp.shape[-1]
        patches = xp.reshape(b, self.hp // n, n, self.wp // n, n, c)
        walsh = basis_matrix([(i, j) for i in range(n) for j in range(n)], n).to(g.device)
        coef = torch.einsum("bpuqvc,uvk->bpqkc", patches, walsh.reshape(n, n, n * n))
        return (coef.pow(2).sum(dim=(0, 1, 2, 4)) / (n * n)).reshape(n, n)
