"""LBP-WHT on models it was not written for: timm ViT / DeiT / Swin / ConvNeXt, transformers
ViT, and families no adapter knows (LeViT, PVTv2, CoaT, MobileViTv2).

Table-driven; random init, small inputs, rules that name no geometry (``target="all-linear"``);
``convert`` gets the input the test feeds the model (at batch 1) as ``example_input``, and its
dry forward establishes the maps no family adapter knows. Inputs are large enough that the
maps converted are at least half an 8x8 patch (4x4); the smaller maps of the last stages are
skipped with that reason, attention-score tensors (CaiT's talking heads) with theirs.
For every model:

* all 64 bases with zero padding: the converted model's gradients equal plain backprop
  (float64; the bases are complete and orthogonal, so the projection is the identity);
* LP_L1-4: each converted layer saves at most ``(P*R + E) / (L + E)`` of its input (``P``
  patches, ``R = 10`` bases, ``E`` prefix tokens, ``L`` map tokens), plus nothing;
* ``unconvert`` restores plain modules and the original state-dict keys;
* the saved rules rebuild the same model on a fresh instance.
"""

from __future__ import annotations

import copy
import math
from fnmatch import fnmatchcase

import pytest
import torch
import torch.nn as nn

import lbp_wht
from lbp_wht import LBPConfig, convert, freeze, load_adapted, save_adapted, unconvert
from lbp_wht.layers import LBPMixin

timm = pytest.importorskip("timm")

FULL = dict(target="all-linear", method="lbp", radius=15, padding="zero")
LP4 = dict(target="all-linear", method="lbp", radius=4)

# id -> (timm name, create kwargs, input shape, converted layers)
TIMM = {
    "vit_s16": ("vit_small_patch16_224", dict(img_size=64, depth=2), (2, 3, 64, 64), 8),
    "vit_s16_dynamic": (
        "vit_small_patch16_224",
        dict(img_size=64, depth=1, dynamic_img_size=True),
        (2, 3, 96, 64),  # not the configured size (the example's): the patch grid follows
        4,
    ),
    "deit_tiny_distilled": (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=64, depth=2),
        (2, 3, 64, 64),
        8,
    ),
    "swin_tiny": (  # Swin-T's structure (window 7, shifted blocks, patch merging), narrower
        "swin_tiny_patch4_window7_224",
        dict(img_size=224, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
        (1, 3, 224, 224),  # maps 56 / 28 / 14 / 7: whole 7x7 windows (padded ones are refused)
        35,
    ),
    # convnext_atto defaults to conv_mlp=True (1x1 convs); conv_mlp=False: NHWC linears
    "convnext_atto": ("convnext_atto", dict(conv_mlp=False), (1, 3, 64, 64), 20),
    "convnext_atto_conv_mlp": ("convnext_atto", dict(), (1, 3, 64, 64), 20),
    # families without an adapter: the dry forward finds their maps
    "levit_128s": ("levit_128s", dict(img_size=112), (1, 3, 112, 112), 26),
    # spatial reduction 4, 2, 1, 1 (not 8, 4, 2, 1): the keys / values are 4x4 maps at 64 px
    "pvt_v2_b0": ("pvt_v2_b0", dict(sr_ratios=(4, 2, 1, 1)), (1, 3, 64, 64), 30),
    # the class token joins after `blocks` (class-attention stage): blocks see no prefix
    "cait_xxs24": ("cait_xxs24_224", dict(img_size=64, depth=2), (2, 3, 64, 64), 8),
    "xcit_nano": ("xcit_nano_12_p16_224", dict(img_size=64, depth=2), (2, 3, 64, 64), 8),
}
#: The example input where it is not the test's input at batch 1 (the configured size).
EXAMPLE_SHAPE = {"vit_s16_dynamic": (1, 3, 64, 64)}
#: Layers ``all-linear`` skips beyond patch embeddings, heads and what the family adapters
#: know is not on a map: glob -> a phrase of the reason.
SMALL = "smaller than half an 8x8 patch"
SKIPPED = {
    "convnext_atto": {"stages.3.*": SMALL},
    "convnext_atto_conv_mlp": {"stages.3.*": SMALL},
    "levit_128s": {"stages.2.*": SMALL},  # but stages.2.downsample's kv reads the 4x4 map
    "pvt_v2_b0": {"stages.3.*": SMALL},
    # talking heads: linears over the heads of the (N x N) attention scores
    "cait_xxs24": {"blocks.*.attn.proj_[lw]": "attention scores"},
    "coat_lite_tiny": {"serial_blocks4.*": SMALL},  # test_coat_... (2x2)
    # test_mobilevitv2_...: the 2x2 last stage; the transformers see unfolded patches
    "mobilevitv2_050": {"stages.4.*": SMALL, "*.transformer.*": "(B, C, P, N)"},
}
_STRUCTURAL = ("not a per-pixel linear layer", "task head", "not a token map")


