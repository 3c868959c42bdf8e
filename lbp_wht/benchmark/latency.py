"""The per-layer benchmarks: paper Table 8, projection implementations, the ablation.

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
the per-round ratios ``t_full / t_lbp`` (paired), with its interquartile range
(:func:`lbp_wht.benchmark.timing.interleaved_timings`).

Every ``run_*`` function returns plain rows (dicts); :mod:`lbp_wht.reporting.latency_tables`
writes them.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import WHTProjector, cost, lbp_forward, select_bases
from ..experiments.models import MODEL_SPECS
from ..experiments.vocab import method_with
from ..functional import _expand_rows, _project_rows, _recompile_limit, backward_fusion
from ..reporting.paths import PAPER
from .timing import interleaved_timings, iqr_cols, loadavg, paired_ratio, provenance, quartiles, say

#: The ``method`` of the exact-backprop rows and of the LBP-WHT rows (the experiment ids of
#: the two methods; ``gemm`` rows are the paper's baseline of two bare GEMMs).
FULL, LBP = method_with(reference=True), method_with(bases_only=True)

#: Table 8 shapes (Cx, Cy, L): the last two linear layers (MLP fc1, fc2) of the Meta3D block,
#: per model that has them (``ModelSpec.latency_shapes``; lbp_wht/experiments/models.py).
TABLE8_SHAPES = {m.id: list(m.latency_shapes) for m in MODEL_SPECS.values() if m.latency_shapes}

#: ViT-B/16 at 224 px (HOT's per-layer table): MLP fc1, fc2 and the attention projection on
#: L = 197 tokens, a class token (exact gradients) before the 14x14 map: (Cx, Cy, L, prefix).
VIT_B_SHAPES = {"vit-b": [(768, 3072, 197, 1), (3072, 768, 197, 1), (768, 768, 197, 1)]}

#: Swin-T at 224 px: the MLPs of stage 1 (56x56 map, C = 96 -> 384 -> 96) and stage 2 (28x28,
#: 192 -> 768 -> 192), no prefix tokens: (Cx, Cy, L).
SWIN_T_SHAPES = {
    "swin-t": [(96, 384, 3136), (384, 96, 3136), (192, 768, 784), (768, 192, 784)],
}

#: Small shapes for smoke tests of the same code paths (one 7x7 map; a class token + 14x14).
TINY_SHAPES = {"tiny": [(32, 64, 49), (32, 48, 197, 1)]}

#: The paper's Table 8 (appendix D), typed once from the paper.
PAPER_TABLE8 = PAPER / "table8.csv"

#: ``flop_bound_source`` of the rows: where the FLOP bound comes from.
FLOP_BOUND_SOURCE = "lbp_wht.cost (table1)"


def paper_table8(
    path: str | os.PathLike = PAPER_TABLE8,
) -> dict[tuple[int, int, int | None], tuple[float | None, float | None, float | None]]:
    """``(cx, cy, r) -> (cpu_speedup, gpu_speedup, cpu_latency_us)`` of the paper's Table 8
    (``r`` None for Full BP), read from ``results/paper/table8.csv``.

    Raises:
        FileNotFoundError: the reference CSV is missing (it is part of the repository).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: it is the typed paper reference (results/paper/); restore it "
            "with `git checkout -- results/paper`"
        )
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            r = int(row["r"]) if row.get("r") else None
            vals = [row.get(k) for k in ("speedup_cpu", "speedup_gpu", "latency_cpu_us")]
            out[(int(row["cx"]), int(row["cy"]), r)] = tuple(float(v) if v else None for v in vals)
    return out


def flop_bound(
    cx: int, cy: int, tokens: int, rank: int, batch: int, patches: int = 1, prefix: int = 0
) -> float:
    """Table 1 FLOP ratio ``4 Cx Cy L / (4 Cx Cy P R + (Cx + Cy) L R + Cx L R)`` (batch cancels),
    from :mod:`lbp_wht.cost` in the paper's convention; ``prefix`` class tokens (outside the
    ``tokens``-token map) get exact gradients on both sides."""
    van = cost.vanilla_bp_flops(cx, cy, (tokens + prefix) * batch).total
    lbp = cost.lbp_flops(
        cx, cy, tokens, rank, patches=patches, extra_tokens=prefix, convention="table1"
    ).total
    return van / (lbp * batch)


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


