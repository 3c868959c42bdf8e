"""Backprop FLOPs and training memory of one experiment, per training image.

    python tools/analyze_cost.py CONFIG [--cfg-options lbp.r=6 ...] [--batch 1]
    python tools/analyze_cost.py --model efficientformer-l1 --method lbp_wht --scope partial --r 4

Builds the config's real model, injects the method exactly as training does and counts one
training step (``lbp_wht.integrations.cost_record.analyze``: FlopCounterMode backprop FLOPs,
the analytic Table 1 model per layer, saved activations, weight-gradient bytes, trainable
parameters). Prints a table and, with ``--out``, writes a JSON record (``lbp_wht.runs.records``
format) and with ``--csv`` a per-layer CSV. All figures are per training image (a batch of
``--batch`` divided by the batch size). Works on GPU with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    from lbp_wht.experiments.vocab import METHOD_SPECS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (with an `lbp` block)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    p.add_argument("--model", help="preset model (instead of CONFIG)")
    p.add_argument(
        "--method",
        default="lbp_wht",
        help=" | ".join(METHOD_SPECS),
    )
    p.add_argument("--scope", default="partial", help="partial | full")
    p.add_argument("--select", default=None, help="lbp.select (default: the lbp block's)")
    p.add_argument("--r", type=int, default=None, help="lbp.r (default: the lbp block's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument(
        "--size", type=int, nargs="+", default=None, help="input side, or H W (default: config's)"
    )
    p.add_argument(
        "--batch", type=int, default=1, help="batch for the measured step (figures are per image)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-elementwise", action="store_true", help="skip the elementwise estimate")
    p.add_argument("--out", help="write the JSON record here")
    p.add_argument("--csv", help="write the per-layer CSV here")
    p.add_argument("--max-layers", type=int, default=60)
    args = p.parse_args(argv)
    if not args.config and not args.model:
        p.error("give a CONFIG or --model/--method/--scope")
    if args.batch < 1:
        p.error(f"--batch must be positive, got {args.batch}")
    if args.size and (len(args.size) > 2 or min(args.size) < 1):
        p.error(f"--size takes one side or H W (positive), got {args.size}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from lbp_wht.integrations.cost_record import (
        analyze,
        config_from_flags,
        format_record,
        load_config,
        write_layers_csv,
    )
    from lbp_wht.runs.records import write_record

    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        if args.config:
            cfg = load_config(args.config, args.cfg_options)
        else:
            cfg = config_from_flags(
                args.model,
                args.method,
                args.scope,
                select=args.select,
                r=args.r,
                num_classes=args.num_classes,
                size=args.size[0] if args.size else None,
            )
            if args.cfg_options:
                cfg.merge_from_dict(args.cfg_options)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"analyze_cost.py: {e}") from None
    size = None
    if args.size:
        size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    rec = analyze(
        cfg,
        batch=args.batch,
        device=args.device,
        size=size,
        elementwise=not args.no_elementwise,
    )
    rec["command"] = " ".join(
        [osp.relpath(sys.argv[0]) if sys.argv else "tools/analyze_cost.py"]
        + (argv if argv is not None else sys.argv[1:])
    )
    print(format_record(rec, args.max_layers))
    if args.out:
        write_record(args.out, rec)
        print(f"\nrecord: {args.out}")
    if args.csv:
        write_layers_csv(rec, args.csv)
        print(f"per-layer CSV: {args.csv}")
    return rec


if __name__ == "__main__":
    main()
