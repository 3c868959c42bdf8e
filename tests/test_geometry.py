"""Map geometry (lbp_wht.geometry): resolved from the declared geometry, a source or the shape,
never guessed; NHWC linears; every ambiguous case is an error naming layer, shape and fix."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lbp_wht import LBPConfig, LBPConv2d, LBPLinear, MapGeometry, convert
from lbp_wht.geometry import INPUT_SIZE_ATTR, MapSource, TracedMapSource, resolve_map

DT = torch.float64
FULL = LBPConfig(radius=15, padding="zero")  # all 64 bases: exact backprop
FULL_RULE = dict(target="all-linear", method="lbp", radius=15, padding="zero")


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


class _ChannelsLast(nn.Module):
    """A ConvNeXt-style MLP: a linear on the (B, H, W, C) permute of an NCHW map."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_four_d_input_to_undeclared_linear_is_an_error_not_a_wrong_map():
    """Today's ConvNeXt-at-256-px trap: (B, 8, 8, C) must not be read as 8-token rows. With no
    example input and no declared geometry, convert refuses a named linear (the model is
    unchanged) and all-linear skips it with the reason; with the example the dry forward finds
    the NHWC map; a layer built by hand still refuses the 4-D input at its forward."""
    model = _ChannelsLast()
    with pytest.raises(ValueError, match=r"targets 'mlp'.*pass example_input="):
        convert(model, [dict(target="mlp", method="lbp")], geometry=None, example_input=None)
    assert type(model.mlp) is nn.Linear
    report = convert(model, [dict(target="all-linear", method="lbp")], example_input=None)
    assert len(report) == 0 and "pass example_input=" in report.skipped[0].reason
    x = torch.randn(2, 8, 8, 8)
    report = convert(model, [dict(target="mlp", method="lbp")], example_input=x[:1])
    assert report.replaced[0].map_source == "example input"
    assert model.mlp.geometry == MapGeometry("nhwc")
    assert model.mlp.resolve_map(x.permute(0, 2, 3, 1)).hw == (8, 8)
    model.train()(x.requires_grad_(True)).sum().backward()  # runs as an 8x8 NHWC map
    assert model.mlp.converted_calls == 1
    layer = LBPLinear.from_module(nn.Linear(8, 8))  # built by hand: no map, no example
    with pytest.raises(ValueError, match=r"4-D input \(2, 8, 8, 8\).*layout='nhwc'"):
        layer.train()(torch.randn(2, 8, 8, 8, requires_grad=True))
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


# ---- maps found by the dry forward (lbp_wht.tracing) ----------------------------------------
class _Tokens(nn.Module):
    """Stem (patchify 4x4) -> tokens (B, H*W, C) -> ``mix`` -> optional extra stage."""

    def __init__(self, stride2: bool = False, kernel: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel, stride=4)
        self.mix = nn.Linear(8, 8)
        self.down = nn.Conv2d(8, 8, 2, stride=2) if stride2 else None
        self.mix2 = nn.Linear(8, 8) if stride2 else None

    def forward(self, x):
        f = self.stem(x)
        h, w = f.shape[-2:]
        t = self.mix(f.flatten(2).transpose(1, 2))
        if self.down is None:
            return t
        f = self.down(t.transpose(1, 2).reshape(t.shape[0], 8, h, w))
        return self.mix2(f.flatten(2).transpose(1, 2))


