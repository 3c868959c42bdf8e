"""Sweep runs of a grid (lbp_wht/experiments/runs.py) trained for real: the digest a sweep
expects is the one the run records, so an unchanged rerun is skipped and a changed one is
reported; and fetching a pretrained checkpoint offline says what to do."""

from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path

import pytest

from lbp_wht.experiments import pretrained
from lbp_wht.experiments.models import MODEL_SPECS
from lbp_wht.experiments.runs import expected_digest, grid_runs
from lbp_wht.runs.records import read_record
from lbp_wht.runs.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "configs" / "mini" / "mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory) -> str:
    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_idx_classification

    return write_idx_classification(tmp_path_factory.mktemp("fmnist"), n_train=32, n_test=8)


def _options(root: str) -> list[str]:
    return [
        "train_cfg.max_iters=1",
        "train_cfg.val_interval=1",
        "default_hooks.checkpoint.interval=1",
        "train_dataloader.batch_size=4",
        f"train_dataloader.dataset.dataset.data_root={root}",
        f"val_dataloader.dataset.dataset.data_root={root}",
        f"test_dataloader.dataset.dataset.data_root={root}",
    ]


def test_a_trained_run_records_the_digest_the_sweep_expects(idx_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = grid_runs(
        MINI, ["lbp.r=2"], seeds=[0], work_root=tmp_path, extra_options=_options(idx_root)
    )
    out = io.StringIO()
    report = run_sweep(runs, out=out, poll_s=0.2, expected_digest=expected_digest)
    assert report.ok and report.results[0].status == "done", out.getvalue()
    rec = read_record(runs[0].record_path)
    if "config_digest" not in rec:
        pytest.skip("this tools/train.py does not record config_digest yet")
    assert rec["config_digest"] == expected_digest(runs[0])
    assert "WARNING" not in report.results[0].message
    # The same grid again: skipped. The grid with another option: reported, not retrained.
    again = run_sweep(runs, out=io.StringIO(), expected_digest=expected_digest)
    assert again.results[0].status == "skipped"
    changed = grid_runs(
        MINI,
        ["lbp.r=2"],
        seeds=[0],
        work_root=tmp_path,
        extra_options=_options(idx_root) + ["lbp.lora_rank=4"],
    )
    assert changed[0].run_id == runs[0].run_id
    res = run_sweep(changed, out=io.StringIO(), expected_digest=expected_digest)
    assert res.results[0].status == "changed"


def test_fetch_offline_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    model = MODEL_SPECS["efficientformer-l1"]
    spec = model.checkpoint._replace(url="http://127.0.0.1:9/ckpt-cc3e1ac6.pth")
    monkeypatch.setitem(MODEL_SPECS, model.id, dataclasses.replace(model, checkpoint=spec))
    with pytest.raises(pretrained.FetchError, match=re.escape(spec.url)) as err:
        pretrained.fetch("efficientformer-l1", tmp_path, log=lambda *a: None)
    message = str(err.value)
    assert os.path.join(str(tmp_path), spec.file) in message and "CKPT_DIR" in message
    assert "\n" not in message  # one line
    assert not [p for p in tmp_path.iterdir() if p.is_file()]  # no partial download left
