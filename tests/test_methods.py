"""The method registry (lbp_wht/experiments/methods.py): one entry per method, its flags
consistent with what the presets build, adding a method is one entry, and no harness module
outside the registry tests method ids as strings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch.nn as nn
from id_scan import id_tests

from lbp_wht.config import LBPConfig
from lbp_wht.conversion import CONVERSIONS
from lbp_wht.experiments import methods as registry
from lbp_wht.experiments import presets
from lbp_wht.experiments import vocab as v
from lbp_wht.experiments.methods import METHOD_SPECS, MethodSpec, method_spec, method_with

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the registry
def test_registry_is_the_vocabulary():
    ids = tuple(METHOD_SPECS)
    bases = tuple(m for m, s in METHOD_SPECS.items() if s.has_bases)
    lora = tuple(m for m, s in METHOD_SPECS.items() if s.has_lora)
    paper = tuple(m for m, s in METHOD_SPECS.items() if s.paper)
    extra = tuple(m for m, s in METHOD_SPECS.items() if not s.paper)
    assert v.METHOD_ORDER == ids and v.PAPER_METHODS == paper
    assert set(registry.CONVERSION_KINDS) == set(CONVERSIONS)
    assert v.SCOPES is registry.SCOPES
    assert set(v.BASE_LABELS) == set(ids) - set(bases)
    assert set(paper) | set(extra) == set(ids)
    assert not set(paper) & set(extra)
    # The method facts the rest of the code reads, unchanged by the move into the registry.
    assert ids == (
        "head_only", "full_bp", "lora", "lora_all", "losa", "lbp_wht", "lbp_wht+lora_all",
        "lora_fa", "velora", "wta_crs", "hot", "instant",
    )  # fmt: skip
    assert paper == ("full_bp", "lora", "lora_all", "lbp_wht", "lbp_wht+lora_all")
    assert bases == ("lbp_wht", "lbp_wht+lora_all")
    assert lora == ("lora", "lora_all", "lbp_wht+lora_all")
    assert method_spec("lbp_wht+lora_all").name == "LBP-WHT + LoRA-all"
    assert v.BASE_LABELS == {
        "head_only": "Head only", "full_bp": "Full BP", "lora": "LoRA",
        "lora_all": "LoRA-all", "losa": "LoSA", "lora_fa": "LoRA-FA", "velora": "VeLoRA",
        "wta_crs": "WTA-CRS", "hot": "HOT", "instant": "INSTANT",
    }  # fmt: skip
    assert {m for m, s in METHOD_SPECS.items() if s.successor} == {
        "lora_fa", "velora", "wta_crs", "hot", "instant"
    }  # fmt: skip
    assert method_with(reference=True) == "full_bp"
    assert method_with(bases_only=True) == "lbp_wht"
    with pytest.raises(ValueError, match="2 methods"):
        method_with(has_bases=True)


def test_unknown_method_is_one_clear_error():
    for call in (
        lambda: method_spec("lora-all"),
        lambda: v.method_key("lora-all"),
        lambda: v.method_label(("lora-all", None, None)),
        lambda: v.config_tag(("lora-all", None, None)),
        lambda: presets.get_preset("mini-efficientformer", "lora-all", "partial"),
    ):
        with pytest.raises(ValueError, match=r"unknown method 'lora-all'; choose one of \["):
            call()


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(conversion="lbp_lora2"), "conversion"),
        (dict(trains="everything"), "trains"),
        (dict(layers="mlp"), "layers"),
        (dict(conversion="lora", trains="scope"), "adapters"),
        (dict(conversion="lbp", tag="x"), "tag"),
        (dict(combined="lora_all"), "combined"),
        (dict(scopes=("half",)), "scopes"),
    ],
)
def test_spec_refuses_inconsistent_flags(bad, match):
    fields = dict(id="toy", label="Toy", tag="toy", conversion=None, trains="head", paper=False)
    with pytest.raises(ValueError, match=match):
        MethodSpec(**{**fields, **bad})


# ------------------------------------------------------- flags against what presets build
@pytest.fixture(scope="module")
def mini():
    """A fresh mini EfficientFormer (28x28 input) per call, built once."""
    import copy

    import torch
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import lbp_wht.integrations.models  # noqa: F401  (registers the project's model types)

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmpretrain"):
        net = MODELS.build(presets.model_config("mini-efficientformer", num_classes=5))
    return lambda: copy.deepcopy(net)


def _trainable(model: nn.Module, preset) -> set[str]:
    """Convert, attach and freeze ``model`` as the builder does; the trainable names."""
    import torch

    from lbp_wht import convert, freeze
    from lbp_wht.losa import attach_losa, find_blocks

    example = torch.randn(1, 3, 28, 28)
    convert(model, preset.rules, example_input=example)
    if preset.losa_containers:
        blocks = [b for c in preset.losa_containers for b in find_blocks(model, c)]
        attach_losa(model, blocks, preset.losa_output, rank=4, example_inputs=example)
    return set(freeze(model, preset.trainable))


@pytest.mark.parametrize("method", list(METHOD_SPECS))
@pytest.mark.parametrize("scope", ["partial", "full"])
def test_flags_match_what_the_preset_builds(mini, method, scope):
    """Every entry's flags against the layers and the trainable set of the mini model."""
    from lbp_wht.layers import LBPMixin
    from lbp_wht.lora import LoRAMixin

    spec = method_spec(method)
    if scope not in spec.scopes:
        with pytest.raises(ValueError, match=method.replace("+", r"\+")):
            presets.get_preset("mini-efficientformer", method, scope)
        return
    preset = presets.get_preset("mini-efficientformer", method, scope)
    model = mini()
    trainable = _trainable(model, preset)
    mods = dict(model.named_modules())
    lbp = {n for n, m in mods.items() if isinstance(m, LBPMixin)}
    lora = {n for n, m in mods.items() if isinstance(m, LoRAMixin)}
    assert bool(preset.rules) == spec.converts
    assert {r["method"] for r in preset.rules} <= {spec.conversion}
    # LoRA-FA's layers are LoRA-type layers (adapters, frozen A) but not LoRA's (has_lora)
    assert bool(lbp) == spec.has_bases and bool(lora) == spec.has_adapters
    if spec.layers == "attn":  # attention projections only: fewer than LoRA-all's
        all_layers = presets.get_preset("mini-efficientformer", "lora_all", scope).rules
        assert 0 < len(preset.rules) < len(all_layers)
    assert bool(preset.losa_containers) == spec.side_network
    head = {n for n in trainable if n.startswith("head.")}
    assert head, "the task head always trains"
    rest = trainable - head
    if spec.trains == "head":
        assert not rest
    elif spec.trains == "side":
        assert rest and all(n.startswith("losa.") for n in rest)
    elif spec.trains == "adapters":
        assert rest and all(".lora_" in n for n in rest)
    else:  # scope: every parameter of the trained scope (all of them under "full")
        assert rest and not any(".lora_" in n or n.startswith("losa.") for n in rest)
        if scope == "full":
            assert trainable == {n for n, _ in model.named_parameters()}
    assert preset.always_grad_x is False
    authors = presets.get_preset("mini-efficientformer", method, scope, variant="authors")
    assert authors.always_grad_x == spec.has_bases


