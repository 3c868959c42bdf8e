"""The projection implementations and the autograd function on every input layout (float64).

* Full basis + zero padding is exact backprop, so a converted layer must give the plain
  layer's gradients on every layout and batch size, including the *layout* of ``g_x``: the
  strides the plain layer's backward returns (a wrong layout is not harmless: CPU BatchNorm's
  backward mishandles some layouts at batch 1, see the BatchNorm test).
* Both projection implementations (``dense``, ``patch``) read strided inputs (prefix-token
  slices, channel-major views) and write into strided outputs, with the same values.
* ``impl="auto"`` follows the documented cost model.
* The backward with prefix tokens makes no full-size copy (no slicing copy, no concatenation).

Tolerances: float64 with ``assert_close``'s defaults (rtol 1e-7, atol 1e-7), which hold across
BLAS implementations (the full-basis round trip is exact up to rounding).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from lbp_wht import LBPConfig, LBPConv2d, LBPLinear, MapGeometry, WHTProjector, select_bases
from lbp_wht.functional import lbp_forward

DT = torch.float64
FULL = LBPConfig(radius=15, padding="zero")  # all 64 bases: exactly plain backprop
IMPLS = ["auto", "dense", "patch"]


def _full(impl: str) -> LBPConfig:
    return LBPConfig(radius=15, padding="zero", impl=impl)


# ---- layouts --------------------------------------------------------------------------------
# Each case builds (source leaf, layer input from the source, plain layer, geometry).
C_IN, C_OUT = 6, 5


def _case(name: str, batch: int, hw: tuple[int, int]):
    h, w = hw
    g = torch.Generator().manual_seed(hash((name, batch, hw)) % 2**31)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=DT)

    conv = name in ("nchw", "channels_last")
    if name == "tokens":
        src = rnd(batch, h * w, C_IN)
        return src, (lambda s: s), MapGeometry(layout="tokens", hw=hw), conv
    if name == "tokens_prefix":
        src = rnd(batch, 2 + h * w, C_IN)
        return src, (lambda s: s), MapGeometry(layout="tokens", prefix_tokens=2, hw=hw), conv
    if name == "tokens_of_nchw":  # bn(x).flatten(2).transpose(1, 2) without the BN
        src = rnd(batch, C_IN, h, w)
        return src, (lambda s: s.flatten(2).transpose(1, 2)), MapGeometry(hw=hw), conv
    if name == "tokens_of_nchw_prefix":  # a class token concatenated channel-major
        src = rnd(batch, C_IN, 1 + h * w)
        geo = MapGeometry(prefix_tokens=1, hw=hw)
        return src, (lambda s: s.transpose(1, 2)), geo, conv
    if name == "nhwc":
        src = rnd(batch, h, w, C_IN)
        return src, (lambda s: s), MapGeometry(layout="nhwc"), conv
    if name == "nhwc_of_nchw":  # ConvNeXt: x.permute(0, 2, 3, 1)
        src = rnd(batch, C_IN, h, w)
        return src, (lambda s: s.permute(0, 2, 3, 1)), MapGeometry(layout="nhwc"), conv
    if name == "windows":  # (B, windows, tokens, C), leading dims batch-like
        src = rnd(batch, 3, h * w, C_IN)
        return src, (lambda s: s), MapGeometry(layout="tokens", hw=hw), conv
    if name == "nchw":
        src = rnd(batch, C_IN, h, w)
        return src, (lambda s: s), MapGeometry(), conv
    if name == "channels_last":
        src = rnd(batch, C_IN, h, w).contiguous(memory_format=torch.channels_last)
        return src, (lambda s: s), MapGeometry(), conv
    raise ValueError(name)


LAYOUT_CASES = [
    "tokens",
    "tokens_prefix",
    "tokens_of_nchw",
    "tokens_of_nchw_prefix",
    "nhwc",
    "nhwc_of_nchw",
    "windows",
    "nchw",
    "channels_last",
]


def _run(layer: nn.Module, src: torch.Tensor, make, g_seed: int, weight_trains: bool):
    """Gradients of the source leaf, the parameters and the layer input's gradient strides."""
    leaf = src.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    for p in layer.parameters():
        p.requires_grad_(weight_trains)
        p.grad = None
    inp = make(leaf)
    seen = []
    inp.register_hook(lambda gr: seen.append(gr.stride()))
    y = layer(inp)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(g_seed), dtype=DT)
    y.backward(gy)
    params = [p.grad for p in layer.parameters()] if weight_trains else []
    return leaf.grad, params, seen[0]


