"""Wall-clock time of a whole training step: forward + backward + optimizer, per method.

What a user gets per iteration, which the per-layer (Table 8) and backward-only benchmarks do
not show: the forward through the frozen stages, the backward, and the optimizer update of the
trainable parameters. Every method is built by the project's presets exactly as training builds
it (:func:`lbp_wht.benchmark.e2e.build`: ``LBPWHTModel``, partial or full training scope,
``norm_eval``), on ``batch`` random images of ``3 x size x size`` with random labels.

One step, as ``tools/train.py`` runs it::

    with autocast (optional): loss = cross_entropy(model(x), labels)     # forward
    loss.backward()                                                      # backward
    optimizer.step(); optimizer.zero_grad(set_to_none=True)              # optimizer (AdamW)

Each phase is timed (``time.perf_counter``; on CUDA, CUDA events around each phase and one
synchronise per step). Methods are interleaved round by round in a shuffled order, so drift and
other processes' load hit every method alike; reported are medians with quartiles, and the
speedup over Full BP as the median of the per-round ratios (paired).

**FLOP bound of the whole step**: ``FLOPs(Full BP step) / FLOPs(method step)``, the matmul and
convolution FLOPs of the training forward (including LBP-WHT's projection of ``x``) plus the
backward, counted with ``torch.utils.flop_counter.FlopCounterMode``
(:func:`lbp_wht.measure.measure_step`). It does not count elementwise work (activations,
normalisation, the optimizer's update), which every method pays alike; so, with the forward
included, the bound is far below the backward-only FLOP speedup. Memory: the bytes autograd
saves for backward (every device) and, on CUDA, the allocator's peak over one step
(``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..experiments.vocab import method_spec
from .e2e import E2E_METHODS, build, method_name
from .timing import gc_paused, iqr_cols, loadavg, paired_ratio, provenance, quartiles, say

#: ``--amp`` spellings -> autocast dtype (None: float32).
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
PHASES = ("forward", "backward", "optimizer")


@dataclass
class _Case:
    """One method in one scope, ready to step."""

    scope: str
    label: str
    preset_method: str
    r: int | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_flops: int
    backprop_flops: int
    saved_bytes: int
    trainable: int
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    cuda_peak: list[int] = field(default_factory=list)


class _PhaseClock:
    """Marks phase boundaries: ``perf_counter`` on the CPU, CUDA events on a GPU (read after
    one synchronise at the end of the step)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def train_step(
    case: _Case, x: torch.Tensor, labels: torch.Tensor, device: str, amp: torch.dtype | None
) -> list[float]:
    """One training step of ``case``; returns the seconds of forward, backward, optimizer."""
    clock = _PhaseClock(torch.device(device).type == "cuda")
    clock.mark()
    with _autocast(device, amp):
        loss = F.cross_entropy(case.model(x, mode="tensor"), labels)
    clock.mark()
    loss.backward()
    clock.mark()
    case.optimizer.step()
    case.optimizer.zero_grad(set_to_none=True)
    clock.mark()
    return clock.intervals()


def build_case(
    model: str,
    scope: str,
    method: str,
    r: int | None,
    *,
    num_classes: int,
    x: torch.Tensor,
    labels: torch.Tensor,
    device: str,
    lr: float = 1e-4,
) -> _Case:
    """Build one method (same initial weights for every method), count its step FLOPs and
    saved bytes (:func:`lbp_wht.measure.measure_step`), and give it an AdamW optimizer over its
    trainable parameters (as the paper's classification configs)."""
    from lbp_wht.measure import measure_step

    torch.manual_seed(0)
    net = build(model, method, r, num_classes, scope=scope).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    m = measure_step(
        net,
        x,
        forward=lambda mod, inp: mod(inp, mode="tensor"),
        loss_fn=lambda out: F.cross_entropy(out, labels),
        elementwise=False,
    )
    for p in params:
        p.grad = None
    return _Case(
        scope=scope,
        label=method_name(method, r),
        preset_method=method,
        r=r,
        model=net,
        optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=0.05),
        step_flops=m.forward_flops + m.backward_flops,
        backprop_flops=m.backprop_flops,
        saved_bytes=m.saved_activation_bytes,
        trainable=m.trainable_params,
    )


