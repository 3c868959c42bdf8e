"""LoRA-FA, VeLoRA and WTA-CRS (lbp_wht.lora_fa / velora / wta_crs): gradients against explicit
formulas, exact limits, unbiasedness, saved activation bytes, conversion and bad options."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lbp_wht import (
    LoRAConfig,
    LoRAFAConfig,
    LoRAFAConv2d,
    LoRAFALinear,
    LoRALinear,
    VeLoRAConfig,
    VeLoRAConv2d,
    VeLoRALinear,
    WTACRSConfig,
    WTACRSConv2d,
    WTACRSLinear,
    convert,
    freeze,
    measure_step,
    trainable_state_dict,
    unconvert,
)
from lbp_wht.wta_crs import wta_crs_rows

CX, CY = 8, 6
LAYERS = {
    ("lora_fa", "linear"): (LoRAFALinear, LoRAFAConfig(rank=3, alpha=6.0)),
    ("lora_fa", "conv"): (LoRAFAConv2d, LoRAFAConfig(rank=3, alpha=6.0)),
    ("velora", "linear"): (VeLoRALinear, VeLoRAConfig(subtoken_size=4)),
    ("velora", "conv"): (VeLoRAConv2d, VeLoRAConfig(subtoken_size=2)),
    ("wta_crs", "linear"): (WTACRSLinear, WTACRSConfig(keep=7, winner_fraction=0.5)),
    ("wta_crs", "conv"): (WTACRSConv2d, WTACRSConfig(keep_fraction=0.4)),
}


def _input(kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 5, CX) if kind == "linear" else (2, CX, 3, 2)
    # rows of different norms, so that WTA-CRS's winners are well defined
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    rows = (*shape[:-1], 1) if kind == "linear" else (shape[0], 1, *shape[2:])
    return x * (torch.rand(*rows, generator=g, dtype=torch.float64) * 3 + 0.1)


def _rows(t: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, C) token rows, written independently of lbp_wht.rowwise."""
    return (
        t.reshape(-1, t.shape[-1])
        if kind == "linear"
        else t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    )


def _layer(method: str, kind: str) -> nn.Module:
    cls, config = LAYERS[(method, kind)]
    torch.manual_seed(1)
    layer = cls(CX, CY, config=config).double().train()
    if method == "lora_fa":
        layer.lora_B.data.normal_()  # a zero B would hide the adapter's share of g_x
    return layer


def _run(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    layer(x).backward(g)
    return x.grad


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("method", ["lora_fa", "velora", "wta_crs"])
def test_gradients_match_explicit_formula(method, kind):
    layer = _layer(method, kind)
    x = _input(kind)
    g = torch.randn_like(layer(x))
    torch.manual_seed(7)
    gx = _run(layer, x, g)
    W = layer.weight.detach().reshape(CY, CX).clone()
    b = layer.bias.detach().clone()
    X, G = _rows(x, kind), _rows(g, kind)
    # g_x and g_b are exact for every method: g_y W (+ the LoRA-FA adapter), sum of g_y.
    xr = X.clone().requires_grad_(True)
    Wp = W.clone().requires_grad_(True)
    bp = b.clone().requires_grad_(True)
    if method == "lora_fa":
        A = layer.lora_A.detach().clone()
        Bp = layer.lora_B.detach().clone().requires_grad_(True)
        s = layer.scaling
        (G * (xr @ W.T + bp + s * (xr @ A.T) @ Bp.T)).sum().backward()
        assert layer.lora_A.grad is None and layer.weight.grad is None
        torch.testing.assert_close(layer.lora_B.grad, Bp.grad)
    else:
        (G * (xr @ W.T + bp)).sum().backward()
        if method == "velora":
            d = layer.velora_config.subtoken_size
            mean = X.reshape(-1, d).mean(0)
            v = mean / mean.norm()
            torch.testing.assert_close(layer.velora_v, v)
            coeff = X.reshape(X.shape[0], -1, d) @ v
            x_used = (coeff.unsqueeze(-1) * v).reshape_as(X)
        else:
            torch.manual_seed(7)  # the same draw as the layer's forward
            n = X.shape[0]
            k = layer.wta_config.rows_kept(n)
            idx, weight = wta_crs_rows(X, k, layer.wta_config.winners(k, n))
            assert len(idx) == k < n
            x_used = torch.zeros_like(X).index_add_(0, idx, X[idx] * weight[:, None].double())
        (G * (x_used @ Wp.T)).sum().backward()
        torch.testing.assert_close(layer.weight.grad.reshape(CY, CX), Wp.grad)
    torch.testing.assert_close(_rows(gx, kind), xr.grad)
    if method == "lora_fa":
        assert layer.bias.grad is None  # frozen, as in LoRA
    else:
        torch.testing.assert_close(layer.bias.grad, bp.grad)


def _plain_grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict:
    layer.zero_grad(set_to_none=True)
    gx = _run(layer, x, g)
    return dict(x=gx, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None})


