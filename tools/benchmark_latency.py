"""Backprop latency of one linear layer: Full BP vs LBP-WHT (paper Table 8, appendix D).

What is timed (the layer's forward is excluded): ``torch.autograd.grad(y, [x, w, b], g_y,
retain_graph=True)`` on a graph built once, i.e. exactly the backward a training step runs:

* ``full_bp``: ``y = F.linear(x, w, b)``; PyTorch's backward is the two GEMMs of Eq. 2
  (``g_x = g_y w``, ``g_w = g_y^T x``) plus the bias sum.
* ``lbp_wht``: ``y = lbp_forward(x, w, b, projector)``: projection of ``g_y`` (Eq. 3/6), the
  two low-rank GEMMs (Eq. 4) and the reverse projection (Eq. 5/7).

Both go through the same autograd engine call, so the per-call overhead is the same on both
sides: that is the fair comparison. The paper's baseline ("the two GEMMs" in OpenBLAS) is also
timed as ``gemm`` (two bare ``torch.mm`` plus the bias sum, no autograd) and reported as a second
speedup column; it is the stricter baseline by the size of the autograd call overhead.

LBP-WHT projects ``x`` in the *forward* pass (it saves ``x_hat`` instead of ``x``). That cost is
timed separately (``x_proj``) and added in the ``speedup_incl_xproj`` column, so the reader can
see the speedup with all of Table 1's overhead charged to backprop.

Timing: all methods of one ``(shape, batch)`` are interleaved round by round in a shuffled order
(machine drift and other processes' load hit every method alike); the speedup is the median of
the per-round ratios ``t_full / t_lbp`` (paired), with its interquartile range. CPU samples use
``time.perf_counter``; CUDA samples use CUDA events around the call and synchronise.

Usage (regenerates ``results/latency/table8_cpu.{csv,md}``)::

    python tools/benchmark_latency.py --device cpu --threads 1 --batches 1 64

``--quick`` runs a few rounds only (smoke test).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import datetime as _dt
import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from lbp_wht import WHTProjector, lbp_forward, select_bases  # noqa: E402

#: Table 8 shapes (Cx, Cy, L): the last two linear layers (MLP fc1, fc2) of the Meta3D block.
TABLE8_SHAPES = {
    "efficientformer-l1": [(448, 1792, 49), (1792, 448, 49)],
    "efficientformer-l7": [(768, 3072, 49), (3072, 768, 49)],
}

#: Paper Table 8 CPU / GPU speedups and CPU latency (us), used when results/paper/table8.csv is
#: missing. Key: (cx, cy, r) with r = None for Full BP.
PAPER_TABLE8_FALLBACK = {
    (448, 1792, None): (None, None, 8622.28),
    (448, 1792, 2): (2.2, 1.8, 3862.15),
    (448, 1792, 4): (1.5, 1.5, 5681.61),
    (448, 1792, 6): (1.6, 1.4, 5539.20),
    (1792, 448, None): (None, None, 8068.24),
    (1792, 448, 2): (1.4, 1.6, 5666.05),
    (1792, 448, 4): (1.4, 1.3, 5750.53),
    (1792, 448, 6): (1.2, 1.2, 6858.44),
    (768, 3072, None): (None, None, 23390.21),
    (768, 3072, 2): (1.5, 2.1, 15835.63),
    (768, 3072, 4): (1.5, 1.7, 15376.71),
    (768, 3072, 6): (1.4, 1.5, 16754.33),
    (3072, 768, None): (None, None, 22193.53),
    (3072, 768, 2): (1.5, 1.9, 14423.38),
    (3072, 768, 4): (1.6, 1.6, 14108.66),
    (3072, 768, 6): (1.3, 1.4, 16950.27),
}


# ---- memory allocator -----------------------------------------------------------------------
ALLOCATORS = ("reuse", "system")


def configure_allocator(mode: str) -> str:
    """Choose how freed CPU memory is recycled; returns a description for the results.

    ``system``: glibc as configured by default. Blocks above its mmap threshold (at most 32 MB)
    are mmap'ed and handed back to the OS when freed, so every fresh large tensor (``g_x`` is
    38.5 MB for EfficientFormer-L7 at batch 64) page-faults on first touch: about 12 ms per
    38.5 MB here, paid by Full BP and LBP-WHT alike but a large share of LBP-WHT's short backward.
    ``reuse``: ``mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)`` keeps freed memory in the process
    and reuses it, which is what a caching allocator (jemalloc, tcmalloc, the usual advice for
    PyTorch CPU training) does. Both methods run under the same setting in one process.
    """
    if mode not in ALLOCATORS:
        raise ValueError(f"unknown allocator {mode!r}; choose one of {ALLOCATORS}")
    if mode == "system":
        return "system (glibc defaults)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 2**31 - 1) == 1  # M_MMAP_MAX, M_TRIM
    except (OSError, AttributeError):
        ok = False
    if not ok:
        print("warning: glibc mallopt unavailable; --allocator reuse has no effect", flush=True)
        return "system (mallopt unavailable)"
    return "reuse (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"


# ---- paper values and FLOP bound ------------------------------------------------------------
def paper_table8() -> dict[tuple[int, int, int | None], tuple[float | None, float | None, float]]:
    """``(cx, cy, r) -> (cpu_speedup, gpu_speedup, cpu_latency_us)`` from results/paper/table8.csv
    (written from the paper's appendix), or the built-in copy of the same numbers."""
    path = ROOT / "results" / "paper" / "table8.csv"
    if not path.exists():
        return dict(PAPER_TABLE8_FALLBACK)
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            r = int(row["r"]) if row.get("r") else None
            vals = [row.get(k) for k in ("speedup_cpu", "speedup_gpu", "latency_cpu_us")]
            out[(int(row["cx"]), int(row["cy"]), r)] = tuple(float(v) if v else None for v in vals)
    return out


def flop_bound(cx: int, cy: int, tokens: int, rank: int, batch: int) -> tuple[float, str]:
    """Table 1 FLOP ratio ``4 Cx Cy L / (4 Cx Cy R + (Cx + Cy) L R + Cx L R)`` (batch cancels).

    Uses :mod:`lbp_wht.cost` (``convention="table1"``) when present, else the same formula inline.
    Returns ``(ratio, source)``.
    """
    try:
        from lbp_wht import cost

        van = cost.vanilla_bp_flops(cx, cy, tokens * batch).total
        lbp = cost.lbp_flops(cx, cy, tokens, rank, convention="table1").total * batch
        return van / lbp, "lbp_wht.cost (table1)"
    except ImportError:  # pragma: no cover - cost.py is owned by another module
        van = 4.0 * cx * cy * tokens
        lbp = 4.0 * cx * cy * rank + (cx + cy) * tokens * rank + cx * tokens * rank
        return van / lbp, "inline Table 1 formula"


# ---- timing ----------------------------------------------------------------------------------
def roofline_bound(
    full: list[float],
    gemm: list[float],
    stream: list[float],
    lowrank_fraction: float,
    weight_fraction: float,
) -> float:
    """Speedup a perfect implementation of LBP-WHT's backward could reach on this machine.

    A roofline model built from three timings of the same round: the low-rank GEMMs take the
    longer of their FLOPs at the rate the machine just ran Full BP's GEMMs (``gemm``) and their
    weight-sized traffic (read ``w``, write ``g_w``); the projections add one streaming pass
    over ``g_y`` in and ``g_x`` out (``stream``: a copy of as many bytes). Table 1 counts those
    passes as ``(2Cx + Cy) L R`` FLOPs, almost free; on a CPU they cost memory bandwidth, which
    is what separates this bound from the FLOP bound. Median of the per-round values.

    Args:
        lowrank_fraction: low-rank GEMM FLOPs / Full BP GEMM FLOPs ``= P * R / L``.
        weight_fraction: weight-sized bytes / streamed bytes ``= 2 Cx Cy / (B L (Cx + Cy))``.
    """
    return statistics.median(
        f / (max(g * lowrank_fraction, m * weight_fraction) + m)
        for f, g, m in zip(full, gemm, stream)
    )


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with linear interpolation (``statistics.quantiles`` 'inclusive')."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def interleaved_timings(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 3,
    device: str = "cpu",
    min_sample_s: float = 1e-3,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """Time every callable once per round, in a shuffled order each round.

    Each sample repeats the callable ``inner`` times (chosen per callable during warm-up so one
    sample lasts at least ``min_sample_s``) and records seconds per call on two clocks:
    ``wall`` (``time.perf_counter``; CUDA events with a synchronise on GPU) and ``cpu``
    (``time.process_time``: CPU time of this process, which does not count the time the OS gives
    the cores to other processes, so it is far less sensitive to a shared, loaded machine).
    The garbage collector is off while timing.

    Returns:
        ``name -> {"wall": [...], "cpu": [...]}``, one value per round.
    """
    cuda = device.startswith("cuda")
    inner: dict[str, int] = {}
    for name, fn in fns.items():  # warm-up (allocator, BLAS packing, caches) and calibration
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        once = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, min(1000, math.ceil(min_sample_s / once)))
    samples: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in fns}
    rng = random.Random(seed)
    names = list(fns)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(names)
            for name in names:
                fn, k = fns[name], inner[name]
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    c0 = time.process_time()
                    start.record()
                    for _ in range(k):
                        fn()
                    end.record()
                    torch.cuda.synchronize()
                    wall = start.elapsed_time(end) / 1e3
                else:
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    wall = time.perf_counter() - t0
                cpu = time.process_time() - c0
                samples[name]["wall"].append(wall / k)
                samples[name]["cpu"].append(cpu / k)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of the per-round ratios ``num[i] / den[i]``."""
    return _quartiles([a / b for a, b in zip(num, den)])


# ---- one Table 8 configuration ---------------------------------------------------------------
def _grad_call(y: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor):
    def call():
        return torch.autograd.grad(y, inputs, g, retain_graph=True)

    return call


def bench_shape(
    cx: int,
    cy: int,
    tokens: int,
    batch: int,
    rs: list[int],
    device: str,
    rounds: int,
    dtype: torch.dtype = torch.float32,
    order: int = 8,
    padding: str = "reflect",
    seed: int = 0,
) -> dict[str, list[float]]:
    """Interleaved timings for Full BP (autograd and bare GEMMs), LBP-WHT LP_L1-r backward and
    LBP-WHT's forward-side projection of ``x`` at one ``(Cx, Cy, L, batch)``."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"tokens={tokens} is not a square map (Table 8 uses L=49, 7x7)")
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).to(device)  # noqa: E731
    x = mk(batch, tokens, cx).requires_grad_(True)
    w = (mk(cy, cx) / math.sqrt(cx)).requires_grad_(True)
    b = mk(cy).requires_grad_(True)
    g = mk(batch, tokens, cy)
    fns: dict[str, Callable[[], object]] = {}
    y_full = F.linear(x, w, b)
    fns["full_bp"] = _grad_call(y_full, [x, w, b], g)
    xd, wd, g2 = x.detach().reshape(-1, cx), w.detach(), g.reshape(-1, cy)

    def gemm():  # the paper's baseline: the two GEMMs of Eq. 2 (+ the bias sum)
        return torch.mm(g2.t(), xd), torch.mm(g2, wd), g2.sum(0)

    fns["gemm"] = gemm
    # One streaming pass over as many bytes as LBP-WHT's two unavoidable full-size passes (read
    # g_y, write g_x): the memory half of the roofline bound (see ``roofline_bound``).
    src = torch.empty(batch * tokens * (cx + cy) // 2, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    fns["stream"] = lambda: dst.copy_(src)
    for r in rs:
        proj = WHTProjector((side, side), select_bases("lp_l1", r=r, order=order), order, padding)
        y = lbp_forward(x, w, b, proj)
        fns[f"lbp_r{r}"] = _grad_call(y, [x, w, b], g)
        fns[f"xproj_r{r}"] = (lambda p: lambda: p.project(xd.view(batch, tokens, cx)))(proj)
        y_naive = _StraightforwardLBP.apply(x, w, b, proj)
        fns[f"naive_r{r}"] = _grad_call(y_naive, [x, w, b], g)
    return fns


class _StraightforwardLBP(torch.autograd.Function):
    """The same LBP-WHT backward written the direct way (the project's first implementation,
    kept here as the "before" of the optimisation log): ``g_hat = project(g) / n^2`` as a
    separate scaling pass, the bias gradient as a separate reduction over ``g_y``, low-rank
    tensors as ``(B, P*R, C)`` reshaped per use, broadcast batched matmuls also at batch 1.
    Tokens layout, no extra tokens. Uses only the public ``project`` / ``project_back`` maps."""

    @staticmethod
    def forward(ctx, x, weight, bias, projector):
        ctx.projector = projector
        ctx.save_for_backward(projector.project(x), weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g_y):
        x_hat, weight = ctx.saved_tensors
        proj = ctx.projector
        cy, cx = weight.shape
        g_hat = proj.project(g_y) * (1.0 / proj.order**2)
        g_hat2, x_hat2 = g_hat.reshape(-1, cy), x_hat.reshape(-1, cx)
        grad_b = g_y.sum(dim=(0, 1))
        grad_w = g_hat2.T @ x_hat2
        grad_x = proj.project_back((g_hat2 @ weight).view(g_hat.shape[0], -1, cx))
        return grad_x, grad_w, grad_b, None


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return (math.nan, math.nan, math.nan)


def run_table8(args: argparse.Namespace) -> list[dict]:
    paper = paper_table8()
    rows: list[dict] = []
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    for batch in args.batches:
        rounds = args.rounds if args.rounds else (200 if batch == 1 else 15)
        if args.quick:
            rounds = 3
        for model, shapes in TABLE8_SHAPES.items():
            for cx, cy, tokens in shapes:
                load0 = _loadavg()
                fns = bench_shape(cx, cy, tokens, batch, args.r, args.device, rounds)
                t = interleaved_timings(
                    fns, rounds, warmup=2 if args.quick else 5, device=args.device
                )
                load1 = _loadavg()
                common = dict(
                    device=args.device,
                    threads=torch.get_num_threads() if args.device == "cpu" else "",
                    allocator=args.allocator_desc,
                    model=model,
                    cx=cx,
                    cy=cy,
                    L=tokens,
                    batch=batch,
                    rounds=rounds,
                    loadavg_1m_start=round(load0[0], 2),
                    loadavg_1m_end=round(load1[0], 2),
                    torch=torch.__version__,
                    date=date,
                )
                paper_full = paper.get((cx, cy, None), (None, None, None))
                for name in ("full_bp", "gemm"):
                    q1, med, q3 = _quartiles(t[name]["wall"])
                    rows.append(
                        dict(
                            common,
                            method=name,
                            select="",
                            r="",
                            R="",
                            latency_us=med * 1e6,
                            latency_q1_us=q1 * 1e6,
                            latency_q3_us=q3 * 1e6,
                            cpu_latency_us=statistics.median(t[name]["cpu"]) * 1e6,
                            latency_min_us=min(t[name]["wall"]) * 1e6,
                            speedup=1.0 if name == "full_bp" else "",
                            paper_latency_cpu_us=paper_full[2] if batch == 1 else "",
                        )
                    )
                for r in args.r:
                    name = f"lbp_r{r}"
                    proj = WHTProjector((math.isqrt(tokens),) * 2, select_bases("lp_l1", r=r))
                    rank = proj.rank
                    tw, tc = t[name]["wall"], t[name]["cpu"]
                    q1, med, q3 = _quartiles(tw)
                    s_q1, s_med, s_q3 = paired_ratio(t["full_bp"]["wall"], tw)
                    c_q1, c_med, c_q3 = paired_ratio(t["full_bp"]["cpu"], tc)
                    # Least-disturbed estimate: on a shared machine the fastest sample of each
                    # method is the one least hit by other processes (timeit's advice).
                    s_min = min(t["full_bp"]["wall"]) / min(tw)
                    _, s_gemm, _ = paired_ratio(t["gemm"]["wall"], tw)
                    _, s_naive, _ = paired_ratio(t["full_bp"]["wall"], t[f"naive_r{r}"]["wall"])
                    _, c_naive, _ = paired_ratio(t["full_bp"]["cpu"], t[f"naive_r{r}"]["cpu"])
                    with_x = [a + c for a, c in zip(tw, t[f"xproj_r{r}"]["wall"])]
                    _, s_incl, _ = paired_ratio(t["full_bp"]["wall"], with_x)
                    xp_med = statistics.median(t[f"xproj_r{r}"]["wall"])
                    bound, bound_src = flop_bound(cx, cy, tokens, rank, batch)
                    roof = roofline_bound(
                        t["full_bp"]["wall"],
                        t["gemm"]["wall"],
                        t["stream"]["wall"],
                        proj.low_rank_tokens / tokens,
                        2.0 * cx * cy / (batch * tokens * (cx + cy)),
                    )
                    pap = paper.get((cx, cy, r), (None, None, None))
                    rows.append(
                        dict(
                            common,
                            method="lbp_wht",
                            select="lp_l1",
                            r=r,
                            R=rank,
                            latency_us=med * 1e6,
                            latency_q1_us=q1 * 1e6,
                            latency_q3_us=q3 * 1e6,
                            cpu_latency_us=statistics.median(tc) * 1e6,
                            speedup=s_med,
                            speedup_q1=s_q1,
                            speedup_q3=s_q3,
                            speedup_cputime=c_med,
                            speedup_min=s_min,
                            latency_min_us=min(tw) * 1e6,
                            speedup_cputime_q1=c_q1,
                            speedup_cputime_q3=c_q3,
                            speedup_vs_gemm=s_gemm,
                            naive_latency_us=statistics.median(t[f"naive_r{r}"]["wall"]) * 1e6,
                            speedup_straightforward=s_naive,
                            speedup_straightforward_cputime=c_naive,
                            xproj_us=xp_med * 1e6,
                            speedup_incl_xproj=s_incl,
                            paper_speedup_cpu=pap[0] if (batch == 1 and pap[0]) else "",
                            paper_latency_cpu_us=pap[2] if (batch == 1 and pap[2]) else "",
                            flop_bound=bound,
                            flop_bound_source=bound_src,
                            pct_of_bound=100.0 * s_med / bound,
                            pct_of_bound_cputime=100.0 * c_med / bound,
                            roofline_bound=roof,
                            pct_of_roofline=100.0 * s_med / roof,
                            stream_us=statistics.median(t["stream"]["wall"]) * 1e6,
                        )
                    )
                    print(
                        f"[{args.device} b={batch}] ({cx},{cy},{tokens}) LP_L1-{r} R={rank}: "
                        f"{med * 1e6:8.0f} us vs full "
                        f"{statistics.median(t['full_bp']['wall']) * 1e6:8.0f} us  "
                        f"speedup wall {s_med:5.2f}x [{s_q1:.2f}, {s_q3:.2f}] "
                        f"cpu-time {c_med:5.2f}x [{c_q1:.2f}, {c_q3:.2f}] min {s_min:5.2f}x "
                        f"(vs gemm {s_gemm:.2f}x, incl x-proj {s_incl:.2f}x, straightforward "
                        f"{s_naive:.2f}x)  "
                        f"bound {bound:5.2f}x ({100 * s_med / bound:3.0f}%) "
                        f"roofline {roof:5.2f}x ({100 * s_med / roof:3.0f}%)  "
                        f"paper {pap[0] if batch == 1 else '-'}  load {load0[0]:.2f}->"
                        f"{load1[0]:.2f}",
                        flush=True,
                    )
    return rows


COLUMNS = [
    "device",
    "threads",
    "model",
    "cx",
    "cy",
    "L",
    "batch",
    "method",
    "select",
    "r",
    "R",
    "latency_us",
    "latency_q1_us",
    "latency_q3_us",
    "speedup",
    "speedup_q1",
    "speedup_q3",
    "cpu_latency_us",
    "speedup_cputime",
    "speedup_cputime_q1",
    "speedup_cputime_q3",
    "latency_min_us",
    "speedup_min",
    "speedup_vs_gemm",
    "naive_latency_us",
    "speedup_straightforward",
    "speedup_straightforward_cputime",
    "xproj_us",
    "speedup_incl_xproj",
    "paper_speedup_cpu",
    "paper_latency_cpu_us",
    "flop_bound",
    "pct_of_bound",
    "pct_of_bound_cputime",
    "flop_bound_source",
    "roofline_bound",
    "pct_of_roofline",
    "stream_us",
    "allocator",
    "rounds",
    "loadavg_1m_start",
    "loadavg_1m_end",
    "torch",
    "date",
]


def _fmt(v, digits: int = 2) -> str:
    if v == "" or v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_outputs(rows: list[dict], out_dir: Path, device: str, argv: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"table8_{device.split(':')[0]}.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for row in rows:
            wr.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    md = [
        f"# Table 8 latency: Full BP vs LBP-WHT backward, {device}",
        "",
        f"Command: `python {' '.join(argv)}`  ",
        f"Date: {rows[0]['date']}; torch {torch.__version__}; threads: "
        f"{rows[0]['threads'] or '-'}; machine: {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} logical CPUs); 1-min load average during the runs: "
        f"{min(r['loadavg_1m_start'] for r in rows):.2f} to "
        f"{max(r['loadavg_1m_end'] for r in rows):.2f}.",
        "",
        "Latency: median of the interleaved rounds [IQR]. Speedup: median of the per-round "
        "ratios t(Full BP) / t(LBP-WHT) [IQR], both through `torch.autograd.grad` (forward "
        "excluded); `CPU time`: the same ratio on process CPU time (insensitive to time slices "
        "given to other processes on a shared machine); `min`: ratio of the fastest samples "
        "(the least disturbed ones). `vs GEMM`: against the two bare GEMMs "
        "+ bias sum (the paper's baseline). `incl x-proj`: with the forward-side projection of x "
        "charged to backprop. `before`: the same backward written the straightforward way (the "
        "project's first implementation, `_StraightforwardLBP` in the tool), same run. Bound: "
        "Table 1 FLOP ratio 4CxCyL / (4CxCyR + (2Cx+Cy)LR). Roofline: the speedup if the two "
        "low-rank GEMMs ran at the rate this machine ran Full BP's GEMMs in the same round (or "
        "at streaming speed for their weight-sized traffic, whichever is slower), plus one "
        "streaming pass over g_y and g_x (timed as a copy of as many bytes): the memory passes "
        "Table 1 counts as almost free are what separates it from the FLOP bound. "
        "Paper: Table 8, Jetson Nano CPU, batch 1.",
        "",
        f"Memory allocator: {rows[0]['allocator']} (`--allocator`; see the tool's "
        "`configure_allocator`).",
        "",
    ]
    for batch in sorted({r["batch"] for r in rows}):
        md += [
            f"## Batch {batch}",
            "",
            "| (Cx, Cy, L) | method | R | latency us [IQR] | speedup [IQR] | CPU time | min | "
            "vs GEMM | incl x-proj | before | paper CPU | FLOP bound | % of bound | roofline | "
            "% of roofline | load |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            if r["batch"] != batch or r["method"] == "gemm":
                continue
            shape = f"({r['cx']}, {r['cy']}, {r['L']})"
            meth = "Full BP" if r["method"] == "full_bp" else f"LP_L1-{r['r']}"
            lat = f"{r['latency_us']:.0f} [{r['latency_q1_us']:.0f}, {r['latency_q3_us']:.0f}]"
            if r["method"] == "full_bp":
                md.append(
                    f"| {shape} | {meth} | - | {lat} | 1.00 | 1.00 | 1.00 | - | - | - | - | - | - "
                    "| - | - | "
                    f"{r['loadavg_1m_start']:.1f} |"
                )
                continue
            sp = f"**{r['speedup']:.2f}x** [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]"
            pap = f"{r['paper_speedup_cpu']:.1f}x" if r.get("paper_speedup_cpu") else "-"
            md.append(
                f"| {shape} | {meth} | {r['R']} | {lat} | {sp} | {r['speedup_cputime']:.2f}x | "
                f"{r['speedup_min']:.2f}x | "
                f"{r['speedup_vs_gemm']:.2f}x | "
                f"{r['speedup_incl_xproj']:.2f}x | {r['speedup_straightforward']:.2f}x | {pap} | "
                f"{r['flop_bound']:.2f}x | "
                f"{r['pct_of_bound']:.0f}% | {r['roofline_bound']:.2f}x | "
                f"{r['pct_of_roofline']:.0f}% | {r['loadavg_1m_start']:.1f} |"
            )
        md.append("")
    (out_dir / f"table8_{device.split(':')[0]}.md").write_text("\n".join(md))
    plot_table8(rows, out_dir / f"table8_{device.split(':')[0]}")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.md')}")


def plot_table8(rows: list[dict], stem: Path) -> None:
    """Grouped bars per Table 8 row: our speedup per batch, the paper's CPU speedup, the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lbp = [r for r in rows if r["method"] == "lbp_wht"]
    keys = sorted({(r["cx"], r["cy"], r["r"]) for r in lbp}, key=lambda k: (k[0] + k[1], k))
    keys = list(dict.fromkeys((r["cx"], r["cy"], r["r"]) for r in lbp))
    batches = sorted({r["batch"] for r in lbp})
    get = {(r["cx"], r["cy"], r["r"], r["batch"]): r for r in lbp}
    series = [(f"ours, batch {b}", [get[k + (b,)]["speedup"] for k in keys]) for b in batches]
    b0 = batches[0]
    paper = [get[k + (b0,)].get("paper_speedup_cpu") or 0.0 for k in keys]
    series.append(("paper (Jetson Nano CPU, batch 1)", paper))
    series.append(("FLOP bound (Table 1)", [get[k + (b0,)]["flop_bound"] for k in keys]))
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(series)
    colors = ["tab:blue", "tab:cyan", "tab:orange", "0.75", "tab:green"]
    for i, (label, vals) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, vals, width, label=label, color=colors[i % len(colors)])
    ax.set_xticks(range(len(keys)), [f"({cx},{cy})\nLP_L1-{r}" for cx, cy, r in keys], fontsize=7)
    ax.set_ylabel("backprop speedup vs Full BP")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_title(
        f"Table 8 shapes (L=49): LBP-WHT backward speedup, {rows[0]['device']}, "
        f"{rows[0]['threads']} thread(s)"
    )
    ax.legend(fontsize=8, ncol=len(series))
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    fig.savefig(stem.with_suffix(".pdf"))
    plt.close(fig)


# ---- projection alternatives: GEMM against the basis vs a fast WHT -----------------------------
def _fwht_axis(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised natural-order (Sylvester) Hadamard transform along ``dim`` by butterflies:
    log2(n) stages of ``(a, b) -> (a + b, a - b)``, each one pass over the tensor."""
    n, shape, h = t.shape[dim], t.shape, 1
    while h < n:
        v = t.reshape(*shape[:dim], n // (2 * h), 2, h, *shape[dim + 1 :])
        a, b = v.select(dim + 1, 0), v.select(dim + 1, 1)
        t = torch.stack((a + b, a - b), dim=dim + 1).reshape(shape)
        h *= 2
    return t


def fwht_project(proj: WHTProjector, x: torch.Tensor) -> torch.Tensor:
    """Eq. 6 via the fast WHT: pad, 2D butterfly transform of every patch, keep the selected
    coefficients. ``x`` tokens ``(B, L, C)`` -> ``(B, P*R, C)`` (same values as ``project``).

    The sequency-k Walsh row is the natural-order Hadamard row ``bitrev(gray(k))``, so basis
    ``(i, j)`` is coefficient ``(perm[i], perm[j])`` of the natural-order 2D transform.
    """
    n = proj.order
    bits = n.bit_length() - 1
    perm = [int(format(k ^ (k >> 1), f"0{bits}b")[::-1], 2) if bits else 0 for k in range(n)]
    idx = torch.tensor([perm[i] * n + perm[j] for i, j in proj.bases], device=x.device)
    xp = proj._padded_bhwc(x, "tokens")
    b, c = xp.shape[0], xp.shape[-1]
    t = xp.reshape(b, proj.hp // n, n, proj.wp // n, n, c)
    t = _fwht_axis(_fwht_axis(t, 2), 4)
    t = t.permute(0, 1, 3, 2, 4, 5).reshape(b, proj.num_patches, n * n, c)
    return t.index_select(2, idx).reshape(b, proj.low_rank_tokens, c)


def run_projection(args: argparse.Namespace) -> list[dict]:
    """Time the projection of g (with the fused bias sum) and the reverse projection for the
    ``dense`` GEMM (padding folded into one (P*R+1, L) matrix), the ``patch`` GEMM (pad, then
    contract each patch with the (n, n, R) basis) and the butterfly fast WHT."""
    rows = []
    c, bsz = args.proj_channels, args.proj_batch
    for side in args.proj_sizes:
        for r in args.r:
            bases = select_bases("lp_l1", r=r)
            g = torch.randn(bsz, side * side, c)
            p_d = WHTProjector((side, side), bases, 8, "reflect", "dense")
            p_p = WHTProjector((side, side), bases, 8, "reflect", "patch")
            torch.testing.assert_close(fwht_project(p_p, g), p_p.project(g), rtol=1e-4, atol=1e-3)
            low = torch.randn(bsz * p_d.low_rank_tokens, c)
            fns = {
                "dense_proj": lambda p=p_d, g=g: p.project(g, "tokens", grad=True, bias_sum=True),
                "patch_proj": lambda p=p_p, g=g: p.project(g, "tokens", grad=True, bias_sum=True),
                "fwht_proj": lambda p=p_p, g=g: (fwht_project(p, g), g.sum((0, 1))),
                "dense_rev": lambda p=p_d, lo=low: p.project_back(lo.view(bsz, -1, c)),
                "patch_rev": lambda p=p_p, lo=low: p.project_back(lo.view(bsz, -1, c)),
            }
            rounds = 3 if args.quick else max(5, args.rounds or 15)
            t = interleaved_timings(fns, rounds, warmup=2)
            med = {k: statistics.median(v["wall"]) * 1e6 for k, v in t.items()}
            cmed = {k: statistics.median(v["cpu"]) * 1e6 for k, v in t.items()}
            row = dict(
                hw=f"{side}x{side}",
                patches=p_d.num_patches,
                r=r,
                R=len(bases),
                batch=bsz,
                channels=c,
                **{f"{k}_us": v for k, v in med.items()},
                **{f"{k}_cpu_us": v for k, v in cmed.items()},
                auto_impl=WHTProjector((side, side), bases).impl,
                loadavg_1m=round(_loadavg()[0], 2),
            )
            rows.append(row)
            print(
                f"{side}x{side} P={p_d.num_patches} R={len(bases)}: project g "
                f"dense {med['dense_proj']:.0f} / patch {med['patch_proj']:.0f} / fwht "
                f"{med['fwht_proj']:.0f} us; reverse dense {med['dense_rev']:.0f} / patch "
                f"{med['patch_rev']:.0f} us (auto: {row['auto_impl']})",
                flush=True,
            )
    return rows


def write_projection(rows: list[dict], out_dir: Path, argv: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "projection_cpu.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        for row in rows:
            wr.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    md = [
        "# Projection implementations: GEMM against the basis vs fast WHT (CPU)",
        "",
        f"Command: `python {' '.join(argv)}`; torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; batch {rows[0]['batch']}, {rows[0]['channels']} channels, "
        "tokens layout, reflect padding. Median wall time in us (CPU time in brackets).",
        "",
        "| map | P | R | p(g) dense GEMM | p(g) patch GEMM | p(g) fast WHT | p^-1 dense | "
        "p^-1 patch | auto | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        cell = lambda k, r=r: f"{r[k + '_us']:.0f} ({r[k + '_cpu_us']:.0f})"  # noqa: E731
        md.append(
            f"| {r['hw']} | {r['patches']} | {r['R']} | {cell('dense_proj')} | "
            f"{cell('patch_proj')} | {cell('fwht_proj')} | {cell('dense_rev')} | "
            f"{cell('patch_rev')} | {r['auto_impl']} | {r['loadavg_1m']:.1f} |"
        )
    (out_dir / "projection_cpu.md").write_text("\n".join(md) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")


# ---- ablation: what each optimisation of the backward buys -----------------------------------
def ablation_pairs(batch: int, cx: int = 448, cy: int = 1792, r: int = 4) -> list[tuple]:
    """``(change, layout, before_fn, after_fn)``: each pair computes the same values the way the
    first implementation did (before) and the way the optimised path does (after)."""
    bases = select_bases("lp_l1", r=r)
    p = WHTProjector((7, 7), bases, 8, "reflect")
    n2 = 1.0 / 64
    g_t = torch.randn(batch, 49, cy)
    g_c, x_c = torch.randn(batch, cy, 7, 7), torch.randn(batch, cx, 7, 7)
    low = torch.randn(batch * p.rank, cx)
    pg = p._const("proj_g", g_t.dtype, g_t.device)
    pr = p._const("proj", g_t.dtype, g_t.device)
    pairs = [
        (
            "bias gradient fused into the projection GEMM (ones row)",
            "tokens",
            lambda: (torch.matmul(pg, g_t), g_t.sum(dim=(0, 1))),
            lambda: p.project(g_t, "tokens", grad=True, bias_sum=True),
        ),
        (
            "1/n^2 folded into the projection matrix",
            "tokens",
            lambda: torch.matmul(pr, g_t) * n2,
            lambda: torch.matmul(pg, g_t),
        ),
        (
            "projection of g (scale + bias + layout), all changes",
            "nchw",
            lambda: ((p.project(g_c, "nchw") * n2).reshape(-1, cy), g_c.sum(dim=(0, 2, 3))),
            lambda: p.project(g_c, "nchw", grad=True, bias_sum=True),
        ),
        (
            "x_hat saved as contiguous rows (no copy when backward reads it)",
            "nchw",
            lambda: p.project(x_c, "nchw").reshape(-1, cx),
            lambda: p.project(x_c, "nchw").reshape(-1, cx),
        ),
        (
            "reverse projection written directly in NCHW order",
            "nchw",
            lambda: p.project_back(low.view(batch, -1, cx), "nchw"),
            lambda: p.project_back(low.view(batch, -1, cx), "nchw"),
        ),
    ]
    if batch == 1:
        pairs.append(
            (
                "batch 1: one GEMM instead of a broadcast batched GEMM",
                "tokens",
                lambda: torch.matmul(pg, g_t),
                lambda: torch.mm(pg, g_t[0]),
            )
        )
    pp = WHTProjector((14, 14), bases, 8, "reflect", "patch")
    g14 = torch.randn(batch, 196, 64)
    sh, sw = pp._src_h, pp._src_w
    pairs.append(
        (
            "reflect padding as one gather (patch path, 14x14, C=64)",
            "tokens",
            lambda: g14.view(batch, 14, 14, 64).index_select(1, sh).index_select(2, sw),
            lambda: pp._padded_bhwc(g14, "tokens"),
        )
    )
    return pairs


def run_ablation(args: argparse.Namespace) -> list[dict]:
    rows = []
    for batch in args.batches:
        pairs = ablation_pairs(batch)
        fns = {}
        for i, (_, _, before, after) in enumerate(pairs):
            fns[f"{i}_before"], fns[f"{i}_after"] = before, after
        rounds = 3 if args.quick else (args.rounds or (100 if batch == 1 else 20))
        t = interleaved_timings(fns, rounds, warmup=3)
        for i, (change, layout, _, _) in enumerate(pairs):
            b, a = t[f"{i}_before"]["wall"], t[f"{i}_after"]["wall"]
            row = dict(
                batch=batch,
                change=change,
                layout=layout,
                before_us=statistics.median(b) * 1e6,
                after_us=statistics.median(a) * 1e6,
                before_min_us=min(b) * 1e6,
                after_min_us=min(a) * 1e6,
                ratio_median=paired_ratio(b, a)[1],
                loadavg_1m=round(_loadavg()[0], 2),
            )
            rows.append(row)
            print(
                f"b={batch} {change} [{layout}]: {row['before_us']:.0f} -> {row['after_us']:.0f} "
                f"us (min {row['before_min_us']:.0f} -> {row['after_min_us']:.0f})",
                flush=True,
            )
    return rows


def write_ablation(rows: list[dict], out_dir: Path, argv: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ablation_cpu.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        for row in rows:
            wr.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    md = [
        "# What each change to the LBP-WHT backward buys (component timings, CPU)",
        "",
        f"Command: `python {' '.join(argv)}`; torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}. (Cx, Cy) = (448, 1792), 7x7 map, LP_L1-4 (R = 10). Before "
        "= the first implementation's way, after = the optimised path, same values; interleaved; "
        "median [fastest] wall time in us.",
        "",
        "| batch | change | layout | before | after | before / after (paired median) | load |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(
            f"| {r['batch']} | {r['change']} | {r['layout']} | {r['before_us']:.0f} "
            f"[{r['before_min_us']:.0f}] | {r['after_us']:.0f} [{r['after_min_us']:.0f}] | "
            f"{r['ratio_median']:.2f}x | {r['loadavg_1m']:.1f} |"
        )
    (out_dir / "ablation_cpu.md").write_text("\n".join(md) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--r", type=int, nargs="+", default=[2, 4, 6], help="LP_L1 radii")
    p.add_argument("--rounds", type=int, default=0, help="rounds (default 200 at batch 1, else 15)")
    p.add_argument("--quick", action="store_true", help="3 rounds, smoke test")
    p.add_argument("--out", default=str(ROOT / "results" / "latency"))
    p.add_argument("--no-write", action="store_true", help="print only")
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
    p.add_argument("--proj-sizes", type=int, nargs="+", default=[7, 14, 28, 56])
    p.add_argument("--proj-batch", type=int, default=8)
    p.add_argument("--proj-channels", type=int, default=256)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    args.allocator_desc = configure_allocator(args.allocator) if args.device == "cpu" else ""
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"allocator {args.allocator_desc or '-'}, load average {_loadavg()}",
        flush=True,
    )
    cmd = ["tools/benchmark_latency.py"] + (sys.argv[1:] if argv is None else argv)
    if args.ablation:
        arow = run_ablation(args)
        if not args.no_write:
            write_ablation(arow, Path(args.out), cmd)
        return
    if args.projection:
        prow = run_projection(args)
        if not args.no_write:
            write_projection(prow, Path(args.out), cmd)
        return
    rows = run_table8(args)
    if not args.no_write:
        write_outputs(
            rows,
            Path(args.out),
            args.device,
            ["tools/benchmark_latency.py"] + (sys.argv[1:] if argv is None else argv),
        )


if __name__ == "__main__":
    main()