# ------------------------------------------------------------- adding a method: one entry
TOY = MethodSpec(
    "lora_attn_lbp", "LBP-WHT", "", "lbp_lora", "adapters", False, layers="attn", lhe=False,
    combined="lora",
)  # fmt: skip
TOY_BASELINE = MethodSpec(
    "bitfit_head", "BitFit head", "bitfit-head", None, "head", False, scopes=("partial",),
    scope_note="is defined for partial training only",
)  # fmt: skip


def test_adding_a_method_is_one_entry(monkeypatch, mini):
    """Register two toy methods in the registry only: the vocabulary's functions, config tag
    parsing, labels and the presets pick them up without other edits."""
    monkeypatch.setitem(METHOD_SPECS, TOY.id, TOY)
    monkeypatch.setitem(METHOD_SPECS, TOY_BASELINE.id, TOY_BASELINE)

    key = v.method_key("lora_attn_lbp", "lp_l1", "4")
    assert key == ("lora_attn_lbp", "lp_l1", 4)
    assert v.method_label(key) == "LP_L1-4 + LoRA"
    assert v.method_tag(key) == "lora_attn_lbp-lp_l1-4"
    assert v.config_tag(key) == "lp-l1-r4+lora"
    assert v.parse_config_tag("lp-l1-r4+lora") == key
    # The existing combined tag still parses to its own method.
    assert v.parse_config_tag("lp-l1-r4+lora-all") == ("lbp_wht+lora_all", "lp_l1", 4)
    assert v.lbp_options(key) == {"method": "lora_attn_lbp", "select": "lp_l1", "r": 4}
    assert v.rank_of(key) == 10
    assert v.config_name("mini-efficientformer", "partial", key, "cifar100") == (
        "mini-efficientformer_partial_lp-l1-r4+lora_cifar100.py"
    )
    bkey = v.method_key("bitfit_head", "lp_l1", 4)
    assert bkey == ("bitfit_head", None, None)
    assert v.method_label(bkey) == "BitFit head" and v.config_tag(bkey) == "bitfit-head"
    assert v.parse_config_tag("bitfit-head") == bkey and v.rank_of(bkey) is None
    order = sorted([bkey, key, ("full_bp", None, None)], key=v.method_sort_key)
    assert order == [("full_bp", None, None), key, bkey]  # registry order

    # The presets build it from its flags: LBP-LoRA on the attention projections only.
    preset = presets.get_preset("mini-efficientformer", "lora_attn_lbp", "partial")
    lora = presets.get_preset("mini-efficientformer", "lora", "partial")
    assert [r["target"] for r in preset.rules] == [r["target"] for r in lora.rules]
    assert {r["method"] for r in preset.rules} == {"lbp_lora"}
    assert all(r["lbp"] == LBPConfig(selection="lp_l1", radius=4) for r in preset.rules)
    lhe = LBPConfig(selection="lhe", num_bases=10)
    with pytest.raises(ValueError, match="select='lhe' is not offered with 'lora_attn_lbp'"):
        presets.get_preset("mini-efficientformer", "lora_attn_lbp", "partial", lbp=lhe)
    head = presets.get_preset("mini-efficientformer", "bitfit_head", "partial")
    assert head.rules == [] and head.trainable == ["head.*"]
    with pytest.raises(ValueError, match="'bitfit_head' is defined for partial training"):
        presets.get_preset("mini-efficientformer", "bitfit_head", "full")