EXACT_LIMITS = {
    "velora d=1": (VeLoRALinear, VeLoRAConfig(subtoken_size=1)),
    "wta_crs keep all rows": (WTACRSLinear, WTACRSConfig(keep_fraction=1.0)),
    "wta_crs keep=N": (WTACRSLinear, WTACRSConfig(keep=10, winner_fraction=0.0)),
}


@pytest.mark.parametrize("name", list(EXACT_LIMITS))
def test_uncompressed_limit_is_exact_backprop(name):
    cls, config = EXACT_LIMITS[name]
    torch.manual_seed(0)
    plain = nn.Linear(CX, CY).double()
    layer = cls.from_module(nn.Linear(CX, CY).double(), config).train()
    layer.load_state_dict(plain.state_dict())
    x, g = _input("linear"), torch.randn(2, 5, CY, dtype=torch.float64)
    want, got = _plain_grads(plain, x, g), _plain_grads(layer, x, g)
    assert set(want) == set(got) == {"x", "weight", "bias"}
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)


def test_velora_is_exact_when_every_sub_token_lies_on_v():
    """Sub-tokens c u for one unit u: the first batch sets v = u and x_rec = x exactly."""
    torch.manual_seed(0)
    d = 4
    u = torch.randn(d, dtype=torch.float64)
    u = u / u.norm()
    coeff = torch.rand(10, CX // d, dtype=torch.float64) + 0.5  # positive mean: v = +u
    x = (coeff.unsqueeze(-1) * u).reshape(10, CX)
    plain = nn.Linear(CX, CY).double()
    layer = VeLoRALinear.from_module(nn.Linear(CX, CY).double(), VeLoRAConfig(subtoken_size=d))
    layer.train().load_state_dict(plain.state_dict())
    g = torch.randn(10, CY, dtype=torch.float64)
    want, got = _plain_grads(plain, x, g), _plain_grads(layer, x, g)
    torch.testing.assert_close(layer.velora_v, u)
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)
    # and a second batch off that line is not exact: v stays fixed after the first batch
    other = _input("linear").reshape(10, CX)
    assert (
        _plain_grads(layer, other, g)["weight"] - _plain_grads(plain, other, g)["weight"]
    ).abs().max() > 1e-3


def test_lora_fa_equals_lora_with_a_frozen():
    torch.manual_seed(0)
    base = nn.Linear(CX, CY).double()
    lora = LoRALinear.from_module(base, LoRAConfig(rank=3, alpha=6.0)).train()
    fa = LoRAFALinear.from_module(nn.Linear(CX, CY).double(), LoRAFAConfig(rank=3, alpha=6.0))
    fa.train().load_state_dict(lora.state_dict())
    lora.lora_B.data.normal_()
    fa.lora_B.data.copy_(lora.lora_B.data)
    lora.lora_A.requires_grad_(False)
    x, g = _input("linear"), torch.randn(2, 5, CY, dtype=torch.float64)
    torch.testing.assert_close(fa(x), lora(x))
    want, got = _plain_grads(lora, x, g), _plain_grads(fa, x, g)
    assert set(got) == set(want) == {"x", "lora_B"}  # w, b frozen as in LoRA; A frozen
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)


