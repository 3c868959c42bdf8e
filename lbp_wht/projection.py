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
import warnings
from collections.abc import Sequence

import torch

from .bases import basis_matrix

__all__ = ["WHTProjector", "PADDINGS", "LAYOUTS", "DENSE_WARN_BYTES"]

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


#: Above this many bytes of float64 construction temporaries, an explicit ``impl="dense"`` on
#: a multi-patch map warns (the matrices grow with the square of the map size).
DENSE_WARN_BYTES = 256 * 2**20


class WHTProjector:
    """Projection onto ``R`` WHT bases per ``order x order`` patch of an ``(H, W)`` map.

    Args:
        hw: map size ``(H, W)``.
        bases: selected ``(i, j)`` indices (see :func:`lbp_wht.select_bases`).
        order: patch side ``n`` (power of two).
        padding: ``"reflect"`` (the paper's experiments) or ``"zero"`` (with all ``n * n``
            bases this reproduces exact backprop, since the bases are complete and orthogonal).
        impl: ``"auto"`` (``dense`` for a single patch, else ``patch``), ``"dense"`` or
            ``"patch"``; both give the same result and exist for speed. ``dense`` on a map of
            many patches builds ``(P*R, H*W)`` matrices and warns when they get large.

    The public API is one pair of maps, :meth:`project` (Eq. 3 / 6) and :meth:`project_back`
    (Eq. 5 / 7), plus :meth:`spectrum` for LHE. Normalisation (so that the full basis with zero
    padding is exact): ``x_hat = p(x) = sum x * B`` and ``g_hat = p(g) / n^2``
    (``project(g, grad=True)``); then ``project_back(project(x, grad=True)) == x``.
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
        if self.impl == "dense" and self.num_patches > 1:
            need = 8 * self.low_rank_tokens * (self.hp * self.wp + 2 * h * w)
            if need > DENSE_WARN_BYTES:
                warnings.warn(
                    f"WHTProjector: impl='dense' on a {h}x{w} map ({self.num_patches} patches) "
                    f"builds (P*R, H*W) = ({self.low_rank_tokens}, {h * w}) matrices, about "
                    f"{need / 2**20:.0f} MiB while building (and a copy per dtype); "
                    "impl='patch' (what 'auto' picks for maps of several patches) needs none",
                    stacklevel=2,
                )
        self._src_h = _axis_source(h, order, padding)
        self._src_w = _axis_source(w, order, padding)
        self._basis = basis_matrix(self.bases, order)  # (n*n, R), float64
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def low_rank_tokens(self) -> int:
        """``P * R``: the token count of the low-rank space."""
        return self.num_patches * self.rank

    @property
    def contracted_tokens(self) -> int:
        """Tokens a projection GEMM contracts over: ``H * W`` on the dense path (padding folded
        into the matrix), the padded ``Hp * Wp`` on the patch path."""
        return self.h * self.w if self.impl == "dense" else self.hp * self.wp

    def __repr__(self) -> str:
        return (
            f"WHTProjector(hw=({self.h}, {self.w}), order={self.order}, R={self.rank}, "
            f"patches={self.num_patches}, padding={self.padding!r}, impl={self.impl!r})"
        )

    # ---- constant matrices -------------------------------------------------------------
    def _dense_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P*R, L)`` projection (padding folded in) and ``(L, P*R)`` reverse (crop folded in).

        Low-rank row ``(a, b, k)`` sees only padded pixel ``(u, v)`` of patch ``(a, b)``, with
        weight ``B_k[u, v]``. Padding maps each padded pixel to a source pixel (or to nothing
        for zero padding), so the projection adds the padded columns into their sources; the
        reverse keeps only the rows of real pixels (the crop). Entries are sums of a few +-1,
        exact in float64.
        """
        n, r = self.order, self.rank
        ph, pw = self.hp // n, self.wp // n
        basis = self._basis.reshape(n, n, r)
        # full[(a, b, k), (a*n + u, b*n + v)] = basis[u, v, k]: (P*R, Hp*Wp)
        full = torch.zeros(ph, pw, r, ph, n, pw, n, dtype=torch.float64)
        blocks = basis.permute(2, 0, 1)  # (R, n, n)
        for a in range(ph):
            for b in range(pw):
                full[a, b, :, a, :, b, :] = blocks
        full = full.reshape(ph * pw * r, self.hp * self.wp)
        src = (self._src_h[:, None] * self.w + self._src_w[None, :]).flatten()  # per padded px
        valid = ((self._src_h[:, None] >= 0) & (self._src_w[None, :] >= 0)).flatten()
        proj = torch.zeros(ph * pw * r, self.h * self.w, dtype=torch.float64)
        proj.index_add_(1, src[valid], full[:, valid])
        rows = torch.arange(self.h)[:, None] + self.top
        cols = torch.arange(self.w)[None, :] + self.left
        rev = full.T[(rows * self.wp + cols).flatten()].contiguous()  # (L, P*R)
        return proj, rev

    def _const(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, dtype, device)
        if key not in self._cache:
            if name in ("proj", "rev", "proj_g", "proj_b", "proj_gb"):
                proj, rev = self._dense_matrices()
                n2 = float(self.order * self.order)
                # ``proj_g`` folds the 1/n^2 of g_hat into the matrix (no extra pass over the
                # result); the ``*_b`` variants append a row of ones, so the same GEMM that
                # reads g_y also yields the bias gradient (one pass over the largest tensor).
                ones = torch.ones(1, proj.shape[1], dtype=torch.float64)
                mats = {
                    "proj": proj,
                    "rev": rev,
                    "proj_g": proj / n2,
                    "proj_b": torch.cat([proj, ones], 0),
                    "proj_gb": torch.cat([proj / n2, ones], 0),
                }
                for k, v in mats.items():
                    self._cache[(k, dtype, device)] = v.to(device=device, dtype=dtype)
            elif name in ("basis", "basis_g"):
                n = self.order
                basis = self._basis.reshape(n, n, self.rank)
                if name == "basis_g":
                    basis = basis / float(n * n)
                self._cache[key] = basis.to(device, dtype)
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

    # ---- the two maps ------------------------------------------------------------------
    def project(
        self,
        x: torch.Tensor,
        layout: str = "tokens",
        *,
        grad: bool = False,
        bias_sum: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6: ``(B, L, C)`` tokens or ``(B, C, H, W)`` -> low-rank tokens ``(B, P*R, C)``.

        Args:
            x: the map (``x`` of Eq. 3 or the output gradient ``g_y``).
            layout: ``"tokens"`` or ``"nchw"``.
            grad: divide by ``n^2`` (``g_hat`` of Eq. 3; folded into the GEMM).
            bias_sum: also return ``x`` summed over batch and map, ``(C,)`` (the exact bias
                gradient when ``x`` is ``g_y``); on the dense path it comes out of the same GEMM
                (an extra all-ones row), so the largest tensor of the backward is read once.

        Returns:
            ``(B, P*R, C)`` (contiguous on the dense path), or ``((B, P*R, C), (C,))`` with
            ``bias_sum``.
        """
        self._check(x, layout)
        c = x.shape[-1] if layout == "tokens" else x.shape[1]
        total = None
        if self.impl == "dense":
            name = ("proj_g" if grad else "proj") + ("b" if bias_sum else "")
            mat = self._const(name, x.dtype, x.device)  # (P*R (+1), L)
            out = self._left_mm(mat, self._tokens_view(x, layout))  # (B, P*R (+1), C)
            if bias_sum:
                total = out[0, -1].clone() if out.shape[0] == 1 else out[:, -1].sum(0)
                out = out[:, :-1]
        else:
            n = self.order
            xp = self._padded_bhwc(x, layout)
            b = xp.shape[0]
            patches = xp.reshape(b, self.hp // n, n, self.wp // n, n, c)
            basis = self._const("basis_g" if grad else "basis", x.dtype, x.device)
            out = torch.einsum("bpuqvc,uvk->bpqkc", patches, basis)
            out = out.reshape(b, self.low_rank_tokens, c)
            if bias_sum:
                total = x.sum(dim=(0, 1)) if layout == "tokens" else x.sum(dim=(0, 2, 3))
        return (out, total) if bias_sum else out

    def project_back(self, z: torch.Tensor, layout: str = "tokens") -> torch.Tensor:
        """Eq. 7 then crop: low-rank tokens ``(B, P*R, C)`` -> ``(B, L, C)`` tokens or a
        contiguous ``(B, C, H, W)`` map (Eq. 5 applies it to ``g_hat w``)."""
        if z.dim() != 3 or z.shape[1] != self.low_rank_tokens:
            raise ValueError(
                f"expected low-rank tokens (B, {self.low_rank_tokens}, C), got {tuple(z.shape)}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        b, _, c = z.shape
        if self.impl == "dense":
            rev = self._const("rev", z.dtype, z.device)  # (L, P*R)
            if layout == "tokens":
                return torch.mm(rev, z[0]).unsqueeze(0) if b == 1 else torch.matmul(rev, z)
            # NCHW: (C, P*R) @ (P*R, L) per image, both as transposed operands: the output is
            # written directly in contiguous NCHW order.
            out = (
                torch.mm(z[0].t(), rev.t()) if b == 1 else torch.matmul(z.transpose(1, 2), rev.t())
            )
            return out.reshape(b, c, self.h, self.w)
        n = self.order
        basis = self._const("basis", z.dtype, z.device)
        lr = z.reshape(b, self.hp // n, self.wp // n, self.rank, c)
        full = torch.einsum("bpqkc,uvk->bpuqvc", lr, basis).reshape(b, self.hp, self.wp, c)
        full = full[:, self.top : self.top + self.h, self.left : self.left + self.w]
        if layout == "tokens":
            return full.reshape(b, self.h * self.w, c)
        return full.permute(0, 3, 1, 2).contiguous()

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
