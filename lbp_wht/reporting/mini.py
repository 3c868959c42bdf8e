"""The CPU mini-reproduction's report (``make demo``, ``scripts/reproduce_mini.sh``).

* :func:`measure_costs`: backprop MFLOPs per training image of the mini model for each demo
  method, measured with :func:`lbp_wht.integrations.cost_record.analyze` (the same code as the
  paper-scale cost tables: FlopCounterMode on one training step of the converted model). One
  JSON record per method under ``DIR/records/`` and ``DIR/mini_cost.csv`` in the format
  :func:`lbp_wht.reporting.tables.load_cost` reads (columns model, scope, method, select, r,
  rank, mflops, speedup).
* :func:`write_report`: ``RESULTS.md`` (template ``mini_results.md.j2``) from the run records,
  the cost CSV, the proxy tables and the stage timings of the script: protocol, machine, wall
  times, date, command, and each of the paper's claims read against the numbers, with a
  verdict computed from them (:func:`claims`; never written by hand, so a re-run cannot leave a
  stale verdict behind). Thresholds are stated in the report.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..experiments.vocab import lbp_options, parse_config_tag
from ..records import read_record, read_records, write_record
from .paths import REPO
from .render import render, write_text

MODEL = "mini-efficientformer"
SCOPE = "partial"
#: The target task of the adaptation runs (``dataset_name`` of ``configs/mini/demo/target.py``).
DATASET = "fmnist-5to9"
#: The demo's methods, as config tags (:func:`lbp_wht.experiments.vocab.config_tag`).
DEMO_METHODS = (
    "head-only",
    "full-bp",
    "lora",
    "lora-all",
    "losa",
    "lp-l1-r2",
    "lp-l1-r4",
    "lp-l1-r6",
    "lp-l1-r8",
    "lp-linf-r3",
)


# ------------------------------------------------------------------------------------ cost
def measure_costs(config: str | os.PathLike, out: Path, tags: Sequence[str]) -> Path:
    """Measure every method of ``tags`` (config tags such as ``lp-l1-r4``) on ``config``;
    write ``out/records/<tag>.json`` and ``out/mini_cost.csv``; returns the CSV's path.

    Raises:
        ValueError: a tag that names no method (the message lists the demo's).
    """
    import torch

    from ..integrations.cost_record import analyze, load_config

    keys = {}
    for tag in tags:
        try:
            keys[tag] = parse_config_tag(tag)
        except ValueError as e:
            raise ValueError(f"{e}; the demo's methods: {', '.join(DEMO_METHODS)}") from None
    torch.set_num_threads(1)
    rows = []
    (out / "records").mkdir(parents=True, exist_ok=True)
    for tag, key in keys.items():
        opts = {f"lbp.{k}": v for k, v in lbp_options(key).items()}
        # analyze() feeds the model's own input channels (1: Fashion-MNIST).
        rec = analyze(load_config(config, opts), batch=2, elementwise=False)
        rec["tag"] = tag
        write_record(out / "records" / f"{tag}.json", rec)
        rows.append(
            dict(
                model=MODEL,
                scope=SCOPE,
                method=rec["method"],
                select=rec.get("select") or "",
                r=rec.get("r") if rec.get("r") is not None else "",
                rank=rec.get("rank") if rec.get("rank") is not None else "",
                mflops=rec["backprop_flops"] / 1e6,
                forward_mflops=rec["forward_nograd_flops"] / 1e6,
                trainable_params=rec["trainable_params"],
                tag=tag,
            )
        )
        print(
            f"cost {tag:10s} backprop {rec['backprop_flops'] / 1e6:8.2f} MFLOPs / image", flush=True
        )
    full = next((r["mflops"] for r in rows if r["method"] == "full_bp"), None)
    for r in rows:
        r["speedup"] = round(full / r["mflops"], 3) if full and r["mflops"] else ""
    path = out / "mini_cost.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return path


# ---------------------------------------------------------------------------------- report
HEAD = ("head_only", None, None)
FULL = ("full_bp", None, None)
LORA = ("lora", None, None)
LORA_ALL = ("lora_all", None, None)
LOSA = ("losa", None, None)
LINF3 = ("lbp_wht", "lp_linf", 3)
LHE10 = ("lbp_wht", "lhe", 10)
LP_RS = (2, 4, 6, 8)


def lp(r: int) -> tuple[str, str, int]:
    return ("lbp_wht", "lp_l1", r)


#: Thresholds of the verdicts (stated in RESULTS.md).
CLEAR_MARGIN = 3.0  # points: Full BP over head only for the task to tell methods apart
CLOSE = 1.0  # points: "LP_L1-8 close to Full BP"
SIMILAR_COST = 1.10  # "similar cost": at most 10% more backprop MFLOPs than LoRA-all


class Stats:
    """Accuracy (mean, std, n over seeds) and backprop MFLOPs per method key."""

    def __init__(self, runs_dir: Path, cost_dir: Path, dataset: str = DATASET) -> None:
        from .tables import load_cost, load_runs

        self.runs = load_runs([runs_dir])
        self.cost = load_cost(cost_dir)
        self.dataset = dataset

    def acc(self, key: tuple) -> tuple[float | None, float | None, int]:
        from .tables import cell_stat

        st = cell_stat(self.runs, MODEL, SCOPE, key, self.dataset)
        return st.mean, st.std, st.n

    def mflops(self, key: tuple) -> float | None:
        from .tables import cost_of

        return cost_of(self.cost, MODEL, SCOPE, key)["mflops"]

    def has(self, key: tuple) -> bool:
        return self.acc(key)[2] > 0


def _fmt_acc(st: tuple[float | None, float | None, int]) -> str:
    mean, std, n = st
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + f" (n={n})"


def _se(st: tuple[float | None, float | None, int]) -> float:
    """Standard error of a mean over seeds (0 with one seed: no noise estimate)."""
    mean, std, n = st
    return (std or 0.0) / math.sqrt(n) if n else 0.0


def _noise(a: tuple, b: tuple) -> float:
    """Two standard errors of the difference of two means over seeds; infinite when either
    has a single seed (no noise estimate: no difference counts)."""
    if a[2] < 2 or b[2] < 2:
        return math.inf
    return 2.0 * math.sqrt(_se(a) ** 2 + _se(b) ** 2)


def _n(x: float) -> str:
    """A 2 SE figure for the text."""
    return "n/a, one seed" if math.isinf(x) else f"{x:.2f}"


def claims(s: Stats) -> list[dict[str, Any]]:
    """One dict per claim of the paper the demo can test, in the report's order: ``claim``
    (which one: the template ``mini_claims.j2`` words it), ``verdict`` (computed from the
    numbers with the thresholds above) and the numbers the evidence quotes."""
    out: list[dict[str, Any]] = []

    # 0. Calibration: can the task tell methods apart at all?
    full, head = s.acc(FULL), s.acc(HEAD)
    if full[0] is not None and head[0] is not None:
        d = full[0] - head[0]
        ok = d >= CLEAR_MARGIN and d > _noise(full, head)
        out.append(
            dict(
                claim="calibration",
                verdict="holds" if ok else "does NOT hold",
                full=full,
                head=head,
                diff=d,
                margin=CLEAR_MARGIN,
            )
        )
    elif full[0] is not None:
        out.append(dict(claim="calibration_untested", verdict="not tested"))

    # 1. LBP-WHT vs LoRA-all at similar (or lower) cost.
    la, la_c = s.acc(LORA_ALL), s.mflops(LORA_ALL)
    cands = [
        (r, s.acc(lp(r)), s.mflops(lp(r)))
        for r in LP_RS
        if s.has(lp(r)) and s.mflops(lp(r)) is not None
    ]
    if la[0] is not None and la_c and cands:
        cheap = [(r, a, c) for r, a, c in cands if c <= SIMILAR_COST * la_c]
        better = [r for r, a, _ in cheap if a[0] - la[0] > _noise(a, la)]
        worse = [r for r, a, _ in cheap if la[0] - a[0] > _noise(a, la)]
        if not cheap:
            verdict = "not tested"
        elif better and not worse:
            verdict = "agrees"
        elif better:
            verdict = "partly agrees"
        elif worse and len(worse) == len(cheap):
            verdict = "does NOT agree"
        else:
            verdict = "inconclusive (within noise)" if not worse else "partly disagrees"
        out.append(
            dict(
                claim="lbp_vs_lora_all",
                verdict=verdict,
                similar_cost=SIMILAR_COST,
                lora_all=la,
                lora_all_mflops=la_c,
                rows=[
                    dict(r=r, acc=a, mflops=c, diff=a[0] - la[0], noise=_noise(a, la))
                    for r, a, c in cheap
                ],
                better=better,
                worse=worse,
            )
        )

    # 2. Accuracy rises with r, with diminishing returns (Figures 3, 4).
    pts = [(r, s.acc(lp(r)), s.mflops(lp(r))) for r in LP_RS if s.has(lp(r))]
    if len(pts) >= 3:
        steps = []
        mono = True
        for (r0, a0, c0), (r1, a1, c1) in zip(pts, pts[1:]):
            g = a1[0] - a0[0]
            slope = (
                g / ((c1 - c0) / 1e3) if c0 is not None and c1 is not None and c1 != c0 else None
            )
            steps.append(dict(r0=r0, r1=r1, gain=g, slope=slope, noise=_noise(a0, a1)))
            if g < -_noise(a0, a1):
                mono = False
        diminishing = steps[0]["gain"] > steps[-1]["gain"]
        verdict = (
            "agrees"
            if mono and diminishing
            else ("partly agrees" if mono or diminishing else "does NOT agree")
        )
        out.append(
            dict(
                claim="rises_with_r",
                verdict=verdict,
                steps=steps,
                rising=mono,
                diminishing=diminishing,
            )
        )

    # 3. LP_L1-8 close to Full BP (accuracy), at ~80% of its computation (Sec. 4.2).
    p8 = s.acc(lp(8))
    if p8[0] is not None and full[0] is not None:
        d = p8[0] - full[0]
        ok = abs(d) <= CLOSE or d > 0
        out.append(
            dict(
                claim="lp8_accuracy",
                verdict="agrees" if ok else "does NOT agree",
                close=CLOSE,
                lp8=p8,
                full=full,
                diff=d,
            )
        )
        c8, cf = s.mflops(lp(8)), s.mflops(FULL)
        if c8 and cf:
            out.append(
                dict(
                    claim="lp8_cost",
                    verdict="agrees" if c8 / cf <= 0.9 else "does NOT agree",
                    lp8_mflops=c8,
                    full_mflops=cf,
                )
            )

    # 3b. LP_L1-4: a clear speedup over Full BP for about 1 point of accuracy (Sec. 4.2).
    p4, c4, cf = s.acc(lp(4)), s.mflops(lp(4)), s.mflops(FULL)
    if p4[0] is not None and full[0] is not None and c4 and cf:
        loss = full[0] - p4[0]
        faster, small = cf / c4 > 1.0, loss <= CLOSE
        out.append(
            dict(
                claim="lp4_speedup",
                verdict=(
                    "agrees"
                    if faster and small
                    else ("partly agrees" if faster else "does NOT agree")
                ),
                lp4=p4,
                lp4_mflops=c4,
                full=full,
                full_mflops=cf,
                diff=-loss,
            )
        )

    # 3c. Beyond the paper: LoSA (no backprop through the backbone) against LBP-WHT.
    c = losa_claim(s)
    if c is not None:
        out.append(c)

    # 4. Table 4: LP_L1-4 (R=10) vs LP_Linf-3 (R=9) vs LHE (R=10).
    a4, ainf, alhe = s.acc(lp(4)), s.acc(LINF3), s.acc(LHE10)
    if a4[0] is not None and ainf[0] is not None and alhe[0] is not None:
        d_inf, d_lhe = a4[0] - ainf[0], a4[0] - alhe[0]
        ok = d_inf >= -_noise(a4, ainf) and d_lhe >= -_noise(a4, alhe)
        out.append(
            dict(
                claim="table4",
                verdict="agrees" if ok else "does NOT agree",
                lp4=a4,
                linf3=ainf,
                lhe=alhe,
                diff_linf=d_inf,
                noise_linf=_noise(a4, ainf),
                diff_lhe=d_lhe,
                noise_lhe=_noise(a4, alhe),
            )
        )
    return out


def losa_claim(s: Stats) -> dict[str, Any] | None:
    """ "LoSA costs less backprop than LBP-WHT at matching accuracy" (not a paper claim; the
    LoSA paper's efficiency claim read against LBP-WHT), or None without LoSA or LP_L1 runs.

    For each LP_L1-r with records and a cost: the cost ratio and LoSA's accuracy difference.
    LoSA *matches* LP_L1-r when it is within :data:`CLOSE` points of it, above it, or not below
    it beyond noise (2 SE). Verdict: ``agrees`` when LoSA is cheaper than some LP_L1-r it
    matches (the evidence names the most accurate one); ``does NOT agree`` otherwise, saying
    whether LoSA was cheaper but less accurate than every rank, or not cheaper at all.
    """
    lo, lo_c = s.acc(LOSA), s.mflops(LOSA)
    rows = []
    for r in LP_RS:
        a, c = s.acc(lp(r)), s.mflops(lp(r))
        if a[0] is None or c is None or lo[0] is None or lo_c is None:
            continue
        d, noise = lo[0] - a[0], _noise(lo, a)
        rows.append(
            dict(
                r=r,
                acc=a,
                mflops=c,
                ratio=c / lo_c,
                diff=d,
                noise=noise,
                matches=d >= -CLOSE or -d <= noise,
                cheaper=lo_c < c,
            )  # fmt: skip
        )
    if not rows:
        return None
    matched = [row["r"] for row in rows if row["matches"] and row["cheaper"]]
    cheaper_all = all(row["cheaper"] for row in rows)
    if matched:
        verdict, reason = "agrees", "matched"
    elif cheaper_all:
        verdict, reason = "does NOT agree", "less_accurate"
    else:
        verdict, reason = "does NOT agree", "not_cheaper"
    head = s.acc(HEAD)
    return dict(
        claim="losa_vs_lbp",
        verdict=verdict,
        reason=reason,
        close=CLOSE,
        losa=lo,
        losa_mflops=lo_c,
        rows=rows,
        best=max(matched) if matched else None,
        head=head if head[0] is not None else None,
        head_diff=lo[0] - head[0] if head[0] is not None else None,
        head_noise=_noise(lo, head) if head[0] is not None else None,
    )


def machine_description() -> str:
    """CPU model, cores, RAM, OS, Python and torch of this machine, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPU cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def git_revision(root: Path = REPO) -> str:
    """Short commit of ``root``, marked when the code (not the run's own ``results/``) has
    uncommitted changes; ``unknown`` outside a git checkout."""
    try:
        c = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        d = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (c + (" (with uncommitted changes)" if d else "")) or "unknown"
    except OSError:
        return "unknown"


def table_body(path: Path) -> str:
    """A proxy table's Markdown without its title line."""
    if not path.exists():
        return f"(missing: {path.name})"
    lines = path.read_text().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def minutes(sec: float | None) -> str:
    return "n/a" if sec is None else f"{sec / 60:.1f} min ({sec:.0f} s)"


def _loadavg_text() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def committed_provenance(out: Path) -> dict[str, str]:
    """The provenance of the run whose report is in ``out``: ``timing.json``'s date, machine
    and end load, the git revision its ``RESULTS.md`` names (for :func:`write_report`)."""
    timing = json.loads((out / "timing.json").read_text())
    text = (out / "RESULTS.md").read_text()
    found = re.search(r"^- \*\*Code:\*\* git (\S+)", text, re.M)
    return dict(
        date=timing["date"],
        machine=timing["machine"],
        load=timing["load"],
        git=found.group(1) if found else "?",
    )


def write_report(
    out: Path,
    *,
    stages: dict[str, int] | None = None,
    command: str = "scripts/reproduce_mini.sh",
    jobs: int = 2,
    pretrain_iters: int | None = None,
    adapt_iters: int | None = None,
    seeds: Sequence[int] = (),
    smoke: bool = False,
    start: float | None = None,
    load_start: str = "n/a",
    provenance: dict[str, str] | None = None,
) -> Path:
    """Write ``out/RESULTS.md`` and ``out/timing.json`` from the run's files under ``out``
    (``runs/{pretrain,adapt,spectrum}``, ``cost/mini_cost.csv``, ``table2/``, ``table4/``).

    Args:
        stages: wall time in seconds of each stage of the script (``total`` among them).
        start: the script's start (epoch seconds): records older than it were reused.
        load_start: the load average when the script started (``"a / b / c"``).
        provenance: re-render the report of an earlier run (:func:`committed_provenance`):
            its ``date``, ``machine``, end-of-run ``load`` and ``git`` revision are written
            instead of this machine's, and ``timing.json`` is left as it is.
    """
    stages = dict(stages or {})
    if provenance is None:
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machine, load, git = machine_description(), _loadavg_text(), git_revision()
        (out / "timing.json").write_text(
            json.dumps(
                dict(stages_s=stages, command=command, date=date, machine=machine, load=load),
                indent=2,
            )
            + "\n"
        )
    else:
        date, machine, load = provenance["date"], provenance["machine"], provenance["load"]
        git = f"{provenance['git']} (report re-rendered from its runs at {git_revision()})"
    s = Stats(out / "runs" / "adapt", out / "cost")
    pre = next(iter(read_records(out / "runs" / "pretrain")), None)
    recs = [r for r in read_records(out / "runs" / "adapt") if r.get("status") == "complete"]
    run_walls = [float(r["wall_time_s"]) for r in recs if r.get("wall_time_s")]
    spec = next((out / "runs" / "spectrum").glob("*/spectrum.json"), None)
    fwd = None
    try:
        with open(out / "cost" / "mini_cost.csv") as f:
            fwd = next((float(r["forward_mflops"]) for r in csv.DictReader(f)), None)
    except (OSError, ValueError, KeyError):
        pass
    cores = os.cpu_count() or 1
    try:
        end = float(load.split(" / ")[1]) if provenance else os.getloadavg()[1]
        busy = max(float(load_start.split()[0]), end) > cores + 0.5
    except (ValueError, IndexError, OSError):
        busy = False
    runs = None
    if start is not None:
        all_recs = recs + ([pre] if pre else [])
        t0 = _dt.datetime.fromtimestamp(start, _dt.timezone.utc)
        reused = [
            r
            for r in all_recs
            if r.get("timestamp") and _dt.datetime.fromisoformat(r["timestamp"]) < t0
        ]
        runs = dict(total=len(all_recs), adapt=len(recs), reused=len(reused))
    head = s.acc(HEAD) if s.has(HEAD) else None
    text = render(
        "mini_results.md.j2",
        smoke=smoke,
        date=date,
        command=command,
        machine=machine,
        load_start=load_start,
        load_end=load,
        busy=busy,
        cores=cores,
        git=git,
        total=minutes(stages.get("total")),
        stages=[(k, v) for k, v in stages.items() if k != "total"],
        jobs=jobs,
        mean_run_s=f"{sum(run_walls) / len(run_walls):.0f}" if run_walls else None,
        runs=runs,
        verdicts=claims(s),
        acc=_fmt_acc,
        se2=_n,
        spec=format,
        pre_acc=f"{pre['value']:.2f}" if pre and pre.get("value") is not None else None,
        forward_mflops=f"{fwd:.1f}" if fwd else None,
        pretrain_iters=pretrain_iters,
        adapt_iters=adapt_iters,
        seeds=list(seeds),
        lhe_iters=next(
            (r["lbp"].get("lhe_iters") for r in recs if r.get("select") == "lhe" and r.get("lbp")),
            "?",
        ),
        table2=table_body(out / "table2" / "table2.md"),
        table4=table_body(out / "table4" / "table4.md"),
        head_acc=_fmt_acc(head) if head else None,
        losa=s.has(LOSA),
        head_mflops=f"{s.mflops(HEAD):.2g}" if head and s.mflops(HEAD) else None,
        spectrum_steps=(read_record(spec) or {}).get("steps") if spec else None,
        close=f"{CLOSE:.0f}",
        similar_cost=f"{SIMILAR_COST:.2f}",
    )
    return write_text(out / "RESULTS.md", text)