def run_step(
    *,
    model: str = "efficientformer-l1",
    scopes: Sequence[str] = ("partial", "full"),
    batch: int = 32,
    size: int = 224,
    rounds: int = 10,
    warmup: int = 2,
    num_classes: int = 100,
    device: str = "cpu",
    amp: str = "none",
    methods: Sequence[tuple[str, int | None]] = E2E_METHODS,
    threads: int | str = "",
    allocator: str = "",
    seed: int = 0,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Time the training step of every method of ``methods`` in every scope of ``scopes``,
    all interleaved; one row per (scope, method) with the step, forward, backward and
    optimizer medians, the paired step speedup over Full BP of the same scope, the step's FLOP
    bound, the saved bytes and (CUDA) the allocator peak.

    Args:
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (autocast around the forward).
        threads, allocator: copied into the rows (the caller sets them up).

    Raises:
        ValueError: an unknown ``amp``, or ``methods`` not starting with Full BP (the baseline
            of the speedups and of the FLOP bound).
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp {amp!r}; choose one of {list(AMP_DTYPES)}")
    if not methods or not method_spec(methods[0][0]).reference:
        raise ValueError("methods must start with ('full_bp', None): it is the baseline")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}")
    amp_dtype = AMP_DTYPES[amp]
    cuda = torch.device(device).type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    cases: list[_Case] = []
    for scope in scopes:
        for method, r in methods:
            case = build_case(
                model, scope, method, r, num_classes=num_classes, x=x, labels=labels, device=device
            )
            cases.append(case)
            log(
                f"built {scope} {case.label}: {case.trainable:,} trainable parameters, step "
                f"{case.step_flops / 1e9:.2f} GFLOPs (backprop {case.backprop_flops / 1e9:.2f})"
            )
    for case in cases:  # warm-up: allocator, BLAS packing, optimizer state, autocast caches
        for _ in range(warmup):
            train_step(case, x, labels, device, amp_dtype)
    load0 = loadavg()
    rng = random.Random(seed)
    order = list(range(len(cases)))
    with gc_paused():
        for k in range(rounds):
            rng.shuffle(order)
            for i in order:
                case = cases[i]
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                for name, sec in zip(PHASES, train_step(case, x, labels, device, amp_dtype)):
                    case.phases[name].append(sec)
                if cuda:
                    case.cuda_peak.append(torch.cuda.max_memory_allocated())
            log(f"round {k + 1}/{rounds} done (load {loadavg()[0]:.2f})")
    common = dict(
        model=model, batch=batch, size=size, device=device, amp=amp, threads=threads,
        allocator=allocator, optimizer="AdamW", **provenance(rounds, load0),
    )  # fmt: skip
    return _rows(cases, common, log)


def _rows(cases: list[_Case], common: dict, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for case in cases:
        base = next(
            c for c in cases if c.scope == case.scope and method_spec(c.preset_method).reference
        )
        step = [sum(v) for v in zip(*(case.phases[p] for p in PHASES))]
        base_step = [sum(v) for v in zip(*(base.phases[p] for p in PHASES))]
        q1, med, q3 = quartiles(step)
        s_q1, s_med, s_q3 = paired_ratio(base_step, step)
        _, b_med, _ = paired_ratio(base.phases["backward"], case.phases["backward"])
        bound = base.step_flops / case.step_flops
        row = dict(
            common,
            scope=case.scope,
            method=case.label,
            preset_method=case.preset_method,
            r=case.r if case.r is not None else "",
            **iqr_cols("step{}_ms", (q1, med, q3), 1e3),
            **{f"{p}_ms": statistics.median(case.phases[p]) * 1e3 for p in PHASES},
            **iqr_cols("speedup", (s_q1, s_med, s_q3)),
            backward_speedup=b_med,
            step_gflops=case.step_flops / 1e9,
            backprop_gflops=case.backprop_flops / 1e9,
            flop_bound=bound,
            pct_of_bound=100.0 * s_med / bound,
            saved_activation_mb=case.saved_bytes / 2**20,
            cuda_peak_mb=statistics.median(case.cuda_peak) / 2**20 if case.cuda_peak else "",
            trainable_params=case.trainable,
        )
        rows.append(row)
        log(
            f"{case.scope:7s} {case.label:9s} step {med * 1e3:8.1f} ms [{q1 * 1e3:.1f}, "
            f"{q3 * 1e3:.1f}] (fwd {row['forward_ms']:.1f}, bwd {row['backward_ms']:.1f}, opt "
            f"{row['optimizer_ms']:.1f})  speedup {s_med:.2f}x [{s_q1:.2f}, {s_q3:.2f}]  "
            f"FLOP bound {bound:.2f}x ({row['pct_of_bound']:.0f}%)"
        )
    return rows