_BUILT: dict[str, nn.Module] = {}


def _timm(key: str, dtype=torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """A fresh copy of the (cached) random-init model and its input."""
    name, kwargs, shape, _ = TIMM[key]
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = timm.create_model(
            name, pretrained=False, num_classes=5, drop_path_rate=0.0, **kwargs
        )
    model = copy.deepcopy(_BUILT[key])
    lbp_wht.keep_batchnorm_eval(model)  # LeViT's BatchNorm: running statistics
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model.to(dtype).train(), x.to(dtype)


def _example(key: str, x: torch.Tensor) -> torch.Tensor:
    """The example input of ``convert``: the test's input at batch 1 (or EXAMPLE_SHAPE)."""
    if key in EXAMPLE_SHAPE:
        return torch.randn(EXAMPLE_SHAPE[key], dtype=x.dtype)
    return x[:1]


def _unexplained(key: str, report) -> dict[str, str]:
    """Skipped layers that neither the model's structure nor SKIPPED[key] explains."""
    out = {}
    for s in report.skipped:
        if any(p in s.reason for p in _STRUCTURAL):
            continue
        why = [r for g, r in SKIPPED.get(key, {}).items() if fnmatchcase(s.name, g)]
        if not any(r in s.reason for r in why):
            out[s.name] = s.reason
    return out


def _step(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values())
    for name in want:  # tight float64 tolerance relative to the gradient scale
        torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-10 * scale, msg=name)


@pytest.mark.parametrize("key", list(TIMM))
def test_full_basis_is_exact_backprop(key):
    model, x = _timm(key)
    ref = copy.deepcopy(model)
    report = convert(model, [FULL], example_input=_example(key, x))
    assert len(report) == TIMM[key][3], str(report)
    assert not _unexplained(key, report), str(report)
    assert {r.map_source for r in report.replaced} <= {"adapter", "example input"}
    layers = [model.get_submodule(n) for n in report.names()]
    assert all(isinstance(m, LBPMixin) for m in layers)
    _assert_same_grads(_step(model, x), _step(ref, x))
    assert all(m.converted_calls >= 1 for m in layers)  # each ran its LBP-WHT path


class _SavedPerLayer:
    """Bytes of every storage autograd saves while each LBP layer runs (a view of a tensor is
    counted as its whole storage, so a saved slice that keeps the input alive would show)."""

    def __init__(self, model: nn.Module) -> None:
        self.current: str | None = None
        self.saved: dict[str, int] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.seen: set[int] = set()
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, LBPMixin):
                self.handles.append(m.register_forward_pre_hook(self._enter(name)))
                self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args):
            self.current = name
            self.inputs[name] = args[0]

        return hook

    def _leave(self, module, args, out):
        self.current = None

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if self.current is not None and ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.saved[self.current] = (
                self.saved.get(self.current, 0) + t.untyped_storage().nbytes()
            )
        return t


@pytest.mark.parametrize("key", list(TIMM))
def test_lp_l1_4_saved_activation_is_the_low_rank_fraction(key):
    model, x = _timm(key, torch.float32)
    convert(model, [LP4], example_input=_example(key, x))
    tracker = _SavedPerLayer(model)
    with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t):
        out = model(x)
    assert tracker.inputs
    for name, inp in tracker.inputs.items():
        layer = model.get_submodule(name)
        m = layer.resolve_map(inp)
        e, l_map = m.prefix_tokens, m.hw[0] * m.hw[1]
        patches = math.ceil(m.hw[0] / 8) * math.ceil(m.hw[1] / 8)
        bound = (patches * 10 + e) / (l_map + e) * inp.numel() * inp.element_size()
        assert tracker.saved.get(name, 0) <= bound + 64, (name, tracker.saved.get(name), bound)
    del out


@pytest.mark.parametrize("key", ["vit_s16", "swin_tiny", "convnext_atto"])
def test_unconvert_restores_plain_modules_and_keys(key):
    model, x = _timm(key)
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    types = {n: type(m) for n, m in model.named_modules()}
    convert(model, [LP4], example_input=_example(key, x))
    restored = unconvert(model)
    assert restored
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert list(model.state_dict()) == keys
    _assert_same_grads(_step(model, x), _step(ref, x))  # plain again: exact


