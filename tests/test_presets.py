"""Presets against the real models: every (model, method, scope) converts exactly the layers the
paper's configurations name, leaves the forward unchanged, and trains exactly what it should.

Models are built at their real sizes with random init from the mmpretrain / mmseg registries
(``lbp_wht.experiments.presets.model_config``), batch 1. Each model is built once per session; each
(method, scope) case converts it in place and then restores the original modules, which is
much cheaper than a deepcopy of L7 (80M parameters). References are computed before any
conversion, so a broken restore shows up as a mismatch in later cases.

Expected layer counts, derived from the architectures (not from the presets):

* EfficientFormer-L1, layers [3, 2, 6, 4], 1 Meta3D block: 14 Meta4D x (fc1, fc2) = 28,
  Meta3D (qkv, proj, fc1, fc2) = 4 -> full 32; last stage 3 Meta4D + 1 Meta3D -> 10.
  Attention projections: qkv + proj = 2 (both scopes).
* EfficientFormer-L7, layers [6, 6, 18, 8], 8 Meta3D: 30 x 2 + 8 x 4 = 92; last stage 32;
  attention 16.
* mini-EfficientFormer, layers [1, 1, 2, 4], 1 Meta3D: 7 x 2 + 4 = 18; last stage 3 x 2 + 4 =
  10; attention 2.
* EfficientFormerV2-S0, depths [2, 2, 6, 4], attention in the last 2 blocks of stages 2 and 3,
  attention downsampling into stage 3: FFN 14 x 2 = 28, attention blocks 4 x (q, k, v, proj,
  2 talking heads) = 24, downsampling (q, k, v, proj) = 4 -> 56; stage-3 blocks 4 x 2 + 2 x 6 =
  20. Attention projections: full 24 + 4 = 28, partial 12.
* EfficientFormerV2-L, depths [5, 5, 15, 10], attention in the last 6 blocks of stages 2, 3:
  35 x 2 + 12 x 6 + 4 = 146; stage-3 blocks 10 x 2 + 6 x 6 = 56; attention 76 / 36.
* SwinV2-S, depths [2, 2, 18, 2], patch merging opening stages 1-3: 24 x (qkv, proj, fc1, fc2)
  + 3 reductions = 99; stage 3: 2 x 4 + 1 = 9; attention 48 / 4.
* Segformer mit-b0, depths [2, 2, 2, 2]: 8 x (q, k, v, proj, fc1, fc2) = 48 + decode head 4
  per-level 1x1 convs + fusion conv = 53; stage 3: 2 x 6 + 5 = 17; attention 32 / 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

import lbp_wht.integrations  # noqa: F401  (CPU shims first: timm imports torchvision)

pytest.importorskip("mmpretrain")
pytest.importorskip("mmseg")
pytest.importorskip("timm")

import lbp_wht.integrations.models as wrappers
from lbp_wht import (
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LBPLoRAConv2d,
    LBPLoRALinear,
    LoRAConfig,
    LoRAConv2d,
    LoRALinear,
    convert,
    freeze,
)
from lbp_wht.conversion import CONVERSIONS
from lbp_wht.experiments.methods import METHOD_SPECS, SCOPES, method_spec
from lbp_wht.experiments.models import preset_models
from lbp_wht.experiments.presets import (
    MINI_EFFICIENTFORMER_ARCH,
    describe_preset,
    get_preset,
    model_config,
)

METHODS, PRESET_MODELS = tuple(METHOD_SPECS), preset_models()


@dataclass
class Spec:
    hw: tuple[int, int]  # input size
    n_all: dict[str, int]  # layers LBP-WHT / LoRA-all convert, per scope
    n_attn: dict[str, int]  # attention projections (LoRA), per scope
    partial: tuple[str, ...]  # parameter-name prefixes trained in partial scope
    head: tuple[str, ...]  # task-head prefixes trained with LoRA
    fused: tuple[str, ...] = ()  # name suffixes of fused qkv layers (rank 24)
    norm_eval: bool = True
    # (method, scope) -> "train" (eval forward, training forward, backward) or "eval" (eval
    # forward only) for the cases that run the model; None = "train" for every case
    run: dict[tuple[str, str], str] | None = None
    cfg: dict[str, Any] = field(default_factory=dict)  # test-only config overrides


SPECS: dict[str, Spec] = {
    "efficientformer-l1": Spec(
        (224, 224), {"full": 32, "partial": 10}, {"full": 2, "partial": 2},
        ("backbone.network.3.", "head."), ("head.",), ("token_mixer.qkv",),
    ),
    "efficientformer-l7": Spec(
        (224, 224), {"full": 92, "partial": 32}, {"full": 16, "partial": 16},
        ("backbone.network.3.", "head."), ("head.",), ("token_mixer.qkv",),
        run={("lbp_wht+lora_all", "full"): "eval"},
    ),
    "mini-efficientformer": Spec(
        (28, 28), {"full": 18, "partial": 10}, {"full": 2, "partial": 2},
        ("backbone.network.3.", "head."), ("head.",), ("token_mixer.qkv",),
    ),
    "efficientformerv2-s0": Spec(
        (224, 224), {"full": 56, "partial": 20}, {"full": 28, "partial": 12},
        ("backbone.timm_model.stages.3.blocks.", "head."), ("head.",),
        # timm's V2 is slow in eager CPU mode: every method once, full scope where it matters
        run={("full_bp", "partial"): "train", ("lora", "full"): "train",
             ("lora_all", "partial"): "train", ("lbp_wht", "full"): "train",
             ("lbp_wht+lora_all", "full"): "train"},
    ),
    "efficientformerv2-l": Spec(
        (224, 224), {"full": 146, "partial": 56}, {"full": 76, "partial": 36},
        ("backbone.timm_model.stages.3.blocks.", "head."), ("head.",),
        run={("lbp_wht+lora_all", "full"): "eval"},
    ),
    "swinv2-small-w8": Spec(
        # the real 256 px: stage maps 64/32/16/8, whole 8x8 windows (at 128 px the 4x4 map of
        # stage 3 would be padded to one window, and padded windows are refused: plain
        # backprop discards the padding's gradients, a projection would mix them in).
        (256, 256), {"full": 99, "partial": 9}, {"full": 48, "partial": 4},
        ("backbone.stages.3.", "head."), ("head.",), ("w_msa.qkv",), norm_eval=False,
        # the qkv patch itself is tested on a standalone WindowMSAV2 below
        run={("lbp_wht+lora_all", "partial"): "train"},
        cfg={"backbone": {"pad_small_map": True}},
    ),
    "segformer-mit-b0": Spec(
        # non-square on purpose: the explicit attention passes hw to its LBP layers. Stage 3
        # (stride 32) and every spatially reduced key / value map are 5x4, at least half an
        # 8x8 patch (at 128 x 96 they would be 4x3, which convert refuses).
        (160, 128), {"full": 53, "partial": 17}, {"full": 32, "partial": 8},
        ("backbone.layers.3.", "decode_head."), ("decode_head.conv_seg.",),
        cfg={"backbone": {"drop_path_rate": 0.0}, "decode_head": {"dropout_ratio": 0.0}},
    ),
}  # fmt: skip

TYPES = {
    "lora": (LoRALinear, LoRAConv2d),
    "lora_all": (LoRALinear, LoRAConv2d),
    "lbp_wht": (LBPLinear, LBPConv2d),
    "lbp_wht+lora_all": (LBPLoRALinear, LBPLoRAConv2d),
    # the successors: their core rule method's layer classes
    **{m: CONVERSIONS[m] for m in ("lora_fa", "velora", "wta_crs", "hot", "instant")},
}
# LBPLoRA* subclass LoRA*; LoRA-FA's classes subclass LoRA's
CONVERTED = tuple({c for classes in CONVERSIONS.values() for c in classes})


def test_specs_cover_all_preset_models():
    assert set(SPECS) == set(PRESET_MODELS)


def _apply_norm_eval(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, _BatchNorm):
            mod.eval()


def _set_mode(model: nn.Module, train: bool, norm_eval: bool) -> None:
    model.train(train)
    if train and norm_eval:
        _apply_norm_eval(model)


def _merge(cfg: dict, over: dict) -> dict:
    for k, v in over.items():
        cfg[k] = _merge(cfg[k], v) if isinstance(v, dict) else v
    return cfg


class Built:
    def __init__(self, name: str) -> None:
        from mmengine.registry import DefaultScope

        spec = SPECS[name]
        seg = name.startswith("segformer")
        if seg:
            from mmseg.registry import MODELS
        else:
            from mmpretrain.registry import MODELS
        torch.manual_seed(0)
        cfg = _merge(model_config(name, num_classes=10), spec.cfg)
        with DefaultScope.overwrite_default_scope("mmseg" if seg else "mmpretrain"):
            self.model = MODELS.build(cfg)
        self.spec = spec
        self.x = torch.randn(1, 3, *spec.hw, generator=torch.Generator().manual_seed(1))
        self.modules = dict(self.model.named_modules())
        # References from the unconverted model, before any case converts it; only the ones
        # some case needs (a forward of L7 is not free).
        modes = set(spec.run.values()) if spec.run is not None else {"train"}
        self.refs: dict[bool, torch.Tensor] = {}
        with torch.no_grad():
            for train in (False, True) if "train" in modes else (False,):
                _set_mode(self.model, train, spec.norm_eval)
                self.refs[train] = self.model(self.x, mode="tensor")
        self.model.eval()

    def restore(self) -> None:
        """Put the original modules back and make everything trainable again, grads cleared."""
        for name, module in self.modules.items():
            parent_name, _, child = name.rpartition(".")
            if name and getattr(self.modules[parent_name], child) is not module:
                setattr(self.modules[parent_name], child, module)
        for p in self.model.parameters():
            p.requires_grad_(True)
            p.grad = None
        self.model.eval()


@pytest.fixture(scope="module")
def built():
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name)
        return cache[name]

    return get


def test_convertible_backbones_are_patched(built):
    swin = built("swinv2-small-w8").model
    msa = [m for n, m in swin.named_modules() if n.endswith("attn.w_msa")]
    assert len(msa) == 24 and all(type(m) is wrappers.ModuleQKVWindowMSAV2 for m in msa)
    wrappers.assert_convertible(swin)
    seg = built("segformer-mit-b0").model
    wrappers.assert_convertible(seg)
    attn = [m for n, m in seg.named_modules() if n.endswith(".attn")]
    assert len(attn) == 8
    assert all(type(m) is wrappers.ExplicitEfficientMultiheadAttention for m in attn)


def _expected_trainable(b: Built, method: str, scope: str, converted: list[str]) -> set[str]:
    names = [n for n, _ in b.model.named_parameters()]
    if method == "head_only":
        return {n for n in names if n.startswith(b.spec.head)}
    if method_spec(method).trains == "scope":  # Full BP, LBP-WHT, the compressing successors
        return {n for n in names if scope == "full" or n.startswith(b.spec.partial)}
    # LoRA-FA: A stays frozen at its random initialisation, only B trains
    adapters = {
        f"{m}.lora_{ab}" for m in converted for ab in ("B" if method == "lora_fa" else "AB")
    }
    return adapters | {n for n in names if n.startswith(b.spec.head)}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", PRESET_MODELS)
def test_preset_converts_freezes_and_trains(built, model_name, method, scope):
    b = built(model_name)
    if method == "losa":
        return _check_losa(b, model_name, scope)
    spec, model = b.spec, b.model
    preset = get_preset(model_name, method, scope)
    assert preset.norm_eval == spec.norm_eval
    mode = "train" if spec.run is None else spec.run.get((method, scope))
    refs = b.refs
    if method == "velora" and model_name.startswith("efficientformerv2"):
        # its talking-head 1x1 convs mix 8 heads: VeLoRA's default 16-channel sub-tokens do
        # not divide them, a clear error at conversion (lbp.options.subtoken_size=8 fits)
        with pytest.raises(ValueError, match="subtoken_size=16 does not divide the 8"):
            convert(model, preset.rules, example_input=b.x)
        return b.restore()
    try:
        report = convert(model, preset.rules, example_input=b.x)
        converted = report.names()

        # exactly the expected layers, of the expected types, and nothing else converted
        n_expected = 0 if method in ("full_bp", "head_only") else spec.n_attn[scope]
        if method_spec(method).converts and method_spec(method).layers == "all":
            n_expected = spec.n_all[scope]
        assert len(converted) == len(set(converted)) == n_expected
        now = dict(model.named_modules())
        assert sorted(n for n, m in now.items() if isinstance(m, CONVERTED)) == sorted(converted)
        for name in converted:
            mod = now[name]
            assert type(mod) in TYPES[method], (name, type(mod))
            assert mod.weight is b.modules[name].weight  # shares the pretrained weight
            if isinstance(mod, LoRALinear | LoRAConv2d):
                fused = name.endswith(spec.fused) if spec.fused else False
                assert mod.lora_rank == (24 if fused else 8), name
                assert mod.scaling == 1.0
            if isinstance(mod, LBPLinear | LBPConv2d | LBPLoRALinear | LBPLoRAConv2d):
                assert mod.rank == 10 and mod.order == 8  # LP_L1-4
        if method == "lora":  # attention projections only
            assert all(".attn" in n or "token_mixer" in n for n in converted)

        # freeze: exactly the expected parameters train
        trainable = set(freeze(model, preset.trainable))
        assert trainable == _expected_trainable(b, method, scope, converted)
        assert trainable  # something always trains

        if mode is None:
            return

        calls: dict[str, int] = dict.fromkeys(converted, 0)
        hooks = [
            now[n].register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
            for n in converted
        ]
        try:
            # eval forward unchanged
            _set_mode(model, False, spec.norm_eval)
            with torch.no_grad():
                out = model(b.x, mode="tensor")
            torch.testing.assert_close(out, refs[False], rtol=1e-5, atol=1e-5)
            if mode == "train":
                # training forward unchanged (LBP layers run their own autograd function
                # here, with the token-map geometry inferred), then one backward
                _set_mode(model, True, spec.norm_eval)
                out = model(b.x, mode="tensor")
                torch.testing.assert_close(out, refs[True], rtol=1e-5, atol=1e-5)
                out.float().square().mean().backward()
        finally:
            for h in hooks:
                h.remove()
        # every converted module is actually called (catches forwards that bypass modules)
        n_calls = 2 if mode == "train" else 1
        assert all(c >= n_calls for c in calls.values()), [
            n for n, c in calls.items() if c < n_calls
        ]
        if mode == "eval":
            return
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name} should have a gradient"
                assert torch.isfinite(p.grad).all(), name
            else:
                assert p.grad is None, f"{name} is frozen but got a gradient"
    finally:
        b.restore()


#: LoSA taps per model, from the architectures: the last stage's blocks with parameters.
#: EfficientFormer-L1 network.3 = downsampling embedding + 3 Meta4D + Flat + 1 Meta3D -> 5;
#: L7 = embedding + Flat + 8 Meta3D -> 9; mini (no downsampling) 3 Meta4D + 1 Meta3D -> 4;
#: EfficientFormerV2 stage-3 blocks S0 4, L 10; SwinV2-S stage-3 blocks 2.
LOSA_TAPS = {
    "efficientformer-l1": 5,
    "efficientformer-l7": 9,
    "mini-efficientformer": 4,
    "efficientformerv2-s0": 4,
    "efficientformerv2-l": 10,
    "swinv2-small-w8": 2,
}


def _check_losa(b: Built, model_name: str, scope: str) -> None:
    """LoSA's preset on the real model: taps, trainable set, an exact start, and (where the
    model's training-mode reference exists) no gradient into the backbone."""
    from lbp_wht.losa import attach_losa, detach_losa, find_blocks

    if model_name not in LOSA_TAPS or scope != "partial":
        with pytest.raises(ValueError, match="losa"):
            get_preset(model_name, "losa", scope)
        return
    preset = get_preset(model_name, "losa", scope)
    assert preset.rules == [] and preset.trainable == ["losa.*", "head.*"]
    blocks = [n for c in preset.losa_containers for n in find_blocks(b.model, c)]
    assert len(blocks) == LOSA_TAPS[model_name]
    side = attach_losa(b.model, blocks, preset.losa_output, example_inputs=b.x)
    try:
        trainable = set(freeze(b.model, preset.trainable))
        assert trainable == {
            n for n, _ in b.model.named_parameters() if n.startswith(("losa.", "head."))
        }
        assert len(side.mixers) == len(blocks)
        _set_mode(b.model, False, b.spec.norm_eval)
        with torch.no_grad():
            assert torch.equal(b.model(b.x, mode="tensor"), b.refs[False])
        if True in b.refs:
            _set_mode(b.model, True, b.spec.norm_eval)
            out = b.model(b.x, mode="tensor")
            assert torch.equal(out, b.refs[True])
            out.float().square().mean().backward()
            for name, p in b.model.named_parameters():
                assert (p.grad is not None) == name.startswith(("losa.", "head.")), name
    finally:
        detach_losa(b.model)
        b.restore()


