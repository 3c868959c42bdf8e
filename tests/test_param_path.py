"""One typed parameter path: a config's ``lbp`` block is parsed once into an ``LBPBlock`` whose
``LBPConfig`` / ``LoRAConfig`` flow unchanged into the preset's rules and the converted layers.

The radius ``lbp.r`` takes these hops: config key ``lbp.r`` -> ``LBPConfig.radius`` (built by
``parse_lbp_block``) -> ``rule["lbp"]`` (the same object, ``presets.preset_of``) -> ``Rule.lbp``
(``parse_rule`` keeps a given config) -> ``layer.lbp_config``, whose bases were chosen once by
``select_bases(selection, radius=...)``: one name from the config object on. The tests below
check the identity at the end of the path, that the path constructs one ``LBPConfig``, that
the training path parses the block once and validates the preset's arguments once, and that
a bad ``lbp.r`` is rejected once, with today's message.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest

import lbp_wht.integrations  # noqa: F401  (CPU shims first)

pytest.importorskip("mmpretrain")

from lbp_wht.config import LBPConfig, LoRAConfig  # noqa: E402
from lbp_wht.integrations.build import (  # noqa: E402
    LBP_DEFAULTS,
    LBPConfigError,
    LBPWHTModel,
    lbp_layers,
    parse_lbp_block,
)

ROOT = Path(__file__).resolve().parents[1]
BLOCK = dict(method="lbp_wht+lora_all", model="mini-efficientformer", scope="partial")


@pytest.fixture
def constructions(monkeypatch):
    """Counts the ``LBPConfig`` objects constructed (each one validates itself), with no block
    parsed before."""
    from lbp_wht.integrations import build

    monkeypatch.setattr(build, "_PARSED", {})
    made: list[LBPConfig] = []
    post_init = LBPConfig.__post_init__

    def counting(self):
        made.append(self)
        post_init(self)

    monkeypatch.setattr(LBPConfig, "__post_init__", counting)
    return made


def _build(block):
    from mmengine.registry import init_default_scope

    import lbp_wht.integrations.models  # noqa: F401  (registers the project's model types)
    from lbp_wht.experiments.presets import model_config

    init_default_scope("mmpretrain")
    return LBPWHTModel(model_config("mini-efficientformer", num_classes=10), block)


@pytest.mark.parametrize(
    "extra, want",
    [
        (dict(select="lp_l1", r=2), LBPConfig(selection="lp_l1", radius=2)),
        (  # LHE is offered with LBP-WHT alone (no paper row with LoRA)
            dict(method="lbp_wht", select="lhe", rank=10),
            LBPConfig(selection="lhe", num_bases=10),
        ),
    ],
    ids=["lp_l1", "lhe"],
)
def test_the_blocks_lbp_config_is_the_one_in_every_layer(extra, want, constructions):
    net = _build({**BLOCK, **extra})
    block = net.lbp_info["block"]
    assert block.lbp == want
    assert len(constructions) == 1 and constructions[0] is block.lbp  # built once, in the parse
    layers = lbp_layers(net)
    assert len(layers) == 10  # the last stage's Meta4D / Meta3D layers
    assert all(m.lbp_config is block.lbp for m in layers.values())
    assert net.lbp_info["lbp_config"] is block.lbp
    assert net.lbp_info["rank"] == block.num_bases == (3 if extra["select"] == "lp_l1" else 10)
    if block.lora is None:  # LBP-WHT alone
        return
    # LoRA: one config per projection; the fused qkv gets a copy times 3, the others the object
    assert block.lora == LoRAConfig(rank=8, alpha=8)
    for name, m in layers.items():
        if name.endswith("qkv"):
            assert (m.lora_rank, m.lora_alpha) == (24, 24)
        else:
            assert m.lora_config is block.lora


def test_the_training_path_parses_the_block_once(monkeypatch):
    """The launcher's preset check, the runner's model-name check, ``inject_lbp``, the builder,
    the resume check and the run record all read one parse of the block."""
    from mmengine.config import Config

    from lbp_wht.integrations import build
    from lbp_wht.integrations.config_check import build_model
    from lbp_wht.integrations.recording import build_record
    from lbp_wht.integrations.runner import _check_model_name, resume_relevant

    parses = []
    parse = build._parse
    monkeypatch.setattr(build, "_PARSED", {})
    monkeypatch.setattr(build, "_parse", lambda lbp: parses.append(lbp) or parse(lbp))
    name = "mini-efficientformer_partial_lp-l1-r4+lora-all_fashion-mnist.py"
    cfg = Config.fromfile(str(ROOT / "configs/mini" / name))
    cfg.merge_from_dict({"lbp.r": 2})  # a command-line option
    build.check_lbp_preset(build.validate_lbp_cfg(cfg.lbp))  # the launcher
    _check_model_name(cfg)
    build.inject_lbp(cfg)
    net = build_model(cfg)
    resume_relevant(cfg)
    record = build_record(cfg, kind="train", status="done")
    assert len(parses) == 1
    block = net.lbp_info["block"]
    assert block is build.parse_lbp_block(cfg.lbp) and block.lbp.radius == 2
    assert record["rank"] == block.num_bases == 3
    # the settings handed out are copies: editing one leaves the parse as it was
    build.validate_lbp_cfg(cfg.lbp)["options"]["keep"] = 1
    block.settings["options"]["keep"] = 1  # also the parsed block's own settings
    assert build.parse_lbp_block(cfg.lbp).settings["options"] == {} and len(parses) == 1


def test_a_completed_block_is_the_same_parse(monkeypatch):
    """A block, the same block with its defaults written out, and its completed settings all
    give one ``LBPBlock``, in any order of first parse."""
    from lbp_wht.integrations import build

    monkeypatch.setattr(build, "_PARSED", {})
    short = dict(BLOCK, select="lp_l1")
    explicit = dict(short, r=LBP_DEFAULTS["r"])
    first = build.parse_lbp_block(short)
    assert build.parse_lbp_block(explicit) is first
    assert build.parse_lbp_block(build.validate_lbp_cfg(short)) is first


def test_the_block_path_does_not_repeat_the_presets_checks(monkeypatch):
    """``get_preset`` checks a library caller's arguments; the block was checked by its parse,
    so ``preset_for_block`` builds the same preset without those checks."""
    from lbp_wht.experiments import presets
    from lbp_wht.integrations.build import preset_for_block

    block = parse_lbp_block({**BLOCK, "variant": "authors", "lora_train": "scope"})
    kwargs = dict(lbp=block.lbp, lora=block.lora, lora_train="scope", variant="authors")
    want = presets.get_preset("mini-efficientformer", block.method, "partial", **kwargs)

    def checked(*args):
        raise AssertionError(f"checked again: {args}")

    monkeypatch.setattr(presets, "_check", checked)
    assert preset_for_block(block) == want


@pytest.mark.parametrize(
    "r, match, built",
    [
        (16, r"lbp\.select/r/order: .*radius=16", 1),  # too big for order 8: LBPConfig says so
        (0, r"lbp\.r=0: must be finite and >= 1", 0),  # the schema's range check
        (2.0, r"lbp\.r=2\.0 is a float, expected an integer", 0),
    ],
)
def test_a_bad_r_is_rejected_once_with_todays_message(r, match, built, constructions):
    with pytest.raises(LBPConfigError, match=match):
        parse_lbp_block({**BLOCK, "r": r})
    assert len(constructions) == built  # no pre-check besides the config's own validation


def test_each_default_is_the_cores():
    """The block's defaults of the LBP-WHT / LoRA keys are read from the typed configs."""
    lbp, lora = LBPConfig(), LoRAConfig()
    assert LBP_DEFAULTS["select"] == lbp.selection
    assert LBP_DEFAULTS["r"] == lbp.radius == LBPConfig.DEFAULT_RADIUS
    assert LBP_DEFAULTS["order"] == lbp.order and LBP_DEFAULTS["padding"] == lbp.padding
    assert (LBP_DEFAULTS["lora_rank"], LBP_DEFAULTS["lora_alpha"]) == (lora.rank, lora.alpha)
    block = parse_lbp_block(BLOCK)
    assert block.lbp == lbp and block.lora == lora
    assert dataclasses.is_dataclass(block)
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.lbp = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        block.settings["r"] = 6  # type: ignore[index]
    # built models carry it in lbp_info, and tools deep-copy (and may pickle) built models
    assert copy.deepcopy(block) == block == pickle.loads(pickle.dumps(block))


def test_the_harness_copies_of_the_defaults_equal_the_cores():
    """vocab / methods import no torch, so they keep standard-library copies: checked here."""
    from lbp_wht.experiments import methods, vocab
    from lbp_wht.losa import DEFAULT_RANK

    assert vocab.DEFAULT_SELECTION == LBPConfig().selection
    assert vocab.DEFAULT_ORDER == LBPConfig().order
    assert methods.DEFAULT_LORA_RANK == LoRAConfig().rank == LoRAConfig().alpha
    assert methods.DEFAULT_LOSA_RANK == DEFAULT_RANK == LBP_DEFAULTS["losa_rank"]