@pytest.mark.parametrize("key", ["deit_tiny_distilled", "convnext_atto"])
def test_saved_rules_rebuild_the_same_model(key, tmp_path):
    model, x = _timm(key)
    convert(model, [dict(LP4, exclude=["*.attn.proj"])], example_input=_example(key, x))
    freeze(model, ["*blocks.1.*", "head*"])
    with torch.no_grad():  # "training" changed the trainable parameters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_adapted(model, tmp_path / "adapted.pt")
    fresh, _ = _timm(key)
    load_adapted(fresh, tmp_path / "adapted.pt")  # re-traced on a zero example of x[:1]'s shape
    assert {n: type(m) for n, m in fresh.named_modules()} == {
        n: type(m) for n, m in model.named_modules()
    }
    for n, m in fresh.named_modules():
        if isinstance(m, LBPMixin):
            twin = model.get_submodule(n)
            assert (m.lbp_config, m.geometry, m.bases) == (
                twin.lbp_config,
                twin.geometry,
                twin.bases,
            )
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _assert_same_grads(_step(fresh, x), _step(model, x))


# ---- geometry that must not be guessed -------------------------------------------------------
def test_convnext_nhwc_without_the_adapter_is_refused_or_traced_never_a_wrong_map():
    """Today's ConvNeXt trap: (B, H, W, C) must not be read as W-token rows. Without the family
    adapter and without an example input nothing establishes the MLP's map: all-linear skips
    the layers with the reason, a rule naming one is an error at convert time (model
    unchanged). With the example input, the dry forward finds the NHWC map."""
    model, x = _timm("convnext_atto")
    ref = copy.deepcopy(model)
    report = convert(model, [LP4], geometry=None, example_input=None)
    assert len(report) == 0
    reasons = {s.name: s.reason for s in report.skipped}
    assert "pass example_input=" in reasons["stages.0.blocks.0.mlp.fc1"]
    with pytest.raises(ValueError, match=r"stages\.0\.blocks\.0\.mlp\.fc1.*example_input="):
        convert(
            model,
            [dict(target="stages.0.blocks.0.mlp.fc1", method="lbp")],
            geometry=None,
            example_input=None,
        )
    assert not any(isinstance(m, LBPMixin) for m in model.modules())
    report = convert(model, [FULL], geometry=None, example_input=x)
    fc1 = {r.name: r for r in report.replaced}["stages.0.blocks.0.mlp.fc1"]
    assert fc1.map_source == "example input" and "layout=nhwc" in fc1.geometry
    assert model.stages[0].blocks[0].mlp.fc1.resolve_map(
        torch.zeros(1, 16, 16, 40, dtype=x.dtype)
    ).hw == (16, 16)
    assert len(report) == TIMM["convnext_atto"][3], str(report)
    _assert_same_grads(_step(model, x), _step(ref, x))


def test_mobilevitv2_unfolded_patches_are_skipped_or_refused():
    torch.manual_seed(0)
    model = timm.create_model("mobilevitv2_050", pretrained=False, num_classes=5).double()
    ref = copy.deepcopy(model)
    lbp_wht.keep_batchnorm_eval(model)
    lbp_wht.keep_batchnorm_eval(ref)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    report = convert(model, [FULL], example_input=x)
    skipped = {s.name: s.reason for s in report.skipped}
    assert "stages.3.1.transformer.0.attn.qkv_proj" not in report.names()
    assert "(B, C, P, N)" in skipped["stages.3.1.transformer.0.attn.qkv_proj"]
    assert "(B, C, P, N)" in str(report)
    # the 1x1 convs on real maps convert, also those after the F.unfold / F.fold round trip
    assert {"stages.2.1.conv_proj.conv", "stages.3.1.conv_proj.conv"} <= set(report.names())
    assert not _unexplained("mobilevitv2_050", report), str(report)
    _assert_same_grads(_step(model, x), _step(ref, x))  # what was converted is exact
    with pytest.raises(ValueError, match=r"transformer\.0\.attn\.qkv_proj.*\(B, C, P, N\)"):
        convert(
            ref,
            [dict(target="stages.3.1.transformer.0.attn.qkv_proj", method="lbp")],
            example_input=None,
        )
    with pytest.raises(ValueError, match=r"transformer\.0\.attn\.qkv_proj.*not .*map"):
        convert(  # the dry forward refuses it too
            ref,
            [dict(target="stages.3.1.transformer.0.attn.qkv_proj", method="lbp")],
            example_input=x,
        )
    lora = convert(copy.deepcopy(ref), [dict(target="all-linear", method="lora")], example_input=x)
    assert "stages.3.1.transformer.0.attn.qkv_proj" in lora.names()  # LoRA needs no map