def _grads_of(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    model.train()(x).square().sum().backward()
    return {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


def test_trace_finds_a_non_square_map_not_the_square_of_its_token_count():
    """A 64x256 image patchified by 4 is a 16x64 map of 1024 tokens; the old square-count
    reading would have taken it as 32x32. The low-rank gradients are those of a layer told
    hw=(16, 64) (and differ from hw=(32, 32))."""
    torch.manual_seed(0)
    model = _Tokens().double()
    ref16, ref32 = copy.deepcopy(model), copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 256, dtype=DT)
    cfg = LBPConfig(radius=4)
    report = convert(model, [dict(target="mix", method="lbp", radius=4)], example_input=x[:1])
    assert report.replaced[0].map_source == "example input"
    assert "(16x64 at a 64x256 input" in report.replaced[0].geometry
    assert model.mix.geometry == MapGeometry("tokens", 0)
    assert model.mix.resolve_map(torch.zeros(2, 1024, 8)).hw == (16, 64)
    ref16.mix = LBPLinear.from_module(ref16.mix, cfg, geometry=MapGeometry(hw=(16, 64)))
    ref32.mix = LBPLinear.from_module(ref32.mix, cfg, geometry=MapGeometry(hw=(32, 32)))
    got, want, square = _grads_of(model, x), _grads_of(ref16, x), _grads_of(ref32, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert (got["x"] - square["x"]).abs().max() > 1e-3 * square["x"].abs().max()


class _SqueezeExcite(nn.Module):
    """1x1 conv -> squeeze-excite (x.mean over the map: a (B, C, 1, 1) input to se_reduce /
    se_expand) -> gated map -> 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.proj = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.pw(x)
        gate = self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), keepdim=True))))
        return self.proj(x * torch.sigmoid(gate))


def test_pooled_squeeze_excite_convs_are_skipped_or_refused():
    """A (B, C, 1, 1) pooled input is no map (a 1x1 map under half a patch): all-linear skips
    the squeeze-excite convs with the reason; a rule naming one is an error at convert time.
    The gated map after it is still a map."""
    torch.manual_seed(0)
    model = _SqueezeExcite().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 12, 12, dtype=DT)
    report = convert(model, [dict(FULL_RULE)], example_input=x[:1])
    assert report.names() == ["pw", "proj"]
    assert {r.map_source for r in report.replaced} == {"example input"}
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"se_reduce", "se_expand"}
    assert all("pooled" in r for r in reasons.values()), reasons  # a 1x1 map, or mixed
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    for target in ("se_reduce", "se_expand"):
        fresh = _SqueezeExcite()
        with pytest.raises(ValueError, match=rf"targets '{target}'.*pooled"):
            convert(fresh, [dict(target=target, method="lbp")], example_input=x[:1].float())
        assert type(getattr(fresh, target)) is nn.Conv2d
    # named without an example, a 1x1 conv converts: its NCHW input is its map
    fresh = _SqueezeExcite()
    report = convert(fresh, [dict(target="se_reduce", method="lbp")], example_input=None)
    assert report.replaced[0].map_source == "nchw input"


class _TalkingHeads(nn.Module):
    """CaiT-style attention: ``talk`` mixes the heads of the (B, N, N, heads) score tensor."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.talk = nn.Linear(heads, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, img):
        t = img.flatten(2).transpose(1, 2)  # (B, N, C)
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1)  # (B, heads, N, N)
        attn = self.talk(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_attention_score_talking_heads_are_refused():
    """A linear over the heads of an attention-score tensor sees (query, key) pairs, not a
    map, even though each of its N x N "tokens" carries the query's position."""
    torch.manual_seed(0)
    model = _TalkingHeads().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 8, 8, 8, dtype=DT)
    report = convert(model, [dict(FULL_RULE)], example_input=x[:1])
    assert report.names() == ["qkv", "proj"]
    assert [s.name for s in report.skipped] == ["talk"]
    assert "attention scores" in report.skipped[0].reason
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"targets 'talk'.*attention scores"):
        convert(_TalkingHeads(), [dict(target="talk", method="lbp")], example_input=x[:1].float())