def test_wta_crs_is_unbiased():
    torch.manual_seed(0)
    layer = WTACRSLinear(CX, 4, config=WTACRSConfig(keep=8, winner_fraction=0.5)).double()
    x = _input("linear").reshape(10, CX).repeat(3, 1)[:24]  # 24 rows of different norms
    x = x * torch.linspace(0.2, 2.0, 24, dtype=torch.float64)[:, None]
    g = torch.randn(24, 4, dtype=torch.float64)
    exact = g.T @ x
    torch.manual_seed(1234)
    draws = []
    for _ in range(1000):
        layer.weight.grad = None
        layer(x).backward(g)
        draws.append(layer.weight.grad.clone())
    d = torch.stack(draws)
    mean, se = d.mean(0), d.std(0) / math.sqrt(len(draws))
    assert (d[0] - exact).abs().max() > 1e-3  # a single draw is an estimate, not exact
    # unbiased: the mean is within 5 standard errors of the exact g_w, element by element
    assert ((mean - exact).abs() <= 5 * se + 1e-9).all(), ((mean - exact).abs() / se).max()
    # the winners (largest-norm rows) are kept in every draw
    idx, weight = wta_crs_rows(x, 8, 4)
    top = torch.argsort(x.norm(dim=1), descending=True)[:4]
    assert idx[:4].tolist() == top.tolist() and (weight[:4] == 1).all()


def test_wta_crs_without_trainable_weight_saves_no_rows():
    layer = WTACRSLinear(CX, CY, config=WTACRSConfig(keep=2)).train()
    layer.weight.requires_grad_(False)
    x = torch.randn(4, CX, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, CX))


# tokens: batch 2, a class token + a 4x4 map, 16 channels -> 8
B, TOKENS, C_IN, C_OUT = 2, 1 + 16, 16, 8
N_ROWS = B * TOKENS
SAVED = {  # method: (rule options, expected saved bytes of the layer, fp32)
    "plain": (None, N_ROWS * C_IN * 4),
    "lora_fa": (dict(lora_rank=2), N_ROWS * 2 * 4),  # x A^T: factor C_IN / r = 8
    "velora": (dict(subtoken_size=4), N_ROWS * (C_IN // 4) * 4),  # factor d = 4
    "wta_crs": (  # k = ceil(0.25 N) rows of x plus their int64 indices
        dict(keep_fraction=0.25),
        math.ceil(0.25 * N_ROWS) * (C_IN * 4 + 8),
    ),
}


@pytest.mark.parametrize("method", list(SAVED))
def test_saved_activation_bytes_measured(method):
    options, expected = SAVED[method]
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(C_IN, C_OUT))).train()
    if options is not None:
        convert(model, [dict(target="fc", method=method, **options)], example_input=None)
    x = torch.randn(B, TOKENS, C_IN)
    m = measure_step(model, x, elementwise=False)
    assert m.saved_by_module["fc"] == expected
    assert m.saved_activation_bytes == expected
    plain = SAVED["plain"][1]
    factor = {"plain": 1, "lora_fa": C_IN / 2, "velora": 4}.get(method)
    if factor is not None:
        assert plain / m.saved_activation_bytes == factor
    else:
        assert m.saved_activation_bytes < 0.3 * plain


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(nn.Linear(CX, CY), nn.GELU(), nn.Linear(CY, 4))
    return nn.Sequential(nn.Conv2d(CX, CY, 1), nn.GELU(), nn.Conv2d(CY, 4, 1))


OPTIONS = {"lora_fa": dict(lora_rank=2), "velora": dict(subtoken_size=2), "wta_crs": {}}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_convert_keeps_state_dict_keys_and_unconvert_restores(method, kind):
    model = _model(kind)
    keys = list(model.state_dict())
    x = torch.randn(2, 5, CX) if kind == "linear" else torch.randn(2, CX, 3, 3)
    report = convert(model, [dict(target="*", method=method, **OPTIONS[method])], example_input=x)
    assert report.names() == ["0", "2"]
    added = [k for k in model.state_dict() if k not in keys]
    assert set(keys) <= set(model.state_dict())
    if method == "lora_fa":  # LoRA's keys: the frozen A and the trained B
        assert added == ["0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"]
        freeze(model, ["*"])
        assert not model[0].lora_A.requires_grad and model[0].lora_B.requires_grad
        assert "0.lora_A" in trainable_state_dict(model)
        model[0].lora_B.data.normal_()
    else:
        assert added == []
        if method == "velora":  # the dry forward is not the first training batch
            assert not model[0].velora_ready
    model.train()
    model(x).sum().backward()
    assert model[0].converted_calls >= 1
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert unconvert(model) == ["0", "2"]
    assert [type(m) for m in model] == [type(m) for m in _model(kind)]
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # LoRA-FA merged into the weight


