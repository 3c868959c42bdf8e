"""End-to-end backward time of one training step: EfficientFormer-L1 partial training (preset
methods), or a timm model with every linear layer converted.

Full BP, LoRA-all (rank 8) and LBP-WHT LP_L1-2/4/6 of EfficientFormer-L1 (224 x 224), built by
the presets exactly as training builds them; or, with ``--timm NAME``, timm ``NAME``
(``pretrained=False``, every parameter trainable) as Full BP and as LBP-WHT LP_L1-r for each
``--r`` (``lbp_wht.convert(model, [dict(target="all-linear", method="lbp", radius=r)])``, the
README's example). The backward of the step is timed (forward excluded), methods interleaved,
beside the counted FLOP ratio and, for timm models, the share of the backward spent outside the
linear layers (see ``lbp_wht.benchmark.e2e``). Usage (regenerates
``results/latency/e2e_backward_cpu.{csv,md,png,pdf}`` and
``results/latency/e2e_timm_<model>_cpu.{csv,md}``)::

    python tools/benchmark_backward_e2e.py --threads 1 --batch 8
    python tools/benchmark_backward_e2e.py --timm vit_small_patch16_224 --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import sys

from lbp_wht.reporting.paths import LATENCY


def main(argv: list[str] | None = None) -> int:
    from lbp_wht.benchmark import check_args
    from lbp_wht.benchmark.timing import ALLOCATORS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientformer-l1")
    ap.add_argument(
        "--timm",
        default=None,
        metavar="NAME",
        help="instead of --model: a timm model (pretrained=False), every linear layer LBP-WHT",
    )
    ap.add_argument("--r", type=int, nargs="+", default=[2, 4], help="LP_L1 radii (--timm)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="3 rounds, batch 2 (smoke test)")
    ap.add_argument("--out", default=str(LATENCY))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="reuse",
        help="as in benchmark_latency.py: reuse freed CPU memory (default) or glibc defaults",
    )
    args = ap.parse_args(argv)
    check_args(ap, args, ("batch", "size", "threads", "rounds", "num_classes", "r"))
    from lbp_wht.experiments.models import preset_models

    if args.timm is None and args.model not in preset_models():
        ap.error(f"--model {args.model!r} is not a preset model; choose one of {preset_models()}")
    if args.quick:
        args.rounds, args.batch = 3, 2

    import torch

    from lbp_wht.benchmark.e2e import run_e2e, run_e2e_timm
    from lbp_wht.benchmark.timing import configure_allocator
    from lbp_wht.reporting import latency_tables as lt

    torch.set_num_threads(args.threads)
    allocator = configure_allocator(args.allocator)
    if args.timm is not None:
        rows = run_e2e_timm(
            model=args.timm,
            batch=args.batch,
            size=args.size,
            rounds=args.rounds,
            threads=args.threads,
            allocator=allocator,
            methods=[("full_bp", None), *(("lbp_wht", r) for r in args.r)],
        )
    else:
        rows = run_e2e(
            model=args.model,
            batch=args.batch,
            size=args.size,
            rounds=args.rounds,
            num_classes=args.num_classes,
            threads=args.threads,
            allocator=allocator,
        )
    if not args.no_write:
        argv_ = sys.argv[1:] if argv is None else argv
        meta = lt.run_meta(" ".join(["tools/benchmark_backward_e2e.py", *argv_]))
        write = lt.write_e2e_timm if args.timm is not None else lt.write_e2e
        print("wrote " + ", ".join(map(str, write(rows, args.out, meta))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
