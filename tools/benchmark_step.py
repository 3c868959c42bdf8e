"""Wall-clock time of a whole training step (forward + backward + AdamW) per method.

EfficientFormer-L1 (224 x 224) partial and full training: Full BP, LoRA-all and LBP-WHT
LP_L1-2/4/6, built by the presets exactly as training builds them, interleaved, medians, with
the FLOP bound of the whole step beside each (see ``lbp_wht.benchmark.step``). Usage
(regenerates ``results/latency/step_cpu.{csv,md,png,pdf}``)::

    python tools/benchmark_step.py --threads 1 --batch 16 --rounds 12
    python tools/benchmark_step.py --device cuda --batch 64 --amp bf16 --scopes partial
    python tools/benchmark_step.py --quick          # batch 2, 2 rounds, 64 px model: smoke test
"""

from __future__ import annotations

import argparse
import sys

from lbp_wht.reporting.paths import LATENCY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from lbp_wht.benchmark import check_args
    from lbp_wht.benchmark.step import AMP_DTYPES
    from lbp_wht.benchmark.timing import ALLOCATORS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientformer-l1")
    ap.add_argument("--scopes", nargs="+", default=["partial", "full"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: the 28 px mini model, batch 2, 2 rounds, 0 warm-up",
    )
    ap.add_argument("--out", default=str(LATENCY))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--allocator", choices=ALLOCATORS, default="reuse")
    args = ap.parse_args(argv)
    check_args(ap, args, ("batch", "size", "threads", "rounds", "num_classes"), ("warmup",), True)
    from lbp_wht.experiments.models import preset_models
    from lbp_wht.experiments.vocab import SCOPES

    bad = [s for s in args.scopes if s not in SCOPES]
    if bad:
        ap.error(f"--scopes {bad} unknown; choose from {list(SCOPES)}")
    if args.quick:
        args.model, args.batch, args.size, args.rounds, args.warmup = (
            "mini-efficientformer", 2, 28, 2, 0)  # fmt: skip
    if args.model not in preset_models():
        ap.error(f"--model {args.model!r} is not a preset model; choose one of {preset_models()}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from lbp_wht.benchmark.step import run_step
    from lbp_wht.benchmark.timing import configure_allocator
    from lbp_wht.reporting import latency_tables as lt

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    cpu = args.device == "cpu"
    allocator = configure_allocator(args.allocator) if cpu else ""
    rows = run_step(
        model=args.model,
        scopes=args.scopes,
        batch=args.batch,
        size=args.size,
        rounds=args.rounds,
        warmup=args.warmup,
        num_classes=args.num_classes,
        device=args.device,
        amp=args.amp,
        threads=args.threads if cpu else "",
        allocator=allocator,
    )
    if not args.no_write:
        argv_ = sys.argv[1:] if argv is None else argv
        meta = lt.run_meta(" ".join(["tools/benchmark_step.py", *argv_]))
        print("wrote " + ", ".join(map(str, lt.write_step(rows, args.out, meta))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
