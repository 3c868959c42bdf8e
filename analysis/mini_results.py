"""The CPU demo's report, ``results/mini/RESULTS.md`` (``make demo``,
``scripts/reproduce_mini.sh``; template ``templates/mini_results.md.j2``).

    python analysis/mini_results.py --out results/mini [--rerender] [--stages NAME=SECONDS ...]
        [--command ...] [--jobs 2] [--pretrain-iters N] [--adapt-iters N] [--seeds 0 1 2]
        [--smoke] [--start EPOCH_S] [--load-start "a / b / c"]

(``python scripts/mini_report.py report ...`` runs the same.) From the run's files under
``--out`` (``runs/{pretrain,adapt,spectrum}``, ``cost/mini_cost.csv``, ``table2/``, ``table4/``,
made by the package's tools) and the stage timings of the script: protocol, machine, wall
times, date, command, and each of the paper's claims read against the numbers, with the
verdict the rules of ``analysis/verdicts.py`` compute (never written by hand, so a rerun cannot
leave a stale verdict behind). ``--rerender`` rewrites ``RESULTS.md`` of a finished run from
its committed files (after a change of the tables' format), keeping the run's own date,
machine, load and git revision.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from report_common import git_revision, load_average, machine_description, minutes, render
from verdicts import CLOSE, HEAD, LOSA, SIMILAR_COST, Stats, acc_text, claims, se2_text

from lbp_wht.io import atomic_write
from lbp_wht.runs.records import read_record, read_records


def table_body(path: Path) -> str:
    """A proxy table's Markdown without its title line."""
    if not path.exists():
        return f"(missing: {path.name})"
    lines = path.read_text().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def committed_provenance(out: Path) -> dict[str, str]:
    """The provenance of the run whose report is in ``out``: ``timing.json``'s date, machine,
    loads and adaptation runs at a time, the git revision its ``RESULTS.md`` names (for
    :func:`write_report`; a ``timing.json`` older than its ``load_start`` and ``jobs`` fields:
    those two as the ``RESULTS.md`` states them)."""
    timing = json.loads((out / "timing.json").read_text())
    text = (out / "RESULTS.md").read_text()
    found = re.search(r"^- \*\*Code:\*\* git (\S+)", text, re.M)
    start = re.search(r"load average (.+?) at the start", text)
    jobs = re.search(r"; (\d+) adaptation runs at a time\)", text)
    runs = re.search(
        r"\*\*Runs:\*\* (\d+) training runs \((\d+) adaptation \+ pretraining\), "
        r"(?:(\d+) of them reused|all run)",
        text,
    )
    return dict(
        date=timing["date"],
        machine=timing["machine"],
        load=timing["load"],
        git=found.group(1) if found else "?",
        load_start=timing.get("load_start") or (start.group(1) if start else "n/a"),
        jobs=timing.get("jobs") or (int(jobs.group(1)) if jobs else 2),
        start=timing.get("start"),
        runs=dict(total=int(runs[1]), adapt=int(runs[2]), reused=int(runs[3] or 0))
        if runs
        else None,
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
        machine, load, git = machine_description(), load_average(), git_revision()
        atomic_write(
            out / "timing.json",
            json.dumps(
                dict(
                    stages_s=stages,
                    command=command,
                    date=date,
                    machine=machine,
                    load=load,
                    load_start=load_start,
                    jobs=jobs,
                    start=start,
                ),
                indent=2,
            )
            + "\n",
        )
    else:
        date, machine, load = provenance["date"], provenance["machine"], provenance["load"]
        git = f"{provenance['git']} (report re-rendered from its runs at {git_revision()})"
    s = Stats(out / "runs" / "adapt", out / "cost")
    pre = next(iter(read_records(out / "runs" / "pretrain")), None)
    recs = [r for r in read_records(out / "runs" / "adapt") if r.get("status") == "complete"]
    run_walls = [float(r["wall_time_s"]) for r in recs if r.get("wall_time_s")]
    # not given (a re-render): what the records say
    if pretrain_iters is None and pre:
        pretrain_iters = pre.get("iterations")
    if adapt_iters is None:
        adapt_iters = next((r["iterations"] for r in recs if r.get("iterations")), None)
    seeds = list(seeds) or sorted({int(r["seed"]) for r in recs if r.get("seed") is not None})
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
    elif provenance:  # a re-render of a report whose timing.json predates its start field
        runs = provenance.get("runs")
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
        acc=acc_text,
        se2=se2_text,
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
        head_acc=acc_text(head) if head else None,
        losa=s.has(LOSA),
        head_mflops=f"{s.mflops(HEAD):.2g}" if head and s.mflops(HEAD) else None,
        spectrum_steps=(read_record(spec) or {}).get("steps") if spec else None,
        close=f"{CLOSE:.0f}",
        similar_cost=f"{SIMILAR_COST:.2f}",
    )
    return atomic_write(out / "RESULTS.md", text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stages", nargs="*", default=[], help="NAME=seconds wall times")
    p.add_argument("--command", default="scripts/reproduce_mini.sh")
    p.add_argument(
        "--jobs",
        type=int,
        help="adaptation runs at a time (default 2; --rerender: the run's)",
    )
    p.add_argument("--pretrain-iters", type=int, help="default: the pretraining record's")
    p.add_argument("--adapt-iters", type=int, help="default: the adaptation records'")
    p.add_argument("--seeds", nargs="*", type=int, default=[], help="default: the records'")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--start", type=float, help="script start (epoch s): runs newer ran now")
    p.add_argument("--load-start", default="n/a", help="load average when the script started")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="re-render the report of the run in --out (its date, machine, loads and git "
        "revision kept; stages, command, runs at a time and start from its timing.json, "
        "iterations and seeds from its records, unless given)",
    )
    args = p.parse_args(argv)
    stages = {}
    for item in args.stages:
        name, _, sec = item.partition("=")
        if not name or not sec.isdigit():
            p.error(f"--stages takes NAME=SECONDS (whole seconds), got {item!r}")
        stages[name] = int(sec)
    if not args.out.is_dir():
        p.error(f"--out {args.out} is not a directory (the mini run's output folder)")
    provenance = None
    if args.rerender:
        try:
            provenance = committed_provenance(args.out)
            timing = json.loads((args.out / "timing.json").read_text())
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--rerender needs the run's timing.json and RESULTS.md in --out ({e})")
        stages = stages or timing["stages_s"]
        if args.command == "scripts/reproduce_mini.sh":
            args.command = timing["command"]
        if args.load_start == "n/a":
            args.load_start = provenance["load_start"]
        if args.jobs is None:
            args.jobs = provenance["jobs"]
        if args.start is None:
            args.start = provenance["start"]
    path = write_report(
        args.out,
        stages=stages,
        command=args.command,
        jobs=2 if args.jobs is None else args.jobs,
        pretrain_iters=args.pretrain_iters,
        adapt_iters=args.adapt_iters,
        seeds=args.seeds,
        smoke=args.smoke,
        start=args.start,
        load_start=args.load_start,
        provenance=provenance,
    )
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
