"""The mini-reproduction's RESULTS.md regenerates from the committed runs: only the facts of
the machine that writes it (date, machine and load, git revision) may differ. Its verdict rules
(analysis/verdicts.py) and report (analysis/mini_results.py) are analyses, not package code."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("jinja2")

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "results" / "mini"
sys.path.insert(0, str(ROOT / "analysis"))
import mini_results  # noqa: E402  (analysis/, not the package)
import verdicts  # noqa: E402


def _claim_words():
    """The macros of ``mini_claims.j2`` with the report's formatting functions."""
    from lbp_wht.reporting.render import environment

    return (
        environment(ROOT / "analysis" / "templates")
        .get_template("mini_claims.j2")
        .make_module(dict(acc=verdicts.acc_text, se2=verdicts.se2_text, spec=format))
    )


def test_results_md_regenerates_from_the_committed_runs(tmp_path: Path) -> None:
    out = tmp_path / "mini"
    shutil.copytree(MINI, out, ignore=shutil.ignore_patterns("figures"))
    timing = json.loads((MINI / "timing.json").read_text())
    old = (MINI / "RESULTS.md").read_text().splitlines()
    load_start = next(ln for ln in old if ln.startswith("- **Machine:**"))
    load_start = load_start.split("load average ")[1].split(" at the start")[0]
    mini_results.write_report(
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


def test_rerender_keeps_every_line_but_the_code_revision(tmp_path: Path) -> None:
    """``--rerender`` with no other argument: the protocol (iterations, seeds), the loads, the
    runs at a time and the runs line come from the run's own files, not from defaults."""
    out = tmp_path / "mini"
    shutil.copytree(MINI, out, ignore=shutil.ignore_patterns("figures"))
    assert mini_results.main(["--out", str(out), "--rerender"]) == 0
    old = (MINI / "RESULTS.md").read_text().splitlines()
    new = (out / "RESULTS.md").read_text().splitlines()
    assert len(new) == len(old)
    differ = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(differ) == 1 and differ[0][0].startswith("- **Code:**"), differ
    assert differ[0][1].startswith(differ[0][0] + " (report re-rendered from its runs at ")
    assert (out / "timing.json").read_bytes() == (MINI / "timing.json").read_bytes()


def test_claims_of_the_committed_runs() -> None:
    s = verdicts.Stats(MINI / "runs" / "adapt", MINI / "cost")
    got = {c["claim"]: c["verdict"] for c in verdicts.claims(s)}
    assert got == {
        "calibration": "holds",
        "lbp_vs_lora_all": "partly agrees",
        "rises_with_r": "agrees",
        "lp8_accuracy": "agrees",
        "lp8_cost": "does NOT agree",
        "lp4_speedup": "partly agrees",
        "losa_vs_lbp": "agrees",
        "table4": "agrees",
    }


def test_cost_tags_are_the_vocabularys_config_tags() -> None:
    from lbp_wht.experiments.vocab import config_tag, parse_config_tag

    spec = importlib.util.spec_from_file_location("mini_report", ROOT / "scripts/mini_report.py")
    mini_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mini_report)
    assert all(config_tag(parse_config_tag(t)) == t for t in mini_report.DEMO_METHODS)
    with pytest.raises(ValueError, match="'lp_l1-4'.*lp-l1-r4"):
        mini_report.measure(ROOT / "configs/mini/demo/target.py", Path("unused"), ["lp_l1-4"])


def test_every_claim_kind_is_worded() -> None:
    """The branches the committed run does not reach still render (the template is strict
    about missing numbers)."""
    words = _claim_words()
    untested = dict(claim="calibration_untested", verdict="not tested")
    assert str(words.title(untested)) == "Calibration: Full BP vs head only"
    assert "no head-only records" in str(words.evidence(untested))
    cheap_none = dict(
        claim="lbp_vs_lora_all",
        verdict="not tested",
        similar_cost=1.1,
        lora_all=(80.0, None, 1),
        lora_all_mflops=30.0,
        rows=[],
        better=[],
        worse=[],
    )
    assert str(words.evidence(cheap_none)) == (
        "LoRA-all 80.00 (n=1) at 30.0 MFLOPs. no LP_L1-r run costs at most LoRA-all's MFLOPs"
    )
    one = dict(cheap_none, rows=[dict(r=2, acc=(81.0, 0.5, 3), mflops=15.0, diff=1.0, noise=1.5)])
    assert str(words.evidence(one)).endswith(
        "LP_L1-2: 81.00 ± 0.50 (n=3) at 15.0 MFLOPs (2.00x less than LoRA-all): +1.00 points "
        "(2 SE of the difference: 1.50). Better beyond noise: none; worse beyond noise: none."
    )


