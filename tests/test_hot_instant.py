"""HOT and INSTANT (lbp_wht.hot / lbp_wht.instant): gradients against explicit computations
written here (Sylvester-built Walsh-Hadamard matrices, explicit quantisation, eigenvector
bases), exact limits, saved activation bytes, conversion, bad options and the FLOP model."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lbp_wht import (
    HOTConfig,
    HOTConv2d,
    HOTLinear,
    INSTANTConfig,
    INSTANTConv2d,
    INSTANTLinear,
    VeLoRAConfig,
    convert,
    cost,
    measure_step,
    unconvert,
)
from lbp_wht.conversion import parse_rule

CX, CY = 8, 6


# ------------------------------------------------------------------------------------------
# independent reference pieces
# ------------------------------------------------------------------------------------------
def sylvester(n: int) -> torch.Tensor:
    """Unnormalised Sylvester-Hadamard matrix (natural order), float64."""
    h = torch.tensor([[1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    return h


def sequency_walsh(n: int) -> torch.Tensor:
    """Orthonormal Walsh matrix, rows sorted by their number of sign changes."""
    h = sylvester(n)
    changes = (h[:, 1:] != h[:, :-1]).sum(1)
    return h[torch.argsort(changes)] / math.sqrt(n)


def fake_quant(t: torch.Tensor, bits: int, dim) -> torch.Tensor:
    """Symmetric absmax round-to-nearest quantise-dequantise (in float32, like an int GEMM's
    operands), returned as (integers, scale)."""
    qmax = 2 ** (bits - 1) - 1
    t = t.float()
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return torch.round(t / scale).clamp(-qmax, qmax), scale


def block_diag_hadamard(c: int, h: int) -> torch.Tensor:
    """(c', c') block-diagonal orthonormal Hadamard, c' = c rounded up to a multiple of h."""
    blocks = -(-c // h)
    return torch.block_diag(*[sylvester(h) / math.sqrt(h)] * blocks)


def _input(kind: str, seed: int = 0, rows: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, rows, CX) if kind == "linear" else (2, CX, rows, 2)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _rows(t: torch.Tensor, kind: str) -> torch.Tensor:
    return (
        t.reshape(-1, t.shape[-1])
        if kind == "linear"
        else t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    )


def _grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    layer(x).backward(g)
    return dict(x=x.grad, **{n: p.grad for n, p in layer.named_parameters()})


def _layer(cls, config, dtype=torch.float64):
    torch.manual_seed(1)
    return cls(CX, CY, config=config).to(dtype).train()


# ------------------------------------------------------------------------------------------
# HOT
# ------------------------------------------------------------------------------------------
def hot_reference(X, G, W, c: HOTConfig):
    """(g_x, g_w) of HOT on rows X (N, Cx), G (N, Cy), W (Cy, Cx), written from the equations."""
    n = X.shape[0]
    b, r = c.hla_block, c.hla_rank
    nb = -(-n // b)
    S = sequency_walsh(b)[:r]
    # block-diagonal (nb r, nb b) HLA operator, applied to the zero-padded rows
    P = torch.block_diag(*[S] * nb)
    Xp = torch.cat([X, X.new_zeros(nb * b - n, X.shape[1])])
    Gp = torch.cat([G, G.new_zeros(nb * b - n, G.shape[1])])
    Xl, Gl = P @ Xp, P @ Gp
    if c.act_bits is not None:
        q, s = fake_quant(Xl, c.act_bits, 1)
        Xl = q.double() * s.double()
    gw = Gl.T @ Xl
    if c.grad_bits is None:
        gx = G @ W
    else:
        cy = G.shape[1]
        H = block_diag_hadamard(cy, c.hq_block)
        pad = H.shape[0] - cy
        Gh = F.pad(G, (0, pad)) @ H
        Wh = H @ F.pad(W, (0, 0, 0, pad))
        row = c.hq_scale == "row"
        qg, sg = fake_quant(Gh, c.grad_bits, 1 if row else None)
        qw, sw = fake_quant(Wh, c.grad_bits, 0 if row else None)
        gx = (qg.double() @ qw.double()) * sg.double() * sw.double()
    return gx, gw


HOT_CASES = {
    "default": HOTConfig(hla_block=4, hla_rank=2, hq_block=4),
    "tensor scales": HOTConfig(hla_block=8, hla_rank=3, hq_block=2, hq_scale="tensor"),
    "int4 buffer, int8 grads": HOTConfig(hla_block=4, hla_rank=1, act_bits=4, grad_bits=8),
    "no quantisation": HOTConfig(hla_block=2, hla_rank=1, act_bits=None, grad_bits=None),
}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("case", list(HOT_CASES))
def test_hot_gradients_match_explicit_computation(case, kind):
    config = HOT_CASES[case]
    layer = _layer(HOTLinear if kind == "linear" else HOTConv2d, config)
    x = _input(kind, rows=5)  # N = 10 (linear) / 20 (conv) rows: the last block is padded
    g = torch.randn_like(layer(x))
    got = _grads(layer, x, g)
    W = layer.weight.detach().reshape(CY, CX)
    gx, gw = hot_reference(_rows(x, kind), _rows(g, kind), W, config)
    tol = dict(rtol=1e-5, atol=1e-5 * float(gx.abs().max()))
    torch.testing.assert_close(_rows(got["x"], kind), gx, **tol)
    torch.testing.assert_close(got["weight"].reshape(CY, CX), gw, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["bias"], _rows(g, kind).sum(0))  # exact


def test_hot_full_rank_unquantised_is_exact_backprop():
    torch.manual_seed(0)
    plain = nn.Linear(CX, CY).double()
    config = HOTConfig(hla_block=4, hla_rank=4, act_bits=None, grad_bits=None)
    layer = HOTLinear.from_module(nn.Linear(CX, CY).double(), config).train()
    layer.load_state_dict(plain.state_dict())
    x, g = _input("linear", rows=7), torch.randn(2, 7, CY, dtype=torch.float64)  # 14 rows
    want, got = _grads(plain, x, g), _grads(layer, x, g)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-12, msg=key)
    # full rank with quantisation on: close, not exact
    layer.hot_config = HOTConfig(hla_block=4, hla_rank=4)
    approx = _grads(layer, x, g)
    for key in ("x", "weight"):
        err = (approx[key] - want[key]).norm() / want[key].norm()
        assert 0 < err < (0.2 if key == "x" else 0.02), (key, err)


def test_hot_low_rank_keeps_the_low_sequency_part():
    """Rows constant within each block lie in the first (sequency-0) Walsh row: rank 1 is
    then exact for g_w."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, CX, dtype=torch.float64).repeat(1, 4, 1).reshape(12, CX)
    g = torch.randn(12, CY, dtype=torch.float64)
    layer = _layer(HOTLinear, HOTConfig(hla_block=4, hla_rank=1, act_bits=None, grad_bits=None))
    got = _grads(layer, x, g)
    torch.testing.assert_close(got["weight"], g.T @ x, rtol=1e-5, atol=1e-12)
    other = torch.randn(12, CX, dtype=torch.float64)
    assert (_grads(layer, other, g)["weight"] - g.T @ other).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------
# INSTANT
# ------------------------------------------------------------------------------------------
def top_eigvecs(cov: torch.Tensor, r: int) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, torch.argsort(vals, descending=True)[:r]]


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_instant_gradients_match_explicit_computation(kind):
    cls = INSTANTLinear if kind == "linear" else INSTANTConv2d
    layer = _layer(cls, INSTANTConfig(rank=3))
    x1, x2 = _input(kind, 0), _input(kind, 1)
    g1 = torch.randn_like(layer(x1))
    g2 = torch.randn_like(g1)
    W = layer.weight.detach().reshape(CY, CX).clone()
    # calibration call: exact backprop
    got1 = _grads(layer, x1, g1)
    X1, G1 = _rows(x1, kind), _rows(g1, kind)
    torch.testing.assert_close(_rows(got1["x"], kind), G1 @ W)
    torch.testing.assert_close(got1["weight"].reshape(CY, CX), G1.T @ X1)
    assert layer.instant_ready
    # projected call: bases from the calibration batch's x^T x and g^T g
    Px, Pg = top_eigvecs(X1.T @ X1, 3), top_eigvecs(G1.T @ G1, 3)
    got2 = _grads(layer, x2, g2)
    X2, G2 = _rows(x2, kind), _rows(g2, kind)
    Gp, Xp = G2 @ Pg @ Pg.T, X2 @ Px @ Px.T  # sign-free projectors
    torch.testing.assert_close(_rows(got2["x"], kind), Gp @ W)
    torch.testing.assert_close(got2["weight"].reshape(CY, CX), Gp.T @ Xp)
    torch.testing.assert_close(got2["bias"], G2.sum(0))
    assert (got2["weight"].reshape(CY, CX) - G2.T @ X2).abs().max() > 1e-3  # not exact


def test_instant_full_rank_is_exact_backprop():
    torch.manual_seed(0)
    plain = nn.Linear(CX, CY).double()
    layer = INSTANTLinear.from_module(nn.Linear(CX, CY).double(), INSTANTConfig(rank=CX))
    layer.train().load_state_dict(plain.state_dict())
    assert layer.instant_ranks == (CX, CY)
    for seed in range(3):  # the calibration call, then two projected calls
        x, g = _input("linear", seed), torch.randn(2, 5, CY, dtype=torch.float64)
        want, got = _grads(plain, x, g), _grads(layer, x, g)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-10, msg=key)
    assert layer.instant_ready and layer.instant_calls == 2


def test_instant_calibration_batches_and_recalibration():
    layer = _layer(INSTANTLinear, INSTANTConfig(rank=2, calibration_batches=2, recalibrate_every=3))
    xs = [_input("linear", s) for s in range(8)]
    gs = [torch.randn(2, 5, CY, dtype=torch.float64) for _ in range(8)]
    ready = []
    for x, g in zip(xs, gs, strict=True):
        calibrates = layer.calibrates_next()
        _grads(layer, x, g)
        ready.append((calibrates, layer.instant_ready))
    # 2 calibration calls, 3 projected, 2 calibration calls again, 1 projected
    assert [c for c, _ in ready] == [True, True, False, False, False, True, True, False]
    # the bases of the second calibration: from calls 5 and 6 summed
    X = torch.cat([_rows(xs[5], "linear"), _rows(xs[6], "linear")])
    torch.testing.assert_close(
        layer.instant_px @ layer.instant_px.T, (lambda p: p @ p.T)(top_eigvecs(X.T @ X, 2))
    )


def test_instant_forward_without_backward_keeps_calibrating():
    layer = _layer(INSTANTLinear, INSTANTConfig(rank=2))
    layer(_input("linear"))  # no backward: g_y never seen
    assert not layer.instant_ready and layer.calibrates_next()


# ------------------------------------------------------------------------------------------
# both: memory, conversion, options, FLOPs
# ------------------------------------------------------------------------------------------
B, TOKENS, C_IN, C_OUT = 2, 197, 32, 16  # a class token + a 14x14 map
N_ROWS = B * TOKENS


def test_saved_activation_bytes_measured_with_a_class_token():
    plain_bytes = N_ROWS * C_IN * 4
    x = torch.randn(B, TOKENS, C_IN)
    results = {}
    for method, options in [
        ("plain", None),
        ("hot", dict(hla_block=16, hla_rank=4)),
        ("hot", dict(hla_block=16, hla_rank=4, act_bits=None)),
        ("instant", dict(instant_rank=4)),
    ]:
        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict(fc=nn.Linear(C_IN, C_OUT))).train()
        if options is not None:
            convert(model, [dict(target="fc", method=method, **options)], example_input=None)
        if method == "instant":  # the calibration call saves x in full
            m = measure_step(model, x, elementwise=False, warmup=0)
            assert m.saved_activation_bytes == plain_bytes
        m = measure_step(model, x, elementwise=False)
        assert m.saved_by_module["fc"] == m.saved_activation_bytes
        results[(method, options and options.get("act_bits", 8))] = m.saved_activation_bytes
    rows = math.ceil(N_ROWS / 16) * 4  # 25 blocks (the last one padded) x 4 kept rows
    assert results[("plain", None)] == plain_bytes
    assert results[("hot", 8)] == rows * C_IN + rows * 4  # int8 values + one fp32 scale a row
    assert results[("hot", None)] == rows * C_IN * 4
    assert results[("instant", 8)] == N_ROWS * 4 * 4  # x P_x: factor C_IN / r = 8
    assert plain_bytes / results[("hot", 8)] > 14


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(nn.Linear(CX, CY), nn.GELU(), nn.Linear(CY, 4))
    return nn.Sequential(nn.Conv2d(CX, CY, 1), nn.GELU(), nn.Conv2d(CY, 4, 1))


OPTIONS = {"hot": dict(hla_block=4, hla_rank=2, hq_block=2), "instant": dict(instant_rank=2)}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_convert_keeps_state_dict_keys_and_unconvert_restores(method, kind):
    model = _model(kind)
    keys = list(model.state_dict())
    x = torch.randn(2, 5, CX) if kind == "linear" else torch.randn(2, CX, 3, 3)
    report = convert(model, [dict(target="*", method=method, **OPTIONS[method])], example_input=x)
    assert report.names() == ["0", "2"]
    assert list(model.state_dict()) == keys  # bases are non-persistent buffers
    want = {"hot": (HOTLinear, HOTConv2d), "instant": (INSTANTLinear, INSTANTConv2d)}[method]
    assert type(model[0]) is want[kind == "conv"]
    if method == "instant":  # the dry forward is not a calibration call
        assert not model[0].instant_ready and model[0]._cov_x is None
    model.train()
    for _ in range(2):
        model(x).sum().backward()
    assert model[0].converted_calls == 2
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert unconvert(model) == ["0", "2"]
    assert [type(m) for m in model] == [type(m) for m in _model(kind)]
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_eval_and_no_grad_are_plain():
    x = torch.randn(2, 5, CX)
    for cls, config in [(HOTLinear, None), (INSTANTLinear, INSTANTConfig(rank=2))]:
        layer = cls(CX, CY, config=config).eval()
        plain = F.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), plain)
        layer.train()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), plain)
        assert layer.converted_calls == 0


BAD = [
    ("hot", dict(hla_block=12), ValueError, r"hla_block must be a power of two"),
    ("hot", dict(hla_block=0), ValueError, r"hla_block must be >= 1"),
    ("hot", dict(hla_block=4, hla_rank=5), ValueError, r"hla_rank must be <= hla_block"),
    ("hot", dict(hla_rank=0), ValueError, r"hla_rank must be >= 1"),
    ("hot", dict(hla_rank=2.0), TypeError, r"hla_rank must be an int"),
    ("hot", dict(act_bits=16), ValueError, r"act_bits must be in \[2, 8\]"),
    ("hot", dict(grad_bits=1), ValueError, r"grad_bits must be >= 2"),
    ("hot", dict(hq_block=3), ValueError, r"hq_block must be a power of two"),
    ("hot", dict(hq_scale="channel"), ValueError, r"unknown HOT hq_scale 'channel'"),
    ("hot", dict(rank=2), ValueError, r"unknown key 'rank'"),
    ("hot", dict(hot=VeLoRAConfig()), TypeError, r"hot= must be a HOTConfig"),
    ("instant", dict(instant_rank=0), ValueError, r"INSTANT rank must be >= 1"),
    ("instant", dict(calibration_batches=0), ValueError, r"calibration_batches must be >= 1"),
    ("instant", dict(recalibrate_every=-1), ValueError, r"recalibrate_every must be >= 0"),
    ("instant", dict(hla_rank=2), ValueError, r"applies to method 'hot'"),
    ("instant", dict(instant_rnk=2), ValueError, r"did you mean 'instant_rank'"),
]


@pytest.mark.parametrize(("method", "options", "error", "match"), BAD)
def test_bad_options_are_clear_errors(method, options, error, match):
    model = _model("linear")
    with pytest.raises(error, match=match):
        convert(model, [dict(target="0", method=method, **options)], example_input=None)
    assert type(model[0]) is nn.Linear


def test_wrong_config_type_for_layer():
    with pytest.raises(TypeError, match=r"must be a HOTConfig"):
        HOTLinear(CX, CY, config=INSTANTConfig())
    with pytest.raises(TypeError, match=r"must be a INSTANTConfig"):
        INSTANTLinear(CX, CY, config=HOTConfig())


@pytest.mark.parametrize(
    "rule",
    [
        dict(method="hot", act_bits=None, grad_bits=None, hq_scale="tensor"),
        dict(method="hot", hla_rank=3),
        dict(method="instant", instant_rank=5, recalibrate_every=10),
    ],
)
def test_rules_round_trip(rule):
    parsed = parse_rule(dict(target="*", **rule))
    assert parse_rule(parsed.to_dict()) == parsed
    for key, value in rule.items():
        assert parsed.to_dict()[key] == value


FLOP_CASES = {
    "hot": dict(hla_block=16, hla_rank=4, hq_block=8),
    "hot unquantised g_x": dict(hla_block=8, hla_rank=8, grad_bits=None),
    "instant": dict(instant_rank=4),
    "instant calibration call": dict(instant_rank=4),
}


@pytest.mark.parametrize("need_x", [True, False])
@pytest.mark.parametrize("case", list(FLOP_CASES))
def test_counted_flops_equal_the_analytic_model(case, need_x):
    """measure_step's FlopCounterMode count equals lbp_wht.cost's model: the FP32 total (HOT's
    integer product, simulated as a float GEMM, is moved out of the FLOPs into ``int_macs``),
    plus INSTANT's covariance GEMMs in a calibration call (``warmup=0``: by default
    measure_step warms up past INSTANT's calibration and counts a projected step)."""
    method = case.split()[0]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(C_IN, 12), nn.GELU(), nn.Linear(12, C_OUT))
    convert(net, [dict(target="*", method=method, **FLOP_CASES[case])], example_input=None)
    net.train()
    x = torch.randn(B, TOKENS, C_IN, requires_grad=need_x)
    if case == "instant":
        net(x).sum().backward()  # calibrate first: the counted step projects
    tracer = cost.LinearLayerTracer(net)
    warmup = 0 if case == "instant calibration call" else None
    m = measure_step(net, x, elementwise=False, forward_context=tracer, warmup=warmup)
    costs = cost.model_cost(net, tracer.geoms, "gemm")
    assert {g.method for g in tracer.geoms} == {method}
    total = sum(c.total for c in costs.values())
    int_macs = sum(c.int_macs for c in costs.values())
    calibration = sum(c.calibration for c in costs.values())
    assert m.backprop_flops == total + calibration
    assert m.int_macs == int_macs
    if case == "hot":
        cyp = 16  # C_OUT, already a multiple of hq_block: no padding
        assert costs["2"].int_macs == N_ROWS * cyp * 12
        assert int_macs > 0 and calibration == 0
    elif case == "instant":
        assert int_macs == calibration == 0
        vanilla = sum(
            cost.vanilla_bp_flops(g.cx, g.cy, g.tokens, need_input_grad=g.need_input_grad).total
            for g in tracer.geoms
        )
        assert total < vanilla / 2
    elif case == "instant calibration call":
        assert calibration == 2 * N_ROWS * (C_IN**2 + 12**2) + 2 * N_ROWS * (12**2 + C_OUT**2)
    else:
        assert int_macs == 0


