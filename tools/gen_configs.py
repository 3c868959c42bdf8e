"""Write the generated configs: one per experiment row of the paper's Tables 2-7, Figure 5 and
the mini CPU configs, plus the model and data bases they inherit.

    python tools/gen_configs.py            # (re)write the generated files under configs/
    python tools/gen_configs.py --check    # exit 1 if a generated file is missing or stale
    python tools/gen_configs.py --list     # counts per table

What is generated from what: ``lbp_wht/experiments/configs.py``. Edit the generator or the
hand-written ``_base_`` files (datasets, resolutions, schedules, method, runtimes), never a
generated file. A config's name says what it runs: ``<model>_<scope>_<method>_<dataset>.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from lbp_wht.experiments.catalog import CONFIGS_DIR
from lbp_wht.experiments.configs import generated_files, write_configs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    p.add_argument("--list", action="store_true", help="print counts per table")
    args = p.parse_args(argv)
    if args.list:
        counts = Counter(f.table for f in generated_files())
        for k, v in counts.items():
            print(f"{k:12s} {v:4d}")
        print(f"{'total':12s} {sum(counts.values()):4d}")
        return 0
    stale = write_configs(CONFIGS_DIR, check=args.check)
    n = len(generated_files())
    if args.check:
        if stale:
            print("stale or missing generated configs (run tools/gen_configs.py):")
            print("\n".join(f"  {s}" for s in stale))
            return 1
        print(f"{n} generated files up to date")
        return 0
    print(f"wrote {len(stale)} of {n} generated files under {CONFIGS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