def test_lora_fa_refuses_trainable_a():
    layer = LoRAFALinear(CX, CY).train()
    layer.lora_A.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"lora_A"):
        layer(torch.randn(3, CX))


def _rule(method, **options):
    return [dict(target="0", method=method, **options)]


BAD = [
    ("lora_fa", dict(lora_rank=0), ValueError, r"LoRA-FA rank must be >= 1, got 0"),
    ("lora_fa", dict(lora_rank=-2), ValueError, r"LoRA-FA rank must be >= 1"),
    ("lora_fa", dict(rank=2), ValueError, r"unknown key 'rank' \(the old spelling of 'lora_rank'"),
    ("lora_fa", dict(lora_rank=1.5), TypeError, r"LoRA-FA rank must be an int"),
    ("lora_fa", dict(lora_dropout=0.1), ValueError, r"unknown key 'lora_dropout'"),
    ("velora", dict(subtoken_size=3), ValueError, r"subtoken_size=3 does not divide the 8"),
    ("velora", dict(subtoken_size=0), ValueError, r"subtoken_size must be >= 1"),
    ("velora", dict(subtoken_size=2.0), TypeError, r"subtoken_size must be an int"),
    ("velora", dict(rank=2), ValueError, r"unknown key 'rank'"),
    ("velora", dict(velora=WTACRSConfig()), TypeError, r"velora= must be a VeLoRAConfig"),
    ("wta_crs", dict(keep_fraction=0.0), ValueError, r"keep_fraction must be in \(0, 1\]"),
    ("wta_crs", dict(keep_fraction=1.5), ValueError, r"keep_fraction must be in \(0, 1\]"),
    ("wta_crs", dict(keep=0), ValueError, r"keep must be >= 1"),
    ("wta_crs", dict(keep=2, keep_fraction=0.5), ValueError, r"keep \(k rows\) or keep_fraction"),
    ("wta_crs", dict(winner_fraction=1.0), ValueError, r"winner_fraction must be in \[0, 1\)"),
    ("wta_crs", dict(kep=3), ValueError, r"unknown key 'kep' \(did you mean 'keep'\?\)"),
    ("wta_crs", dict(subtoken_size=2), ValueError, r"applies to method 'velora'"),
]


@pytest.mark.parametrize(("method", "options", "error", "match"), BAD)
def test_bad_options_are_clear_errors(method, options, error, match):
    model = _model("linear")
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        convert(model, _rule(method, **options), example_input=None)
    assert type(model[0]) is nn.Linear and model.state_dict().keys() == keys.keys()


def test_wta_crs_rows_kept():
    assert WTACRSConfig(keep_fraction=0.1).rows_kept(30) == 3  # not 4 from 3.0000000000000004
    assert WTACRSConfig(keep_fraction=0.25).rows_kept(34) == 9
    assert WTACRSConfig(keep_fraction=0.01).rows_kept(5) == 1
    assert WTACRSConfig(keep=4).rows_kept(4) == 4
    assert WTACRSConfig(keep=4).winners(4, 10) == 2 and WTACRSConfig(keep=4).winners(4, 4) == 4


def test_wta_crs_keep_above_rows_is_a_clear_error():
    layer = WTACRSLinear(CX, CY, config=WTACRSConfig(keep=11)).train()
    with pytest.raises(ValueError, match=r"keep=11 exceeds the 10 token rows"):
        layer(torch.randn(2, 5, CX))


def test_wrong_config_type_for_layer():
    with pytest.raises(TypeError, match=r"must be a WTACRSConfig"):
        WTACRSLinear(CX, CY, config=VeLoRAConfig())
    with pytest.raises(TypeError, match=r"must be a LoRAFAConfig"):
        LoRAFALinear.from_module(nn.Linear(CX, CY), LoRAConfig())


