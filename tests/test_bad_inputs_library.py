"""Bad inputs to the library: each is a clear error (type and a message naming the offending
argument or layer) or correct behaviour. Cases from an outside audit, plus neighbours."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LoRAConfig,
    LoRALinear,
    MapGeometry,
    WHTProjector,
    convert,
    freeze,
    select_bases,
    unconvert,
    walsh_matrix,
)


def _seq(*mods: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*mods)


def _lbp_model() -> nn.Sequential:
    """A lone linear on a 7x7 map of 49 tokens (no example input could show it: the rule)."""
    model = _seq(nn.Linear(4, 4))
    convert(model, [dict(target="0", method="lbp", hw=(7, 7))])
    return model


# (id, callable, error type, message regex)
CASES = [
    ("radius True", lambda: LBPConfig(radius=True), TypeError, "radius must be an int, got True"),
    ("radius float", lambda: LBPConfig(radius=2.5), TypeError, "radius must be an int, got 2.5"),
    ("basis (0.5, 0)", lambda: LBPConfig(selection="explicit", bases=[(0.5, 0)]), TypeError, r"bases\[0\]\[0\]"),
    ("select_bases (0.5, 0)", lambda: select_bases("explicit", indices=[(0.5, 0)]), TypeError, r"\(0.5, 0\).*two ints"),
    ("set_bases (0.5, 0)", lambda: _lbp_model()[0].set_bases([(0.5, 0)]), TypeError, "two ints"),
    ("lhe num_bases True", lambda: select_bases("lhe", num_bases=True, energy=torch.ones(8, 8)), ValueError, "an int 1 <= num_bases"),
    ("lhe NaN energy", lambda: select_bases("lhe", num_bases=2, energy=torch.full((8, 8), float("nan"))), ValueError, "64 non-finite"),
    ("lhe negative energy", lambda: select_bases("lhe", num_bases=2, energy=-torch.ones(8, 8)), ValueError, "negative"),
    ("walsh order True", lambda: walsh_matrix(True), ValueError, "power of two"),
    ("prefix 1.5", lambda: MapGeometry(prefix_tokens=1.5), TypeError, "prefix_tokens must be an int, got 1.5"),
    ("rule prefix_tokens 1.5", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", prefix_tokens=1.5)]), TypeError, r"rule 0 .*prefix_tokens must be an int"),
    ("rule radius True", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", radius=True)]), TypeError, r"rule 0 .*radius must be an int"),
    ("rule lora_rank str", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lora", lora_rank="8")]), TypeError, "LoRA rank must be an int, got '8'"),
    ("rule lora_alpha str", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lora", lora_alpha="8")]), TypeError, "LoRA alpha must be a number, got '8'"),
    ("rule hw one int", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", hw=(7,))]), TypeError, "hw must be a pair"),
    ("rule exclude ints", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", exclude=[1])]), TypeError, "exclude must be a list of globs"),
    ("rule lbp=dict", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", lbp=dict(radius=2))]), TypeError, "lbp= must be a LBPConfig"),
    ("rule old spelling r", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", r=2)]), ValueError, r"unknown key 'r' \(the old spelling of 'radius'"),
    ("rule typo", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp", selct="lp_l1")]), ValueError, r"unknown key 'selct' \(did you mean 'select"),
    ("rule not a dict", lambda: convert(_seq(nn.Linear(4, 4)), ["0"]), TypeError, "rule 0 must be a dict"),
    ("rules a dict", lambda: convert(_seq(nn.Linear(4, 4)), dict(target="0", method="lbp")), TypeError, r"rules must be a list.*\[dict\(\.\.\.\)\]"),
    ("rules a string", lambda: convert(_seq(nn.Linear(4, 4)), "0"), TypeError, "rules must be a list"),
    ("model not a module", lambda: convert("model", []), TypeError, "model must be an nn.Module"),
    ("rule names a linear with no map", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp")]), ValueError, r"rule 0 targets '0'.*no example input.*pass example_input="),
    ("example_input a string", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="0", method="lbp")], example_input="yes"), ValueError, r"example_input must be a tensor.*'auto' or None, got 'yes'"),
    ("example_input the model rejects", lambda: convert(_seq(nn.Flatten(2), nn.Linear(4, 4)), [dict(target="1", method="lbp")], example_input=torch.randn(1, 3, 4, 5)), ValueError, r"convert: the dry forward of Sequential on the example input failed: RuntimeError"),
    ("target empty", lambda: convert(_seq(nn.Linear(4, 4)), [dict(target="", method="lbp")]), TypeError, "non-empty glob"),
    ("freeze a string", lambda: freeze(_seq(nn.Linear(4, 4)), "0.*"), TypeError, r"list of globs.*\(use \['0.\*'\]\)"),
    ("freeze non-str", lambda: freeze(_seq(nn.Linear(4, 4)), [0]), TypeError, "string glob"),
    ("from_module dict config", lambda: LBPLinear.from_module(nn.Linear(4, 4), dict(radius=2)), TypeError, "LBPConfig"),
    ("LoRA dict config", lambda: LoRALinear.from_module(nn.Linear(4, 4), dict(rank=2)), TypeError, "LoRAConfig"),
    ("unconvert lora", lambda: unconvert(_lbp_model(), lora="keep"), ValueError, "'merge' or 'drop'"),
    ("in_features", lambda: _lbp_model().train()(torch.randn(2, 49, 5, requires_grad=True)), ValueError, r"'?0'? \(LBPLinear.*\(2, 49, 5\).*in_features=4"),
    ("in_features eval", lambda: _lbp_model().eval()(torch.randn(2, 49, 5)), ValueError, r"in_features=4"),
    ("in_channels", lambda: LBPConv2d.from_module(nn.Conv2d(4, 4, 1))(torch.randn(2, 3, 7, 7)), ValueError, r"\(2, 3, 7, 7\).*in_channels=4 in dim 1"),
    ("LoRA in_features", lambda: LoRALinear.from_module(nn.Linear(4, 4))(torch.randn(2, 5)), ValueError, "in_features=4"),
    ("bad lbp_bases in state", lambda: _lbp_model().load_state_dict({"0.weight": torch.zeros(4, 4), "0.bias": torch.zeros(4), "0.lbp_bases": torch.zeros(3)}), RuntimeError, r"0\.lbp_bases: expected an \(R, 2\) tensor"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(case):
    _, fn, err, match = case
    with pytest.raises(err, match=match):
        fn()


@pytest.mark.parametrize(
    "layer,shape",
    [
        (LBPConv2d.from_module(nn.Conv2d(4, 6, 1)), (0, 4, 7, 7)),
        (LBPLinear.from_module(nn.Linear(4, 6)), (0, 196, 4)),  # a 14x14 map
    ],
)
def test_an_empty_batch_works(layer, shape):
    x = torch.randn(*shape, requires_grad=True)
    y = layer.train()(x)
    assert y.shape[0] == 0
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0


def test_second_order_gradients_are_refused_not_wrong():
    layer = LBPLinear.from_module(nn.Linear(4, 4).double(), LBPConfig(radius=15, padding="zero"))
    x = torch.randn(2, 49, 4, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


def test_dense_impl_on_a_large_map_warns():
    with pytest.warns(UserWarning, match=r"112x112 map.*MiB.*impl='patch'"):
        WHTProjector((112, 112), select_bases("lp_l1", radius=4), impl="dense")


def test_types_that_are_fine():
    """numpy ints and lists are accepted where ints and tuples are meant."""
    np = pytest.importorskip("numpy")
    cfg = LBPConfig(selection="explicit", bases=[[np.int64(0), 1]])
    assert cfg.bases == ((0, 1),)
    assert LoRAConfig(rank=np.int64(4), alpha=np.float32(2)).scaling == 0.5


# ---------------------------------------------- found by a probe of the API as a new user
class _Scaled(nn.Module):
    """A token linear whose forward takes a plain number beside the image."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, img: torch.Tensor, scale: float = 1.0, tag: object = None) -> torch.Tensor:
        return self.a(img.flatten(2).transpose(1, 2)) * scale  # tag: any object, unused


