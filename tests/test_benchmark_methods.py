"""The successors (LoRA-FA, VeLoRA, WTA-CRS, HOT, INSTANT) as methods of the harness, and the
benchmark that runs them beside LBP-WHT (``lbp_wht.benchmark.compare``,
``tools/benchmark_methods.py``, ``analysis/benchmark_results.py``,
``scripts/reproduce_benchmark.sh``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

import lbp_wht
from lbp_wht.config import HOTConfig, INSTANTConfig, LoRAFAConfig, VeLoRAConfig, WTACRSConfig
from lbp_wht.conversion import SUCCESSOR_OPTIONS, parse_rule
from lbp_wht.experiments.methods import (
    METHOD_SPECS,
    SUCCESSOR_CONVERSIONS,
    method_spec,
    method_with,
)

ROOT = Path(__file__).resolve().parents[1]
SUCCESSORS = {
    "lora_fa": LoRAFAConfig,
    "velora": VeLoRAConfig,
    "wta_crs": WTACRSConfig,
    "hot": HOTConfig,
    "instant": INSTANTConfig,
}


# ------------------------------------------------------------------------------ registry
def test_every_successor_is_one_registry_entry_with_its_core_config():
    found = {m.id for m in METHOD_SPECS.values() if m.successor}
    assert found == set(SUCCESSORS)
    assert set(SUCCESSOR_CONVERSIONS) == set(SUCCESSOR_OPTIONS)
    for mid, cls in SUCCESSORS.items():
        spec = method_spec(mid)
        assert spec.has_options and spec.cite and not spec.paper
        assert SUCCESSOR_OPTIONS[spec.conversion][0] is cls
    # LoRA-FA trains its adapters (B; A stays frozen), the others the whole scope.
    assert method_spec("lora_fa").trains == "adapters" and method_spec("lora_fa").has_adapters
    assert not method_spec("lora_fa").has_lora  # not LoRA's layers: no LoRAConfig
    assert {method_spec(m).trains for m in SUCCESSORS if m != "lora_fa"} == {"scope"}
    # The roles the tables use still name one method each.
    assert method_with(lora_only=True, layers="all") == "lora_all"


@pytest.mark.parametrize("mid", [m.id for m in METHOD_SPECS.values() if m.converts])
def test_core_rule_of_every_converting_method_is_a_valid_rule(mid):
    spec = method_spec(mid)
    rule = spec.core_rule("layer", select="lp_l1", r=2, lora_rank=4)
    parsed = parse_rule(rule)
    assert parsed.method == spec.conversion
    if spec.has_bases:
        assert parsed.lbp.radius == 2
    if spec.has_lora:
        assert parsed.lora.rank == 4 and parsed.lora.alpha == 4
    if mid == "lora_fa":
        assert parsed.options == LoRAFAConfig(rank=4, alpha=4)
    assert method_spec("full_bp").core_rule("layer") is None


# ---------------------------------------------------------------- the lbp block's options
def _block(**lbp):
    from lbp_wht.integrations.build import parse_lbp_block

    return parse_lbp_block(dict(model="efficientformer-l1", **lbp))


def test_options_are_parsed_once_into_the_core_config():
    assert _block(method="wta_crs", options=dict(keep_fraction=0.5)).options == WTACRSConfig(
        keep_fraction=0.5
    )
    assert _block(method="velora").options == VeLoRAConfig()  # the core's defaults
    assert _block(method="hot", options=dict(grad_bits=None)).options.grad_bits is None
    fa = _block(method="lora_fa", lora_rank=4, lora_alpha=2.0).options
    assert fa == LoRAFAConfig(rank=4, alpha=2.0)
    assert _block(method="full_bp").options is None


@pytest.mark.parametrize(
    "lbp, message",
    [
        (dict(method="velora", options=dict(subtoken=8)), "did you mean 'subtoken_size'"),
        (dict(method="wta_crs", options=dict(keep_fraction=2.0)), "keep_fraction"),
        (dict(method="full_bp", options=dict(keep=3)), "takes no options"),
        (dict(method="lora_fa", options=dict(lora_rank=3)), "set lbp.lora_rank instead"),
        (dict(method="instant", options=dict(instant_rank=0)), "rank"),
        (dict(method="velora", options=["subtoken_size"]), "lbp.options"),
    ],
)
def test_bad_options_are_named_errors(lbp, message):
    from lbp_wht.integrations.build import LBPConfigError

    with pytest.raises(LBPConfigError, match=message):
        _block(**lbp)


def test_preset_rules_carry_the_blocks_config_and_scale_lora_fa_on_fused_qkv():
    from lbp_wht.integrations.build import preset_for_block

    block = _block(method="velora", options=dict(subtoken_size=8))
    rules = preset_for_block(block).rules
    assert rules and all(r["velora"] is block.options for r in rules)
    fa = preset_for_block(_block(method="lora_fa", lora_rank=4, lora_alpha=4)).rules
    qkv = [r for r in fa if r["target"].endswith("qkv")]
    assert qkv and all(r["lora_fa"] == LoRAFAConfig(rank=12, alpha=12) for r in qkv)
    assert all(r["lora_fa"] == LoRAFAConfig(rank=4, alpha=4) for r in fa if r not in qkv)


@pytest.mark.parametrize("mid", list(SUCCESSORS))
def test_the_training_build_converts_to_the_successors_layers(mid):
    """The model the training path builds (LBPWHTModel) holds the method's layers, each with
    the block's config object."""
    from lbp_wht.integrations.build import parse_lbp_block
    from lbp_wht.integrations.cost_record import build_model, config_from_flags

    cfg = config_from_flags("mini-efficientformer", mid, "partial", size=28)
    model = build_model(cfg)
    linear_cls = lbp_wht.conversion.CONVERSIONS[mid][0]
    layers = [m for m in model.modules() if isinstance(m, linear_cls)]
    assert layers, f"{mid}: no {linear_cls.__name__} in the built model"
    want = parse_lbp_block(cfg.lbp).options
    for layer in layers:
        got = next(
            getattr(layer, a) for a in vars(layer) if a.endswith("_config") and a != "lbp_config"
        )
        assert got == want or (mid == "lora_fa" and got.rank % want.rank == 0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mid == "lora_fa":
        assert trainable and all(".lora_B" in n or n.startswith("head") for n in trainable)
    else:
        assert any(n.endswith(".weight") and "network.3" in n for n in trainable)


# --------------------------------------------------------------------------- measurements
TINY = {"tiny": [(32, 64, 49), (32, 48, 197, 1)]}


@pytest.fixture(scope="module")
def tiny_rows():
    from lbp_wht.benchmark.compare import layer_latency

    return layer_latency(TINY, [2], rounds=1, log=lambda s: None)


def test_layer_latency_rows(tiny_rows):
    from lbp_wht.benchmark.compare import LAYER_METHODS

    assert len(tiny_rows) == len(LAYER_METHODS) * 2
    rows = {(r["tokens"], r["label"]): r for r in tiny_rows}
    for tokens in (49, 197):
        full = rows[(tokens, "Full BP")]
        assert full["step_speedup"] == 1.0 and full["flop_ratio"] == 1.0
        # VeLoRA keeps one coefficient per 16 channels (+ its 16-value vector).
        velora = rows[(tokens, "VeLoRA")]
        assert velora["saved_ratio"] == pytest.approx(16, rel=0.02)
        # LP_L1-2 on one 7x7 map: 3 of 64 bases, far fewer backprop FLOPs.
        assert rows[(tokens, "LP_L1-2")]["flop_ratio"] > 1.5
        assert all(r["step_us"] > 0 and r["backward_us"] > 0 for r in tiny_rows)


def test_layer_latency_needs_full_bp_first():
    from lbp_wht.benchmark.compare import layer_latency

    with pytest.raises(ValueError, match="Full BP"):
        layer_latency(TINY, [2], [("velora", None, None)], rounds=1)


def test_vit_cost_converts_the_last_blocks_only():
    pytest.importorskip("timm")
    from lbp_wht.benchmark.compare import vit_cost

    keys = [("full_bp", None, None), ("lora", None, None), ("velora", None, None)]
    rows = {r["label"]: r for r in vit_cost(keys, name="vit_tiny_patch16_224", blocks=2,
                                            batch=1, log=lambda s: None)}  # fmt: skip
    assert rows["Full BP"]["flop_ratio"] == 1.0
    # LoRA trains rank-8 adapters on qkv / proj of 2 blocks + the head.
    assert rows["LoRA"]["trainable_params"] < rows["Full BP"]["trainable_params"] / 5
    assert rows["VeLoRA"]["trainable_params"] == rows["Full BP"]["trainable_params"]
    assert rows["VeLoRA"]["saved_ratio"] > 1.0


def test_rule_fidelity_is_exact_where_the_method_is():
    from lbp_wht.fidelity import rule_fidelity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    x = torch.randn(6, 10, 16)

    def loss_fn(m):
        return m(x).square().sum()

    rows = rule_fidelity(
        model,
        ["0", "2"],
        loss_fn,
        {
            "exact VeLoRA": [dict(target="*", method="velora", subtoken_size=1)],
            "WTA-CRS all rows": [dict(target="*", method="wta_crs", keep_fraction=1.0)],
            "VeLoRA d=16": [dict(target="2", method="velora", subtoken_size=16)],
        },
    )
    by = {(r["method"], r["layer"]): r for r in rows}
    for label in ("exact VeLoRA", "WTA-CRS all rows"):
        for layer in ("0", "2"):
            assert by[(label, layer)]["cos_gw"] == pytest.approx(1.0, abs=1e-6)
    assert by[("VeLoRA d=16", "2")]["cos_gw"] < 0.99
    assert by[("VeLoRA d=16", "2")]["cos_gx"] == pytest.approx(1.0, abs=1e-6)  # g_x exact
    assert math.isnan(by[("VeLoRA d=16", "0")]["cos_gx"])  # the model's input needs no grad


# ------------------------------------------------------------------- INSTANT's basis solve
def test_principal_basis_falls_back_to_svd_and_refuses_non_finite(monkeypatch):
    from lbp_wht.instant import principal_basis

    cov = torch.diag(torch.tensor([5.0, 0.0, 0.0, 3.0, 0.0, 0.0]))
    basis = principal_basis(cov, 2)
    assert torch.allclose(basis.abs().t() @ basis.abs(), torch.eye(2), atol=1e-6)
    assert set(basis.abs().argmax(0).tolist()) == {0, 3}

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", fail)
    again = principal_basis(cov, 2)
    assert set(again.abs().argmax(0).tolist()) == {0, 3}
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        principal_basis(torch.full((3, 3), math.nan), 1)


# ------------------------------------------------------------------------------ the report
def test_pareto_front():
    sys.path.insert(0, str(ROOT / "analysis"))
    from benchmark_results import pareto

    pts = [("a", 1.0, 80.0), ("b", 2.0, 85.0), ("c", 3.0, 84.0), ("d", 1.0, 79.0)]
    assert pareto(pts) == ["a", "b"]
    assert pareto([(n, -c, a) for n, c, a in pts], lower_better=False) == ["a", "b"]


def test_claims_are_read_beside_the_measured_ratio(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "analysis"))
    import benchmark_results as br

    claims = tmp_path / "successors.csv"
    pd.DataFrame(
        [
            dict(claim_id="a", method="wta_crs", quantity="peak_memory_reduction", value=2.7,
                 unit="x", baseline="b", setting="s", source="http://x", quote="2.7"),
            dict(claim_id="b", method="hot", quantity="memory_savings", value=75, unit="percent",
                 baseline="b", setting="s", source="http://x", quote="75"),
            dict(claim_id="c", method="instant", quantity="accuracy_tradeoff", value=1,
                 unit="percent", baseline="b", setting="s", source="http://x", quote="1"),
        ]
    ).to_csv(claims, index=False)  # fmt: skip
    monkeypatch.setattr(br, "PAPER_CLAIMS", claims)
    table = pd.DataFrame(
        [
            dict(method="Full BP", acc_mean=80.0, vitb_mem_ratio=1.0),
            dict(method="WTA-CRS", acc_mean=79.0, vitb_mem_ratio=2.0),
            dict(method="HOT", acc_mean=78.0, vitb_mem_ratio=4.0),
            dict(method="INSTANT", acc_mean=77.5, vitb_mem_ratio=8.0),
        ]
    )
    got = {c["claim_id"]: c["measured"] for c in br.claims(table)}
    assert got == {"a": 2.0, "b": 75.0, "c": 2.5}


def _have_fmnist() -> bool:
    root = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
    return (root / "train-images-idx3-ubyte.gz").exists() or (
        root / "train-images-idx3-ubyte"
    ).exists()


@pytest.mark.slow
@pytest.mark.skipif(not _have_fmnist(), reason="Fashion-MNIST not found: run `make data`")
def test_reproduce_benchmark_smoke(tmp_path):
    """The one command, in its smoke form: every stage runs and the report is written."""
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce_benchmark.sh"), "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("cost", "layers_cpu", "step_cpu", "fidelity", "table"):
        frame = pd.read_csv(out / f"{name}.csv")
        assert len(frame) > 0, name
    table = pd.read_csv(out / "table.csv")
    for label in ("Full BP", "LoRA-FA", "VeLoRA", "WTA-CRS", "HOT", "INSTANT", "LP_L1-2"):
        row = table[table.method == label]
        assert not row.empty and not math.isnan(row.acc_mean.iloc[0]), label
    for fig in ("pareto_flops", "pareto_memory", "pareto_time"):
        assert (out / f"{fig}.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "SMOKE RUN" in readme and "Which method when" in readme
    assert (out / "transfer" / "table.csv").exists() and (out / "mini" / "RESULTS.md").exists()
