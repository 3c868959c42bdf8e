"""Map geometry (lbp_wht.geometry): resolved from the declared geometry, a source or the shape,
never guessed; NHWC linears; every ambiguous case is an error naming layer, shape and fix."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lbp_wht import LBPConfig, LBPConv2d, LBPLinear, MapGeometry, convert
from lbp_wht.geometry import MapSource, resolve_map

DT = torch.float64
FULL = LBPConfig(radius=15, padding="zero")  # all 64 bases: exact backprop


def _resolve(shape, geometry=None, conv=False, source=None):
    geometry = MapGeometry() if geometry is None else geometry
    return resolve_map(torch.zeros(shape), geometry, conv=conv, what="layer X", source=source)


@pytest.mark.parametrize(
    "shape,geometry,conv,source,hw,prefix,layout",
    [
        ((2, 49, 8), MapGeometry(), False, None, (7, 7), 0, "tokens"),
        ((2, 197, 8), MapGeometry(prefix_tokens=1), False, None, (14, 14), 1, "tokens"),
        ((2, 12, 8), MapGeometry(hw=(3, 4)), False, None, (3, 4), 0, "tokens"),
        ((2, 14, 8), MapGeometry(prefix_tokens=2), False, (3, 4), (3, 4), 2, "tokens"),
        ((2, 3, 64, 8), MapGeometry("tokens"), False, None, (8, 8), 0, "tokens"),
        ((2, 5, 6, 8), MapGeometry("nhwc"), False, None, (5, 6), 0, "nhwc"),
        ((2, 8, 5, 6), MapGeometry(), True, None, (5, 6), 0, "nchw"),
    ],
)
def test_resolve_map(shape, geometry, conv, source, hw, prefix, layout):
    holder = nn.Module()
    holder.size = source
    src = MapSource(holder, "size", "test source") if source is not None else None
    m = _resolve(shape, geometry, conv, src)
    assert (m.hw, m.prefix_tokens, m.layout) == (hw, prefix, layout)


@pytest.mark.parametrize(
    "shape,geometry,conv,match",
    [
        (
            (2, 16, 16, 8),
            MapGeometry(),
            False,
            r"layer X: a 4-D input \(2, 16, 16, 8\).*layout='nhwc'",
        ),
        ((2, 197, 8), MapGeometry(), False, r"layer X: input \(2, 197, 8\).*prefix_tokens=E"),
        ((2, 50, 8), MapGeometry(hw=(7, 7)), False, r"layer X.*50 tokens.*hw=\(7, 7\)"),
        ((2, 1, 8), MapGeometry(prefix_tokens=1), False, "not more than prefix_tokens=1"),
        ((2, 8), MapGeometry(), False, r"layer X needs token input.*\(2, 8\)"),
        ((2, 5, 8), MapGeometry("nhwc"), False, r"layout='nhwc' and expects \(B, H, W, C\)"),
        ((2, 8, 5), MapGeometry(), True, r"expects an NCHW map"),
        ((2, 8, 5, 6), MapGeometry(hw=(6, 5)), True, r"\(5, 6\) map but the layer has hw=\(6, 5\)"),
    ],
)
def test_ambiguous_or_inconsistent_geometry_raises(shape, geometry, conv, match):
    with pytest.raises(ValueError, match=match):
        _resolve(shape, geometry, conv)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(prefix_tokens=1.5), TypeError, "prefix_tokens must be an int"),
        (dict(prefix_tokens=-1), ValueError, "prefix_tokens must be >= 0"),
        (dict(layout="nhwc", prefix_tokens=1), ValueError, "no prefix tokens"),
        (dict(layout="chw"), ValueError, "unknown layout"),
        (dict(hw=(7,)), TypeError, "pair"),
        (dict(hw=(7, 0)), ValueError, r"hw\[1\] must be >= 1"),
    ],
)
def test_bad_geometry(kwargs, err, match):
    with pytest.raises(err, match=match):
        MapGeometry(**kwargs)


def test_layer_layouts_are_checked_per_kind():
    with pytest.raises(ValueError, match="LBPConv2d takes layout"):
        LBPConv2d.from_module(nn.Conv2d(4, 4, 1), geometry=MapGeometry("tokens"))
    with pytest.raises(ValueError, match="LBPLinear takes layout"):
        LBPLinear.from_module(nn.Linear(4, 4), geometry=MapGeometry("nchw"))
    with pytest.raises(TypeError, match="config must be an LBPConfig.*dict"):
        LBPLinear.from_module(nn.Linear(4, 4), dict(radius=2))


def _grads(layer, x, g):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(g)
    return x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("permuted", [False, True])
def test_nhwc_linear_is_exact_with_the_full_basis(permuted):
    """A linear on a channels-last map (ConvNeXt MLP, Swin patch merging), contiguous or a
    permuted NCHW tensor, gives plain backprop's gradients with all bases and zero padding."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 5).double()
    ref = copy.deepcopy(lin)
    lbp = LBPLinear.from_module(lin, FULL, geometry=MapGeometry("nhwc"))
    x = torch.randn(2, 6, 10, 9, dtype=DT).permute(0, 2, 3, 1)  # (B, H, W, C) view
    if not permuted:
        x = x.contiguous()
    g = torch.randn(2, 10, 9, 5, dtype=DT)
    for got, want in zip(_grads(lbp, x, g), _grads(ref, x, g)):
        torch.testing.assert_close(got, want)


def test_nhwc_low_rank_matches_the_tokens_layout():
    """nhwc (B, H, W, C) is the same projection as tokens (B, H*W, C)."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 3).double()
    a = LBPLinear.from_module(copy.deepcopy(lin), LBPConfig(radius=4), geometry=MapGeometry("nhwc"))
    b = LBPLinear.from_module(
        copy.deepcopy(lin), LBPConfig(radius=4), geometry=MapGeometry(hw=(12, 10))
    )
    x = torch.randn(2, 12, 10, 4, dtype=DT)
    g = torch.randn(2, 12, 10, 3, dtype=DT)
    ga = _grads(a, x, g)
    gb = _grads(b, x.reshape(2, 120, 4), g.reshape(2, 120, 3))
    torch.testing.assert_close(ga[0].reshape(2, 120, 4), gb[0])
    torch.testing.assert_close(ga[1], gb[1])


def test_four_d_input_to_undeclared_linear_is_an_error_not_a_wrong_map():
    """Today's ConvNeXt-at-256-px trap: (B, 8, 8, C) must not be read as 8-token rows."""
    model = nn.Sequential(nn.Linear(8, 8))
    convert(model, [dict(target="0", method="lbp")], geometry=None)
    with pytest.raises(
        ValueError, match=r"'?0'? \(LBPLinear.*4-D input \(2, 8, 8, 8\).*layout='nhwc'"
    ):
        model.train()(torch.randn(2, 8, 8, 8, requires_grad=True))
    convert(nn.Sequential(nn.Linear(8, 8)), [dict(target="0", method="lbp", layout="nhwc")])


def test_map_source_follows_deep_copies():
    holder = nn.Module()
    holder.size = (2, 3)
    layer = LBPLinear.from_module(nn.Linear(4, 4))
    layer.map_source = MapSource(holder, "size", "holder")
    both = nn.ModuleList([holder, layer])
    twin = copy.deepcopy(both)
    twin[0].size = (3, 2)
    assert layer.map_source() == (2, 3) and twin[1].map_source() == (3, 2)
