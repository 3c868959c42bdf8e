"""The optimised LBP-WHT backward agrees with straightforward implementations (float64).

Three implementations of the same maps are compared:

* the optimised path the autograd function runs (``WHTProjector.project`` / ``project_back``
  on the dense path: padding folded into GEMM matrices, 1/n^2 and the bias row fused into the
  projection, low-rank tensors as contiguous rows);
* the ``patch`` implementation (explicit padding, per-patch contraction with the basis);
* a naive reference written here from the paper's equations (Eq. 3-7): pad the map, loop over
  patches, project every patch onto each selected basis, multiply in the low-rank space,
  reverse-project and crop. It shares no code with ``lbp_wht``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lbp_wht import WHTProjector, lbp_forward, select_bases

DT = torch.float64


# ---- naive reference (Eq. 3-7) ---------------------------------------------------------------
def _walsh_rows(n: int) -> torch.Tensor:
    """Sylvester-Hadamard rows sorted by number of sign changes (sequency order)."""
    h = torch.ones(1, 1, dtype=DT)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    changes = (h[:, 1:] != h[:, :-1]).sum(1)
    return h[torch.argsort(changes, stable=True)]


def _pad_map(m: torch.Tensor, n: int, mode: str) -> tuple[torch.Tensor, int, int]:
    """(C, H, W) -> padded to multiples of n, centred, the extra row/col on top/left."""
    h, w = m.shape[1:]
    ph, pw = -h % n, -w % n
    top, left = (ph + 1) // 2, (pw + 1) // 2
    pads = (left, pw - left, top, ph - top)
    if mode == "zero":
        return F.pad(m, pads), top, left
    return F.pad(m[None], pads, mode="reflect")[0], top, left


def naive_lbp_backward(x, w, g, hw, bases, n=8, padding="reflect"):
    """Algorithm 1 for ``y = x w^T + b`` on an (H, W) map, tokens layout, batch loop.

    x: (B, H*W, Cx), w: (Cy, Cx), g: (B, H*W, Cy). Returns g_x, g_w, g_b.
    """
    h, wd = hw
    walsh = _walsh_rows(n)
    basis = [torch.outer(walsh[i], walsh[j]) for i, j in bases]  # R bases, (n, n) each
    g_w = torch.zeros(w.shape, dtype=DT)
    g_x = torch.zeros(x.shape, dtype=DT)
    for b in range(x.shape[0]):
        xm, top, left = _pad_map(x[b].T.reshape(-1, h, wd), n, padding)  # (Cx, Hp, Wp)
        gm, _, _ = _pad_map(g[b].T.reshape(-1, h, wd), n, padding)
        gx_pad = torch.zeros_like(xm)
        for pi in range(0, xm.shape[1], n):
            for pj in range(0, xm.shape[2], n):
                xp, gp = xm[:, pi : pi + n, pj : pj + n], gm[:, pi : pi + n, pj : pj + n]
                x_hat = torch.stack([(xp * bk).sum((1, 2)) for bk in basis])  # Eq. 6: (R, Cx)
                g_hat = torch.stack([(gp * bk).sum((1, 2)) for bk in basis]) / n**2
                g_w += g_hat.T @ x_hat  # Eq. 4
                gx_hat = g_hat @ w  # Eq. 4: (R, Cx)
                # Eq. 7: sum_k gx_hat[k] * B_k over the patch
                gx_pad[:, pi : pi + n, pj : pj + n] = sum(
                    gx_hat[k][:, None, None] * bk for k, bk in enumerate(basis)
                )
        crop = gx_pad[:, top : top + h, left : left + wd]
        g_x[b] = crop.reshape(x.shape[2], -1).T
    return g_x, g_w, g.sum((0, 1))


# ---- helpers ---------------------------------------------------------------------------------
def _grads(layout, x, w, b, proj, g):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    y = lbp_forward(x, w, b, proj, layout)
    return torch.autograd.grad(y, [x, w, b], g)


def _to_tokens(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).transpose(1, 2)


# (H, W): one patch unpadded, one padded, several patches with and without padding
MAPS = [(8, 8), (7, 7), (16, 16), (14, 10), (5, 9)]


@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("hw", MAPS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_matches_naive_reference_tokens(hw, padding, batch):
    torch.manual_seed(0)
    bases = select_bases("lp_l1", radius=4)
    cx, cy, L = 5, 6, hw[0] * hw[1]
    x, g = torch.randn(batch, L, cx, dtype=DT), torch.randn(batch, L, cy, dtype=DT)
    w, b = torch.randn(cy, cx, dtype=DT), torch.randn(cy, dtype=DT)
    want = naive_lbp_backward(x, w, g, hw, bases, padding=padding)
    for impl in ("dense", "patch"):
        got = _grads("tokens", x, w, b, WHTProjector(hw, bases, 8, padding, impl), g)
        for a, e, name in zip(got, want, ("g_x", "g_w", "g_b")):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=f"{impl} {name}")


@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("hw", MAPS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_matches_naive_reference_nchw(hw, padding, channels_last):
    torch.manual_seed(1)
    bases = select_bases("lp_l1", radius=6)
    cx, cy, batch = 4, 7, 2
    x, g = torch.randn(batch, cx, *hw, dtype=DT), torch.randn(batch, cy, *hw, dtype=DT)
    if channels_last:  # the fast path reads channels-last maps as contiguous tokens
        x = x.contiguous(memory_format=torch.channels_last)
        g = g.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(cy, cx, dtype=DT), torch.randn(cy, dtype=DT)
    want = naive_lbp_backward(_to_tokens(x), w, _to_tokens(g), hw, bases, padding=padding)
    for impl in ("dense", "patch"):
        gx, gw, gb = _grads("nchw", x, w, b, WHTProjector(hw, bases, 8, padding, impl), g)
        assert gx.shape == x.shape
        torch.testing.assert_close(_to_tokens(gx), want[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gw, want[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gb, want[2], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["tokens", "nchw"])
@pytest.mark.parametrize("hw", [(7, 7), (12, 10)])
def test_projector_options_and_implementations_agree(layout, hw):
    """project(grad=True) == project / n^2; bias_sum is the plain sum; dense == patch."""
    torch.manual_seed(2)
    bsz, c = 3, 5
    shape = (bsz, hw[0] * hw[1], c) if layout == "tokens" else (bsz, c, *hw)
    x = torch.randn(*shape, dtype=DT)
    dims = (0, 1) if layout == "tokens" else (0, 2, 3)
    outs = {}
    low = None
    for impl in ("dense", "patch"):
        p = WHTProjector(hw, select_bases("lp_l1", radius=4), 8, "reflect", impl)
        ref = p.project(x, layout)
        assert ref.shape == (bsz, p.low_rank_tokens, c)
        assert ref.is_contiguous() or impl == "patch"
        g_hat, total = p.project(x, layout, grad=True, bias_sum=True)
        torch.testing.assert_close(g_hat, ref / 64)
        torch.testing.assert_close(total, x.sum(dims))
        torch.testing.assert_close(p.project(x, layout, grad=True), ref / 64)
        if low is None:
            low = torch.randn(bsz, p.low_rank_tokens, c, dtype=DT)
        back = p.project_back(low, layout)
        assert back.shape == x.shape and back.is_contiguous()
        outs[impl] = (ref, back)
    for a, b in zip(outs["dense"], outs["patch"]):
        torch.testing.assert_close(a, b)


def test_projector_has_one_public_api_pair():
    """The maps, LHE's spectrum and the executed-work count the cost model reads."""
    public = {
        n for n in dir(WHTProjector) if not n.startswith("_") and callable(getattr(WHTProjector, n))
    }
    assert public == {"project", "project_back", "spectrum", "gemm_macs"}