@pytest.mark.parametrize("weight_trains", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", LAYOUT_CASES)
def test_full_basis_is_exact_on_every_layout_with_the_plain_layout(name, batch, weight_trains):
    hw = (5, 9)  # padded to 8x16: two patches, padding on both axes
    src, make, geometry, conv = _case(name, batch, hw)
    torch.manual_seed(0)
    plain = (nn.Conv2d(C_IN, C_OUT, 1) if conv else nn.Linear(C_IN, C_OUT)).double()
    want_gx, want_p, want_stride = _run(plain, src, make, 1, weight_trains)
    for impl in IMPLS:
        cls = LBPConv2d if conv else LBPLinear
        lbp = cls.from_module(plain, _full(impl), geometry=geometry)
        got_gx, got_p, got_stride = _run(lbp, src, make, 1, weight_trains)
        torch.testing.assert_close(got_gx, want_gx, msg=f"{impl}: g_x")
        for a, b in zip(got_p, want_p):
            torch.testing.assert_close(a, b, msg=f"{impl}: parameter gradient")
        assert got_stride == want_stride, (impl, got_stride, want_stride)
        assert got_gx.stride() == want_gx.stride(), impl


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [1, 2])
def test_batch_one_behind_eval_batchnorm(impl, batch):
    """``bn(x).flatten(2).transpose(1, 2)`` into a linear layer: the input gradient equals plain
    backprop (it was off by 140% at batch 1 when g_x came back in another layout than
    nn.Linear's, which CPU BatchNorm's backward then misread)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(C_IN).double().eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    lin = nn.Linear(C_IN, C_OUT).double()
    lbp = LBPLinear.from_module(lin, _full(impl), geometry=MapGeometry(hw=(4, 5)))
    x = torch.randn(batch, C_IN, 4, 5, dtype=DT)
    gy = torch.randn(batch, 20, C_OUT, dtype=DT)
    grads = []
    for layer in (lin, lbp):
        xi = x.clone().requires_grad_(True)
        layer(bn(xi).flatten(2).transpose(1, 2)).backward(gy)
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("padding", ["zero", "reflect"])
@pytest.mark.parametrize("hw", [(14, 14), (5, 9), (17, 11), (3, 20)])
def test_implementations_agree_on_strided_inputs_and_outputs(hw, padding):
    """dense == patch for token rows with a batch stride (prefix slice), channel-major maps,
    transposed token views, and project_back written into such views; with all bases and zero
    padding the round trip is the identity on every path."""
    torch.manual_seed(3)
    h, w = hw
    bsz, c, L = 3, 4, h * w
    bases = select_bases("lp_l1", radius=3)
    dense = WHTProjector(hw, bases, 8, padding, "dense")
    patch = WHTProjector(hw, bases, 8, padding, "patch")
    with_prefix = torch.randn(bsz, 1 + L, c, dtype=DT)
    nchw = torch.randn(bsz, c, h, w, dtype=DT)
    inputs = [
        ("tokens", with_prefix[:, 1:]),  # rows, batch stride (1 + L) * C
        ("nchw", nchw),  # channel-major
        ("tokens", nchw.flatten(2).transpose(1, 2)),  # transposed token view
        ("nchw", nchw.contiguous(memory_format=torch.channels_last)),  # rows
    ]
    for layout, x in inputs:
        want, want_sum = dense.project(x, layout, grad=True, bias_sum=True)
        got, got_sum = patch.project(x, layout, grad=True, bias_sum=True)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_sum, want_sum)
        torch.testing.assert_close(patch.project(x, layout), dense.project(x, layout))
    z = torch.randn(bsz, dense.low_rank_tokens, c, dtype=DT)
    want = dense.project_back(z)
    outs = [
        ("tokens", lambda: torch.zeros(bsz, 1 + L, c, dtype=DT)[:, 1:]),
        ("tokens", lambda: torch.zeros(bsz, c, L, dtype=DT).transpose(1, 2)),
        ("tokens", lambda: torch.zeros(bsz, c, 2 + L, dtype=DT)[:, :, 2:].transpose(1, 2)),
        ("nchw", lambda: torch.zeros(bsz, c, h, w, dtype=DT)),
        ("nchw", lambda: torch.zeros(bsz, c, h, w, dtype=DT).to(memory_format=torch.channels_last)),
        ("nchw", lambda: torch.zeros(bsz, h, w, c, dtype=DT).permute(0, 3, 1, 2)),
    ]
    for p in (dense, patch):
        for layout, new in outs:
            out = new()
            ret = p.project_back(z, layout, out=out)
            assert ret is out
            tok = out if layout == "tokens" else out.flatten(2).transpose(1, 2)
            torch.testing.assert_close(tok, want, msg=f"{p.impl} {layout} {out.stride()}")
    if padding == "zero":
        full = [(i, j) for i in range(8) for j in range(8)]
        for impl in ("dense", "patch"):
            p = WHTProjector(hw, full, 8, "zero", impl)
            for layout, x in inputs:
                back = p.project_back(p.project(x, layout, grad=True), layout)
                torch.testing.assert_close(back, x, msg=f"{impl} {layout} {x.stride()}")


def test_auto_picks_the_cheaper_modelled_implementation():
    """One patch: dense (one GEMM, nothing wasted). Several: whichever projection_cost says;
    large maps and ranks are separable, where dense's P * R rows per token dominate."""
    from lbp_wht.projection import BYTE_COST, projection_cost

    assert WHTProjector((7, 7), select_bases("lp_l1", radius=4)).impl == "dense"
    assert WHTProjector((8, 8), select_bases("lp_l1", radius=6)).impl == "dense"
    assert WHTProjector((56, 56), select_bases("lp_l1", radius=2)).impl == "patch"
    assert WHTProjector((28, 28), select_bases("lp_l1", radius=4)).impl == "patch"
    for hw in [(14, 14), (28, 28), (12, 10), (56, 56)]:
        for r in (2, 4, 6):
            bases = select_bases("lp_l1", radius=r)
            cost = projection_cost(hw, bases)
            assert WHTProjector(hw, bases).impl == min(cost, key=cost.__getitem__)
    # the model's one constant decides between the two where both are close
    bases = select_bases("lp_l1", radius=2)
    cheap_bytes = projection_cost((14, 14), bases, byte_cost=0.0)
    assert cheap_bytes["patch"] < cheap_bytes["dense"]  # fewer multiply-adds
    assert BYTE_COST > 0


