"""The mini-reproduction's RESULTS.md regenerates from the committed runs: only the facts of
the machine that writes it (date, machine and load, git revision) may differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("jinja2")

from lbp_wht.reporting import mini  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "results" / "mini"


def test_results_md_regenerates_from_the_committed_runs(tmp_path: Path) -> None:
    out = tmp_path / "mini"
    shutil.copytree(MINI, out, ignore=shutil.ignore_patterns("figures"))
    timing = json.loads((MINI / "timing.json").read_text())
    old = (MINI / "RESULTS.md").read_text().splitlines()
    load_start = next(ln for ln in old if ln.startswith("- **Machine:**"))
    load_start = load_start.split("load average ")[1].split(" at the start")[0]
    mini.write_report(
        out,
        stages=timing["stages_s"],
        command=timing["command"],
        jobs=2,
        pretrain_iters=400,
        adapt_iters=200,
        seeds=[0, 1, 2],
        start=0.0,  # every record is newer: "all run by this invocation"
        load_start=load_start,
    )
    new = (out / "RESULTS.md").read_text().splitlines()
    assert len(new) == len(old)
    differ = [a.split(":**")[0] for a, b in zip(old, new) if a != b]
    assert set(differ) <= {"- **Date", "- **Machine", "- **Code"}, differ
    assert next(ln for ln in new if ln.startswith("**In short:**")) == next(
        ln for ln in old if ln.startswith("**In short:**")
    )
    assert json.loads((out / "timing.json").read_text())["stages_s"] == timing["stages_s"]


def test_claims_of_the_committed_runs() -> None:
    s = mini.Stats(MINI / "runs" / "adapt", MINI / "cost")
    verdicts = {claim.split(" (")[0]: verdict for claim, verdict, _ in mini.claims(s)}
    assert verdicts["Accuracy rises with r, with diminishing returns"] == "agrees"
    assert verdicts["LP_L1-8 needs about 80% of Full BP's computation"] == "does NOT agree"
    assert len(verdicts) == 7


def test_cost_tags_are_the_vocabularys_config_tags() -> None:
    from lbp_wht.experiments.vocab import config_tag, parse_config_tag

    assert all(config_tag(parse_config_tag(t)) == t for t in mini.DEMO_METHODS)
    with pytest.raises(ValueError, match="'lp_l1-4'.*lp-l1-r4"):
        mini.measure_costs(ROOT / "configs/mini/demo/target.py", Path("unused"), ["lp_l1-4"])
