"""Call sites that read a converted layer's weight directly (lbp_wht.callsite).

timm's EVA / BEiT / Swin V2 attention never calls its ``qkv`` module: it computes
``F.linear(x, self.qkv.weight, torch.cat([q_bias, zeros, v_bias]))`` itself. Replacing ``qkv``
by a converted layer would then change nothing while the report lists it as converted.
``convert`` finds such call sites in its dry forward and routes them through the converted
layer; ``converted_calls`` shows which path ran.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lbp_wht import convert, unconvert
from lbp_wht.callsite import remove_call_sites

DT = torch.float64
FULL = dict(target="all-linear", method="lbp", radius=15, padding="zero")  # all 64 bases


class QVBiasAttention(nn.Module):
    """BEiT / EVA-style attention: separate q and v biases, the k bias fixed at zero."""

    def __init__(self, dim: int = 8, heads: int = 2, direct: bool = False):
        super().__init__()
        self.heads, self.direct = heads, direct  # direct: call qkv as a module (reference)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim))
        self.v_bias = nn.Parameter(torch.randn(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = self.qkv(x) + bias if self.direct else F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, direct: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.attn = QVBiasAttention(direct=direct)

    def forward(self, img):
        return self.attn(self.stem(img).flatten(2).transpose(1, 2))


def _net() -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    return Net().to(DT), torch.randn(2, 3, 32, 32, dtype=DT)  # an 8x8 map


def _grads(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    model.train()(x).square().sum().backward()
    return {"x": x.grad, **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}


def _assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


def test_a_weight_read_by_the_parent_is_routed_through_the_converted_layer():
    model, x = _net()
    ref = copy.deepcopy(model)
    report = convert(model, [FULL], example_input=x[:1])
    assert report.names() == ["attn.qkv", "attn.proj"]
    qkv = {r.name: r for r in report.replaced}["attn.qkv"]
    assert qkv.call_site == "attn" and qkv.map_source == "example input"
    assert "attn.qkv" in str(report) and "called by attn" in str(report)
    layer = model.attn.qkv
    assert layer.converted_calls == 0  # the verification forward is not counted
    got = _grads(model, x)
    assert layer.converted_calls == 1 and model.attn.proj.converted_calls == 1
    _assert_close(got, _grads(ref, x))  # full basis: plain backprop, q_bias / v_bias included
    assert {"attn.q_bias", "attn.v_bias"} <= got.keys()
    _grads(model, x)
    assert layer.converted_calls == 2  # once per forward

    twin = copy.deepcopy(model)  # a deep copy (an EMA model) carries a working redirect
    twin.attn.qkv.converted_calls = 0
    _grads(twin, x)
    assert twin.attn.qkv.converted_calls == 1 and layer.converted_calls == 2

    assert remove_call_sites(model) == 1  # without the redirect the layer is bypassed
    layer.converted_calls = model.attn.proj.converted_calls = 0
    _assert_close(_grads(model, x), _grads(ref, x))
    assert layer.converted_calls == 0 and model.attn.proj.converted_calls == 1


def test_the_low_rank_gradient_reaches_the_bypassed_weight():
    """With a few bases, the redirected call site gives the weight the low-rank gradient of
    a qkv called as a module (not plain backprop's, as a bypassed layer would)."""
    model, x = _net()
    ref = copy.deepcopy(model)
    direct = Net(direct=True).to(DT)
    direct.load_state_dict(model.state_dict())
    rule = dict(target="attn.qkv", method="lbp", radius=2)
    convert(model, [rule], example_input=x[:1])
    report = convert(direct, [rule], example_input=x[:1])
    assert report.replaced[0].call_site is None  # called as a module: nothing to redirect
    got, want, plain = _grads(model, x), _grads(direct, x), _grads(ref, x)
    _assert_close(got, want)
    assert model.attn.qkv.converted_calls == direct.attn.qkv.converted_calls == 1
    w = "attn.qkv.weight"
    assert (got[w] - plain[w]).abs().max() > 1e-3 * plain[w].abs().max()


def test_lora_adapters_on_a_bypassed_weight_train():
    """LoRA on qkv: the redirected call site runs the adapters, so they get gradients (a
    bypassed LoRA layer would leave lora_A / lora_B without one)."""
    model, x = _net()
    rule = dict(target="attn.qkv", method="lora", lora_rank=2)
    report = convert(model, [rule], example_input=x[:1])
    assert report.replaced[0].call_site == "attn"
    assert report.replaced[0].map_source == "no map needed"
    got = _grads(model, x)
    assert model.attn.qkv.converted_calls == 1
    assert {"attn.qkv.lora_A", "attn.qkv.lora_B"} <= got.keys()
    assert got["attn.qkv.lora_B"].abs().max() > 0


def test_unconvert_removes_the_redirect():
    model, x = _net()
    ref = copy.deepcopy(model)
    convert(model, [FULL], example_input=x[:1])
    unconvert(model)
    assert type(model.attn.qkv) is nn.Linear
    assert remove_call_sites(model) == 0
    _assert_close(_grads(model, x), _grads(ref, x))


class _Untakeable(nn.Module):
    """Reads qkv's weight with an op a converted layer cannot stand in for (matmul)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 8)

    def forward(self, img):
        t = self.stem(img).flatten(2).transpose(1, 2)
        return t @ self.qkv.weight.t() + self.qkv.bias


def test_a_weight_read_by_another_op_is_refused():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    report = convert(_Untakeable(), [dict(target="all-linear", method="lbp")], example_input=x)
    assert len(report) == 0 and "cannot take over" in report.skipped[-1].reason
    with pytest.raises(ValueError, match=r"targets 'qkv'.*cannot take over"):
        convert(_Untakeable(), [dict(target="qkv", method="lbp")], example_input=x)