def test_coat_class_token_is_found_by_the_example_and_is_needed_without_one():
    """CoaT (no adapter) has a class token: 1 + 16 * 16 tokens fit no square map. The dry
    forward finds the prefix token; without an example input a rule must give it."""
    torch.manual_seed(0)
    base = timm.create_model("coat_lite_tiny", pretrained=False, num_classes=5, img_size=64)
    base = base.double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model = copy.deepcopy(base)
    report = convert(model, [FULL], example_input=None)
    assert len(report) == 0
    assert (
        "pass example_input="
        in {s.name: s.reason for s in report.skipped}["serial_blocks1.0.factoratt_crpe.qkv"]
    )
    with pytest.raises(ValueError, match=r"serial_blocks1\.0\.factoratt_crpe\.qkv.*example_input="):
        convert(model, [dict(FULL, target="serial_blocks1.*")], example_input=None)
    report = convert(model, [FULL], example_input=x)
    qkv = {r.name: r for r in report.replaced}["serial_blocks1.0.factoratt_crpe.qkv"]
    assert qkv.map_source == "example input" and "prefix=1" in qkv.geometry
    assert model.serial_blocks1[0].factoratt_crpe.qkv.prefix_tokens == 1
    assert not _unexplained("coat_lite_tiny", report), str(report)
    _assert_same_grads(_step(model, x), _step(base, x))
    model = copy.deepcopy(base)  # rule geometry, no example: the square map behind 1 token
    convert(model, [dict(FULL, target="serial_blocks1.*", prefix_tokens=1)], example_input=None)
    _assert_same_grads(_step(model, x), _step(base, x))


def test_swin_windows_padded_to_fill_the_map_are_refused():
    """At 64 px the 16x16 and 8x8 maps of stages 0-1 are padded to whole 7x7 windows: plain
    backprop discards the padding's gradients, a projection over the window would mix them
    into the map's, so those attention layers are skipped (named: an error); the MLPs and
    patch merging, which see the unpadded map, convert."""
    torch.manual_seed(0)
    name, kwargs, _, _ = TIMM["swin_tiny"]
    model = timm.create_model(name, pretrained=False, num_classes=5, **dict(kwargs, img_size=64))
    x = torch.randn(1, 3, 64, 64)
    report = convert(model, [LP4], example_input=x)
    padded = {s.name for s in report.skipped if "padding added to fill whole windows" in s.reason}
    assert padded == {f"layers.{i}.blocks.{b}.attn.{p}" for i in (0, 1) for b in (0, 1)
                      for p in ("qkv", "proj")}  # fmt: skip
    assert {"layers.0.blocks.0.mlp.fc1", "layers.1.downsample.reduction"} <= set(report.names())
    assert "layers.2.blocks.0.attn.qkv" in report.names()  # 4x4: one unpadded window
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.qkv.*padding"):
        convert(model, [dict(target="layers.0.blocks.0.attn.qkv", method="lbp")], example_input=x)


def test_heads_and_patch_embeddings_are_skipped_with_a_report_line():
    model, x = _timm("deit_tiny_distilled")
    report = convert(model, [LP4], example_input=x[:1])
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"patch_embed.proj", "head", "head_dist"}
    assert "not a per-pixel linear" in reasons["patch_embed.proj"]
    assert "task head" in reasons["head"]
    assert "skipped head_dist: task head" in str(report)
    assert all(model.get_submodule(n).prefix_tokens == 2 for n in report.names())  # cls + dist


# ---- transformers ViT ------------------------------------------------------------------------
def test_transformers_vit_full_basis_is_exact_and_follows_the_input_size():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).double().train()
    ref = copy.deepcopy(model)
    report = convert(model, [FULL])  # example_input="auto": pixel_values at config.image_size
    assert "config.image_size" in report.example and "(1, 3, 32, 32)" in report.example
    assert len(report) == 12 and {s.name for s in report.skipped} == {
        "vit.embeddings.patch_embeddings.projection",
        "classifier",
    }
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def step(m, x, **kw):
        m.zero_grad(set_to_none=True)
        m(pixel_values=x, **kw).logits.square().sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    _assert_same_grads(step(model, x), step(ref, x))
    x2 = torch.randn(2, 3, 48, 32, dtype=torch.float64)  # a 6x4 patch grid
    _assert_same_grads(
        step(model, x2, interpolate_pos_encoding=True), step(ref, x2, interpolate_pos_encoding=True)
    )
    lbp = model.get_submodule("vit.layers.0.mlp.fc1")
    assert lbp.prefix_tokens == 1 and lbp.map_source() == (6, 4)


def test_lbp_config_objects_in_rules():
    model, x = _timm("vit_s16")
    convert(
        model,
        [dict(target="blocks.0.*", method="lbp", lbp=LBPConfig(radius=2))],
        example_input=x[:1],
    )
    assert model.blocks[0].attn.qkv.num_bases == 3
    _step(model, x)
