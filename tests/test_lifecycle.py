"""peft-style lifecycle: all-linear with excludes, unconvert (merge / drop), trainable-only
state dict + rules JSON + loader, trainable summary, LoRA dropout and merged state, LHE bases
in the state dict, the BatchNorm guard."""

from __future__ import annotations

import copy
import hashlib
import json
import warnings

import pytest
import torch
import torch.nn as nn

from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LBPLoRALinear,
    LoRAConfig,
    LoRALinear,
    convert,
    freeze,
    keep_batchnorm_eval,
    load_adapted,
    save_adapted,
    trainable_state_dict,
    trainable_summary,
    unconvert,
)
from lbp_wht.saving import rules_path


class Net(nn.Module):
    """Stem conv, a 1x1-conv block with BatchNorm, a token block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.mix = nn.Sequential(
            nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.GELU(), nn.Conv2d(32, 16, 1)
        )
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.attn = nn.ModuleDict(dict(qkv=nn.Linear(16, 48), proj=nn.Linear(16, 16)))
        self.head = nn.Linear(16, 10)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        x = self.dw(x + self.mix(x))
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.attn["qkv"](t).chunk(3, -1)
        t = t + self.attn["proj"](torch.softmax(q @ k.transpose(1, 2) / 4, -1) @ v)
        return self.head(t.mean(1))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


IMG = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def test_all_linear_skips_what_it_cannot_convert_and_honours_excludes():
    model = _net()
    rule = dict(target="all-linear", method="lbp", exclude=["attn.proj"])
    report = convert(model, [rule], example_input=IMG[:1])
    assert report.names() == ["mix.0", "mix.3", "attn.qkv"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons.keys() == {"stem", "dw", "attn.proj", "head"}
    assert "kernel_size=(4, 4)" in reasons["stem"] and "groups=16" in reasons["dw"]
    assert reasons["attn.proj"] == "excluded by rule 0" and "task head" in reasons["head"]
    text = str(report)
    assert "3 modules replaced" in text and "skipped head: task head" in text
    assert "example input: tensor (1, 3, 28, 28)" in text


def test_all_linear_without_an_example_skips_what_needs_a_map_with_the_reason():
    """No example input, no adapter, no rule geometry: nothing establishes a map, so
    all-linear converts nothing (a 1x1 conv too needs the example here) and says why; a rule
    naming a 1x1 conv still converts it (its NCHW input is its map), one naming a linear is
    an error at convert time and changes nothing."""
    model = _net()
    report = convert(model, [dict(target="all-linear", method="lbp")], example_input=None)
    assert len(report) == 0 and report.example == "none (example_input=None)"
    reasons = {s.name: s.reason for s in report.skipped}
    for name in ("mix.0", "mix.3", "attn.qkv", "attn.proj"):
        assert "pass example_input=" in reasons[name], name
    with pytest.raises(ValueError, match=r"rule 1 targets 'attn.qkv'.*pass example_input="):
        convert(
            model,
            [dict(target="mix.*", method="lbp"), dict(target="attn.qkv", method="lbp")],
            example_input=None,
        )
    assert not any(isinstance(m, LBPLinear | LBPConv2d) for m in model.modules())
    report = convert(model, [dict(target="mix.*", method="lbp")], example_input=None)
    assert [r.map_source for r in report.replaced] == ["nchw input", "nchw input"]
    report = convert(
        model, [dict(target="attn.*", method="lbp", prefix_tokens=0)], example_input=None
    )
    assert [r.map_source for r in report.replaced] == ["rule", "rule"]


def test_rule_keys_are_checked_by_name():
    model = _net()
    with pytest.raises(
        ValueError, match=r"unknown key 'raduis' \(did you mean 'radius'\?\); valid keys"
    ):
        convert(model, [dict(target="attn.*", method="lbp", raduis=2)])
    with pytest.raises(
        ValueError,
        match="method='lbp'.*unknown key 'lora_rank' .it applies to method 'lora' / 'lbp_lora'",
    ):
        convert(model, [dict(target="attn.*", method="lbp", lora_rank=4)])
    with pytest.raises(TypeError, match=r"rule 0 .*radius must be an int, got True"):
        convert(model, [dict(target="attn.*", method="lbp", radius=True)])
    with pytest.raises(TypeError, match=r"wrap the single rule in a list"):
        convert(model, dict(target="attn.*", method="lbp"))
    # one name per option: the presets' old spellings are refused, naming the canonical key
    with pytest.raises(ValueError, match="unknown key 'r' .the old spelling of 'radius'"):
        convert(model, [dict(target="attn.*", method="lbp", r=2)])
    with pytest.raises(ValueError, match="unknown key 'rank' .the old spelling of 'num_bases'"):
        convert(model, [dict(target="attn.*", method="lbp", selection="lhe", rank=2)])
    with pytest.raises(ValueError, match="unknown key 'rank' .the old spelling of 'lora_rank'"):
        convert(model, [dict(target="attn.*", method="lbp_lora", rank=2)])
    assert not any(isinstance(m, LBPLinear) for m in model.modules())  # nothing changed


@pytest.mark.parametrize("lora", ["merge", "drop"])
def test_unconvert_restores_plain_layers_with_or_without_the_adapters(lora):
    model = _net()
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    convert(
        model,
        [
            dict(target="mix.*", method="lbp", radius=2),
            dict(target="attn.qkv", method="lora", lora_rank=4, lora_alpha=8),
            dict(target="attn.proj", method="lbp_lora", radius=4, lora_rank=2),
        ],
        example_input=IMG[:1],
    )
    with torch.no_grad():
        model.attn["qkv"].lora_B.normal_()
        model.attn["proj"].lora_B.normal_()
    model.eval()
    adapted = model(IMG)
    restored = unconvert(model, lora=lora)
    assert sorted(restored) == ["attn.proj", "attn.qkv", "mix.0", "mix.3"]
    assert type(model.attn["qkv"]) is nn.Linear and type(model.mix[0]) is nn.Conv2d
    assert list(model.state_dict()) == keys and not hasattr(model, "lbp_rules")
    want = adapted if lora == "merge" else ref.eval()(IMG)
    torch.testing.assert_close(model(IMG), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'merge' or 'drop'"):
        unconvert(model, lora="keep")


def test_trainable_summary_counts_once():
    model = _net()
    convert(model, [dict(target="attn.qkv", method="lora", lora_rank=4)])
    freeze(model, ["attn.qkv.lora_*", "head.*"])
    s = trainable_summary(model)
    assert s.trainable == 4 * 16 + 48 * 4 + 16 * 10 + 10
    assert s.total == sum(p.numel() for p in model.parameters())
    assert s.tensors == 4
    assert f"{s.percent:.4f}" in str(s) and "trainable params: 426" in str(s)


def test_saved_trainable_state_and_rules_rebuild_the_model(tmp_path):
    model = _net()
    rules = [
        dict(target="mix.*", method="lbp", selection="lp_linf", radius=2),
        dict(target="attn.*", method="lbp_lora", lora_rank=4, lora_alpha=4),
    ]
    convert(model, rules, example_input=IMG[:1])
    freeze(model, ["mix.*", "attn.*", "head.*"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    pt, js = save_adapted(model, tmp_path / "run" / "adapted.pt")
    assert js == rules_path(pt) == tmp_path / "run" / "adapted.rules.json"
    meta = json.loads(js.read_text())
    assert meta["rules"][0]["selection"] == "lp_linf" and meta["rules"][1]["lora_rank"] == 4
    assert meta["example"] == dict(shape=[1, 3, 28, 28], dtype="float32")  # shapes, no values
    assert meta["converted"] == ["attn.proj", "attn.qkv", "mix.0", "mix.3"]
    assert meta["tensors_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    saved = torch.load(pt, weights_only=True)
    assert set(saved) == set(trainable_state_dict(model))
    assert "stem.weight" not in saved and "attn.qkv.weight" not in saved  # frozen: not saved

    fresh = _net()
    report = load_adapted(fresh, pt)  # re-traced on a zero (1, 3, 28, 28) image
    assert report.names() == ["mix.0", "mix.3", "attn.qkv", "attn.proj"]
    assert report.example == "tensor (1, 3, 28, 28)"
    assert fresh.attn["qkv"].geometry == model.attn["qkv"].geometry
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(IMG), model(IMG))
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    with pytest.raises(ValueError, match="already converted"):
        load_adapted(fresh, pt)
    with pytest.raises(FileNotFoundError, match="rules.json not found"):
        load_adapted(_net(), tmp_path / "nothing.pt")


def _adapted(radius: int, shift: float) -> Net:
    """A converted, "trained" Net: LBP-WHT with ``radius`` on every layer with a map."""
    model = _net()
    convert(model, [dict(target="all-linear", method="lbp", radius=radius)], example_input=IMG[:1])
    freeze(model, ["mix.*", "attn.*"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(shift)
    return model


def test_load_refuses_a_tensor_file_that_a_failed_save_left_beside_other_rules(
    tmp_path, monkeypatch
):
    """A save that fails after writing the tensor file (here: the rules write) leaves the new
    tensors beside the previous save's rules (radius 2, not 4). Their names and shapes fit, so
    before the rules recorded the tensor file's SHA-256 (d1cb8e9) load_adapted accepted the
    pair and rebuilt the model with the wrong rules; now it refuses it."""
    pt = tmp_path / "adapted.pt"
    save_adapted(_adapted(radius=2, shift=0.1), pt)
    load_adapted(_net(), pt)  # the intact pair loads

    import lbp_wht.saving as saving

    write = saving.atomic_write  # lbp_wht.io's, as saving imported it

    def fail_on_rules(path, data, **kw):
        if str(path).endswith(".rules.json"):
            raise OSError("disk full")
        return write(path, data, **kw)

    monkeypatch.setattr(saving, "atomic_write", fail_on_rules)
    with pytest.raises(OSError, match="disk full"):
        save_adapted(_adapted(radius=4, shift=0.2), pt)
    monkeypatch.undo()
    assert json.loads(rules_path(pt).read_text())["rules"][0]["radius"] == 2  # the old rules
    fresh = _net()
    with pytest.raises(ValueError, match=r"adapted.pt is not the tensor file.*SHA-256 differs"):
        load_adapted(fresh, pt)
    assert not any(isinstance(m, LBPLinear | LBPConv2d) for m in fresh.modules())
    save_adapted(_adapted(radius=4, shift=0.2), pt)  # saved again: a matching pair
    assert load_adapted(_net(), pt).rules[0]["radius"] == 4


class _NetWithoutProj(Net):
    """The same modules, but attn.proj never runs (a different forward)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        x = self.dw(x + self.mix(x))
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.attn["qkv"](t).chunk(3, -1)
        return self.head((t + torch.softmax(q @ k.transpose(1, 2) / 4, -1) @ v).mean(1))


