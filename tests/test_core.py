"""Bases, selection and projection: exactness and agreement with the paper's equations."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from reference import lbp_backward_reference, walsh_sequency

from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    MapGeometry,
    WHTProjector,
    select_bases,
    walsh_matrix,
)

ALL_64 = [(i, j) for i in range(8) for j in range(8)]


@pytest.mark.parametrize("order", [1, 2, 4, 8, 16])
def test_walsh_matrix_sequency_order_and_orthogonality(order):
    w = walsh_matrix(order)
    assert w.shape == (order, order)
    assert set(w.unique().tolist()) <= {-1.0, 1.0}
    changes = [int((row[1:] != row[:-1]).sum()) for row in w]
    assert changes == list(range(order))  # row k has k sign changes
    # exact on any BLAS: +-1 entries, every partial sum an integer below 2**24
    assert torch.equal(w @ w.T, order * torch.eye(order))
    np.testing.assert_array_equal(w.numpy(), walsh_sequency(order))


@pytest.mark.parametrize("r,rank", [(2, 3), (4, 10), (6, 21), (7, 28), (8, 36), (15, 64)])
def test_lp_l1_ranks_match_paper(r, rank):
    bases = select_bases("lp_l1", radius=r, order=8)
    assert len(bases) == rank
    assert all(i + j < r for i, j in bases)


def test_lp_l1_2_is_papers_example_and_linf():
    assert set(select_bases("lp_l1", radius=2)) == {(0, 0), (0, 1), (1, 0)}
    assert len(select_bases("lp_linf", radius=3)) == 9
    assert set(select_bases("lp_linf", radius=2)) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_lhe_picks_highest_energy():
    energy = torch.zeros(8, 8)
    energy[3, 5], energy[0, 0], energy[7, 7] = 5.0, 9.0, 1.0
    assert select_bases("lhe", order=8, num_bases=3, energy=energy) == [(0, 0), (3, 5), (7, 7)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="lp_l1", radius=4, order=6), "power of two"),
        (dict(method="lp_l1", radius=16, order=8), "at most 15"),
        (dict(method="lp_l1", radius=0, order=8), "radius"),
        (dict(method="lp_linf", radius=9, order=8), "at most 8"),
        (dict(method="lowpass", radius=2), "unknown base selection"),
        (dict(method="lhe", num_bases=3), "energy"),
        (dict(method="explicit", indices=[(0, 8)]), "outside"),
        (dict(method="explicit", indices=[(0, 1), (0, 1)]), "twice"),
    ],
)
def test_select_bases_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_bases(**kwargs)


@pytest.mark.parametrize("hw", [(7, 7), (8, 8), (12, 10), (16, 16), (5, 9), (1, 3)])
@pytest.mark.parametrize("impl", ["dense", "patch"])
def test_full_basis_zero_padding_projection_roundtrip(hw, impl):
    """Complete orthogonal bases: reverse(project(x)) / n^2 == x exactly."""
    proj = WHTProjector(hw, ALL_64, order=8, padding="zero", impl=impl)
    x = torch.randn(2, hw[0] * hw[1], 3, dtype=torch.float64)
    back = proj.project_back(proj.project(x, grad=True))
    torch.testing.assert_close(back, x)
    xc = torch.randn(2, 3, *hw, dtype=torch.float64)
    torch.testing.assert_close(proj.project_back(proj.project(xc, "nchw") / 64, "nchw"), xc)


def test_spectrum_parseval_with_zero_padding():
    proj = WHTProjector((7, 10), ALL_64, padding="zero")
    g = torch.randn(3, 70, 5, dtype=torch.float64)
    spec = proj.spectrum(g)
    assert spec.shape == (8, 8)
    torch.testing.assert_close(spec.sum(), g.pow(2).sum())


def _grads(layer, x, g):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(g)
    return x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("hw,extra", [((7, 7), 0), ((9, 13), 0), ((7, 7), 1), ((16, 8), 2)])
def test_lbp_linear_full_basis_zero_padding_is_exact(hw, extra):
    torch.manual_seed(0)
    lin = nn.Linear(6, 5).double()
    ref = nn.Linear(6, 5).double()
    ref.load_state_dict(lin.state_dict())
    lbp = LBPLinear.from_module(
        lin, LBPConfig(radius=15, padding="zero"), geometry=MapGeometry(prefix_tokens=extra, hw=hw)
    )
    x = torch.randn(3, extra + hw[0] * hw[1], 6, dtype=torch.float64)
    g = torch.randn(3, extra + hw[0] * hw[1], 5, dtype=torch.float64)
    for got, want in zip(_grads(lbp, x, g), _grads(ref, x, g)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("hw", [(7, 7), (11, 6)])
def test_lbp_conv_full_basis_zero_padding_is_exact(hw):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1).double()
    ref = nn.Conv2d(4, 6, 1).double()
    ref.load_state_dict(conv.state_dict())
    lbp = LBPConv2d.from_module(conv, LBPConfig(radius=15, padding="zero"))
    x = torch.randn(2, 4, *hw, dtype=torch.float64)
    g = torch.randn(2, 6, *hw, dtype=torch.float64)
    for got, want in zip(_grads(lbp, x, g), _grads(ref, x, g)):
        torch.testing.assert_close(got, want)


SELECTIONS = [("lp_l1", 2), ("lp_l1", 4), ("lp_l1", 6), ("lp_l1", 8), ("lp_linf", 3)]


@pytest.mark.parametrize("select,r", SELECTIONS)
@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (12, 10)])
def test_lbp_linear_matches_algorithm1_reference(select, r, hw):
    torch.manual_seed(1)
    lin = nn.Linear(5, 7).double()
    lbp = LBPLinear.from_module(lin, LBPConfig(selection=select, radius=r))
    lbp.hw = hw  # explicit geometry (12x10 is not square)
    L = hw[0] * hw[1]
    x = torch.randn(2, L, 5, dtype=torch.float64)
    g = torch.randn(2, L, 7, dtype=torch.float64)
    gx, gw, gb = _grads(lbp, x, g)
    ref = lbp_backward_reference(
        x.numpy(), lin.weight.detach().numpy(), g.numpy(), hw, select_bases(select, radius=r)
    )
    np.testing.assert_allclose(gx.numpy(), ref["g_x"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw.numpy(), ref["g_w"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, g.sum((0, 1)))  # bias gradient stays exact


@pytest.mark.parametrize("select,r", [("lp_l1", 2), ("lp_l1", 6), ("lp_linf", 3)])
@pytest.mark.parametrize("hw", [(7, 7), (12, 10)])
def test_lbp_conv_matches_algorithm1_reference(select, r, hw):
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 3, 1).double()
    lbp = LBPConv2d.from_module(conv, LBPConfig(selection=select, radius=r))
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    g = torch.randn(2, 3, *hw, dtype=torch.float64)
    gx, gw, _ = _grads(lbp, x, g)
    to_tokens = lambda t: t.flatten(2).transpose(1, 2).numpy()  # noqa: E731
    ref = lbp_backward_reference(
        to_tokens(x),
        conv.weight.detach()[:, :, 0, 0].numpy(),
        to_tokens(g),
        hw,
        select_bases(select, radius=r),
    )
    np.testing.assert_allclose(to_tokens(gx), ref["g_x"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw[:, :, 0, 0].numpy(), ref["g_w"], rtol=1e-10, atol=1e-10)


def test_lp_l1_gradient_error_shrinks_with_rank():
    """On a smooth map, more bases -> smaller relative error of g_w (and none at full rank)."""
    torch.manual_seed(3)
    lin = nn.Linear(8, 8).double()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 7), torch.linspace(0, 1, 7), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy - k) for k in range(8)], -1)
    x = smooth.reshape(1, 49, 8).double()
    g = torch.randn(1, 49, 8, dtype=torch.float64)
    ref_w = g[0].T @ x[0]
    errs = []
    for r in (2, 4, 6, 8, 15):
        layer = LBPLinear.from_module(lin, LBPConfig(radius=r, padding="zero"))
        _, gw, _ = _grads(layer, x, g)
        errs.append(((gw - ref_w).norm() / ref_w.norm()).item())
    assert errs[-1] < 1e-12
    assert errs[0] > errs[2] > errs[-1]
