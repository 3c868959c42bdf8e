"""Regenerate the paper's cost columns (Tables 1, 2, 3, 5, 6, 7) into ``results/cost/``.

    python tools/make_cost_tables.py [--tables 1 2 3 5 6 7] [--out results/cost] [--force]
                                     [--device cpu]

For every row of the paper's cost tables (``results/paper/*.csv``) the row's experiment config
is measured (random init, batch 1, figures per image; one JSON record per config in
``<out>/records/``, reused unless ``--force``) and ``table{1,2,3,5,6,7}.{csv,md}`` are written
(``lbp_wht.reporting.cost_tables``). ``run_info.json`` says how: a run of every table replaces
it, a partial run (``--tables`` a subset) adds itself to it and leaves the other files as they
are. Why ours differ from the paper's (the accounting hypotheses, ``agreement.csv``,
``README.md``): ``python analysis/cost_agreement.py`` afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys

from lbp_wht.reporting.paths import COST


def main(argv: list[str] | None = None) -> int:
    from lbp_wht.reporting.cost_tables import COST_TABLES, CostTables

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tables", nargs="+", type=int, default=list(COST_TABLES), choices=COST_TABLES, metavar="N"
    )
    p.add_argument("--out", default=str(COST), help="output folder (default results/cost)")
    p.add_argument("--records", help="cost records folder (default OUT/records)")
    p.add_argument("--force", action="store_true", help="re-measure even if a record exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be positive, got {args.batch}")
    cost = CostTables(
        args.out, records=args.records, force=args.force, device=args.device, batch=args.batch
    )
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    command = "python tools/make_cost_tables.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        meta = cost.run(args.tables, command=command)
    except FileNotFoundError as e:
        raise SystemExit(f"make_cost_tables: {e}") from None
    print(f"[cost] done in {meta['seconds']} s; tables {sorted(args.tables)} -> {args.out}")
    print("[cost] the hypotheses, agreement.csv and README.md: python analysis/cost_agreement.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