#: How an LBP-WHT backward is run in :func:`run_table8`:
#: ``eager`` the library's default path; ``compiled`` the library's compiled memory passes
#: (:func:`lbp_wht.functional.set_backward_fusion`), ``compiled_back`` only its reverse
#: projection compiled; ``compiled_bwd`` the whole backward body
#: (projection, both GEMMs, reverse projection) as one ``torch.compile``d function
#: (:class:`_CompiledBackwardLBP`, single-patch maps); ``graph`` (CUDA only) the eager
#: backward captured once in a CUDA graph and replayed (Full BP is then replayed too).
VARIANTS = ("eager", "compiled", "compiled_back", "compiled_bwd", "graph")


def _with_fusion(mode: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        with backward_fusion(mode):
            return fn()

    return call


def cuda_graphed(
    build: Callable[[], Callable[[], object]], warmup: int = 3
) -> Callable[[], object]:
    """A backward captured once in a CUDA graph; the returned callable replays it.

    ``build()`` runs the forward and returns the backward callable. Both run on one side
    stream, which is also the capture stream: autograd runs each backward op on the stream of
    its forward op, so a forward recorded on another stream would put the backward outside the
    capture. Warm-up calls (allocator, cuBLAS workspaces, the projector's constant matrices)
    come first, as ``torch.cuda.graph`` requires. The replaying callable returns the captured
    outputs (the same tensors every time, holding the latest replay's values).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn = build()
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        static = fn()
    torch.cuda.synchronize()

    def replay():
        graph.replay()
        return static  # the captured outputs, rewritten by every replay

    return replay


def _backward_body(g, x_hat, w, mat, rev):
    """The LBP-WHT backward of ``y = x w^T + b`` (tokens, one patch): ``(g_x, g_w, g_b)``."""
    g_hat, g_sum = _project_rows(g, mat, True)
    gw = g_hat.t() @ x_hat
    z = (g_hat @ w).view(g.shape[0], -1, w.shape[1])
    return _expand_rows(z, rev, False), gw, g_sum


_compiled_body: list = []


class _CompiledBackwardLBP(torch.autograd.Function):
    """LBP-WHT whose whole backward body is one ``torch.compile``d function (tokens layout, one
    patch, no prefix tokens; the benchmark's ``compiled_bwd`` variant): inductor sees the
    projection, both GEMMs and the reverse projection at once and may fuse or reorder them."""

    @staticmethod
    def forward(ctx, x, weight, bias, projector):
        ctx.projector = projector
        ctx.save_for_backward(projector.project(x).reshape(-1, x.shape[-1]), weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g_y):
        x_hat, weight = ctx.saved_tensors
        p = ctx.projector
        if not _compiled_body:
            _compiled_body.append(torch.compile(_backward_body, dynamic=False, fullgraph=True))
        mat = p._const("proj_g", g_y.dtype, g_y.device)
        rev = p._const("rev", g_y.dtype, g_y.device)
        with _recompile_limit():
            gx, gw, gb = _compiled_body[0](g_y, x_hat, weight, mat, rev)
        return gx, gw, gb, None


def bench_shape(
    cx: int,
    cy: int,
    tokens: int,
    batch: int,
    rs: list[int],
    device: str,
    dtype: torch.dtype = torch.float32,
    order: int = 8,
    padding: str = "reflect",
    seed: int = 0,
    prefix: int = 0,
    variants: Sequence[str] = ("eager",),
) -> dict[str, Callable[[], object]]:
    """The callables :func:`run_table8` times at one ``(Cx, Cy, L, batch)``: Full BP (autograd,
    and the bare GEMMs), a streaming copy (the memory roofline), and per radius ``r`` the
    LBP-WHT LP_L1-r backward in every variant of ``variants`` (names ``lbp_r{r}`` for eager,
    ``lbp_r{r}@{variant}`` for the others; ``compiled_bwd`` only on one-patch maps without
    prefix tokens), the straightforward first implementation and
    LBP-WHT's forward-side projection of ``x``. ``tokens`` counts the ``prefix`` class tokens
    (ViT-B: L = 197 = 1 + 14 x 14); the rest must be a square map."""
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise ValueError(
            f"tokens={tokens} with prefix={prefix} is not a square map (Table 8 uses L=49, 7x7)"
        )
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
    cuda = device.startswith("cuda")
    if "graph" in variants and not cuda:
        raise ValueError("the 'graph' variant (CUDA graph replay) needs a CUDA device")
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).to(device)  # noqa: E731
    x = mk(batch, tokens, cx).requires_grad_(True)
    w = (mk(cy, cx) / math.sqrt(cx)).requires_grad_(True)
    b = mk(cy).requires_grad_(True)
    g = mk(batch, tokens, cy)

    def grad(y: torch.Tensor) -> Callable[[], object]:  # the backward of y; keeps the graph
        return partial(torch.autograd.grad, y, [x, w, b], g, retain_graph=True)

    fns: dict[str, Callable[[], object]] = {"full_bp": grad(F.linear(x, w, b))}
    if "graph" in variants:
        fns["full_bp@graph"] = cuda_graphed(lambda: grad(F.linear(x, w, b)))
    xd, wd, g2 = x.detach().reshape(-1, cx), w.detach(), g.reshape(-1, cy)

    def gemm():  # the paper's baseline: the two GEMMs of Eq. 2 (+ the bias sum)
        return torch.mm(g2.t(), xd), torch.mm(g2, wd), g2.sum(0)

    fns["gemm"] = gemm
    # One streaming pass over as many bytes as LBP-WHT's two unavoidable full-size passes (read
    # g_y, write g_x): the memory half of the roofline bound (see ``roofline_bound``).
    src = torch.empty(batch * tokens * (cx + cy) // 2, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    fns["stream"] = lambda: dst.copy_(src)
    map_x = xd.view(batch, tokens, cx)[:, prefix:]
    for r in rs:
        bases = select_bases("lp_l1", radius=r, order=order)
        proj = WHTProjector((side, side), bases, order, padding)
        call = fns[f"lbp_r{r}"] = grad(lbp_forward(x, w, b, proj, prefix_tokens=prefix))
        for v in variants:
            if v in ("compiled", "compiled_back"):
                fns[f"lbp_r{r}@{v}"] = _with_fusion(v, call)
            elif v == "compiled_bwd" and not prefix and proj.impl == "dense":  # one-patch maps
                fns[f"lbp_r{r}@compiled_bwd"] = grad(_CompiledBackwardLBP.apply(x, w, b, proj))
            elif v == "graph":
                fns[f"lbp_r{r}@graph"] = cuda_graphed(
                    lambda p=proj: grad(lbp_forward(x, w, b, p, prefix_tokens=prefix))
                )
        fns[f"xproj_r{r}"] = partial(proj.project, map_x)
        if not prefix:
            fns[f"naive_r{r}"] = grad(_StraightforwardLBP.apply(x, w, b, proj))
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


def run_table8(
    *,
    batches: Sequence[int] = (1, 64),
    rs: Sequence[int] = (2, 4, 6),
    device: str = "cpu",
    rounds: int = 0,
    quick: bool = False,
    allocator: str = "",
    variants: Sequence[str] = ("eager",),
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Time Full BP, the bare GEMMs and LP_L1-r (every ``r`` of ``rs``, every variant of
    ``variants``, see :data:`VARIANTS`) on the Table 8 shapes at each batch; one row per
    (shape, batch, method, variant) with the latency quartiles, the paired speedups on wall and
    CPU time, the FLOP and roofline bounds and the paper's value.

    Args:
        rounds: interleaved rounds (0: 200 at batch 1, else 15); ``quick``: 3 rounds.
        allocator: description of the allocator setting, copied into every row.
        shapes: ``model -> [(Cx, Cy, L) or (Cx, Cy, L, prefix tokens)]``; default
            :data:`TABLE8_SHAPES` (add :data:`VIT_B_SHAPES` for ViT-B with its class token).
        log: where the per-row progress line goes.
    """
    paper = paper_table8()
    rows: list[dict] = []
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    n_rounds = rounds
    for batch in batches:
        rounds = n_rounds if n_rounds else (200 if batch == 1 else 15)
        if quick:
            rounds = 3
        for model, model_shapes in (shapes or TABLE8_SHAPES).items():
            for shape in model_shapes:
                cx, cy, tokens = shape[:3]
                prefix = shape[3] if len(shape) > 3 else 0
                load0 = loadavg()
                fns = bench_shape(
                    cx, cy, tokens, batch, list(rs), device, prefix=prefix, variants=variants
                )
                if "eager" not in variants:  # only the requested variants are timed
                    for r in rs:
                        fns.pop(f"lbp_r{r}")
                t = interleaved_timings(fns, rounds, warmup=2 if quick else 5, device=device)
                common = dict(
                    device=device, threads=torch.get_num_threads() if device == "cpu" else "",
                    allocator=allocator, model=model, cx=cx, cy=cy, L=tokens, prefix=prefix,
                    batch=batch, **provenance(rounds, load0, date),
                )  # fmt: skip
                rows += _table8_rows(t, paper, variants, rs, log, common)
    return rows


def _table8_rows(t, paper, variants, rs, log, common):
    """The rows of one ``(shape, batch)`` (``common``'s fields) from its interleaved timings."""
    cx, cy, tokens, prefix, batch = (common[k] for k in ("cx", "cy", "L", "prefix", "batch"))
    rows = []
    cuda = str(common["device"]).startswith("cuda")
    paper_full = paper.get((cx, cy, None), (None, None, None))
    bases = [n for n in ("full_bp", "gemm", "full_bp@graph") if n in t]
    for name in bases:
        q1, med, q3 = quartiles(t[name]["wall"])
        method, variant = (name.split("@") + ["eager"])[:2]
        rows.append(
            dict(
                common,
                method=method,
                variant=variant,
                select="",
                r="",
                R="",
                **iqr_cols("latency{}_us", (q1, med, q3), 1e6),
                cpu_latency_us=statistics.median(t[name]["cpu"]) * 1e6,
                latency_min_us=min(t[name]["wall"]) * 1e6,
                speedup=1.0 if method == FULL else "",
                paper_latency_cpu_us=paper_full[2] if batch == 1 and not prefix else "",
            )
        )
    side = math.isqrt(tokens - prefix)
    full = t["full_bp"]["wall"]
    for r in rs:
        proj = WHTProjector((side, side), select_bases("lp_l1", radius=r))
        rank = proj.rank
        bound = flop_bound(
            cx, cy, tokens - prefix, rank, batch, patches=proj.num_patches, prefix=prefix
        )
        roof = roofline_bound(
            full,
            t["gemm"]["wall"],
            t["stream"]["wall"],
            (proj.low_rank_tokens + prefix) / tokens,
            2.0 * cx * cy / (batch * tokens * (cx + cy)),
        )
        pap = paper.get((cx, cy, r), (None, None, None)) if not prefix else (None, None, None)
        xp_med = statistics.median(t[f"xproj_r{r}"]["wall"])
        for variant in variants:
            name = f"lbp_r{r}" if variant == "eager" else f"lbp_r{r}@{variant}"
            if name not in t:  # a variant this shape does not have (compiled_bwd: one patch)
                continue
            base = t["full_bp@graph" if variant == "graph" else "full_bp"]
            tw, tc = t[name]["wall"], t[name]["cpu"]
            q1, med, q3 = quartiles(tw)
            s_q1, s_med, s_q3 = paired_ratio(base["wall"], tw)
            c_q1, c_med, c_q3 = paired_ratio(base["cpu"], tc)
            # Least-disturbed estimate: on a shared machine the fastest sample of each
            # method is the one least hit by other processes (timeit's advice).
            s_min = min(base["wall"]) / min(tw)
            _, s_gemm, _ = paired_ratio(t["gemm"]["wall"], tw)
            with_x = [a + c for a, c in zip(tw, t[f"xproj_r{r}"]["wall"])]
            _, s_incl, _ = paired_ratio(base["wall"], with_x)
            naive = {}
            if f"naive_r{r}" in t:
                _, s_naive, _ = paired_ratio(full, t[f"naive_r{r}"]["wall"])
                _, c_naive, _ = paired_ratio(t["full_bp"]["cpu"], t[f"naive_r{r}"]["cpu"])
                naive = dict(
                    naive_latency_us=statistics.median(t[f"naive_r{r}"]["wall"]) * 1e6,
                    speedup_straightforward=s_naive,
                    speedup_straightforward_cputime=c_naive,
                )
            rows.append(
                dict(
                    common,
                    method=LBP,
                    variant=variant,
                    select="lp_l1",
                    r=r,
                    R=rank,
                    **iqr_cols("latency{}_us", (q1, med, q3), 1e6),
                    cpu_latency_us=statistics.median(tc) * 1e6,
                    **iqr_cols("speedup", (s_q1, s_med, s_q3)),
                    speedup_cputime=c_med,
                    speedup_min=s_min,
                    latency_min_us=min(tw) * 1e6,
                    speedup_cputime_q1=c_q1,
                    speedup_cputime_q3=c_q3,
                    speedup_vs_gemm=s_gemm,
                    **naive,
                    xproj_us=xp_med * 1e6,
                    speedup_incl_xproj=s_incl,
                    paper_speedup_cpu=pap[0] if (batch == 1 and pap[0]) else "",
                    paper_speedup_gpu=pap[1] if (batch == 1 and pap[1] and cuda) else "",
                    paper_latency_cpu_us=pap[2] if (batch == 1 and pap[2]) else "",
                    flop_bound=bound,
                    flop_bound_source=FLOP_BOUND_SOURCE,
                    pct_of_bound=100.0 * s_med / bound,
                    pct_of_bound_cputime=100.0 * c_med / bound,
                    roofline_bound=roof,
                    pct_of_roofline=100.0 * s_med / roof,
                    stream_us=statistics.median(t["stream"]["wall"]) * 1e6,
                )
            )
            log(
                f"[{common['device']} b={batch}] ({cx},{cy},{tokens}) LP_L1-{r} R={rank} "
                f"{variant}: {med * 1e6:8.0f} us vs full {statistics.median(base['wall']) * 1e6:8.0f}"
                f" us  speedup {s_med:5.2f}x [{s_q1:.2f}, {s_q3:.2f}] cpu-time {c_med:5.2f}x "
                f"min {s_min:5.2f}x  bound {bound:5.2f}x ({100 * s_med / bound:3.0f}%) "
                f"roofline {roof:5.2f}x ({100 * s_med / roof:3.0f}%)  paper "
                f"{pap[0] if batch == 1 else '-'}  load {common['loadavg_1m_start']:.2f}->"
                f"{common['loadavg_1m_end']:.2f}"
            )
    return rows


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


def legacy_patch_project(proj: WHTProjector, x: torch.Tensor) -> torch.Tensor:
    """The previous multi-patch projection (kept as the "before" of ``run_projection``): pad
    the map by a gather (one copy), view it as patches and contract each with the
    ``(n, n, R)`` basis in one einsum (which permutes, i.e. copies, on the way). Tokens
    ``(B, L, C)`` -> ``(B, P*R, C)``, grad scaling, same values as ``project``."""
    n = proj.order
    xp = proj._padded_bhwc(x, "tokens")
    b, c = xp.shape[0], xp.shape[-1]
    patches = xp.reshape(b, proj.hp // n, n, proj.wp // n, n, c)
    basis = proj._const("basis_g", x.dtype, x.device)
    out = torch.einsum("bpuqvc,uvk->bpqkc", patches, basis)
    return out.reshape(b, proj.low_rank_tokens, c)


def run_projection(
    *,
    sizes: Sequence[int] = (7, 14, 28, 56),
    rs: Sequence[int] = (2, 4, 6),
    channels: int = 256,
    batch: int = 8,
    rounds: int = 0,
    quick: bool = False,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Time the projection of g (with the fused bias sum) and the reverse projection for the
    ``dense`` GEMM (padding folded into one (P*R+1, L) matrix), the separable ``patch``
    implementation, the previous per-patch path (:func:`legacy_patch_project`, projection only)
    and the butterfly fast WHT, on square maps of side ``sizes`` (tokens layout,
    ``(batch, side*side, channels)``), LP_L1-r for each ``rs``; beside them the modelled costs
    of :func:`lbp_wht.projection.projection_cost` and what ``impl="auto"`` picks.
    ``rounds`` 0: 15 (at least 5); ``quick``: 3."""
    from ..projection import BYTE_COST, projection_cost

    rows = []
    c, bsz = channels, batch
    for side in sizes:
        for r in rs:
            bases = select_bases("lp_l1", radius=r)
            g = torch.randn(bsz, side * side, c)
            p_d = WHTProjector((side, side), bases, 8, "reflect", "dense")
            p_p = WHTProjector((side, side), bases, 8, "reflect", "patch")
            torch.testing.assert_close(fwht_project(p_p, g), p_p.project(g), rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(
                legacy_patch_project(p_p, g), p_p.project(g, grad=True), rtol=1e-4, atol=1e-4
            )
            low = torch.randn(bsz * p_d.low_rank_tokens, c)
            fns = {
                "dense_proj": lambda p=p_d, g=g: p.project(g, "tokens", grad=True, bias_sum=True),
                "patch_proj": lambda p=p_p, g=g: p.project(g, "tokens", grad=True, bias_sum=True),
                "legacy_proj": lambda p=p_p, g=g: (legacy_patch_project(p, g), g.sum((0, 1))),
                "fwht_proj": lambda p=p_p, g=g: (fwht_project(p, g), g.sum((0, 1))),
                "dense_rev": lambda p=p_d, lo=low: p.project_back(lo.view(bsz, -1, c)),
                "patch_rev": lambda p=p_p, lo=low: p.project_back(lo.view(bsz, -1, c)),
            }
            n_rounds = 3 if quick else max(5, rounds or 15)
            t = interleaved_timings(fns, n_rounds, warmup=2)
            med = {k: statistics.median(v["wall"]) * 1e6 for k, v in t.items()}
            cmed = {k: statistics.median(v["cpu"]) * 1e6 for k, v in t.items()}
            model = projection_cost((side, side), bases)
            row = dict(
                hw=f"{side}x{side}",
                patches=p_d.num_patches,
                r=r,
                R=len(bases),
                batch=bsz,
                channels=c,
                **{f"{k}_us": v for k, v in med.items()},
                **{f"{k}_cpu_us": v for k, v in cmed.items()},
                model_dense=model["dense"],
                model_patch=model["patch"],
                byte_cost=BYTE_COST,
                auto_impl=WHTProjector((side, side), bases).impl,
                loadavg_1m=round(loadavg()[0], 2),
            )
            rows.append(row)
            both = {k: med[f"{k}_proj"] + med[f"{k}_rev"] for k in ("dense", "patch")}
            log(
                f"{side}x{side} P={p_d.num_patches} R={len(bases)}: project g "
                f"dense {med['dense_proj']:.0f} / patch {med['patch_proj']:.0f} / previous "
                f"{med['legacy_proj']:.0f} / fwht {med['fwht_proj']:.0f} us; reverse dense "
                f"{med['dense_rev']:.0f} / patch {med['patch_rev']:.0f} us; both: faster "
                f"{min(both, key=both.__getitem__)}, auto {row['auto_impl']}"
            )
    return rows


# ---- ablation: what each optimisation of the backward buys -----------------------------------
def ablation_pairs(batch: int, cx: int = 448, cy: int = 1792, r: int = 4) -> list[tuple]:
    """``(change, layout, before_fn, after_fn)``: each pair computes the same values the way the
    first implementation did (before) and the way the optimised path does (after)."""
    bases = select_bases("lp_l1", radius=r)
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


def run_ablation(
    *,
    batches: Sequence[int] = (1, 64),
    rounds: int = 0,
    quick: bool = False,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Time each pair of :func:`ablation_pairs` (before vs after, interleaved) at each batch;
    one row per (batch, change) with the medians, the fastest samples and the paired ratio.
    ``rounds`` 0: 100 at batch 1, else 20; ``quick``: 3."""
    rows = []
    for batch in batches:
        pairs = ablation_pairs(batch)
        fns = {}
        for i, (_, _, before, after) in enumerate(pairs):
            fns[f"{i}_before"], fns[f"{i}_after"] = before, after
        n_rounds = 3 if quick else (rounds or (100 if batch == 1 else 20))
        t = interleaved_timings(fns, n_rounds, warmup=3)
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
                loadavg_1m=round(loadavg()[0], 2),
            )
            rows.append(row)
            log(
                f"b={batch} {change} [{layout}]: {row['before_us']:.0f} -> {row['after_us']:.0f} "
                f"us (min {row['before_min_us']:.0f} -> {row['after_min_us']:.0f})"
            )
    return rows
