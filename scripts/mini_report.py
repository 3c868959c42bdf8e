"""Helpers of ``scripts/reproduce_mini.sh`` (the CPU mini-reproduction, ``make demo``).

    python scripts/mini_report.py cost   --config CONFIG --out DIR [--methods TAG ...]
    python scripts/mini_report.py report --out DIR --stages NAME=SECONDS ... [--seeds 0 1 2]

``cost``: backprop MFLOPs per training image of the mini model for each demo method (config
tags such as ``full-bp``, ``lp-l1-r4``): ``DIR/records/<tag>.json`` and ``DIR/mini_cost.csv``.
``report``: ``DIR/RESULTS.md`` and ``DIR/timing.json`` from the run's records, cost CSV, proxy
tables and the script's stage timings, every verdict computed from the numbers
(``lbp_wht.reporting.mini``). ``report --rerender`` rewrites ``RESULTS.md`` of a finished run
from its committed files (after a change of the tables' format), keeping the run's own date,
machine, load and git revision.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lbp_wht.reporting.paths import CONFIGS


def main(argv: Sequence[str] | None = None) -> int:
    from lbp_wht.reporting import mini

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost", help="backprop MFLOPs per method -> records + mini_cost.csv")
    c.add_argument("--config", default=str(CONFIGS / "mini" / "demo" / "target.py"))
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--methods", nargs="+", default=list(mini.DEMO_METHODS))
    r = sub.add_parser("report", help="RESULTS.md from records, cost, tables and timings")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--stages", nargs="*", default=[], help="NAME=seconds wall times")
    r.add_argument("--command", default="scripts/reproduce_mini.sh")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--pretrain-iters", type=int)
    r.add_argument("--adapt-iters", type=int)
    r.add_argument("--seeds", nargs="*", type=int, default=[])
    r.add_argument("--smoke", action="store_true")
    r.add_argument("--start", type=float, help="script start (epoch s): runs newer ran now")
    r.add_argument("--load-start", default="n/a", help="load average when the script started")
    r.add_argument(
        "--rerender",
        action="store_true",
        help="re-render the report of the run in --out (its date, machine, load and git "
        "revision kept; stages and command from its timing.json unless given)",
    )
    args = p.parse_args(argv)
    if args.cmd == "cost":
        try:
            print(f"cost table: {mini.measure_costs(args.config, args.out, args.methods)}")
        except (ValueError, FileNotFoundError) as e:
            p.error(str(e))
        return 0
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
            provenance = mini.committed_provenance(args.out)
            timing = json.loads((args.out / "timing.json").read_text())
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--rerender needs the run's timing.json and RESULTS.md in --out ({e})")
        stages = stages or timing["stages_s"]
        if args.command == "scripts/reproduce_mini.sh":
            args.command = timing["command"]
    path = mini.write_report(
        args.out,
        stages=stages,
        command=args.command,
        jobs=args.jobs,
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