def test_load_refuses_a_fresh_model_that_converts_differently(tmp_path):
    pt = tmp_path / "adapted.pt"
    save_adapted(_adapted(radius=2, shift=0.1), pt)
    torch.manual_seed(0)
    other = _NetWithoutProj()  # same parameter names and shapes; all-linear skips attn.proj
    with pytest.raises(
        ValueError,
        match=r"converts differently.*saved but not converted now \['attn.proj'\]",
    ):
        load_adapted(other, pt)


def test_save_refuses_unrecorded_rules_and_load_refuses_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="records no conversion rules"):
        save_adapted(_net(), tmp_path / "x.pt")
    (tmp_path / "x.rules.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an lbp_wht rules file"):
        load_adapted(_net(), tmp_path / "x.pt")
    (tmp_path / "x.rules.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapted(_net(), tmp_path / "x.pt")


def test_merged_lora_state_dict_roundtrips_without_applying_adapters_twice():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = LoRALinear.from_module(copy.deepcopy(base), LoRAConfig(rank=2, alpha=4))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    want = layer(x)
    layer.merge()
    state = layer.state_dict()
    assert state["lora_merged"].item() is True
    fresh = LoRALinear.from_module(copy.deepcopy(base), LoRAConfig(rank=2, alpha=4))
    fresh.load_state_dict(state)
    assert fresh.merged
    torch.testing.assert_close(fresh(x), want)
    # adapters only (a trainable-only state dict) into a merged layer: re-merged with them
    merged = copy.deepcopy(fresh)
    merged.load_state_dict({"lora_A": fresh.lora_A * 2, "lora_B": fresh.lora_B}, strict=False)
    fresh.unmerge()
    with torch.no_grad():
        fresh.lora_A.mul_(2)
    torch.testing.assert_close(merged(x), fresh(x), rtol=1e-5, atol=1e-5)
    # an unmerged state dict into a merged layer: unmerged afterwards, still right
    merged.load_state_dict(fresh.state_dict())
    assert not merged.merged
    torch.testing.assert_close(merged(x), fresh(x))


def test_lora_dropout_on_the_adapter_input_only():
    torch.manual_seed(0)
    layer = LoRALinear.from_module(nn.Linear(16, 16), LoRAConfig(rank=4, dropout=0.5))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(64, 16)
    layer.eval()
    a, b = layer(x), layer(x)
    torch.testing.assert_close(a, b)  # eval: no dropout
    layer.train()
    assert not torch.allclose(layer(x), a)  # train: the adapter branch is dropped out
    layer.lora_B.data.zero_()
    torch.testing.assert_close(layer(x), layer.eval()(x))  # base path never dropped
    with pytest.raises(ValueError, match="dropout=0.5 cannot be combined with LBP-WHT"):
        LBPLoRALinear.from_module(nn.Linear(4, 4), None, LoRAConfig(dropout=0.5))


def test_lhe_bases_travel_in_the_state_dict():
    model = nn.Sequential(nn.Linear(4, 4))  # hw: a lone linear's map, no example shows it
    convert(model, [dict(target="0", method="lbp", selection="lhe", num_bases=3, hw=(8, 8))])
    assert "0.lbp_bases" not in model.state_dict()  # not chosen yet
    model[0].set_bases([(0, 0), (2, 1), (0, 3)])
    state = model.state_dict()
    assert state["0.lbp_bases"].tolist() == [[0, 0], [2, 1], [0, 3]]
    twin = nn.Sequential(nn.Linear(4, 4))
    convert(twin, [dict(target="0", method="lbp", selection="lhe", num_bases=3, hw=(8, 8))])
    twin.load_state_dict(state)  # strict: the key is known to the layer
    assert twin[0].bases == ((0, 0), (2, 1), (0, 3))
    lp = nn.Sequential(nn.Linear(4, 4))
    convert(lp, [dict(target="0", method="lbp", hw=(8, 8))])
    assert list(lp.state_dict()) == ["0.weight", "0.bias"]  # LP selections add no key
    with pytest.raises(RuntimeError, match="lbp_bases.*outside"):
        twin.load_state_dict({**state, "0.lbp_bases": torch.tensor([[9, 0], [0, 0], [1, 1]])})


def test_batchnorm_guard_warns_once_at_the_first_training_step():
    model = _net()
    convert(model, [dict(target="mix.*", method="lbp")])
    model.train()
    with pytest.warns(
        UserWarning, match=r"1 BatchNorm layers are in train mode \(mix.1\).*keep_batchnorm_eval"
    ):
        model(IMG).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(IMG).sum().backward()  # once
    quiet = _net()
    convert(quiet, [dict(target="mix.*", method="lbp")])
    keep_batchnorm_eval(quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.train()(IMG).sum().backward()
        assert not quiet.mix[1].training
    off = _net()
    convert(off, [dict(target="mix.*", method="lbp")], batchnorm_guard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off.train()(IMG).sum().backward()


def test_config_objects_and_layer_constructors():
    layer = LBPLinear(8, 4, config=LBPConfig(radius=2))
    assert layer.num_bases == 3 and layer.rank == 3
    lora = LoRALinear(8, 4, config=LoRAConfig(rank=2))
    assert lora.lora_A.shape == (2, 8)
    with pytest.raises(TypeError, match="must be a LoRAConfig"):
        LoRALinear.from_module(nn.Linear(4, 4), dict(rank=2))