# ------------------------------------------------------------------------------------------
# Preset data
# ------------------------------------------------------------------------------------------
def test_preset_options_reach_the_rules():
    lbp = LBPConfig(selection="lp_linf", radius=3, order=8, padding="zero")
    lora = LoRAConfig(rank=4, alpha=2)
    p = get_preset("efficientformer-l1", "lbp_wht+lora_all", "partial", lbp=lbp, lora=lora)
    qkv = next(r for r in p.rules if r["target"].endswith("qkv"))
    fc1 = next(r for r in p.rules if r["target"].endswith("fc1"))
    assert qkv["lora"] == LoRAConfig(rank=12, alpha=6)  # fused: x3, scaling unchanged
    assert fc1["lora"] is lora  # the given object itself, not a copy or a renamed dict
    assert all(r["lbp"] is lbp for r in p.rules)
    lhe = LBPConfig(selection="lhe", num_bases=10)
    rules = get_preset("swinv2-small-w8", "lbp_wht", "full", lbp=lhe).rules
    assert rules and all(r["lbp"] is lhe for r in rules)
    with pytest.raises(ValueError, match="lhe"):
        get_preset("swinv2-small-w8", "lbp_wht+lora_all", "full", lbp=lhe)
    # no config given: the core's defaults (LP_L1-4; LoRA rank 8, alpha 8)
    default = get_preset("efficientformer-l1", "lbp_wht+lora_all", "partial").rules
    fc1 = next(r for r in default if r["target"].endswith("fc1"))
    assert fc1["lbp"] == LBPConfig() and fc1["lora"] == LoRAConfig()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="vit-b", method="lbp_wht", scope="full"), "model"),
        (dict(model="efficientformer-l1", method="lbp", scope="full"), "method"),
        (dict(model="efficientformer-l1", method="lbp_wht", scope="last"), "scope"),
        (
            dict(model="efficientformer-l1", method="lora_all", scope="full", lora_train="all"),
            r"unknown lora_train 'all'.*'scope'",
        ),
    ],
)
def test_get_preset_rejects_unknown(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_preset(**kwargs)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("model_name", PRESET_MODELS)
def test_head_only_preset_is_the_task_head_without_conversion(model_name, scope):
    p = get_preset(model_name, "head_only", scope)
    assert p.rules == [] and p.method == "head_only"
    assert p.trainable == [g + "*" for g in SPECS[model_name].head]  # "head.*" / conv_seg
    assert p.norm_eval == SPECS[model_name].norm_eval


@pytest.mark.parametrize("model_name", ["mini-efficientformer", "segformer-mit-b0"])
def test_head_only_freezes_everything_but_the_head(built, model_name):
    b = built(model_name)
    try:
        p = get_preset(model_name, "head_only", "partial")
        assert convert(b.model, p.rules).names() == []
        assert not any(isinstance(m, CONVERTED) for m in b.model.modules())
        trainable = set(freeze(b.model, p.trainable))
        names = {n for n, _ in b.model.named_parameters()}
        head = {n for n in names if n.startswith(b.spec.head)}
        assert trainable == head and head and head != names
        assert {n for n, q in b.model.named_parameters() if q.requires_grad} == head
    finally:
        b.restore()


@pytest.mark.parametrize("scope", SCOPES)
def test_lora_train_scope_follows_the_authors_freeze(built, scope):
    """lora_train='scope': adapters + every non-LoRA parameter of the trained scope (norms,
    biases, depthwise / downsampling convs), LoRA base weights frozen; 'adapters' (default):
    adapters + head only."""
    b = built("efficientformer-l1")
    try:
        p = get_preset("efficientformer-l1", "lora_all", scope, lora_train="scope")
        converted = convert(b.model, p.rules).names()
        assert converted
        trainable = set(freeze(b.model, p.trainable))
        names = {n for n, _ in b.model.named_parameters()}
        bases = {f"{m}.{w}" for m in converted for w in ("weight", "bias")} & names
        adapters = {f"{m}.lora_{ab}" for m in converted for ab in "AB"}
        in_scope = {n for n in names if scope == "full" or n.startswith(b.spec.partial)}
        assert trainable == (in_scope - bases) | adapters
        head = {n for n in names if n.startswith(b.spec.head)}
        assert trainable - adapters - head and not trainable & bases  # more than LoRA-only
        default = get_preset("efficientformer-l1", "lora_all", scope)
        assert set(freeze(b.model, default.trainable)) == adapters | head
    finally:
        b.restore()


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown method 'linear_probe'.*'head_only'"):
        get_preset("mini-efficientformer", "linear_probe", "partial")
    # A name outside the registry (as the demo's stop-gap once added to a method list) is not
    # silently trained as head-only: get_preset looks methods up in the registry
    # (lbp_wht/experiments/methods.py), where adding one is a whole entry (tests/test_methods.py).
    with pytest.raises(ValueError, match="bogus"):
        get_preset("mini-efficientformer", "bogus", "partial")


def test_describe_preset_lists_rules_and_trainable():
    text = describe_preset("segformer-mit-b0", "lbp_wht", "partial")
    assert "backbone.layers.3.1.*.attn.q" in text and "decode_head.fusion_conv.conv" in text
    assert "backbone.layers.3.*" in text and "norm_eval=True" in text
    assert "no conversion" in describe_preset("swinv2-small-w8", "full_bp", "full")
    text = describe_preset("efficientformer-l1", "head_only", "partial")
    assert "no conversion" in text and "    head.*" in text and "network" not in text


def test_mini_arch_constant_shape():
    arch = MINI_EFFICIENTFORMER_ARCH
    assert set(arch) == {"layers", "embed_dims", "downsamples", "vit_num"}
    assert not any(arch["downsamples"]) and len(set(arch["embed_dims"])) == 1
    assert arch["vit_num"] == 1 and arch["layers"][-1] - arch["vit_num"] >= 1
    assert model_config("mini-efficientformer")["backbone"]["arch"] is not arch  # a copy


def test_mini_configs_follow_the_arch_constant():
    """``configs/_base_/models/mini-efficientformer.py`` uses MINI_EFFICIENTFORMER_ARCH as is; the
    demo's lighter model (``configs/mini/demo``, calibrated for its 20-minute budget) keeps the
    structure the preset's globs rely on: no downsampling, equal widths, one Meta3D block last,
    at least one Meta4D block in the last stage, 1 input channel (Fashion-MNIST)."""
    from pathlib import Path

    from mmengine.config import Config

    root = Path(__file__).resolve().parents[1]
    base = Config.fromfile(str(root / "configs/_base_/models/mini-efficientformer.py")).model
    assert base.backbone.arch == MINI_EFFICIENTFORMER_ARCH
    assert base.head.in_channels == MINI_EFFICIENTFORMER_ARCH["embed_dims"][-1]
    demo = Config.fromfile(str(root / "configs/mini/demo/_base_/model.py")).model
    arch = demo.backbone.arch
    assert set(arch) == set(MINI_EFFICIENTFORMER_ARCH)
    assert arch["downsamples"] == MINI_EFFICIENTFORMER_ARCH["downsamples"]
    assert arch["vit_num"] == 1 and arch["layers"][-1] - arch["vit_num"] >= 1
    assert len(set(arch["embed_dims"])) == 1 and demo.head.in_channels == arch["embed_dims"][-1]
    assert base.backbone.in_channels == demo.backbone.in_channels == 1
    # They differ on purpose (documented at MINI_EFFICIENTFORMER_ARCH and in the demo config).
    assert (arch["embed_dims"][0], arch["layers"]) == (48, [1, 1, 1, 2])


# ------------------------------------------------------------------------------------------
# Model wrappers
# ------------------------------------------------------------------------------------------
def _window_msa(heads: int = 4, dims: int = 32):
    from mmpretrain.models.utils.attention import WindowMSAV2

    torch.manual_seed(0)
    attn = WindowMSAV2(embed_dims=dims, window_size=(8, 8), num_heads=heads)
    with torch.no_grad():  # non-zero q/v biases so that their handling is tested
        attn.q_bias.normal_()
        attn.v_bias.normal_()
        attn.logit_scale.fill_(math.log(50.0))
    return attn


def test_swinv2_module_qkv_matches_mmpretrain():
    from mmpretrain.models.utils.attention import WindowMSAV2

    attn = _window_msa()
    keys = list(attn.state_dict())
    container = nn.Sequential(attn)
    with pytest.raises(TypeError, match="SwinTransformerV2Convertible"):
        wrappers.assert_convertible(container)
    x = torch.randn(2 * 4, 64, 32)
    mask = torch.zeros(4, 64, 64)
    mask[1, :32, 32:] = -100.0
    mask[3, 10:, :5] = -100.0
    with torch.no_grad():
        ref = [WindowMSAV2.forward(attn, x, m) for m in (None, mask)]
        assert wrappers.patch_swinv2_qkv(container) == ["0"]
        assert wrappers.patch_swinv2_qkv(container) == []  # idempotent
        wrappers.assert_convertible(container)
        assert type(attn) is wrappers.ModuleQKVWindowMSAV2 and list(attn.state_dict()) == keys
        for m, r in zip((None, mask), ref):
            torch.testing.assert_close(attn(x, m), r, rtol=1e-6, atol=1e-6)
    # the qkv module is now really used: a LoRA adapter on it receives a gradient
    convert(container, [dict(target="0.qkv", method="lora", lora_rank=2, lora_alpha=2)])
    attn(x, mask).sum().backward()
    assert attn.qkv.lora_B.grad is not None and attn.qkv.lora_B.grad.abs().sum() > 0


def _mit_b0(kind: str):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    cfg = model_config("segformer-mit-b0")["backbone"]
    cfg.update(type=kind, drop_path_rate=0.0)
    torch.manual_seed(0)
    # An earlier test (e.g. a runner) may have left mmpretrain as the default scope.
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg)


