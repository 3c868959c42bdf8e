"""Run records + cost records + the paper's numbers -> Tables 2-8 in the paper's layout.

    python tools/make_tables.py [--runs WORK_ROOT ...] [--cost results/cost]
                                [--latency results/latency] [--paper results/paper]
                                [--tables 2 3 4 5 6 7 8] [--out results]
                                [--models M ...] [--datasets D ...]
                                [--where lbp.KEY=VALUE ...]

For every table it writes ``<out>/table<N>/table<N>.{md,csv,tex}`` (``lbp_wht.reporting.tables``):
our numbers (mean ± std over seeds of the complete run records; cost from ``results/cost``,
latency from ``results/latency``) beside the paper's (``results/paper/*.csv``). Missing runs or
costs are empty cells, never filled in. ``--extra-rows`` adds rows that exist only in the
records, marked ``(extra)``; ``--models`` / ``--datasets`` restrict the rows and dataset
columns (a model the paper does not have, e.g. ``mini-efficientformer``, gives proxy tables).
``--where`` keeps the records of one setting: a grid over ``lbp.padding`` or a successor's
``lbp.options`` trains several runs per table cell, and the tables of each value are built
apart (``--where lbp.options.keep_fraction=0.3 --out results/kf0.3``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lbp_wht.reporting.paths import COST, LATENCY, PAPER, REPO, RESULTS


def main(argv: Sequence[str] | None = None) -> int:
    from lbp_wht.reporting import tables

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--runs",
        nargs="+",
        help="directories searched for <run>/record.json (default $WORK_ROOT or work_dirs/paper)",
    )
    p.add_argument("--cost", default=str(COST), help="cost CSV directory")
    p.add_argument("--latency", default=str(LATENCY), help="Table 8 CSVs")
    p.add_argument("--paper", default=str(PAPER), help="paper reference")
    p.add_argument(
        "--tables",
        nargs="+",
        default=list(tables.TABLES),
        choices=tables.TABLES,
        metavar="N",
        help="tables to build (2-8)",
    )
    p.add_argument("--out", default=str(RESULTS), help="output root")
    p.add_argument("--models", nargs="+", help="only / also these models (preset names)")
    p.add_argument("--datasets", nargs="+", help="dataset columns (paper names, e.g. cifar100)")
    p.add_argument(
        "--extra-rows",
        action="store_true",
        help="also show rows the records have but the paper's table does not (marked extra)",
    )
    tables.add_where_argument(p)
    args = p.parse_args(argv)
    try:
        where = tables.parse_where(args.where)
        tables.check_models(args.models)
        datasets = tables.check_datasets(args.datasets)
    except ValueError as e:
        p.error(str(e))
    if not Path(args.paper).is_dir():
        p.error(f"--paper {args.paper} is not a directory (the typed paper reference)")
    given = [("runs", d) for d in args.runs or []] + [
        ("cost", args.cost),
        ("latency", args.latency),
    ]
    for name, d in given:
        if not Path(d).exists():
            print(f"make_tables: warning: --{name} {d} does not exist", file=sys.stderr)
    args.runs = args.runs or [os.environ.get("WORK_ROOT", str(REPO / "work_dirs" / "paper"))]

    try:
        runs = tables.load_runs(args.runs, where)
        cost = tables.load_cost(args.cost)
    except ValueError as e:
        raise SystemExit(f"make_tables: {e}") from None
    print(
        f"make_tables: {len(runs)} complete run records under {args.runs}, "
        f"{len(cost)} cost rows from {args.cost}"
    )
    have = set(runs["dataset"]) if not runs.empty else set()
    if datasets and have and not have & set(datasets):
        print(
            f"make_tables: warning: no complete run of {datasets} under {args.runs}; the "
            f"records there are of {sorted(have)}",
            file=sys.stderr,
        )
    try:
        done = tables.make_tables(
            runs=runs,
            cost=cost,
            paper_dir=args.paper,
            out=args.out,
            tables=args.tables,
            latency_dir=args.latency,
            models=args.models,
            datasets=datasets,
            extra_rows=args.extra_rows,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"make_tables: {e}") from None
    for t, paths in done:
        filled = sum(s.mean is not None for r in t.rows for s in r.ours.values())
        total = sum(len(r.ours) for r in t.rows)
        print(f"  {t.name}: {len(t.rows)} rows, {filled}/{total} of our cells filled -> {paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