def test_a_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHOD_SPECS["lora"].layers = "all"  # type: ignore[misc]


# -------------------------------------------- no method-id string tests outside the registry
#: Where the harness lives (the registry module itself is exempt).
HARNESS = [
    "lbp_wht/experiments",
    "lbp_wht/integrations",
    "lbp_wht/runs",
    "lbp_wht/reporting",
    "lbp_wht/benchmark",
    "tools",
    "scripts",
    "analysis",
]
REGISTRY = "lbp_wht/experiments/methods.py"
#: Comparisons whose string only looks like a method id, with why.
NOT_METHOD_IDS = {
    ("lbp_wht/integrations/envhook.py", 'err.name in {"lbp_wht", "torch"}'): "package name",
    # a cost record's layer rows name the core's rule method (plain / lbp / lora / lbp_lora)
    ("analysis/cost_agreement.py", 'r["method"] == "lora"'): "a layer's core rule method",
}


def method_id_tests(source: str, ids: tuple[str, ...]) -> list[tuple[int, str]]:
    """:func:`id_tests` for method ids (parts of at least 3 characters)."""
    return id_tests(source, ids, min_part=3)


def test_the_scanner_finds_the_old_spellings():
    ids = tuple(METHOD_SPECS)
    old = """
if method.startswith("lbp_wht"): pass
if "lora" in method: pass
if method == "full_bp": pass
if method in ("head_only", "losa"): pass
ok = key[:2] == ("lbp_wht", "lp_l1")
match method:
    case "losa": pass
"""
    assert [line for line, _ in method_id_tests(old, ids)] == [2, 3, 4, 5, 6, 8]
    fine = """
if spec.has_lora and method == REF and name.startswith("head.") and x in METHODS: pass
if select == "lhe" and model.startswith("efficientformerv2"): pass
rows = [("full_bp", None), ("lbp_wht", 2)]
"""
    assert method_id_tests(fine, ids) == []


def test_no_harness_module_tests_method_ids_as_strings():
    ids = tuple(METHOD_SPECS)
    bad = []
    for folder in HARNESS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == REGISTRY:
                continue
            for line, text in method_id_tests(path.read_text(), ids):
                if (rel, text) in NOT_METHOD_IDS:
                    continue
                bad.append(f"{rel}:{line}: {text.splitlines()[0]}")
    assert not bad, (
        "method ids tested as strings outside lbp_wht/experiments/methods.py; read the "
        "MethodSpec's flags instead (method_spec(m).has_lora, .trains, ...):\n" + "\n".join(bad)
    )


def test_trainable_globs_per_trains_kind():
    """One helper says what trains for every ``trains`` kind (presets, transfer, benchmark)."""
    head, scope = ["head.*"], ["head.*", "blocks.3.*"]
    got = {
        mid: method_spec(mid).trainable_globs(head, scope, ["blocks.3.qkv"])
        for mid in ("head_only", "full_bp", "lbp_wht", "losa", "lora")
    }
    assert got["head_only"] == head and got["full_bp"] == got["lbp_wht"] == scope
    assert got["losa"] == ["losa.*", "head.*"]
    assert got["lora"] == ["blocks.3.qkv.lora_A", "blocks.3.qkv.lora_B", "head.*"]
    with_scope = method_spec("lora").trainable_globs(
        head, scope, ["blocks.3.qkv"], adapters_with_scope=True
    )
    assert with_scope == ["blocks.3.qkv.lora_A", "blocks.3.qkv.lora_B", *scope]