def test_proxy_tables_and_figure_data_regenerate_from_the_committed_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lbp_wht.reporting import figures, tables

    runs, cost = tables.load_runs([MINI / "runs" / "adapt"]), tables.load_cost(MINI / "cost")
    tables.make_tables(
        runs=runs,
        cost=cost,
        paper_dir=ROOT / "results" / "paper",
        out=tmp_path,
        tables=["2", "4"],
        models=[verdicts.MODEL],
        datasets=[verdicts.DATASET],
    )
    for name in ("table2/table2", "table4/table4"):
        for ext in (".md", ".csv", ".tex"):
            assert (tmp_path / (name + ext)).read_text() == (MINI / (name + ext)).read_text()
    spectrum = next((MINI / "runs" / "spectrum").glob("*/spectrum.json"))
    figures.make_figures(
        runs_roots=[MINI / "runs" / "adapt"],
        cost_dir=MINI / "cost",
        paper_dir=ROOT / "results" / "paper",
        out=tmp_path / "figures",
        models=[verdicts.MODEL],
        dataset=verdicts.DATASET,
        spectrum=spectrum,
    )
    for n in (3, 4, 5):
        data = f"figure{n}_data.csv"
        assert (tmp_path / "figures" / data).read_text() == (MINI / "figures" / data).read_text()


class _FakeStats(verdicts.Stats):
    """Stats from a dict: method key -> ((mean, std, n), MFLOPs)."""

    def __init__(self, rows: dict) -> None:
        self.rows = rows

    def acc(self, key: tuple) -> tuple:
        return self.rows.get(key, ((None, None, 0), None))[0]

    def mflops(self, key: tuple) -> float | None:
        return self.rows.get(key, ((None, None, 0), None))[1]


def _losa_rows(losa_acc: float, losa_mflops: float = 0.6) -> dict:
    return {
        verdicts.HEAD: ((75.0, 0.2, 3), 0.0005),
        verdicts.LOSA: ((losa_acc, 0.2, 3), losa_mflops),
        verdicts.lp(2): ((84.5, 0.5, 3), 15.9),
        verdicts.lp(4): ((87.0, 0.2, 3), 24.0),
    }


@pytest.mark.parametrize(
    "losa_acc, losa_mflops, verdict, reason, best",
    [
        (87.5, 0.6, "agrees", "matched", 4),  # above LP_L1-4 at 40x less backprop
        (84.0, 0.6, "agrees", "matched", 2),  # within 1 point of LP_L1-2 only
        (80.0, 0.6, "does NOT agree", "less_accurate", None),  # cheaper, matches no rank
        (88.0, 30.0, "does NOT agree", "not_cheaper", None),  # matches, but costs more
    ],
)
def test_losa_claim_verdicts(losa_acc, losa_mflops, verdict, reason, best) -> None:
    c = verdicts.losa_claim(_FakeStats(_losa_rows(losa_acc, losa_mflops)))
    assert (c["verdict"], c["reason"], c["best"]) == (verdict, reason, best)
    assert [row["r"] for row in c["rows"]] == [2, 4]
    assert c["rows"][0]["ratio"] == pytest.approx(15.9 / losa_mflops)
    assert c["head_diff"] == pytest.approx(losa_acc - 75.0)
    words = _claim_words()
    assert str(words.title(c)).startswith("LoSA costs less backprop than LBP-WHT")
    text = str(words.evidence(c))
    assert text.startswith(f"LoSA {losa_acc:.2f} ± 0.20 (n=3) at {losa_mflops:.2f} backprop")
    assert ("at less backprop" in text) == (reason == "matched")
    assert "Against head only (75.00 ± 0.20 (n=3))" in text


def test_losa_claim_needs_losa_and_lbp_runs() -> None:
    rows = _losa_rows(85.0)
    no_losa = {k: v for k, v in rows.items() if k != verdicts.LOSA}
    assert verdicts.losa_claim(_FakeStats(no_losa)) is None
    only = {verdicts.LOSA: rows[verdicts.LOSA]}
    assert verdicts.losa_claim(_FakeStats(only)) is None