def test_dense_on_a_large_map_warns_and_auto_does_not():
    with pytest.warns(UserWarning, match=r"impl='dense' on a 112x112 map.*impl='patch'"):
        WHTProjector((112, 112), select_bases("lp_l1", radius=4), 8, "reflect", "dense")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WHTProjector((112, 112), select_bases("lp_l1", radius=4)).impl == "patch"


def test_expanded_output_gradient():
    """g_y from ``y.sum().backward()`` is an expanded (stride-0) tensor; must still work."""
    torch.manual_seed(3)
    p = WHTProjector((7, 7), select_bases("lp_l1", radius=4), 8, "reflect")
    x = torch.randn(2, 49, 5, dtype=DT, requires_grad=True)
    w = torch.randn(6, 5, dtype=DT, requires_grad=True)
    b = torch.randn(6, dtype=DT, requires_grad=True)
    lbp_forward(x, w, b, p).sum().backward()
    want = naive_lbp_backward(
        x.detach(),
        w.detach(),
        torch.ones(2, 49, 6, dtype=DT),
        (7, 7),
        select_bases("lp_l1", radius=4),
    )
    for got, exp in zip((x.grad, w.grad, b.grad), want):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["tokens", "nchw"])
def test_saved_activation_is_the_low_rank_input(layout):
    """Only x_hat (B * R rows) and the weight are saved, never the full input x."""
    bsz, cx, cy, hw = 4, 16, 8, (7, 7)
    p = WHTProjector(hw, select_bases("lp_l1", radius=2), 8, "reflect")
    shape = (bsz, 49, cx) if layout == "tokens" else (bsz, cx, *hw)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(cy, cx, requires_grad=True)
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        lbp_forward(x, w, None, p, layout)
    assert torch.Size([bsz * p.rank, cx]) in saved
    assert all(s != x.shape for s in saved)
    assert sum(torch.Size(s).numel() for s in saved) == bsz * p.rank * cx + cy * cx


def test_skips_unneeded_work():
    """No input gradient -> no g_x (and no reverse projection); frozen weight -> no x_hat."""
    p = WHTProjector((7, 7), select_bases("lp_l1", radius=2), 8, "reflect")
    x = torch.randn(2, 49, 5)
    w = torch.randn(7, 5, requires_grad=True)
    y = lbp_forward(x, w, None, p)
    (gw,) = torch.autograd.grad(y, [w], torch.randn_like(y))
    assert gw.shape == w.shape
    xr = x.clone().requires_grad_(True)
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        y = lbp_forward(xr, w.detach(), None, p)
    assert torch.Size([2 * p.rank, 5]) not in saved  # frozen weight: x_hat is not computed
    (gx,) = torch.autograd.grad(y, [xr], torch.randn_like(y))
    assert gx.shape == x.shape
