"""End-to-end backward time of one partial-training step of EfficientFormer-L1 (224 x 224).

Partial training (the paper's main setting): the last stage ``backbone.network.3`` and the head
train, everything else is frozen, BatchNorm on running statistics (``norm_eval``). Methods:
Full BP, LoRA-all (rank 8) and LBP-WHT LP_L1-2/4/6 on the stage's Meta4D ``mlp.fc1/fc2`` 1x1
convs and the Meta3D block's ``qkv``/``proj``/``fc1``/``fc2`` linears, all built by the project's
presets (``lbp_wht.presets.get_preset`` via ``lbp_wht.integrations.build.LBPWHTModel``).

What is timed: ``torch.autograd.grad(loss, trainable_params, retain_graph=True)`` on a graph
built once per method, i.e. the backward of the step only (the forward, which every method
runs alike through the frozen stages, is excluded). Methods are interleaved round by round as
in ``benchmark_latency.py``. Beside the measured speedup, the FLOP speedup of the same step is
counted with ``torch.utils.flop_counter.FlopCounterMode`` (``lbp_wht.measure.measure_step``:
backward matmul/conv FLOPs plus the forward-side projection of ``x``).

Usage (regenerates ``results/latency/e2e_backward_cpu.{csv,md,png,pdf}``)::

    python tools/benchmark_backward_e2e.py --threads 1 --batch 8
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

from benchmark_latency import (  # noqa: E402
    ALLOCATORS,
    _loadavg,
    _quartiles,
    configure_allocator,
    interleaved_timings,
    paired_ratio,
)

import lbp_wht.integrations  # noqa: E402,F401  (CPU shims before mmpretrain imports torchvision)

METHODS = [
    ("Full BP", "full_bp", None),
    ("LoRA-all", "lora_all", None),
    ("LP_L1-2", "lbp_wht", 2),
    ("LP_L1-4", "lbp_wht", 4),
    ("LP_L1-6", "lbp_wht", 6),
]


def build(model: str, method: str, r: int | None, num_classes: int) -> torch.nn.Module:
    """The converted, frozen model exactly as training builds it (presets + LBPWHTModel)."""
    from mmengine.registry import init_default_scope

    import lbp_wht.integrations.models  # noqa: F401  (registers the project's model types)
    from lbp_wht.integrations.build import LBPWHTModel
    from lbp_wht.presets import model_config

    init_default_scope("mmpretrain")
    lbp = dict(method=method, model=model, scope="partial")
    if r is not None:
        lbp.update(select="lp_l1", r=r)
    net = LBPWHTModel(model_config(model, num_classes=num_classes), lbp)
    return net.train()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientformer-l1")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="3 rounds, batch 2 (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "results" / "latency"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="reuse",
        help="as in benchmark_latency.py: reuse freed CPU memory (default) or glibc defaults",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.batch = 3, 2
    torch.set_num_threads(args.threads)
    allocator = configure_allocator(args.allocator)
    torch.manual_seed(0)
    from lbp_wht.measure import measure_step

    x = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, args.num_classes, (args.batch,))
    fns, flops, info = {}, {}, {}
    for label, method, r in METHODS:
        torch.manual_seed(0)  # same initial weights for every method
        net = build(args.model, method, r, args.num_classes)
        params = [p for p in net.parameters() if p.requires_grad]

        def loss_of(out):
            return F.cross_entropy(out, labels)

        m = measure_step(
            net,
            x,
            forward=lambda mod, inp: mod(inp, mode="tensor"),
            loss_fn=loss_of,
            elementwise=False,
        )
        flops[label] = m.backprop_flops
        info[label] = dict(trainable_params=m.trainable_params, saved=m.saved_activation_bytes)
        loss = loss_of(net(x, mode="tensor"))  # graph kept for repeated backward calls
        fns[label] = (lambda lo, ps: lambda: torch.autograd.grad(lo, ps, retain_graph=True))(
            loss, params
        )
        print(
            f"built {label}: {len(params)} trainable tensors, {m.backprop_flops / 1e9:.3f} "
            f"GFLOPs backprop",
            flush=True,
        )
    load0 = _loadavg()
    t = interleaved_timings(fns, args.rounds, warmup=2)
    load1 = _loadavg()
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    rows = []
    for label, method, r in METHODS:
        q1, med, q3 = _quartiles(t[label]["wall"])
        s_q1, s_med, s_q3 = paired_ratio(t["Full BP"]["wall"], t[label]["wall"])
        _, c_med, _ = paired_ratio(t["Full BP"]["cpu"], t[label]["cpu"])
        rows.append(
            dict(
                model=args.model,
                method=label,
                preset_method=method,
                r=r if r is not None else "",
                batch=args.batch,
                size=args.size,
                threads=args.threads,
                allocator=allocator,
                backward_ms=med * 1e3,
                backward_q1_ms=q1 * 1e3,
                backward_q3_ms=q3 * 1e3,
                speedup=s_med,
                speedup_q1=s_q1,
                speedup_q3=s_q3,
                speedup_cputime=c_med,
                backprop_gflops=flops[label] / 1e9,
                flop_speedup=flops["Full BP"] / flops[label],
                trainable_params=info[label]["trainable_params"],
                saved_activation_mb=info[label]["saved"] / 2**20,
                rounds=args.rounds,
                loadavg_1m_start=round(load0[0], 2),
                loadavg_1m_end=round(load1[0], 2),
                torch=torch.__version__,
                date=date,
            )
        )
        print(
            f"{label:9s} backward {med * 1e3:8.1f} ms [{q1 * 1e3:.1f}, {q3 * 1e3:.1f}]  "
            f"speedup {s_med:.2f}x [{s_q1:.2f}, {s_q3:.2f}] (cpu-time {c_med:.2f}x)  "
            f"FLOP speedup {flops['Full BP'] / flops[label]:.2f}x",
            flush=True,
        )
    if args.no_write:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "e2e_backward_cpu"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        for row in rows:
            wr.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    cmd = "python tools/benchmark_backward_e2e.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    md = [
        f"# End-to-end backward time, {args.model} partial training, CPU",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {date}; torch {torch.__version__}; threads {args.threads}; "
        f"{platform.machine()} ({os.cpu_count()} logical CPUs); batch {args.batch}, "
        f"{args.size}x{args.size}; 1-min load average {load0[0]:.2f} -> {load1[0]:.2f}; "
        f"memory allocator: {allocator}.",
        "",
        "Backward of one step (forward excluded), median of interleaved rounds [IQR]; speedup = "
        "median of per-round ratios vs Full BP; FLOP speedup = counted backprop FLOPs "
        "(FlopCounterMode: backward matmul/conv + LBP-WHT's forward-side projection of x).",
        "",
        "| method | backward ms [IQR] | speedup [IQR] | speedup (CPU time) | backprop GFLOPs | "
        "FLOP speedup | trainable params |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        md.append(
            f"| {row['method']} | {row['backward_ms']:.1f} [{row['backward_q1_ms']:.1f}, "
            f"{row['backward_q3_ms']:.1f}] | {row['speedup']:.2f}x [{row['speedup_q1']:.2f}, "
            f"{row['speedup_q3']:.2f}] | {row['speedup_cputime']:.2f}x | "
            f"{row['backprop_gflops']:.3f} | {row['flop_speedup']:.2f}x | "
            f"{row['trainable_params']:,} |"
        )
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(rows, stem, args)
    print(f"wrote {stem}.{{csv,md,png,pdf}}")


def plot(rows: list[dict], stem: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in rows]
    med = [r["backward_ms"] for r in rows]
    err = [
        [r["backward_ms"] - r["backward_q1_ms"] for r in rows],
        [r["backward_q3_ms"] - r["backward_ms"] for r in rows],
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.bar(labels, med, yerr=err, capsize=3, color=["0.5", "tab:orange"] + ["tab:blue"] * 3)
    ax1.set_ylabel("backward time per step [ms]")
    ax1.set_title(f"{args.model}, partial training, batch {args.batch}, CPU {args.threads} thr")
    for i, v in enumerate(med):
        ax1.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    xs = range(len(rows))
    w = 0.38
    meas = [r["speedup"] for r in rows]
    flop = [r["flop_speedup"] for r in rows]
    ax2.bar([i - w / 2 for i in xs], meas, w, label="measured (wall time)", color="tab:blue")
    ax2.bar([i + w / 2 for i in xs], flop, w, label="FLOP ratio (FlopCounterMode)", color="0.7")
    ax2.axhline(1.0, color="k", lw=0.6)
    ax2.set_xticks(list(xs), labels)
    ax2.set_ylabel("speedup vs Full BP")
    ax2.set_title("backward speedup: measured vs FLOPs")
    ax2.legend(fontsize=8)
    for i, (a, b) in enumerate(zip(meas, flop)):
        ax2.text(i - w / 2, a, f"{a:.1f}", ha="center", va="bottom", fontsize=7)
        ax2.text(i + w / 2, b, f"{b:.1f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    fig.savefig(stem.with_suffix(".pdf"))
    plt.close(fig)


if __name__ == "__main__":
    main()