def test_eval_and_no_grad_are_plain():
    x = torch.randn(2, 5, CX)
    for cls, config in [
        (VeLoRALinear, VeLoRAConfig(subtoken_size=2)),
        (WTACRSLinear, None),
        (LoRAFALinear, None),
    ]:
        layer = cls(CX, CY, config=config).eval()
        plain = F.linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), plain)
        layer.train()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), plain)
        if cls is not LoRAFALinear:  # LoRA's adapter path counts as converted in eval too
            assert layer.converted_calls == 0


@pytest.mark.parametrize("need_x", [True, False])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_counted_flops_equal_the_analytic_model(method, need_x):
    """measure_step's FlopCounterMode count equals lbp_wht.cost's model for each method."""
    from lbp_wht import cost

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(C_IN, 12), nn.GELU(), nn.Linear(12, C_OUT))
    options = dict(OPTIONS[method], keep_fraction=0.3) if method == "wta_crs" else OPTIONS[method]
    convert(net, [dict(target="*", method=method, **options)], example_input=None)
    if method == "lora_fa":
        freeze(net, ["*.lora_*"])
    net.train()
    x = torch.randn(B, TOKENS, C_IN, requires_grad=need_x)
    m = measure_step(net, x, elementwise=False)
    geom = cost.trace_linear_layers(net, lambda: net(x))
    costs = cost.model_cost(net, geom, "gemm")
    assert {g.method for g in geom} == {method}
    assert sum(c.total for c in costs.values()) == m.backprop_flops
    # training-only forward work: VeLoRA's sub-token coefficients, 2 N Cx per layer
    coefficients = 2 * N_ROWS * (C_IN + 12) if method == "velora" else 0
    assert m.forward_extra_flops == coefficients == sum(c.projection for c in costs.values())
    if method == "wta_crs":  # g_w of each layer from k = ceil(0.3 N) rows
        k = math.ceil(0.3 * N_ROWS)
        assert costs["0"].vanilla == 2 * C_IN * 12 * (k + (N_ROWS if need_x else 0))


@pytest.mark.parametrize("method", list(OPTIONS))
def test_rules_round_trip_and_save_load(method, tmp_path):
    from lbp_wht import load_adapted, save_adapted
    from lbp_wht.conversion import parse_rule

    options = dict(OPTIONS[method], **({"keep": 3} if method == "wta_crs" else {}))
    rule = parse_rule(dict(target="*", method=method, **options))
    assert parse_rule(rule.to_dict()) == rule
    model = _model("linear")
    convert(model, [rule.to_dict()], example_input=torch.randn(1, 4, CX))
    freeze(model, ["*.lora_B"] if method == "lora_fa" else ["*.weight"])
    x = torch.randn(2, 5, CX)
    model.train()
    model(x).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.1)  # one step, so that the saved state is not the base
    path, _ = save_adapted(model, tmp_path / "adapted.pt")
    torch.manual_seed(123)  # a different random lora_A, if it were drawn again
    fresh = _model("linear")
    load_adapted(fresh, path)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize("method", list(OPTIONS))
def test_autocast_bfloat16_trains(method):
    """Under CPU autocast (bf16 GEMMs) backward runs and the gradients keep the parameters'
    dtype and approximate the float32 ones."""
    grads = {}
    for amp in (False, True):
        model = _model("linear")
        options = (
            dict(OPTIONS[method], keep_fraction=1.0) if method == "wta_crs" else OPTIONS[method]
        )
        convert(model, [dict(target="*", method=method, **options)], example_input=None)
        if method == "lora_fa":
            freeze(model, ["*.lora_B", "*.bias"])
            model[2].lora_B.data.normal_()
        model.train()
        x = torch.randn(2, 5, CX, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).float().pow(2).sum()
        loss.backward()
        grads[amp] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[True].items():
        assert g.dtype == torch.float32, name
        torch.testing.assert_close(g, grads[False][name], atol=0.1, rtol=0.05, msg=name)