def test_an_example_input_with_a_number_converts_and_is_recorded():
    """A number beside the tensors of ``example_input`` is part of the call, recorded by value
    (the description used to raise after the layers were swapped, leaving the model half
    converted); a type it cannot describe is refused before anything changes."""
    from lbp_wht.conversion import example_from_spec

    model = _Scaled()
    convert(model, [dict(target="a", method="lbp")], example_input=(torch.randn(1, 8, 8, 8), 2.0))
    assert isinstance(model.a, LBPLinear)
    assert example_from_spec(model.lbp_example)[1] == 2.0
    fresh = _Scaled()
    with pytest.raises(TypeError, match="cannot describe an example input of type object"):
        convert(
            fresh,
            [dict(target="a", method="lbp")],
            example_input=(torch.randn(1, 8, 8, 8), 1.0, object()),
        )
    assert type(fresh.a) is nn.Linear and not hasattr(fresh, "lbp_rules")


def test_lhe_without_bases_warns_at_the_first_training_step_not_in_convert():
    model = _seq(nn.Linear(4, 4))
    rule = dict(target="0", method="lbp", selection="lhe", num_bases=5, hw=(7, 7))
    x = torch.randn(2, 49, 4)
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        convert(model, [rule], example_input=x[:1])
    assert not [w for w in seen if "no bases yet" in str(w.message)]
    with pytest.warns(UserWarning, match="no bases yet"):
        model.train()(x).sum().backward()