def test_new_cost_fields_stay_out_of_the_totals():
    c = cost.LayerCost(vanilla=3.0, int_macs=100.0, calibration=50.0)
    assert c.total == 3.0
    assert (c + c).int_macs == 200.0 and c.scaled(2).calibration == 100.0
    assert c.as_dict()["int_macs"] == 100.0
    h = cost.hot_flops(768, 3072, 197, hla_block=16, hla_rank=8, grad_bits=4, hq_block=16)
    assert h.int_macs == 197 * 3072 * 768 and h.vanilla == 0
    assert h.low_rank_mm == 2 * 768 * 3072 * 13 * 8


@pytest.mark.parametrize("method", list(OPTIONS))
def test_autocast_bfloat16_trains(method):
    """Under CPU autocast (bf16 GEMMs) backward runs, the gradients keep the parameters' dtype
    and approximate the float32 ones (near-lossless settings: 8-bit HQ, full-rank HLA; INSTANT
    at full rank, calibrated on the first of two steps)."""
    options = {
        "hot": dict(hla_block=4, hla_rank=4, grad_bits=8),
        "instant": dict(instant_rank=CX),
    }[method]
    grads = {}
    for amp in (False, True):
        model = _model("linear")
        convert(model, [dict(target="*", method=method, **options)], example_input=None)
        model.train()
        x = torch.randn(2, 5, CX, generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = model(x).float().pow(2).sum()
            loss.backward()
        grads[amp] = {n: p.grad for n, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[True].items():
        assert g.dtype == torch.float32, name
        torch.testing.assert_close(g, grads[False][name], atol=0.1, rtol=0.05, msg=name)
