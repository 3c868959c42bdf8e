"""Helpers of ``scripts/reproduce_mini.sh`` (the CPU mini-reproduction, ``make demo``).

    python scripts/mini_report.py cost   --config CONFIG --out DIR [--methods TAG ...]
    python scripts/mini_report.py report --out DIR --stages NAME=SECONDS ... [--seeds 0 1 2]

``cost``: backprop MFLOPs per training image of the mini model for each demo method (config
tags such as ``full-bp``, ``lp-l1-r4``): ``DIR/records/<tag>.json`` and ``DIR/mini_cost.csv``
(``lbp_wht.reporting.cost_tables.measure_methods``).
``report``: ``DIR/RESULTS.md`` and ``DIR/timing.json`` from the run's records, cost CSV, proxy
tables and the script's stage timings, every verdict computed from the numbers by the rules of
``analysis/verdicts.py`` (``analysis/mini_results.py``, whose options it takes; ``report
--rerender`` rewrites ``RESULTS.md`` of a finished run from its committed files, keeping the
run's own date, machine, load and git revision).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lbp_wht.reporting.paths import CONFIGS

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
#: The demo's model and methods (config tags, :func:`lbp_wht.experiments.vocab.config_tag`).
MODEL, SCOPE = "mini-efficientformer", "partial"
DEMO_METHODS = ("head-only", "full-bp", "lora", "lora-all", "losa", "lp-l1-r2", "lp-l1-r4",
                "lp-l1-r6", "lp-l1-r8", "lp-linf-r3")  # fmt: skip


def measure(config: str | Path, out: Path, tags: Sequence[str]) -> Path:
    """The demo's cost table (``out/mini_cost.csv``) of the methods ``tags``.

    Raises:
        ValueError: a tag that names no method (the message lists the demo's).
    """
    from lbp_wht.experiments.vocab import parse_config_tag
    from lbp_wht.reporting.cost_tables import measure_methods

    for tag in tags:
        try:
            parse_config_tag(tag)
        except ValueError as e:
            raise ValueError(f"{e}; the demo's methods: {', '.join(DEMO_METHODS)}") from None
    return measure_methods(config, out, tags, MODEL, SCOPE)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        sys.path.insert(0, str(ANALYSIS))
        import mini_results

        return mini_results.main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost", help="backprop MFLOPs per method -> records + mini_cost.csv")
    c.add_argument("--config", default=str(CONFIGS / "mini" / "demo" / "target.py"))
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    sub.add_parser("report", help="RESULTS.md (analysis/mini_results.py; see its --help)")
    args = p.parse_args(argv)
    try:
        print(f"cost table: {measure(args.config, args.out, args.methods)}")
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
