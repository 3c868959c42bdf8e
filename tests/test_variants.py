"""The conversion variants (``lbp.variant``): the corrected default and what the authors' code
executed, built through the real builder (``LBPWHTModel``) on the real models.

* SwinV2, authors: no ``attn.w_msa.qkv`` is converted (plain ``nn.Linear``, no LoRA adapter);
  under LBP-WHT it trains with exact gradients, under LoRA it stays frozen.
* Segformer, authors: exactly the MixFFN 1x1 convs and the decode head's fusion conv are
  converted (LBP-WHT and LoRA alike); attention and the per-level decoder convs stay plain.
* LBP-WHT layers of the authors' variant compute g_x even where their input needs none; the
  weight gradients are unchanged.
* The key is validated like every ``lbp`` key.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
import torch.nn as nn

import lbp_wht.integrations  # noqa: F401  (CPU shims first)

pytest.importorskip("mmpretrain")
pytest.importorskip("mmseg")
pytest.importorskip("timm")

from lbp_wht import (  # noqa: E402
    LBPConfig,
    LBPConv2d,
    LBPLinear,
    LBPLoRAConv2d,
    LBPLoRALinear,
    LoRAConv2d,
    LoRALinear,
    MapGeometry,
)
from lbp_wht.experiments.presets import VARIANTS, get_preset  # noqa: E402
from lbp_wht.integrations.build import (  # noqa: E402
    LBPConfigError,
    always_compute_input_grad,
    lbp_layers,
    validate_lbp_cfg,
)
from lbp_wht.integrations.cost_record import build_model, config_from_flags  # noqa: E402
from lbp_wht.measure import measure_step  # noqa: E402


def _build(model: str, method: str, scope: str, variant: str, **lbp):
    cfg = config_from_flags(model, method, scope, r=2)
    cfg.lbp.variant = variant
    cfg.lbp.update(lbp)
    torch.manual_seed(0)
    return build_model(cfg)


def _converted(net: nn.Module) -> set[str]:
    """Names of the converted layers (LBP-WHT or LoRA)."""
    kinds = (LBPLinear, LBPConv2d, LoRALinear, LoRAConv2d, LBPLoRALinear, LBPLoRAConv2d)
    return {n for n, m in net.named_modules() if isinstance(m, kinds)}


# ------------------------------------------------------------------------------------ SwinV2
@pytest.fixture(scope="module")
def swin_authors_lbp():
    return _build("swinv2-small-w8", "lbp_wht", "partial", "authors")


def test_swinv2_authors_leaves_every_qkv_plain_and_trains_it_exactly(swin_authors_lbp) -> None:
    net = swin_authors_lbp
    qkv = {n: m for n, m in net.named_modules() if n.endswith("attn.w_msa.qkv")}
    assert len(qkv) == 24  # depths 2 + 2 + 18 + 2
    assert not _converted(net) & set(qkv)
    assert all(type(m) is nn.Linear for m in qkv.values())
    stage3 = [m for n, m in qkv.items() if n.startswith("backbone.stages.3.")]
    assert len(stage3) == 2 and all(m.weight.requires_grad for m in stage3)
    # the rest of the preset is converted: stage 3's proj, FFN linears and patch merging
    assert sorted(_converted(net)) == sorted(
        [f"backbone.stages.3.blocks.{b}.{layer}" for b in (0, 1)
         for layer in ("attn.w_msa.proj", "ffn.layers.0.0", "ffn.layers.1")]
        + ["backbone.stages.3.downsample.reduction"]
    )  # fmt: skip
    assert net.lbp_info["variant"] == "authors"


@pytest.mark.parametrize("method", ["lora", "lora_all"])
def test_swinv2_authors_lora_puts_no_adapter_on_qkv(method: str) -> None:
    net = _build("swinv2-small-w8", method, "partial", "authors")
    names = dict(net.named_parameters())
    assert not [n for n in names if ".qkv.lora_" in n]
    assert [n for n in names if ".proj.lora_A" in n]  # proj still carries one
    qkv = net.get_submodule("backbone.stages.3.blocks.0.attn.w_msa.qkv")
    assert "backbone.stages.3.blocks.0.attn.w_msa.qkv" not in _converted(net)
    assert not qkv.weight.requires_grad  # adapters + head only


def test_swinv2_corrected_converts_qkv() -> None:
    rules = get_preset("swinv2-small-w8", "lbp_wht", "full").rules
    authors = get_preset("swinv2-small-w8", "lbp_wht", "full", variant="authors").rules
    assert [r for r in rules if r["target"].endswith("qkv")]
    assert [r for r in rules if not r["target"].endswith("qkv")] == authors


# ------------------------------------------------------------------------------- Segformer
SEG_AUTHORS = ("*.ffn.layers.0", "*.ffn.layers.4", "decode_head.fusion_conv.conv")


@pytest.mark.parametrize(
    "method, scope, n",
    [("lbp_wht", "full", 17), ("lbp_wht", "partial", 5), ("lora", "partial", 5),
     ("lora_all", "full", 17)],
)  # fmt: skip
def test_segformer_authors_converts_exactly_mixffn_and_the_fusion_conv(
    method: str, scope: str, n: int
) -> None:
    """8 blocks x 2 MixFFN 1x1 convs + the fusion conv = 17 (stage 3: 2 x 2 + 1 = 5)."""
    net = _build("segformer-mit-b0", method, scope, "authors")
    conv1x1 = {
        name
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
    }
    expected = {
        name
        for name in conv1x1
        if any(fnmatch.fnmatchcase(name, g) for g in SEG_AUTHORS)
        and (scope == "full" or not name.startswith("backbone.") or ".layers.3." in name)
    }
    assert len(expected) == n
    assert _converted(net) == expected
    for name, m in net.named_modules():  # attention projections and per-level convs stay plain
        if name.endswith(("attn.q", "attn.k", "attn.v", "attn.proj")):
            assert type(m) is nn.Linear, name
        if fnmatch.fnmatchcase(name, "decode_head.convs.*.conv"):
            assert type(m) is nn.Conv2d, name


# ------------------------------------------------------------------------------------ g_x
def test_always_compute_input_grad_adds_gx_and_leaves_weight_grads_unchanged() -> None:
    torch.manual_seed(0)
    layer = LBPLinear.from_module(
        nn.Linear(64, 32), LBPConfig(radius=2), geometry=MapGeometry(hw=(8, 8))
    )
    x = torch.randn(2, 64, 64)  # (B, L = 8x8, Cx); needs no grad: a frozen input
    plain = measure_step(layer, x, elementwise=False)
    w_grad = layer.weight.grad.clone()
    handles = always_compute_input_grad([layer])
    forced = measure_step(layer, x, elementwise=False)
    # g_x in the low-rank space: (B P R, Cy) @ (Cy, Cx), 2 FLOPs per MAC, plus its reverse
    # projection back to the 64 tokens
    assert forced.backprop_flops - plain.backprop_flops >= 2 * 2 * 1 * 3 * 32 * 64
    assert torch.allclose(layer.weight.grad, w_grad, rtol=1e-5, atol=1e-6)
    for h in handles:
        h.remove()
    assert measure_step(layer, x, elementwise=False).backprop_flops == plain.backprop_flops


def test_authors_variant_hooks_the_lbp_layers_only_in_lbp_methods() -> None:
    net = _build("efficientformerv2-s0", "lbp_wht", "partial", "authors")
    layers = lbp_layers(net)
    assert layers and all(m._forward_pre_hooks for m in layers.values())
    corrected = _build("efficientformerv2-s0", "lbp_wht", "partial", "corrected")
    assert not any(m._forward_pre_hooks for m in lbp_layers(corrected).values())
    assert get_preset("efficientformerv2-s0", "lbp_wht", "partial", variant="authors").always_grad_x
    assert not get_preset(
        "efficientformerv2-s0", "lora", "partial", variant="authors"
    ).always_grad_x


# ------------------------------------------------------------------------------ validation
BLOCK = dict(method="lbp_wht", model="swinv2-small-w8", scope="partial")


def test_variant_key_defaults_to_corrected_and_accepts_every_variant() -> None:
    assert validate_lbp_cfg(BLOCK)["variant"] == "corrected"
    for v in VARIANTS:
        assert validate_lbp_cfg({**BLOCK, "variant": v})["variant"] == v


@pytest.mark.parametrize(
    "value, match",
    [
        ("author", r"lbp.variant='author' \(did you mean 'authors'\?\); choose one of"),
        ("paper", r"lbp.variant='paper'; choose one of \['corrected', 'authors'\]"),
        (1, r"lbp.variant=1 is a int, expected a string \(lbp.variant: conversion variant"),
        (None, r"lbp.variant=None: expected a string"),
    ],
)
def test_variant_key_is_validated(value, match: str) -> None:
    with pytest.raises(LBPConfigError, match=match):
        validate_lbp_cfg({**BLOCK, "variant": value})


def test_get_preset_refuses_an_unknown_variant() -> None:
    with pytest.raises(ValueError, match=r"unknown variant 'author'; choose one of"):
        get_preset("swinv2-small-w8", "lbp_wht", "partial", variant="author")