def test_segformer_explicit_attention_is_exact_and_loads_mmseg_checkpoints():
    plain = _mit_b0("MixVisionTransformer").eval()
    state = plain.state_dict()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = plain(x)
    with pytest.raises(TypeError, match="MixVisionTransformerConvertible"):
        wrappers.assert_convertible(plain)

    names = wrappers.convert_segformer_attention(plain)  # in place
    assert len(names) == 8 and wrappers.convert_segformer_attention(plain) == []
    wrappers.assert_convertible(plain)
    with torch.no_grad():
        for a, r in zip(plain(x), ref):
            # Not bit-identical: q/k/v as three matmuls vs one fused in_proj matmul round
            # differently, by BLAS kernel (3e-6 at stage 4 on AMD EPYC, outputs |x| <= 4 after
            # LayerNorm). A wrong head split or scale differs by O(0.1).
            torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5)

    # mmseg-format checkpoint -> converted backbone: strict load, same outputs
    conv = _mit_b0("MixVisionTransformerConvertible").eval()
    conv.load_state_dict(state, strict=True)
    with torch.no_grad():
        for a, r in zip(conv(x), ref):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=2e-5)  # as above
    # the offline key mapping gives exactly the converted model's keys and tensors
    mapped = wrappers.mmseg_attention_keys_to_explicit(state)
    assert set(mapped) == set(conv.state_dict())
    c = 256  # stage-4 width of mit-b0
    w = state["layers.3.1.0.attn.attn.in_proj_weight"]
    # exact: the mapping only slices and copies tensors, no arithmetic
    assert torch.equal(mapped["layers.3.1.0.attn.k.weight"], w[c : 2 * c])
    assert torch.equal(
        mapped["layers.3.1.0.attn.proj.bias"], state["layers.3.1.0.attn.attn.out_proj.bias"]
    )


def test_timm_efficientformerv2_loads_local_checkpoint_only(tmp_path):
    import timm

    with pytest.raises(ValueError, match="checkpoint_path"):
        wrappers.TimmEfficientFormerV2(arch="s0", pretrained=True)
    with pytest.raises(ValueError, match="arch"):
        wrappers.TimmEfficientFormerV2(arch="xl")
    torch.manual_seed(3)
    src = timm.create_model("efficientformerv2_s0", pretrained=False)
    path = tmp_path / "v2s0.pth"
    torch.save(src.state_dict(), path)
    backbone = wrappers.TimmEfficientFormerV2(arch="s0", checkpoint_path=str(path)).eval()
    assert not backbone.training
    src.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (feat,) = backbone(x)
        torch.testing.assert_close(feat, src.forward_features(x))
    assert feat.shape == (1, backbone.out_channels, 7, 7)
