"""Layers, LoRA, LBP + LoRA, conversion and freezing: behaviour and errors."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from reference import lbp_backward_reference

from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LBPLoRAConv2d,
    LBPLoRALinear,
    LoRAConfig,
    LoRAConv2d,
    LoRALinear,
    MapGeometry,
    convert,
    freeze,
    select_bases,
)


def saved_bytes(fn) -> int:
    """Bytes of non-parameter tensors autograd saves while running ``fn()``."""
    seen = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


# ---- LBP layers ---------------------------------------------------------------------------
def test_from_module_shares_parameters_and_state_dict_keys():
    lin = nn.Linear(8, 4)
    lbp = LBPLinear.from_module(lin, LBPConfig(radius=4))
    assert lbp.weight is lin.weight and lbp.bias is lin.bias
    assert list(lbp.state_dict()) == list(lin.state_dict())
    conv = nn.Conv2d(8, 4, 1, bias=False)
    lbpc = LBPConv2d.from_module(conv, LBPConfig(radius=2))
    assert lbpc.weight is conv.weight and lbpc.bias is None
    assert list(lbpc.state_dict()) == ["weight"]
    torch.testing.assert_close(lbpc(torch.ones(1, 8, 7, 7)), conv(torch.ones(1, 8, 7, 7)))


def test_saved_activation_is_a_small_fraction():
    """Only x_hat (B, R, C) is kept: R/49 of the input for a 7x7 map (Table 6 'Activation')."""
    lin = nn.Linear(64, 64)
    x = torch.randn(8, 49, 64, requires_grad=True)
    plain = saved_bytes(lambda: lin(x))
    for r, rank in [(2, 3), (4, 10)]:
        lbp = LBPLinear.from_module(lin, LBPConfig(radius=r))
        got = saved_bytes(lambda lbp=lbp: lbp(x))
        assert got == 8 * rank * 64 * 4  # exactly x_hat, float32
        assert got <= plain * rank / 49 + 1
    conv = nn.Conv2d(64, 64, 1)
    xc = torch.randn(4, 64, 14, 14, requires_grad=True)
    lbpc = LBPConv2d.from_module(conv, LBPConfig(radius=2))  # 4 patches x 3 bases
    assert saved_bytes(lambda: lbpc(xc)) == 4 * 4 * 3 * 64 * 4
    assert saved_bytes(lambda: lbpc(xc)) < saved_bytes(lambda: conv(xc)) / 10


def test_frozen_weight_saves_nothing_and_skips_weight_grad():
    lin = nn.Linear(16, 16)
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False)
    lbp = LBPLinear.from_module(lin, LBPConfig(radius=2))
    x = torch.randn(2, 49, 16, requires_grad=True)
    assert saved_bytes(lambda: lbp(x)) == 0
    lbp(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is None


def test_eval_and_no_grad_run_the_plain_layer():
    torch.manual_seed(0)
    lin = nn.Linear(6, 6)
    ref = copy.deepcopy(lin)
    lbp = LBPLinear.from_module(lin, LBPConfig(radius=2)).eval()
    x = torch.randn(2, 49, 6, requires_grad=True)
    lbp(x).square().sum().backward()
    ref(x.detach()).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, ref.weight.grad)  # exact: plain layer in eval
    lbp.train()
    with torch.no_grad():
        torch.testing.assert_close(lbp(x), ref(x))
    assert saved_bytes(lambda: lbp.eval()(x)) == saved_bytes(lambda: ref(x))


def test_leading_dims_are_batch_like_swin_windows():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    lbp = LBPLinear.from_module(lin, LBPConfig(radius=4), geometry=MapGeometry("tokens"))
    x = torch.randn(2, 3, 64, 4, dtype=torch.float64, requires_grad=True)  # (B, windows, 8*8, C)
    g = torch.randn(2, 3, 64, 4, dtype=torch.float64)
    lbp(x).backward(g)
    ref = lbp_backward_reference(
        x.detach().reshape(6, 64, 4).numpy(),
        lin.weight.detach().numpy(),
        g.reshape(6, 64, 4).numpy(),
        (8, 8),
        select_bases("lp_l1", radius=4),
    )
    np.testing.assert_allclose(x.grad.reshape(6, 64, 4).numpy(), ref["g_x"], atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    lbp32 = LBPLinear.from_module(copy.deepcopy(lin), LBPConfig(radius=4))
    lbp_lp = LBPLinear.from_module(copy.deepcopy(lin).to(dtype), LBPConfig(radius=4))
    x = torch.randn(2, 49, 32)
    x32, xlp = x.clone().requires_grad_(), x.to(dtype).requires_grad_()
    lbp32(x32).sum().backward()
    lbp_lp(xlp).sum().backward()
    assert xlp.grad.dtype == dtype and lbp_lp.weight.grad.dtype == dtype
    torch.testing.assert_close(xlp.grad.float(), x32.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(lbp_lp.weight.grad.float(), lbp32.weight.grad, rtol=0.05, atol=0.5)


def test_spectrum_recording_and_lhe_profiling():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    layer = LBPLinear.from_module(lin, LBPConfig(selection="lhe", num_bases=5))
    assert layer.bases is None and layer.rank is None
    layer.record_spectrum = True
    x = torch.randn(2, 49, 4, requires_grad=True)
    for _ in range(2):
        layer(x).backward(torch.randn(2, 49, 4))
    assert layer.spectrum_steps == 2 and layer.spectrum_energy.shape == (8, 8)
    layer.set_bases(select_bases("lhe", num_bases=5, energy=layer.spectrum_energy))
    assert layer.rank == 5
    with pytest.raises(ValueError, match="outside"):
        layer.set_bases([(9, 0)])


# ---- errors -----------------------------------------------------------------------------
def test_non_1x1_conv_is_a_clear_error():
    for conv, what in [
        (nn.Conv2d(4, 4, 3, padding=1), "kernel_size=(3, 3)"),
        (nn.Conv2d(4, 4, 1, stride=2), "stride=(2, 2)"),
        (nn.Conv2d(4, 4, 1, groups=2), "groups=2"),
    ]:
        for cls in (LBPConv2d, LoRAConv2d, LBPLoRAConv2d):
            with pytest.raises(
                ValueError, match=r"only 1x1.*" + what.replace("(", r"\(").replace(")", r"\)")
            ):
                cls.from_module(conv)


def test_token_count_mismatch_names_layer_and_shapes():
    model = nn.Sequential(nn.Linear(4, 4))
    convert(model, [dict(target="0", method="lbp", radius=2, hw=(7, 7))])
    with pytest.raises(ValueError, match=r"'?0'? .*\(2, 50, 4\).*hw=\(7, 7\)"):
        model(torch.randn(2, 50, 4, requires_grad=True))
    lbp = LBPLinear.from_module(nn.Linear(4, 4), LBPConfig(radius=2))
    with pytest.raises(ValueError, match="not a square map.*prefix_tokens=E.*hw=\\(H, W\\)"):
        lbp(torch.randn(2, 50, 4, requires_grad=True))
    with pytest.raises(ValueError, match="token input"):
        lbp(torch.randn(2, 4, requires_grad=True))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(order=6), "power of two"),
        (dict(radius=20), "at most 15"),
        (dict(padding="circular"), "unknown padding"),
        (dict(selection="lhe"), "num_bases"),
    ],
)
def test_bad_lbp_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LBPConfig(**kwargs)


# ---- LoRA ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lora_init_unchanged_frozen_base_and_merge(kind):
    torch.manual_seed(0)
    if kind == "linear":
        base, x, cls = nn.Linear(12, 6), torch.randn(3, 10, 12), LoRALinear
    else:
        base, x, cls = nn.Conv2d(12, 6, 1), torch.randn(3, 12, 5, 5), LoRAConv2d
    ref = copy.deepcopy(base)
    lora = cls.from_module(base, LoRAConfig(rank=4, alpha=8))
    torch.testing.assert_close(lora(x), ref(x))  # B = 0 at init
    assert not lora.weight.requires_grad and not lora.bias.requires_grad
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    assert lora.scaling == 2.0
    with torch.no_grad():
        lora.lora_B.normal_()
    y = lora(x)
    lora.merge()
    torch.testing.assert_close(lora(x), y, rtol=1e-5, atol=1e-5)
    w_merged = lora.weight.clone()
    lora.merge()  # idempotent
    torch.testing.assert_close(lora.weight, w_merged)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, ref.weight)


def test_lora_gradients_are_the_adapter_gradients():
    torch.manual_seed(0)
    lora = LoRALinear.from_module(nn.Linear(5, 3).double(), LoRAConfig(rank=2, alpha=4))
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    g = torch.randn(2, 7, 3, dtype=torch.float64)
    lora(x).backward(g)
    a, b, s = lora.lora_A.detach(), lora.lora_B.detach(), 2.0
    gf, xf = g.reshape(-1, 3), x.reshape(-1, 5)
    torch.testing.assert_close(lora.lora_A.grad, s * (gf @ b).T @ xf)
    torch.testing.assert_close(lora.lora_B.grad, s * gf.T @ (xf @ a.T))


@pytest.mark.parametrize("padding,select,r", [("zero", "lp_l1", 15), ("reflect", "lp_l1", 4)])
def test_lbp_lora_linear_matches_reference(padding, select, r):
    """Table 6: adapter and input gradients in the low-rank space (exact at full rank)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5).double()
    layer = LBPLoRALinear.from_module(
        base, LBPConfig(selection=select, radius=r, padding=padding), LoRAConfig(rank=3, alpha=6)
    )
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 49, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 49, 5, dtype=torch.float64)
    layer(x).backward(g)
    assert base.weight.grad is None  # frozen base
    a, b = layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy()
    ref = lbp_backward_reference(
        x.detach().numpy(),
        base.weight.detach().numpy(),
        g.numpy(),
        (7, 7),
        select_bases(select, radius=r),
        padding=padding,
        lora=(a, b, 2.0),
    )
    np.testing.assert_allclose(x.grad.numpy(), ref["g_x"], atol=1e-10)
    np.testing.assert_allclose(layer.lora_A.grad.numpy(), ref["g_A"], atol=1e-10)
    np.testing.assert_allclose(layer.lora_B.grad.numpy(), ref["g_B"], atol=1e-10)
    if padding == "zero":  # full basis: identical to plain LoRA autograd
        plain = LoRALinear.from_module(copy.deepcopy(base), LoRAConfig(rank=3, alpha=6))
        plain.load_state_dict(layer.state_dict())
        x2 = x.detach().clone().requires_grad_()
        plain(x2).backward(g)
        torch.testing.assert_close(x2.grad, x.grad)
        torch.testing.assert_close(plain.lora_A.grad, layer.lora_A.grad)


