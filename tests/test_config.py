"""LBPConfig / LoRAConfig: validated once, distinct names, documented fields."""

from __future__ import annotations

import dataclasses

import pytest

from lbp_wht import LBPConfig, LoRAConfig, lp_l1_rank


@pytest.mark.parametrize(
    "kwargs,bases",
    [
        (dict(), 10),  # LP_L1-4, the paper's default
        (dict(radius=2), 3),
        (dict(radius=15, padding="zero"), 64),
        (dict(selection="lp_linf", radius=3), 9),
        (dict(selection="explicit", bases=[(0, 0), (1, 2)]), 2),
        (dict(selection="lhe", num_bases=7), 7),
        (dict(radius=4, order=4), 10),
    ],
)
def test_valid_configs_compute_their_bases_once(kwargs, bases):
    cfg = LBPConfig(**kwargs)
    assert cfg.num_bases == bases
    if cfg.selection == "lhe":
        assert cfg.selected_bases is None  # chosen by profiling
    else:
        assert len(cfg.selected_bases) == bases
        assert cfg.selected_bases is cfg.selected_bases  # computed once, not per access
    assert LBPConfig(**cfg.to_dict()) == cfg
    hash(cfg)  # frozen and hashable (usable as a cache key)


def test_lp_l1_default_radius_and_description():
    assert LBPConfig().radius == 4 and LBPConfig().describe() == "LP_L1-4"
    assert LBPConfig(selection="lp_linf", radius=2).describe() == "LP_Linf-2"
    assert LBPConfig(selection="lhe", num_bases=10).describe() == "LHE-10"
    assert LBPConfig(radius=8).num_bases == lp_l1_rank(8) == 36


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(radius=True), TypeError, "radius must be an int.*True"),
        (dict(radius=1.5), TypeError, "radius must be an int"),
        (dict(radius=0), ValueError, "radius must be >= 1"),
        (dict(radius=16), ValueError, "at most 15"),
        (dict(order=6), ValueError, "power of two"),
        (dict(order=True), TypeError, "order must be an int"),
        (dict(selection="lowpass"), ValueError, "unknown selection 'lowpass'"),
        (dict(padding="circular"), ValueError, "unknown padding"),
        (dict(impl="fast"), ValueError, "unknown impl"),
        (dict(selection="lhe"), ValueError, "needs num_bases"),
        (dict(selection="lhe", num_bases=65), ValueError, "exceeds the 64 bases"),
        (dict(selection="lhe", num_bases=3, radius=2), ValueError, "radius applies only"),
        (dict(radius=4, num_bases=9), ValueError, "does not match.*keeps 10"),
        (dict(selection="explicit"), ValueError, "needs bases"),
        (dict(selection="explicit", bases=[(0.5, 0)]), TypeError, r"bases\[0\]\[0\].*int"),
        (dict(selection="explicit", bases=[(0, True)]), TypeError, r"bases\[0\]\[1\].*int"),
        (dict(selection="explicit", bases=[(0, 8)]), ValueError, "outside"),
        (dict(selection="explicit", bases=[(0, 1), (0, 1)]), ValueError, "twice"),
        (dict(selection="explicit", bases="00"), TypeError, "sequence of"),
        (dict(bases=[(0, 0)]), ValueError, "only with selection='explicit'"),
    ],
)
def test_bad_lbp_config_is_a_clear_error(kwargs, err, match):
    with pytest.raises(err, match=match):
        LBPConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(rank=True), TypeError, "LoRA rank must be an int"),
        (dict(rank=0), ValueError, "LoRA rank must be >= 1"),
        (dict(rank=2.0), TypeError, "LoRA rank must be an int"),
        (dict(alpha="8"), TypeError, "LoRA alpha must be a number"),
        (dict(alpha=float("nan")), ValueError, "finite"),
        (dict(dropout=1.0), ValueError, r"\[0, 1\)"),
        (dict(dropout=-0.1), ValueError, r"\[0, 1\)"),
    ],
)
def test_bad_lora_config_is_a_clear_error(kwargs, err, match):
    with pytest.raises(err, match=match):
        LoRAConfig(**kwargs)


def test_lora_config_scaling_and_roundtrip():
    cfg = LoRAConfig(rank=4, alpha=8, dropout=0.1)
    assert cfg.scaling == 2.0 and isinstance(cfg.alpha, float)
    assert LoRAConfig(**cfg.to_dict()) == cfg


def test_every_field_is_documented_and_names_are_distinct():
    lbp = {f.name: f for f in dataclasses.fields(LBPConfig)}
    lora = {f.name: f for f in dataclasses.fields(LoRAConfig)}
    for f in [*lbp.values(), *lora.values()]:
        assert len(f.metadata.get("help", "")) > 20, f.name
    # "radius" (r of LP_L1-r), "num_bases" (R) and LoRA's "rank" never share a name
    assert {"radius", "num_bases"} <= set(lbp) and "rank" not in lbp
    assert "rank" in lora and not {"radius", "num_bases"} & set(lora)


def test_configs_are_frozen():
    cfg = LBPConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.radius = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "block,want",
    [
        (dict(method="lbp_wht", model="m"), LBPConfig(radius=4)),
        (
            dict(method="lbp_wht", model="m", select="lp_linf", r=3),
            LBPConfig(selection="lp_linf", radius=3),
        ),
        (
            dict(method="lbp_wht", model="m", select="lhe", rank=10),
            LBPConfig(selection="lhe", num_bases=10),
        ),
        (
            dict(method="lbp_wht+lora_all", model="m", r=2, padding="zero"),
            LBPConfig(radius=2, padding="zero"),
        ),
        (dict(method="lora_all", model="m"), None),
    ],
)
def test_mmengine_lbp_block_maps_onto_the_typed_configs(block, want):
    """Config files keep their keys (select, r, rank, lora_rank, lora_alpha); build.py maps
    them onto LBPConfig / LoRAConfig."""
    pytest.importorskip("mmengine")
    from lbp_wht.integrations.build import lbp_rank, parse_lbp_block, validate_lbp_cfg

    cfg = validate_lbp_cfg(block)
    assert parse_lbp_block(cfg).lbp == want
    assert lbp_rank(cfg) == (None if want is None else want.num_bases)
    lora = parse_lbp_block(cfg).lora
    assert (lora is None) == ("lora" not in block["method"])
    if lora is not None:
        assert (lora.rank, lora.alpha) == (8, 8.0)