def test_from_module_refuses_a_converted_or_uninitialised_layer():
    lora = LoRALinear.from_module(nn.Linear(8, 8), LoRAConfig(rank=2))
    with pytest.raises(TypeError, match="LoRALinear is converted already"):
        LBPLinear.from_module(lora, LBPConfig())
    with pytest.raises(ValueError, match="LazyLinear has no weight yet"):
        LBPLinear.from_module(nn.LazyLinear(8), LBPConfig())
    plain = _seq(nn.Linear(8, 8))
    convert(plain, [dict(target="0", method="lora", lora_rank=2)])
    assert unconvert(plain) == ["0"] and type(plain[0]) is nn.Linear  # unconvert still works


def test_setting_hw_keeps_the_token_order():
    order = tuple(torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist())
    layer = LBPLinear(8, 8, config=LBPConfig(radius=2), geometry=MapGeometry(token_order=order))
    layer.hw = (4, 4)
    assert layer.geometry.token_order == order and layer.geometry.hw == (4, 4)
    with pytest.raises(ValueError, match="token_order has 16 tokens, hw=\\(2, 4\\) has 8"):
        layer.hw = (2, 4)
    with pytest.raises(TypeError, match="token_order\\[i\\] must be an int, got 0.5"):
        MapGeometry(token_order=[0.5, 1.7])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_a_converted_1x1_conv_takes_an_unbatched_map_as_nn_conv2d_does(train):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    full = LBPConfig(selection="lp_linf", radius=8, padding="zero")  # all 64 bases: exact
    layer = LBPConv2d.from_module(nn.Conv2d(16, 8, 1), full).train(train)
    layer.weight, layer.bias = conv.weight, conv.bias
    x = torch.randn(16, 7, 7, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, conv(x))
    if train:
        (gx,) = torch.autograd.grad((y * y).sum(), x)
        (want,) = torch.autograd.grad((conv(x) ** 2).sum(), x)
        torch.testing.assert_close(gx, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "rule, named",
    [
        (dict(target="0", method="lbp", exclude=5), "exclude must be a list of globs, got 5"),
        (dict(target="0", method=["lbp"]), "unknown method \\['lbp'\\]"),
    ],
)
def test_malformed_rule_values_are_named_errors(rule, named):
    with pytest.raises((TypeError, ValueError), match=named):
        convert(_seq(nn.Linear(4, 4)), [rule], example_input=torch.randn(1, 49, 4))