class _Reordered(nn.Module):
    """Patchify, then hand ``mix`` the tokens in the order ``index`` (a permutation, or not)."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.register_buffer("index", index)

    def forward(self, x):
        return self.mix(self.stem(x).flatten(2).transpose(1, 2)[:, self.index])


def _unrolled(h: int, w: int) -> torch.Tensor:
    """Hiera-style unrolled order: the four 2x2-strided sub-grids one after the other."""
    grid = torch.arange(h * w).view(h, w)
    return torch.cat([grid[i::2, j::2].flatten() for i in (0, 1) for j in (0, 1)])


def test_tokens_in_another_order_are_read_in_map_order_and_partial_orders_refused():
    """Tokens in a non-row-major order (an unrolled or shuffled full grid) are not read as a
    row-major map: the layer projects them in map order, so its low-rank gradients equal those
    of the same layer on row-major tokens. Tokens that are not a full grid (a subset, a
    repeated token) are refused."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    rule = dict(target="mix", method="lbp", radius=4)
    base = _Reordered(torch.arange(64)).double()
    row_major = copy.deepcopy(base)
    convert(row_major, [rule], example_input=x[:1])
    assert row_major.mix.geometry.token_order is None
    for index in (_unrolled(8, 8), torch.randperm(64, generator=torch.Generator().manual_seed(1))):
        model = copy.deepcopy(base)
        model.index = index
        report = convert(model, [rule], example_input=x[:1])
        assert "unrolled order" in report.replaced[0].geometry
        got, want = _grads_of(model, x), _grads_of(row_major, x)
        for k in ("x", "stem.weight", "mix.weight", "mix.bias"):
            torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    for index, why in (
        (torch.arange(60), "not a full grid"),
        (torch.cat([torch.arange(64), torch.arange(8)]), "not a full grid|same position"),
    ):
        report = convert(_Reordered(index), [dict(target="all-linear", method="lbp")],
                         example_input=x[:1].float())  # fmt: skip
        assert len(report) == 0
        assert re.search(why, {s.name: s.reason for s in report.skipped}["mix"])
        with pytest.raises(ValueError, match=rf"targets 'mix'.*({why})"):
            convert(_Reordered(index), [rule], example_input=x[:1].float())


def test_traced_map_source_follows_the_input_size_and_refuses_what_fits_no_map():
    """A traced map scales with the input (two stages: 8x8 and 4x4 at 32 px, 12x12 and 6x6
    at 48 px, exact with the full basis); a map that does not scale with the input (a 7x7
    map at 32 px that is 15x15, not 14x14, at 64 px) is a clear error naming the fix, and so
    is a token count that several scaled maps fit."""
    torch.manual_seed(0)
    model = _Tokens(stride2=True).double()
    ref = copy.deepcopy(model)
    report = convert(model, [dict(FULL_RULE)], example_input=torch.randn(1, 3, 32, 32, dtype=DT))
    assert report.names() == ["mix", "mix2"]
    assert isinstance(model.mix.map_source, TracedMapSource)
    x = torch.randn(2, 3, 48, 48, dtype=DT)
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert model.mix.map_source() == [(8, 8), (12, 12)]
    assert model.mix.resolve_map(torch.zeros(2, 144, 8, dtype=DT)).hw == (12, 12)
    assert model.mix2.resolve_map(torch.zeros(2, 36, 8, dtype=DT)).hw == (6, 6)
    assert model.mix.converted_calls == 1 and model.mix2.converted_calls == 1

    model = _Tokens(kernel=8).double()  # 7x7 at 32 px, 15x15 at 64 px
    convert(model, [dict(FULL_RULE)], example_input=torch.randn(1, 3, 32, 32, dtype=DT))
    with pytest.raises(ValueError, match=r"'?mix'?.*225 map tokens.*none fits.*example_input="):
        model.train()(torch.randn(1, 3, 64, 64, dtype=DT, requires_grad=True))
    model = _Tokens(kernel=8).double()
    convert(model, [dict(FULL_RULE)], example_input=torch.randn(1, 3, 64, 64, dtype=DT))
    model.train()(torch.randn(1, 3, 64, 64, dtype=DT, requires_grad=True)).sum().backward()

    root = nn.Module()  # 8x8 at 32 px; at 34 px each side is 8 or 9: 72 tokens fit 8x9 and 9x8
    source = TracedMapSource(root, (8, 8), (32, 32))
    setattr(root, INPUT_SIZE_ATTR, (34, 34))
    with pytest.raises(ValueError, match=r"layer X: input \(2, 72, 8\).*several fit"):
        _resolve((2, 72, 8), MapGeometry("tokens"), source=source)
    assert _resolve((2, 81, 8), MapGeometry("tokens"), source=source).hw == (9, 9)