def test_gemm_macs_is_what_the_flop_counter_counts():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(4)
    for impl, pool in (("dense", True), ("patch", True), ("patch", False)):
        p = WHTProjector((12, 20), select_bases("lp_l1", radius=4), 8, "reflect", impl, pool=pool)
        c, b = 5, 2
        cases = [
            ("tokens", torch.randn(b, 240, c, dtype=DT)),
            ("nchw", torch.randn(b, c, 12, 20, dtype=DT)),
        ]
        for layout, x in cases:
            for bias in (False, True):
                with FlopCounterMode(display=False) as fc:
                    p.project(x, layout, bias_sum=bias)
                mode = p._read_mode(x, layout)  # the block sums where the plan applies
                assert mode == ("tokens" if not pool or impl == "dense" else "pool") or (
                    layout == "nchw" and mode in ("nchw", "pool_nchw")
                )
                assert fc.get_total_flops() == 2 * b * c * p.gemm_macs(mode, bias=bias)
            z = torch.randn(b, p.low_rank_tokens, c, dtype=DT)
            out = torch.empty_like(x)
            with FlopCounterMode(display=False) as fc:
                p.project_back(z, layout, out=out)
            mode = p._write_mode(out, layout)
            assert fc.get_total_flops() == 2 * b * c * p.gemm_macs(mode, reverse=True)


