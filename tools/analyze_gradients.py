"""Gradient fidelity: LBP-WHT's g_w and g_x against exact backprop, layer by layer.

    python tools/analyze_gradients.py CONFIG [--cfg-options KEY=VALUE ...]
        [--checkpoint [NAME=]PATH ...] [--no-start] [--batch 128] [--seed 0]
        [--out results/fidelity] [--mini results/mini]

For every layer LBP-WHT converts in CONFIG's setting, on one batch of the config's training
data: cosine similarity and relative error of LBP-WHT's g_w and g_x against exact backprop, and
the share of g_y's WHT energy in the kept bases, for LP_L1-r (r = 2..8), LP_Linf-r (r = 2..6),
LHE-R, reflect and zero padding, and all 64 bases (``lbp_wht.fidelity``). States: ``start`` (the
config's ``load_from`` without ``lbp.drop_keys``: the start of adaptation) and each
``--checkpoint`` (e.g. ``end=work_dirs/.../iter_200.pth``). Writes ``OUT/fidelity.csv``,
``OUT/summary.csv``, two figures (``lbp_wht.reporting.tables`` / ``.figures``) and
``OUT/README.md``, which reads the numbers against the CPU demo's accuracies in ``--mini``
(``analysis/fidelity_readme.py``, the verdict by the rules of ``analysis/verdicts.py``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="experiment config (with an `lbp` block)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a state to analyze besides the start (default name: ckpt1, ckpt2, ...)",
    )
    p.add_argument("--no-start", action="store_true", help="skip the start-of-adaptation state")
    p.add_argument("--batch", type=int, default=128, help="training images in the batch")
    p.add_argument("--seed", type=int, default=0, help="seeds the fresh head and the batch")
    p.add_argument("--out", type=Path, default=Path("results/fidelity"))
    p.add_argument("--mini", type=Path, default=Path("results/mini"), help="the CPU demo's results")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--via", default="", help="the command that ran this one (for README.md)")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be positive, got {args.batch}")
    states = {}
    for i, item in enumerate(args.checkpoint, 1):
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (f"ckpt{i}", item)
        if not name or not path or name in states or name == "start":
            p.error(f"--checkpoint {item!r}: give [NAME=]PATH with a new name (not 'start')")
        if not os.path.isfile(path):
            p.error(f"--checkpoint {item!r}: {path} does not exist")
        states[name] = path
    if args.no_start and not states:
        p.error("--no-start without --checkpoint leaves nothing to analyze")
    args.states = states
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import lbp_wht.integrations  # noqa: F401  (CPU shims before mmpretrain)
    from lbp_wht.integrations.cost_record import load_config
    from lbp_wht.integrations.fidelity import analyze_config
    from lbp_wht.reporting import figures, tables

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    import fidelity_readme as report  # an analysis (the verdict), not package code

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        cfg = load_config(args.config, args.cfg_options)
        if not args.no_start and not cfg.get("load_from"):
            print("note: the config has no load_from; 'start' is the random initialisation")
        rows = analyze_config(
            cfg, args.states, start=not args.no_start, batch_size=args.batch, seed=args.seed
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"analyze_gradients.py: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    df = pd.DataFrame(rows)
    full, summary = tables.write_fidelity_csvs(rows, args.out)
    figs = [*figures.plot_fidelity_layers(df, args.out)]
    figs += figures.plot_fidelity_selections(df, args.out)
    starts = {"start": f"`{cfg.get('load_from')}` without `{list(cfg.lbp.get('drop_keys', []))}`"}
    meta = dict(
        config=args.config,
        batch=args.batch,
        seed=args.seed,
        layers=list(dict.fromkeys(r["layer"] for r in rows)),
        states={**starts, **{k: f"`{v}`" for k, v in args.states.items()}},
    )
    command = "python tools/analyze_gradients.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    readme = report.write_readme(
        args.out,
        df,
        command=f"`{args.via}` (runs `{command}`)" if args.via else f"`{command}`",
        machine=report.machine_description(),
        seconds=time.time() - t0,
        meta=meta,
        mini_dir=args.mini if args.mini.is_dir() else None,
    )
    for path in (full, summary, *figs, readme):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