def test_lbp_lora_conv_full_basis_equals_lora_conv():
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 1).double()
    layer = LBPLoRAConv2d.from_module(
        base, LBPConfig(radius=15, padding="zero"), LoRAConfig(rank=2, alpha=2)
    )
    plain = LoRAConv2d.from_module(copy.deepcopy(base), LoRAConfig(rank=2, alpha=2))
    with torch.no_grad():
        layer.lora_B.normal_()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    g = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    layer(x1).backward(g)
    plain(x2).backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(layer.lora_A.grad, plain.lora_A.grad)
    torch.testing.assert_close(layer.lora_B.grad, plain.lora_B.grad)


# ---- convert / freeze ---------------------------------------------------------------------
class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mix = nn.ModuleDict(dict(fc1=nn.Conv2d(16, 32, 1), fc2=nn.Conv2d(32, 16, 1)))
        self.attn = nn.ModuleDict(dict(qkv=nn.Linear(16, 48), proj=nn.Linear(16, 16)))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, img):
        x = self.stem(img)  # (B, 16, 7, 7)
        x = x + self.mix["fc2"](torch.relu(self.mix["fc1"](x)))
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.attn["qkv"](t).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) / 4, -1) @ v
        t = self.norm(t + self.attn["proj"](a))
        return self.head(t.mean(1))


