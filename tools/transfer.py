"""EfficientNet-Lite0 (ImageNet) adapted to Fashion-MNIST on CPU: its 7x7 tail with head only,
Full BP, LoRA-all, LoSA and LBP-WHT LP_L1-2/4/8, BatchNorm on running statistics and (Full BP,
LP_L1-2/4) in train mode, several seeds (``lbp_wht.integrations.transfer``); then the table,
figure and RESULTS.md (``analysis/transfer_results.py``: the package's table and figure, the
verdicts of ``analysis/verdicts.py``).

    python tools/transfer.py [--smoke] [--out results/transfer] [--work work_dirs/transfer]
        [--jobs 2] [--seeds 0 1 2] [--steps N] [--batch N] [--lr X]
        [--train-per-class N] [--test-per-class N] [--fmnist DIR]

``--smoke``: a few images and steps, one seed, four methods (CI; under a minute).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a quick check of every step")
    p.add_argument("--out", type=Path, default=None, help="results (default results/transfer)")
    p.add_argument("--work", type=Path, default=None, help="cached features (default work_dirs/)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument(
        "--successors", action="store_true", help="add LoRA-FA, VeLoRA, WTA-CRS, HOT, INSTANT"
    )
    p.add_argument(
        "--fmnist",
        default=os.environ.get("FMNIST_ROOT", "/usr/share/datasets/fashion-mnist"),
        help="folder of the Fashion-MNIST idx files (env FMNIST_ROOT)",
    )
    for name, kind in (("steps", int), ("batch", int), ("lr", float),
                       ("train-per-class", int), ("test-per-class", int)):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, default=None, help="override the protocol")
    p.add_argument("--command", default="", help="the command that ran this one (for RESULTS.md)")
    p.add_argument("--load-start", default="", help="load average at the start (for RESULTS.md)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be positive, got {args.jobs}")
    for name in ("steps", "batch", "train_per_class", "test_per_class"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    load_start = args.load_start
    if not load_start:
        try:
            load_start = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        except OSError:
            load_start = "n/a"
    from lbp_wht.integrations import transfer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    from transfer_results import write_report  # an analysis (verdicts), not package code

    protocol = transfer.smoke_protocol() if args.smoke else transfer.Protocol()
    overrides = {
        k: getattr(args, k)
        for k in ("steps", "batch", "lr", "train_per_class", "test_per_class")
        if getattr(args, k) is not None
    }
    protocol = replace(protocol, **overrides)
    out = args.out or Path("results/transfer-smoke" if args.smoke else "results/transfer")
    work = args.work or (out / "work" if args.smoke else Path("work_dirs/transfer"))
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    methods = transfer.SMOKE_METHODS if args.smoke else transfer.METHODS
    if args.successors:
        methods = methods + transfer.SUCCESSOR_METHODS
    try:
        run = transfer.run_transfer(
            args.fmnist, work, methods=methods, seeds=seeds, protocol=protocol, jobs=args.jobs
        )
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"transfer.py: {e}", file=sys.stderr)
        return 2
    command = args.command or "python tools/transfer.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    path = write_report(
        out,
        run,
        command=command,
        smoke=args.smoke,
        load_start=load_start,
        total_s=time.time() - t0,
    )
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
