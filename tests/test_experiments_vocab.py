"""The experiment vocabulary (lbp_wht/experiments/vocab.py): one spelling per name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lbp_wht.bases import select_bases
from lbp_wht.experiments import presets
from lbp_wht.experiments import vocab as v

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("select,rs", [("lp_l1", range(1, 16)), ("lp_linf", range(1, 9))])
def test_num_bases_agrees_with_the_core_selection(select, rs):
    for r in rs:
        assert v.num_bases(select, r) == len(select_bases(select, radius=r)), (select, r)
    assert [v.num_bases("lp_l1", r) for r in (2, 4, 6, 7, 8)] == [3, 10, 21, 28, 36]
    assert v.num_bases("lhe", 10) == 10


def test_num_bases_refuses_unknown_selection_and_bad_r():
    with pytest.raises(ValueError, match="lp_l2"):
        v.num_bases("lp_l2", 4)
    with pytest.raises(ValueError, match="r=0"):
        v.num_bases("lp_l1", 0)


TAGS = {
    "full-bp": ("full_bp", None, None),
    "lora": ("lora", None, None),
    "lora-all": ("lora_all", None, None),
    "head-only": ("head_only", None, None),
    "lp-l1-r4": ("lbp_wht", "lp_l1", 4),
    "lp-linf-r3": ("lbp_wht", "lp_linf", 3),
    "lhe-rank10": ("lbp_wht", "lhe", 10),
    "lp-l1-r8+lora-all": ("lbp_wht+lora_all", "lp_l1", 8),
}


@pytest.mark.parametrize("tag,key", TAGS.items())
def test_config_tags_round_trip(tag, key):
    assert v.parse_config_tag(tag) == key
    assert v.config_tag(key) == tag


def test_parse_config_tag_names_the_bad_tag():
    with pytest.raises(ValueError, match="'lp-l1-4'"):
        v.parse_config_tag("lp-l1-4")


def test_method_keys_tags_and_labels():
    # CSV cells arrive as strings / floats; LP selections default to lp_l1.
    assert v.method_key("lbp_wht", "", "4.0") == ("lbp_wht", "lp_l1", 4)
    assert v.method_key("lbp_wht", "lhe", r=None, rank="10") == ("lbp_wht", "lhe", 10)
    assert v.method_key("lora", "lp_l1", 4, 8) == ("lora", None, None)
    # Run-id tags name finished work dirs: their spelling is fixed.
    assert v.method_tag(("lbp_wht", "lhe", 10)) == "lbp_wht-lhe-R10"
    assert v.method_tag(("lbp_wht", "lp_l1", 4)) == "lbp_wht-lp_l1-4"
    assert v.method_label(("lbp_wht+lora_all", "lp_l1", 4)) == "LP_L1-4 + LoRA-all"
    assert v.method_label(("lbp_wht", "lp_linf", 3), latex=True) == "LP$_{L_\\infty}$-3"
    assert v.method_label(("head_only", None, None)) == "Head only"
    keys = [("lbp_wht", "lp_l1", 8), ("full_bp", None, None), ("lbp_wht", "lp_l1", 2)]
    keys += [("head_only", None, None), ("lbp_wht", "lhe", 10), ("lora_all", None, None)]
    assert [v.method_tag(k) for k in sorted(keys, key=v.method_sort_key)] == [
        "head_only",
        "full_bp",
        "lora_all",
        "lbp_wht-lp_l1-2",
        "lbp_wht-lp_l1-8",
        "lbp_wht-lhe-R10",
    ]
    assert v.rank_of(("lora", None, None)) == 8 and v.rank_of(("full_bp", None, None)) is None
    assert v.lbp_options(("lbp_wht", "lhe", 10)) == {
        "method": "lbp_wht",
        "select": "lhe",
        "rank": 10,
    }


def test_datasets_both_spellings():
    for paper, config in v.PAPER_TO_CONFIG_DATASET.items():
        assert v.norm_dataset(config) == paper and v.config_dataset(paper) == config
        assert v.config_dataset(config) == config
    assert v.norm_dataset(" Stanford_Cars ") == "cars" and v.norm_dataset(None) == ""
    assert v.config_name("swinv2-small-w8", "full", ("lora", None, None), "pets") == (
        "swinv2-small-w8_full_lora_oxford-pets.py"
    )
    assert v.parse_config_name("efficientformer-l1_partial_lp-l1-r4_cifar100.py") == (
        "efficientformer-l1",
        "partial",
        "lp-l1-r4",
        "cifar100",
    )
    with pytest.raises(ValueError, match="source.py"):
        v.parse_config_name("source.py")


def test_models_and_presets_share_the_vocabulary():
    from lbp_wht.experiments.models import preset_models
    from lbp_wht.integrations import build

    assert build.LBP_SCHEMA["method"].choices == tuple(v.METHOD_SPECS)
    assert build.LBP_SCHEMA["select"].choices is v.SELECTIONS
    assert build.LBP_SCHEMA["scope"].choices is v.SCOPES is presets.SCOPES
    for m in v.MODEL_SPECS.values():
        assert m.preset in preset_models(), m
    assert v.MODEL_NAMES["efficientformer-l1"] == "EfficientFormer-L1 (Hybrid)"
    assert v.short_model_name("swinv2-small-w8") == "SwinV2-Small"
    assert v.short_model_name("unknown-model") == "unknown-model"
    with pytest.raises(ValueError, match="'vit-b'"):
        v.model_spec("vit-b")


def test_vocab_imports_only_the_standard_library():
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('lbp_wht'); pkg.__path__ = [{str(ROOT / 'lbp_wht')!r}]\n"
        "sys.modules['lbp_wht'] = pkg\n"
        "import lbp_wht.experiments.vocab, lbp_wht.experiments.presets\n"
        "bad = [m for m in ('torch', 'mmengine', 'numpy', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
