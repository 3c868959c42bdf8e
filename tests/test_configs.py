"""Configs: every one parses and names a valid method; the generated set is up to date; each
method puts its layers exactly where the preset says and trains exactly what it should.

The full build + forward/backward of every config is ``python tools/check_configs.py`` (slow on
CPU); here it runs on a covering subset (every model x method x scope and every base selection
at least once, ``lbp_wht.integrations.config_check.REPRESENTATIVE``), the paper-sized models
marked ``slow``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lbp_wht.integrations import config_check

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)

ALL = config_check.all_configs()
FOLDERS = sorted({p.relative_to(ROOT / "configs").parts[0] for p in ALL})
REPRESENTATIVE = config_check.representative(ALL)


def test_generated_configs_are_up_to_date():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/gen_configs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_table_has_its_rows():
    counts = {
        f: sum(1 for p in ALL if p.relative_to(ROOT / "configs").parts[0] == f) for f in FOLDERS
    }
    # Tables 2/5: 5 models x 6 datasets x 7 methods (+ Table 5's LP_L1-7 rows: L1 and V2-S0;
    # + Table 2's LoSA rows beyond the paper, one per model and dataset)
    assert counts["table2"] == 5 * 6 * 7 + 5 * 6
    assert sum(1 for p in ALL if "_losa_" in p.name) == 5 * 6 + 1  # + the mini model's
    assert counts["table5"] == 5 * 6 * 7 + 2 * 6
    assert counts["table3"] == 2 * 2 * 6  # 2 datasets x partial/full x 6 methods
    assert counts["table4"] == 2 * 3
    assert counts["table6"] == 2 * 5
    assert counts["table7"] == 7
    assert counts["figure5"] == 1 and counts["mini"] >= 9


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_config_parses_and_has_a_valid_lbp_block(folder):
    from mmengine.config import Config

    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.experiments.models import preset_models
    from lbp_wht.integrations.build import validate_lbp_cfg

    for path in (p for p in ALL if p.relative_to(ROOT / "configs").parts[0] == folder):
        cfg = Config.fromfile(str(path))
        lbp = validate_lbp_cfg(cfg.lbp)
        assert (lbp["preset"] or lbp["model"]) in preset_models(), path
        assert cfg.runner_type == "LBPWHTRunner", path
        name = path.stem.split("_")
        if folder.startswith("table"):
            assert name[0] == lbp["model"] and name[1] == lbp["scope"], path
            assert cfg.load_from and cfg.load_from.startswith("checkpoints/"), path
            assert not lbp["allow_random_init"], path
        if folder in ("table2", "table4", "table5", "table6", "table7", "figure5"):
            res = 256 if lbp["model"].startswith("swinv2") else 224
            assert cfg.img_size == res and cfg.train_dataloader.batch_size == 64, path
            assert cfg.train_cfg.max_epochs == 50, path
            assert cfg.optim_wrapper.optimizer.type == "AdamW", path
            assert cfg.optim_wrapper.optimizer.weight_decay == 1e-5, path
        if folder == "table3":
            assert cfg.crop_size == (512, 512) and cfg.train_dataloader.batch_size == 8, path
            assert cfg.train_cfg.max_iters == 20000, path


def test_sweep_is_one_option():
    from mmengine.config import Config

    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.build import inject_lbp, lbp_rank, validate_lbp_cfg

    path = (
        ROOT / "configs/table2/efficientformer-l1/efficientformer-l1_partial_lp-l1-r4_cifar100.py"
    )
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict({"lbp.r": 6})
    inject_lbp(cfg)
    assert cfg.model.type == "LBPWHTModel" and cfg.model.lbp["r"] == 6
    assert lbp_rank(validate_lbp_cfg(cfg.lbp)) == 21


# ---------------------------------------------------------------------------------------------
# per method: where the layers go and which parameters get gradients (mini + L1, fast)
# ---------------------------------------------------------------------------------------------
MINI = "configs/mini/mini-efficientformer_partial_{}_fashion-mnist.py"
LAST = "backbone.network.3."


def _check(path: str, **opts):
    res = config_check.check_config(str(ROOT / path), cfg_options=opts or None, batch=2)
    assert res.ok, res.error
    return res


def test_full_bp_partial_trains_last_stage_and_head():
    res = _check(MINI.format("full-bp"))
    assert res.converted == {}
    assert res.with_grad and all(n.startswith((LAST, "head.")) for n in res.with_grad)
    assert any(n.startswith(LAST + "0.") for n in res.with_grad)  # the whole last stage
    assert not any(n.startswith("backbone.network.2") for n in res.with_grad)


def test_lbp_wht_converts_preset_layers_and_trains_like_full_bp():
    res = _check(MINI.format("lp-l1-r4"))
    full = _check(MINI.format("full-bp"))
    assert set(res.with_grad) == set(full.with_grad)  # same parameters train, cheaper backward
    kinds = set(res.converted.values())
    assert kinds == {"LBPConv2d", "LBPLinear"}
    assert all(n.startswith(LAST) for n in res.converted)
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in res.converted} == {
        "mlp.fc1",
        "mlp.fc2",
        "token_mixer.qkv",
        "token_mixer.proj",
    }


@pytest.mark.parametrize("tag", ["lora", "lora-all"])
def test_lora_trains_only_adapters_and_head(tag):
    res = _check(MINI.format(tag))
    assert res.with_grad
    for n in res.with_grad:
        assert n.endswith((".lora_A", ".lora_B")) or n.startswith("head."), n
    adapters = {n.rsplit(".", 1)[0] for n in res.with_grad if ".lora_" in n}
    assert adapters == set(res.converted)
    attn_only = all("token_mixer" in n for n in res.converted)
    assert attn_only == (tag == "lora")


def test_lbp_plus_lora_all():
    res = _check(MINI.format("lp-l1-r4+lora-all"))
    assert set(res.converted.values()) == {"LBPLoRAConv2d", "LBPLoRALinear"}
    assert all(n.endswith((".lora_A", ".lora_B")) or n.startswith("head.") for n in res.with_grad)


@pytest.mark.parametrize("path", [MINI.format("full-bp"), "configs/mini/demo/target.py"])
def test_head_only_trains_only_the_head(path):
    res = _check(path, **{"lbp.method": "head_only"})
    assert res.converted == {}
    assert res.with_grad and all(n.startswith("head.") for n in res.with_grad)
    assert res.n_trainable < res.n_params


def test_unknown_method_names_the_valid_ones():
    from lbp_wht.integrations.build import LBPConfigError, validate_lbp_cfg

    ok = validate_lbp_cfg(dict(method="head_only", model="mini-efficientformer"))
    assert ok["method"] == "head_only"
    with pytest.raises(LBPConfigError, match=r"lbp.method='probe'.*'head_only'"):
        validate_lbp_cfg(dict(method="probe", model="mini-efficientformer"))
    lora = dict(method="lora_all", model="mini-efficientformer")
    assert validate_lbp_cfg(lora)["lora_train"] == "adapters"
    assert validate_lbp_cfg({**lora, "lora_train": "scope"})["lora_train"] == "scope"
    with pytest.raises(LBPConfigError, match=r"lbp.lora_train='all'.*'scope'"):
        validate_lbp_cfg({**lora, "lora_train": "all"})


def test_cost_analysis_feeds_the_models_input_channels():
    """The cost record costs the 1-channel Fashion-MNIST demo model with a 1-channel input
    (it used to feed 3 channels, which the mini model's stem refuses)."""
    from lbp_wht.integrations.cost_record import analyze, input_channels, load_config

    cfg = load_config(str(ROOT / "configs/mini/demo/target.py"), {"lbp.method": "head_only"})
    assert input_channels(cfg) == 1
    rec = analyze(cfg, batch=1, elementwise=False)
    assert rec["in_channels"] == 1 and rec["resolution"] == [28, 28]
    assert rec["method"] == "head_only" and 0 < rec["backprop_flops"] < 1e4  # the head alone
    assert (
        input_channels(load_config(str(ROOT / "configs/_base_/models/mini-efficientformer.py")))
        == 1
    )
    from mmengine.config import Config

    assert input_channels(Config(dict(model=dict(type="ImageClassifier")))) == 3


def test_lhe_layers_profile_with_exact_backprop():
    res = _check(MINI.format("lhe-rank10"))
    assert set(res.converted.values()) == {"LBPConv2d", "LBPLinear"}


def test_full_scope_converts_every_stage():
    res = _check(MINI.format("lp-l1-r4"), **{"lbp.scope": "full"})
    stages = {n.split(".")[2] for n in res.converted}
    assert stages == {"0", "1", "2", "3"}
    assert res.n_trainable == res.n_params  # full training: everything trains
    assert any(n.startswith("backbone.patch_embed") for n in res.with_grad)


@pytest.mark.parametrize("tag", ["full-bp", "lora-all", "lp-l1-r4"])
def test_mini_segformer_methods(tag):
    res = _check(f"configs/mini/mini-segformer_partial_{tag}_mini-seg.py")
    assert all(n.startswith(("backbone.layers.3.", "decode_head.")) for n in res.with_grad)
    if tag == "lp-l1-r4":
        assert any(n.endswith("attn.q") for n in res.converted)
        assert any(n.startswith("decode_head.") for n in res.converted)


# ---------------------------------------------------------------------------------------------
# the paper-sized configs: a covering subset
# ---------------------------------------------------------------------------------------------
def _is_cheap(p: Path) -> bool:
    return "mini/" in p.as_posix() or "efficientformer-l1_" in p.name


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            id=p.relative_to(ROOT / "configs").as_posix(),
            marks=() if _is_cheap(p) else pytest.mark.slow,
        )
        for p in REPRESENTATIVE
    ],
)
def test_representative_config_builds_and_trains(path):
    res = config_check.check_config(str(path), batch=1)
    assert res.ok, res.error
    if res.method == "losa":  # converts nothing: a side network trains beside the head
        assert not res.converted and any(n.startswith("losa.") for n in res.with_grad)
        assert all(n.startswith(("losa.", "head.")) for n in res.with_grad)
    elif res.method != "full_bp":
        assert res.converted, "method converted nothing"
