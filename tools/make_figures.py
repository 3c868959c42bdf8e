"""Figures 3, 4 and 5 of the paper from run records, cost records and a saved g_y spectrum.

    python tools/make_figures.py [--runs WORK_ROOT ...] [--cost results/cost]
                                 [--paper results/paper] [--spectrum PATH/spectrum.json]
                                 [--figures 3 4 5] [--out results/figures]
                                 [--models M ...] [--dataset cifar100]

Figure 3: accuracy vs backprop MFLOPs per model (LBP-WHT LP_L1-r curve, baselines as
markers, the paper's points dashed); Figure 4: its marginal accuracy; Figure 5: the WHT
spectrum of g_y saved by the Figure 5 run. PNG + PDF + the plotted numbers as CSV each
(``lbp_wht.reporting.figures``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lbp_wht.reporting.paths import COST, PAPER, REPO, RESULTS

FIGURES = ("3", "4", "5")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--runs",
        nargs="+",
        help="directories searched for <run>/record.json and spectrum.json "
        "(default $WORK_ROOT or work_dirs/paper)",
    )
    p.add_argument("--cost", default=str(COST))
    p.add_argument("--paper", default=str(PAPER))
    p.add_argument("--spectrum", help="spectrum.json for Figure 5 (default: found under --runs)")
    p.add_argument("--figures", nargs="+", default=list(FIGURES), choices=FIGURES, metavar="N")
    p.add_argument("--out", default=str(RESULTS / "figures"))
    p.add_argument("--models", nargs="+", help="models of Figures 3/4 (default: Table 2's)")
    p.add_argument("--dataset", default="cifar100", help="accuracy of Figures 3/4")
    from lbp_wht.reporting import tables

    tables.add_where_argument(p)
    args = p.parse_args(argv)

    try:
        where = tables.parse_where(args.where)
        tables.check_models(args.models)
        (dataset,) = tables.check_datasets([args.dataset])
    except ValueError as e:
        p.error(str(e))
    if args.spectrum and not Path(args.spectrum).is_file():
        p.error(f"--spectrum {args.spectrum} does not exist")
    for name, d in [*(("runs", r) for r in args.runs or []), ("cost", args.cost)]:
        if not Path(d).exists():
            print(f"make_figures: warning: --{name} {d} does not exist", file=sys.stderr)
    args.runs = args.runs or [os.environ.get("WORK_ROOT", str(REPO / "work_dirs" / "paper"))]
    from lbp_wht.reporting.figures import make_figures  # matplotlib: after the checks

    try:
        written = make_figures(
            runs_roots=args.runs,
            cost_dir=args.cost,
            paper_dir=args.paper,
            out=args.out,
            figures=args.figures,
            models=args.models,
            dataset=dataset,
            spectrum=args.spectrum,
            where=where,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"make_figures: {e}") from None
    for fig, paths in written.items():
        print(f"figure {fig}: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