def test_convert_report_forward_unchanged_and_backward_follows_rules():
    torch.manual_seed(0)
    model = TinyViT()
    ref = copy.deepcopy(model)
    rules = [
        dict(target="mix.*", method="lbp", radius=2),
        dict(target="attn.qkv", method="lora", lora_rank=24, lora_alpha=24),
        dict(target="attn.proj", method="lbp_lora", lora_rank=8, lora_alpha=8, radius=4),
    ]
    img = torch.randn(2, 3, 28, 28)
    report = convert(model, rules, example_input=img[:1])  # a 7x7 map
    assert report.names() == ["mix.fc1", "mix.fc2", "attn.qkv", "attn.proj"]
    assert [r.map_source for r in report.replaced] == [
        "example input", "example input", "no map needed", "example input"
    ]  # fmt: skip
    assert report.counts() == {"LBPConv2d": 2, "LoRALinear": 1, "LBPLoRALinear": 1}
    assert "4 modules replaced" in str(report)
    assert model.mix["fc1"].lbp_name == "mix.fc1"
    torch.testing.assert_close(model(img), ref(img))
    assert set(model.state_dict()) - set(ref.state_dict()) == {
        "attn.qkv.lora_A",
        "attn.qkv.lora_B",
        "attn.proj.lora_A",
        "attn.proj.lora_B",
    }
    model.load_state_dict(ref.state_dict(), strict=False)  # pretrained keys load

    trainable = freeze(model, ["mix.*", "attn.*", "head.*"])
    assert "attn.qkv.weight" not in trainable and "attn.qkv.lora_A" in trainable
    assert "stem.weight" not in trainable and "mix.fc1.weight" in trainable
    model.train()
    model(img).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name