class _UnfoldMerging(nn.Module):
    """mmpretrain's PatchMerging (nn.Unfold 2x2 -> norm -> reduction) between two token
    linears, and MobileViT's unfold -> fold round trip before a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.mix = nn.Linear(8, 8)
        self.sampler = nn.Unfold(kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(32)
        self.reduction = nn.Linear(32, 16)
        self.mix2 = nn.Linear(16, 16)
        self.pw = nn.Conv2d(16, 16, 1)

    def forward(self, img):
        f = self.stem(img)  # (B, 8, 16, 16)
        b, c, h, w = f.shape
        t = self.mix(f.flatten(2).transpose(1, 2))
        x = self.sampler(t.transpose(1, 2).reshape(b, c, h, w))  # (B, 4C, 64)
        t = self.mix2(self.reduction(self.norm(x.transpose(1, 2))))  # an 8x8 map
        f = t.transpose(1, 2).reshape(b, 16, h // 2, w // 2)
        patches = F.unfold(f, kernel_size=2, stride=2)  # MobileViT: (B, C * P, N)
        f = F.fold(patches, (h // 2, w // 2), kernel_size=2, stride=2)
        return self.pw(f)


def test_unfold_and_fold_keep_the_map():
    """F.unfold / F.fold have no int64 kernels: the dry forward moves entry numbers instead
    (regression: every layer after mmpretrain's nn.Unfold patch merging, e.g. the paper's
    SwinV2 stages 1-3, was refused as token-mixed)."""
    torch.manual_seed(0)
    model = _UnfoldMerging().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    report = convert(model, [dict(FULL_RULE)], example_input=x[:1])
    assert report.names() == ["mix", "reduction", "mix2", "pw"], str(report)
    assert {r.map_source for r in report.replaced} == {"example input"}
    assert model.mix.resolve_map(torch.zeros(2, 256, 8)).hw == (16, 16)
    assert model.reduction.resolve_map(torch.zeros(2, 64, 32)).hw == (8, 8)
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    assert all(m.converted_calls == 1 for m in (model.mix, model.reduction, model.mix2, model.pw))


class _OverlappingFold(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        cols = F.unfold(x, kernel_size=3, padding=1)  # each pixel in 9 columns
        return self.pw(F.fold(cols, x.shape[-2:], kernel_size=3, padding=1))


def test_an_overlapping_fold_sums_positions_and_is_refused():
    x = torch.randn(1, 8, 8, 8)
    report = convert(_OverlappingFold(), [dict(FULL_RULE)], example_input=x)
    assert len(report) == 0 and "mix several positions" in report.skipped[0].reason


class _SamePaddedBlock(nn.Module):
    """EfficientNet's TF "same" padding: an explicit F.pad before a depthwise conv, then a
    squeeze-excite gate and a 1x1 projection (regression: the padded border made the
    depthwise conv's output look token-mixed, so every projection conv behind it was skipped)."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, groups=16)
        self.se = nn.Conv2d(16, 16, 1)
        self.project = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = self.dw(F.pad(self.expand(x), [1, 1, 1, 1]))
        h = h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))
        return self.project(h)


def test_a_conv_behind_explicit_padding_still_reads_a_map():
    torch.manual_seed(0)
    model = _SamePaddedBlock().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 8, 12, 12, dtype=DT)
    report = convert(model, [dict(FULL_RULE)], example_input=x[:1])
    assert report.names() == ["expand", "project"], str(report)
    assert "mix several positions" in {s.name: s.reason for s in report.skipped}["se"]
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


class _GlobalQueryWindows(nn.Module):
    """GCViT's global attention in miniature: 4x4 windows of an 8x8 NHWC map plus a branch
    computed from the map pooled to one window (a coarser grid), then a linear layer."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(6, 6)

    def forward(self, x):  # (B, C, 8, 8)
        x = x.permute(0, 2, 3, 1)
        b, c = x.shape[0], x.shape[-1]
        win = x.view(b, 2, 4, 2, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(b * 4, 16, c)
        q = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 4).flatten(2).transpose(1, 2)
        return self.mix(win + q.repeat_interleave(4, dim=0))


def test_a_branch_from_a_pooled_grid_keeps_the_stream_on_its_map():
    """Positions of two grids of different sizes meet in an add: the finer grid's position
    stands (regression: every GCViT layer after the first global block was skipped)."""
    torch.manual_seed(0)
    model = _GlobalQueryWindows().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 6, 8, 8, dtype=DT)
    report = convert(model, [dict(FULL_RULE)], example_input=x[:1])
    assert report.names() == ["mix"], str(report)
    assert model.mix.resolve_map(torch.zeros(8, 16, 6)).hw == (4, 4)
    got, want = _grads_of(model, x), _grads_of(ref, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