def _copies(fn) -> list[tuple[str, int]]:
    """``(op, elements of its first input)`` of every copying op while ``fn`` runs
    (``aten::cat`` records no input shapes: -1)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = []
    for ev in prof.events():
        if ev.name in ("aten::copy_", "aten::cat", "aten::index_select", "aten::contiguous"):
            shapes = [s for s in ev.input_shapes if s]
            n = -1
            if shapes:
                n = 1
                for d in shapes[0]:
                    n *= d
            out.append((ev.name, n))
    return out


@pytest.mark.parametrize("impl, pool", [("dense", True), ("patch", False), ("patch", True)])
def test_backward_with_prefix_tokens_copies_no_full_size_tensor(impl, pool):
    """ViT layout (a class token + 14x14 map): no slicing copy of g_y, no concatenation of
    g_x. The dense path folds the prefix tokens into its GEMMs and copies nothing; the separable
    GEMMs write the (batch-strided) map part of g_x through one contiguous temporary, since a
    batched GEMM into a strided output would run as one small GEMM per image; the block sums
    spread their values straight into it (copies that together write the map once)."""
    torch.manual_seed(5)
    bsz, cx, cy = 4, 16, 24
    p = WHTProjector((14, 14), select_bases("lp_l1", radius=2), 8, "reflect", impl, pool=pool)
    x = torch.randn(bsz, 197, cx, requires_grad=True)
    w = torch.randn(cy, cx, requires_grad=True)
    b = torch.randn(cy, requires_grad=True)
    g = torch.randn(bsz, 197, cy)
    y = lbp_forward(x, w, b, p, prefix_tokens=1)
    torch.autograd.grad(y, [x, w, b], g)  # warm-up: constant matrices, stride probe
    full = bsz * 196 * min(cx, cy)

    yy = lbp_forward(x, w, b, p, prefix_tokens=1)
    # (the forward's only map-sized copy is F.linear's own: the bias broadcast into y)
    copies = _copies(lambda: torch.autograd.grad(yy, [x, w, b], g))
    big = [(op, n) for op, n in copies if n >= full // 4 or op == "aten::cat"]
    if impl == "dense":  # the prefix rows ride in the GEMMs: nothing is copied
        assert not big, big
    elif not pool:  # the map part of g_x is strided: written once through a temporary
        assert big == [("aten::copy_", bsz * 196 * cx)], big
    else:  # the block values spread into the strided map part: each position written once
        assert all(op == "aten::copy_" for op, _ in big), big
        assert sum(n for _, n in copies if n > 0) <= bsz * 196 * cx + bsz * cy, copies


def _reference_project(x4: torch.Tensor, bases, padding: str) -> torch.Tensor:
    """Independent dense projection of ``x4`` ``(B, H, W, C)``: pad centred with
    ``F.pad`` (reflect / zero), cut 8x8 patches, contract each with the 2D Walsh bases built
    here from ``walsh_matrix``. Returns ``(B, P*R, C)``."""
    import torch.nn.functional as F

    from lbp_wht.bases import walsh_matrix

    b, h, w, c = x4.shape
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    top, left = (hp - h + 1) // 2, (wp - w + 1) // 2
    pad = (left, wp - w - left, top, hp - h - top)
    xp = F.pad(x4.permute(0, 3, 1, 2), pad, mode="reflect" if padding == "reflect" else "constant")
    wal = walsh_matrix(8, DT)
    basis = torch.stack([torch.outer(wal[i], wal[j]) for i, j in bases], -1)  # (8, 8, R)
    patches = xp.reshape(b, c, hp // 8, 8, wp // 8, 8)
    coef = torch.einsum("bcpuqv,uvk->bpqkc", patches, basis)
    return coef.reshape(b, -1, c)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("hw", [(16, 24), (14, 14), (28, 28), (10, 13)])
@pytest.mark.parametrize("batch", [1, 3])
def test_block_sum_path_is_exact(hw, padding, pool, batch):
    """The block-sum sub-path of ``patch`` (Walsh functions constant on blocks) against an
    independent dense computation, on aligned and unaligned maps, token rows, a prefix-token
    slice (falls back to the GEMMs), channels-last and NCHW maps, batch 1; the reverse
    projection against the dense one, written into strided outputs; FLOPs as modelled."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(6)
    h, w = hw
    c, L = 5, h * w
    for r in (1, 2, 3, 4):
        bases = select_bases("lp_l1", radius=r)
        p = WHTProjector(hw, bases, 8, padding, "patch", pool=pool)
        dense = WHTProjector(hw, bases, 8, padding, "dense")
        nchw = torch.randn(batch, c, h, w, dtype=DT)
        cases = [
            ("tokens", torch.randn(batch, L, c, dtype=DT)),
            ("tokens", torch.randn(batch, 1 + L, c, dtype=DT)[:, 1:]),
            ("nchw", nchw),
            ("nchw", nchw.contiguous(memory_format=torch.channels_last)),
        ]
        for layout, x in cases:
            x4 = x.unflatten(1, (h, w)) if layout == "tokens" else x.permute(0, 2, 3, 1)
            want = _reference_project(x4, bases, padding)
            got, total = p.project(x, layout, grad=True, bias_sum=True)
            torch.testing.assert_close(got, want / 64)
            torch.testing.assert_close(total, x4.sum((0, 1, 2)))
            torch.testing.assert_close(p.project(x, layout), want)
            mode = p._read_mode(x, layout)
            plan = p._pool()
            if pool and r <= 4 and hw != (10, 13):  # (13 columns: pooling cannot cover)
                assert plan is not None and plan.projects
            if (
                plan is not None
                and plan.projects
                and x4.permute(0, 3, 1, 2).is_contiguous(memory_format=torch.channels_last)
            ):
                assert mode == "pool", (layout, x.stride())
            with FlopCounterMode(display=False) as fc:
                p.project(x, layout, bias_sum=True)
            assert fc.get_total_flops() == 2 * batch * c * p._macs(p.impl, mode, True, False)
        z = torch.randn(batch, p.low_rank_tokens, c, dtype=DT)
        want = dense.project_back(z)
        for layout, out in [
            ("tokens", torch.zeros(batch, 2 + L, c, dtype=DT)[:, 2:]),
            ("nchw", torch.zeros(batch, c, h, w, dtype=DT)),
            ("nchw", torch.zeros(batch, h, w, c, dtype=DT).permute(0, 3, 1, 2)),
        ]:
            with FlopCounterMode(display=False) as fc:
                p.project_back(z, layout, out=out)
            tok = out if layout == "tokens" else out.flatten(2).transpose(1, 2)
            torch.testing.assert_close(tok, want)
            mode = p._write_mode(out, layout)
            assert fc.get_total_flops() == 2 * batch * c * p._macs(p.impl, mode, False, True)
