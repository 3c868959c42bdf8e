"""LBP-WHT beside its successors (LoRA-FA, VeLoRA, WTA-CRS, HOT, INSTANT) and the paper's
baselines, on one harness: one CSV per measurement under ``--out`` (default
``results/benchmark``), each with a ``<name>.run.json`` (command, machine, date). ``scripts/reproduce_benchmark.sh`` runs them all.

    python tools/benchmark_methods.py layers --threads 2 --batches 1 64     # per-layer latency
    python tools/benchmark_methods.py cost                                  # FLOPs, saved bytes
    python tools/benchmark_methods.py step --threads 2 --batch 16           # training step
    python tools/benchmark_methods.py fidelity --config configs/mini/demo/target.py \\
        --cfg-options load_from=work_dirs/mini/pretrain/source_s0/iter_400.pth
    python tools/benchmark_methods.py layers --quick --out /tmp/b           # smoke test
    python tools/benchmark_methods.py layers --device cuda --batches 1 64   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmengine.config import DictAction

#: Method keys (method, select, r) of the cost and step rows.
PRESET_METHODS = (
    ("full_bp", None, None), ("lora", None, None), ("lora_all", None, None),
    ("lora_fa", None, None), ("velora", None, None), ("wta_crs", None, None),
    ("hot", None, None), ("instant", None, None),
    ("lbp_wht", "lp_l1", 2), ("lbp_wht", "lp_l1", 4), ("lbp_wht", "lp_l1", 6),
    ("lbp_wht", "lp_l1", 8), ("lbp_wht", "lp_linf", 3), ("lbp_wht+lora_all", "lp_l1", 4),
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from lbp_wht.benchmark import check_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["layers", "cost", "step", "fidelity"])
    ap.add_argument("--out", type=Path, default=Path("results/benchmark"))
    ap.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    ap.add_argument("--device", default="cpu", help="layers, step: cpu or cuda[:i]")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (layers, step)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="layers: batches")
    ap.add_argument("--batch", type=int, default=16, help="step: images per step")
    ap.add_argument("--config", help="fidelity: the experiment config (with its data)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny shapes and models")
    args = ap.parse_args(argv)
    check_args(ap, args, ("threads", "rounds", "batch", "batches"), device=True)
    if args.device != "cpu" and args.what not in ("layers", "step"):
        ap.error(f"--device applies to layers and step, not {args.what}")
    if args.what == "fidelity" and not args.config:
        ap.error("fidelity needs --config (e.g. configs/mini/demo/target.py)")
    return args


def measure(args: argparse.Namespace) -> list[dict]:
    from lbp_wht.benchmark import compare, latency

    if args.what == "layers":
        shapes = {**latency.TABLE8_SHAPES, **latency.VIT_B_SHAPES}
        if args.quick:
            shapes, args.batches, args.rounds = latency.TINY_SHAPES, [2], 2
        return compare.layer_latency(shapes, args.batches, rounds=args.rounds, device=args.device)
    if args.what == "cost":
        from lbp_wht.integrations import cost_record as cr

        rows = []
        model = "mini-efficientformer" if args.quick else "efficientformer-l1"
        for scope in ("partial", "full"):  # at the model's input size (ModelSpec.img_size)
            for method, select, r in PRESET_METHODS:
                cfg = cr.config_from_flags(model, method, scope, select=select, r=r)
                rec = cr.analyze(cfg, elementwise=False)
                keep = ("model", "scope", "method", "select", "r", "backprop_flops", "int_macs",
                        "saved_activation_bytes", "trainable_params", "converted_layers")  # fmt: skip
                rows.append({k: rec[k] for k in keep})
                print(f"{model} {scope:<7} {method:<16} {select or '':<7} {r or '':>2} "
                      f"backprop {rec['backprop_flops'] / 1e6:10.1f} MFLOPs")  # fmt: skip
        name = "vit_tiny_patch16_224" if args.quick else "vit_base_patch16_224"
        for row in compare.vit_cost(name=name, batch=1 if args.quick else 2):
            rows.append(row | {"backprop_flops": row["backprop_mflops"] * 1e6,
                               "int_macs": row["int_mmacs"] * 1e6,
                               "saved_activation_bytes": row["saved_mib"] * 2**20})  # fmt: skip
        return rows
    if args.what == "step":
        from lbp_wht.benchmark.step import run_step
        from lbp_wht.experiments.methods import method_spec

        # LoRA on the attention projections only is LoRA-all here (one selection: LP_L1)
        methods = [
            (m, r) for m, s, r in PRESET_METHODS
            if method_spec(m).layers == "all" and s in (None, "lp_l1")
        ]  # fmt: skip
        kw = dict(model="mini-efficientformer", size=28, batch=2) if args.quick else {}
        return run_step(
            **({"batch": args.batch, "scopes": ["partial"], "rounds": args.rounds} | kw),
            methods=methods, threads=args.threads, device=args.device,
        )  # fmt: skip
    from lbp_wht.experiments.methods import method_spec
    from lbp_wht.integrations.cost_record import load_config
    from lbp_wht.integrations.fidelity import analyze_methods

    cfg = load_config(args.config, args.cfg_options)
    methods = [
        k
        for k in PRESET_METHODS
        if method_spec(k[0]).trains == "scope" and not method_spec(k[0]).reference
    ]
    return analyze_methods(cfg, methods, batch_size=16 if args.quick else 128)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import torch

    from lbp_wht.io import atomic_write, utc_now
    from lbp_wht.reporting.latency_tables import run_meta

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    rows = measure(args)
    dev = args.device.split(":")[0]
    name = {"layers": f"layers_{dev}", "step": f"step_{dev}"}.get(args.what, args.what)
    argv_ = sys.argv[1:] if argv is None else argv
    meta = run_meta(" ".join(["tools/benchmark_methods.py", *argv_])) | {"date": utc_now()}
    csv = args.out / f"{name}.csv"
    atomic_write(csv, pd.DataFrame(rows).to_csv(index=False))
    atomic_write(args.out / f"{name}.run.json", json.dumps(meta, indent=1) + "\n")
    print(f"wrote {csv} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