def test_convert_errors_name_the_problem():
    model = TinyViT()
    with pytest.raises(ValueError, match=r"matches no nn.Linear.*Closest.*attn.qkv"):
        convert(model, [dict(target="attn.qvk", method="lbp")])
    with pytest.raises(ValueError, match="unknown method"):
        convert(model, [dict(target="head", method="lorra")])
    with pytest.raises(ValueError, match="targeted by rule 0 and rule 1"):
        convert(
            model, [dict(target="attn.*", method="lbp"), dict(target="attn.qkv", method="lora")]
        )
    with pytest.raises(ValueError, match=r"'stem'.*only 1x1"):
        convert(model, [dict(target="stem", method="lbp")])
    assert len(convert(model, [dict(target="nothing.*", method="lbp")], strict=False)) == 0
    convert(model, [dict(target="head", method="lora")])
    with pytest.raises(ValueError, match="already converted"):
        convert(model, [dict(target="head", method="lbp")])
    with pytest.raises(ValueError, match=r"matches no parameter.*head"):
        freeze(model, ["haed.*"])


def test_lbp_lora_takes_lhe_rank_separately_from_adapter_rank():
    layer = LBPLoRALinear.from_module(
        nn.Linear(4, 4), LBPConfig(selection="lhe", num_bases=5), LoRAConfig(rank=8, alpha=8)
    )
    assert layer.bases is None and layer.lbp_config.num_bases == 5 and layer.lora_rank == 8
    # the same through rules, in option keys and as typed configs
    lhe = LBPConfig(selection="lhe", num_bases=5)
    for rule in (  # hw: the map of a lone linear, which no example input could show
        dict(target="0", method="lbp_lora", selection="lhe", num_bases=5, lora_rank=8, hw=[2, 2]),
        dict(target="0", method="lbp_lora", lbp=lhe, lora=LoRAConfig(rank=8), hw=[2, 2]),
    ):
        model = nn.Sequential(nn.Linear(4, 4))
        convert(model, [rule])
        assert model[0].lbp_config.num_bases == 5 and model[0].lora_rank == 8


# ---- prefix tokens cost nothing -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lbp", "lbp_lora"])
def test_prefix_tokens_save_a_copy_not_a_view_of_the_input(kind):
    """(8, 197, 384): 1 class token + a 14x14 map. Saving x[:, :1] as a view would keep all
    of x (2.42 MB) alive; a copy of the prefix rows costs (P*R + 1) / 197 of it."""
    torch.manual_seed(0)
    lin = nn.Linear(384, 384)
    geo = MapGeometry(prefix_tokens=1)
    if kind == "lbp":
        layer = LBPLinear.from_module(lin, LBPConfig(radius=4), geometry=geo)
    else:
        layer = LBPLoRALinear.from_module(
            lin, LBPConfig(radius=4), LoRAConfig(rank=8), geometry=geo
        )
    x = torch.randn(8, 197, 384, requires_grad=True)
    plain = x.numel() * 4  # what nn.Linear saves for its weight gradient
    got = saved_bytes(lambda: layer(x))
    patches, r = 4, 10  # 14x14 padded to 16x16: 2x2 patches of 8x8, LP_L1-4 keeps 10 bases
    assert got == 8 * (patches * r + 1) * 384 * 4  # x_hat + the copied class token
    assert got <= plain * (patches * r + 1) / 197 + 1
    y = layer(x)
    y.sum().backward()  # and the gradients still flow to the prefix token
    assert x.grad[:, 0].abs().sum() > 0


def test_convert_takes_rule_objects_with_missing_or_unused_configs():
    """A hand-built ``Rule`` passes each layer the configs its method takes: a missing one is
    that config's default, one the method does not use is ignored."""
    from lbp_wht.conversion import Rule

    rules = [
        Rule(0, "attn.proj", "lbp_lora", (), None, LoRAConfig(rank=2)),
        Rule(1, "attn.qkv", "lora", (), LBPConfig(radius=2), LoRAConfig(rank=4)),
        Rule(2, "mix.fc1", "lbp", (), LBPConfig(radius=2), LoRAConfig(rank=4)),
    ]
    model = TinyViT()
    convert(model, rules, example_input=torch.randn(1, 3, 28, 28))
    proj, qkv, fc1 = model.attn["proj"], model.attn["qkv"], model.mix["fc1"]
    assert isinstance(proj, LBPLoRALinear) and proj.lbp_config == LBPConfig()
    assert proj.lora_config.rank == 2
    assert isinstance(qkv, LoRALinear) and qkv.lora_config.rank == 4
    assert isinstance(fc1, LBPConv2d) and fc1.lbp_config.radius == 2
