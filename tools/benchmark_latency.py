"""Backprop latency of one linear layer: Full BP vs LBP-WHT (paper Table 8, appendix D).

Times ``torch.autograd.grad`` through ``F.linear`` (Full BP) and through ``lbp_forward``
(LBP-WHT LP_L1-r) on the four Table 8 shapes, methods interleaved round by round; see
``lbp_wht.benchmark.latency`` for what is timed and ``lbp_wht.reporting.latency_tables`` for
the files. Usage (regenerates ``results/latency/table8_cpu.{csv,md,png,pdf}``)::

    python tools/benchmark_latency.py --device cpu --threads 1 --batches 1 64
    python tools/benchmark_latency.py --ablation --batches 1 64     # ablation_cpu.{csv,md}
    python tools/benchmark_latency.py --projection --r 2 4 6        # projection_cpu.{csv,md}
    python tools/benchmark_latency.py --tables-only                 # Markdown + figures again
    # the backward's memory passes, side by side (fusion_cpu.*), then batch 64 re-measured with
    # the library's backward paths side by side, its rows replacing batch 64 in table8_cpu.*
    # (batch 1 kept):
    python tools/benchmark_latency.py --batches 64 --variants eager compiled compiled_bwd \
        --name fusion
    python tools/benchmark_latency.py --batches 64 --variants eager compiled compiled_back \
        --rounds 45 --merge
    # multi-patch maps (ViT-B with its class token, Swin-T stages 1-2), 2 threads (multipatch_cpu.*)
    python tools/benchmark_latency.py --threads 2 --batches 64 --r 2 4 --shapes vit-b swin-t \
        --name multipatch
    # on a GPU: eager, compiled and CUDA-graph replay, Table 8 and ViT-B shapes (table8_cuda.*)
    python tools/benchmark_latency.py --device cuda --variants eager compiled graph \
        --shapes table8 vit-b

``--quick`` runs a few rounds only (smoke test). ``--tables-only`` times nothing: it rebuilds
the Markdown and figures in ``--out`` from the CSVs and their ``.run.json``.
"""

from __future__ import annotations

import argparse
import re
import sys

from lbp_wht.reporting.paths import LATENCY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from lbp_wht.benchmark import check_args
    from lbp_wht.benchmark.latency import VARIANTS
    from lbp_wht.benchmark.timing import ALLOCATORS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--r", type=int, nargs="+", default=[2, 4, 6], help="LP_L1 radii")
    p.add_argument("--rounds", type=int, default=0, help="rounds (default 200 at batch 1, else 15)")
    p.add_argument("--quick", action="store_true", help="3 rounds, smoke test")
    p.add_argument("--out", default=str(LATENCY))
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="time nothing: rebuild the Markdown and figures in --out from its CSVs",
    )
    p.add_argument(
        "--projection",
        action="store_true",
        help="instead of Table 8: time the projection implementations (dense GEMM, patch GEMM, "
        "fast WHT) on --proj-sizes maps; writes projection_cpu.{csv,md}",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="instead of Table 8: time each optimisation of the backward in isolation (before vs "
        "after) at --batches; writes ablation_cpu.{csv,md}",
    )
    p.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="reuse",
        help="reuse: keep freed CPU memory in the process (as jemalloc/tcmalloc do); system: "
        "glibc defaults (large fresh tensors page-fault). Same for every method of a run.",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=["eager"],
        help="how the LBP-WHT backward runs (lbp_wht.benchmark.latency.VARIANTS); graph: CUDA",
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        choices=["table8", "vit-b", "swin-t", "tiny"],
        default=["table8"],
        help="table8: the paper's four shapes (L=49); vit-b: fc1, fc2, proj at L=197 with a "
        "class token; swin-t: the stage-1 (56x56) and stage-2 (28x28) MLPs; tiny: two small "
        "shapes (smoke tests)",
    )
    p.add_argument("--name", default="table8", help="output stem: <name>_<device>.*")
    p.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured batches' rows of the existing <name>_<device>.csv",
    )
    p.add_argument("--proj-sizes", type=int, nargs="+", default=[7, 14, 28, 56])
    p.add_argument("--proj-batch", type=int, default=8)
    p.add_argument("--proj-channels", type=int, default=256)
    args = p.parse_args(argv)
    positive = ("threads", "proj_batch", "proj_channels", "batches", "r", "proj_sizes")
    check_args(p, args, positive, nonnegative=("rounds",), device=True)
    if "graph" in args.variants and not args.device.startswith("cuda"):
        p.error("--variants graph (CUDA graph replay) needs --device cuda")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        p.error(f"--name must be a plain file stem, got {args.name!r}")
    if args.projection and args.ablation:
        p.error("--projection and --ablation are two separate runs: choose one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lbp_wht.reporting import latency_tables as lt

    if args.tables_only:
        try:
            written = lt.rerender(args.out)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"benchmark_latency.py --tables-only: {e}") from None
        print("wrote " + ", ".join(map(str, written)))
        return 0

    import torch

    from lbp_wht.benchmark import latency
    from lbp_wht.benchmark.timing import configure_allocator, loadavg

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    allocator = configure_allocator(args.allocator) if args.device == "cpu" else ""
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"allocator {allocator or '-'}, load average {loadavg()}",
        flush=True,
    )
    meta = lt.run_meta(
        " ".join(["tools/benchmark_latency.py", *(sys.argv[1:] if argv is None else argv)])
    )
    common = dict(rounds=args.rounds, quick=args.quick)
    if args.ablation:
        rows = latency.run_ablation(batches=args.batches, **common)
    elif args.projection:
        rows = latency.run_projection(
            sizes=args.proj_sizes,
            rs=args.r,
            channels=args.proj_channels,
            batch=args.proj_batch,
            **common,
        )
    else:
        named = {
            "table8": latency.TABLE8_SHAPES,
            "vit-b": latency.VIT_B_SHAPES,
            "swin-t": latency.SWIN_T_SHAPES,
            "tiny": latency.TINY_SHAPES,
        }
        rows = latency.run_table8(
            batches=args.batches,
            rs=args.r,
            device=args.device,
            allocator=allocator,
            variants=args.variants,
            shapes={model: s for name in args.shapes for model, s in named[name].items()},
            **common,
        )
    if args.no_write:
        return 0
    if args.ablation or args.projection:
        kind = "ablation" if args.ablation else "projection"
        written = lt.write_component_table(kind, rows, args.out, meta)
    else:
        written = lt.write_table8(
            rows, args.out, args.device, meta, name=args.name, merge=args.merge
        )
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
