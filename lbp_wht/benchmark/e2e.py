"""End-to-end backward time of one partial-training step of a whole model.

Partial training (the paper's main setting): the last stage and the head train, everything
else is frozen, BatchNorm on running statistics (``norm_eval``). Every method is built by the
project's presets (``lbp_wht.experiments.presets.get_preset`` via
``lbp_wht.integrations.build.LBPWHTModel``) exactly as training builds it.

What is timed: ``torch.autograd.grad(loss, trainable_params, retain_graph=True)`` on a graph
built once per method, i.e. the backward of the step only (the forward, which every method runs
alike through the frozen stages, is excluded). Methods are interleaved round by round
(:func:`lbp_wht.benchmark.timing.interleaved_timings`). Beside the measured speedup, the FLOP
speedup of the same step is counted with ``torch.utils.flop_counter.FlopCounterMode``
(:func:`lbp_wht.measure.measure_step`: backward matmul/conv FLOPs plus the forward-side
projection of ``x``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from .. import integrations  # noqa: F401  (CPU shims before mmpretrain imports torchvision)
from ..experiments.vocab import METHOD_SPECS, method_key, method_label, method_spec
from .timing import interleaved_timings, iqr_cols, loadavg, paired_ratio, provenance, quartiles, say

#: The methods compared, as ``(preset method, LP_L1 radius or None)``; the first one is the
#: baseline of the speedups. Rows are labelled with :func:`lbp_wht.experiments.vocab.method_label`.
E2E_METHODS: tuple[tuple[str, int | None], ...] = (
    ("full_bp", None),
    ("lora_all", None),
    ("lbp_wht", 2),
    ("lbp_wht", 4),
    ("lbp_wht", 6),
)


def method_name(method: str, r: int | None) -> str:
    """The display label of a preset method (``LP_L1-<r>`` for LBP-WHT with radius ``r``)."""
    return method_label(method_key(method, "lp_l1", r))


def build(
    model: str, method: str, r: int | None, num_classes: int, scope: str = "partial"
) -> torch.nn.Module:
    """The converted, frozen model exactly as training builds it (presets + LBPWHTModel),
    ``scope`` ``"partial"`` (last stage + head) or ``"full"``, in train mode."""
    from mmengine.registry import init_default_scope

    import lbp_wht.integrations.models  # noqa: F401  (registers the project's model types)
    from lbp_wht.experiments.presets import model_config
    from lbp_wht.integrations.build import LBPWHTModel

    init_default_scope("mmpretrain")
    lbp = dict(method=method, model=model, scope=scope)
    if r is not None:
        lbp.update(select="lp_l1", r=r)
    net = LBPWHTModel(model_config(model, num_classes=num_classes), lbp)
    return net.train()


def run_e2e(
    *,
    model: str = "efficientformer-l1",
    batch: int = 8,
    size: int = 224,
    rounds: int = 30,
    num_classes: int = 100,
    threads: int = 1,
    allocator: str = "",
    methods: Sequence[tuple[str, int | None]] = E2E_METHODS,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Build every method, count its backprop FLOPs, time the backward of all methods
    interleaved; one row per method (``batch`` images of ``3 x size x size``, random labels).

    ``threads`` and ``allocator`` are copied into the rows (the caller sets them up).
    """
    from lbp_wht.measure import measure_step

    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))
    fns, flops, extras, tails = {}, [], [], []
    for method, r in methods:
        label = method_name(method, r)
        torch.manual_seed(0)  # same initial weights for every method
        net = build(model, method, r, num_classes)
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
        loss = loss_of(net(x, mode="tensor"))  # graph kept for repeated backward calls
        fns[label] = partial(torch.autograd.grad, loss, params, retain_graph=True)
        flops.append(m.backprop_flops)  # flops[0]: the baseline's
        extras.append(
            dict(
                backprop_gflops=m.backprop_flops / 1e9,
                flop_speedup=flops[0] / m.backprop_flops,
                trainable_params=m.trainable_params,
                saved_activation_mb=m.saved_activation_bytes / 2**20,
            )
        )
        tails.append(f"  FLOP speedup {extras[-1]['flop_speedup']:.2f}x")
        log(
            f"built {label}: {len(params)} trainable tensors, {m.backprop_flops / 1e9:.3f} "
            f"GFLOPs backprop"
        )
    run = dict(model=model, batch=batch, size=size, threads=threads, allocator=allocator)
    return _timed_rows(fns, methods, rounds, 2, run, extras, tails, log)


def _timed_rows(
    fns: dict[str, Callable[[], object]],
    methods: Sequence[tuple[str, int | None]],
    rounds: int,
    warmup: int,
    run: dict,
    extras: Sequence[dict],
    tails: Sequence[str],
    log: Callable[[str], None],
) -> list[dict]:
    """Time the backward ``fns`` (one per method, by label) interleaved; one CSV row per method:
    ``run``'s fields, its backward time and paired speedups over the first method, its
    ``extras`` entry, then the run's :func:`~.timing.provenance`. Each row's log line ends with
    its ``tails`` entry."""
    load0 = loadavg()
    t = interleaved_timings(fns, rounds, warmup=warmup)
    stamp = provenance(rounds, load0)
    base = method_name(*methods[0])
    rows = []
    for (method, r), extra, tail in zip(methods, extras, tails):
        label = method_name(method, r)
        q1, med, q3 = quartiles(t[label]["wall"])
        s_q1, s_med, s_q3 = paired_ratio(t[base]["wall"], t[label]["wall"])
        _, c_med, _ = paired_ratio(t[base]["cpu"], t[label]["cpu"])
        rows.append(
            dict(
                model=run["model"],
                method=label,
                preset_method=method,
                r=r if r is not None else "",
                **{k: run[k] for k in ("batch", "size", "threads", "allocator")},
                **iqr_cols("backward{}_ms", (q1, med, q3), 1e3),
                **iqr_cols("speedup", (s_q1, s_med, s_q3)),
                speedup_cputime=c_med,
                **extra,
                **stamp,
            )
        )
        log(
            f"{label:9s} backward {med * 1e3:8.1f} ms [{q1 * 1e3:.1f}, {q3 * 1e3:.1f}]  "
            f"speedup {s_med:.2f}x [{s_q1:.2f}, {s_q3:.2f}] (cpu-time {c_med:.2f}x){tail}"
        )
    return rows


# ---- timm models, every linear layer converted ---------------------------------------------
#: ``(method, LP_L1 radius)`` of :func:`run_e2e_timm`; the first is the baseline.
TIMM_METHODS: tuple[tuple[str, int | None], ...] = (
    ("full_bp", None),
    ("lbp_wht", 2),
    ("lbp_wht", 4),
)

#: Autograd nodes that are the backward of a plain ``nn.Linear`` (``F.linear`` on token input:
#: ``addmm`` / ``mm`` on the folded rows); LBP-WHT layers are one ``_LBPFunctionBackward`` each.
LINEAR_NODES = ("AddmmBackward0", "MmBackward0", "_LBPFunctionBackward")


def build_timm(name: str, method: str, r: int | None, num_classes: int = 1000) -> torch.nn.Module:
    """timm ``name`` (``pretrained=False``), everything trainable, in train mode; LBP-WHT
    LP_L1-r on every linear layer the ``"all-linear"`` rule converts (the README's example)."""
    import timm

    import lbp_wht

    spec = method_spec(method)
    if spec.trains != "scope":  # everything trains here: no adapters, head or side network
        whole = [m.id for m in METHOD_SPECS.values() if m.trains == "scope"]
        raise ValueError(f"method {method!r} does not train the whole model; choose one of {whole}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if spec.converts:
        rule: dict = dict(target="all-linear", method=spec.conversion)
        lbp_wht.convert(model, [rule | ({"radius": r} if spec.has_bases else {})])
    model.requires_grad_(True)
    return model.train()


def linear_backward_share(fn: Callable[[], object], rounds: int = 2) -> tuple[float, float]:
    """``(share, seconds)``: the fraction of one backward ``fn()`` spent in the autograd nodes of
    linear layers (:data:`LINEAR_NODES`: plain ``nn.Linear`` or LBP-WHT), from
    ``torch.profiler`` (CPU time of each node including its ops, on the calling thread), median
    of ``rounds`` profiled calls, and the profiled wall time."""
    from torch.profiler import ProfilerActivity, profile

    shares, secs = [], []
    for _ in range(rounds):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        inside = 0.0
        for ev in prof.events():
            name = ev.name
            if name.startswith("autograd::engine::evaluate_function: "):
                node = name.split(": ", 1)[1]
                if node in LINEAR_NODES:
                    inside += ev.cpu_time_total * 1e-6
        shares.append(inside / wall)
        secs.append(wall)
    return statistics.median(shares), statistics.median(secs)


def run_e2e_timm(
    *,
    model: str = "vit_small_patch16_224",
    batch: int = 32,
    size: int = 224,
    rounds: int = 10,
    threads: int = 2,
    allocator: str = "",
    methods: Sequence[tuple[str, int | None]] = TIMM_METHODS,
    log: Callable[[str], None] = say,
) -> list[dict]:
    """Backward time of one training step of a timm model (random init, every parameter
    trainable), Full BP vs LBP-WHT on every linear layer, methods interleaved; beside each the
    counted FLOP ratio (FlopCounterMode, as :mod:`lbp_wht.measure`) and the share of the
    backward spent outside the linear layers (:func:`linear_backward_share`)."""
    from lbp_wht.measure import measure_step

    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    fns, flops, extras, tails = {}, [], [], []
    for method, r in methods:
        label = method_name(method, r)
        torch.manual_seed(0)
        net = build_timm(model, method, r)
        params = [p for p in net.parameters() if p.requires_grad]
        m = measure_step(
            net, x, loss_fn=lambda out: F.cross_entropy(out, labels), elementwise=False
        )
        lbp_layers = sum(type(mod).__name__ == "LBPLinear" for mod in net.modules())
        linears = sum(isinstance(mod, torch.nn.Linear) for mod in net.modules())
        loss = F.cross_entropy(net(x), labels)  # graph kept for repeated backward calls
        fn = fns[label] = partial(torch.autograd.grad, loss, params, retain_graph=True)
        fn()  # warm-up: projector matrices, stride probes, allocator
        share, _ = linear_backward_share(fn)
        flops.append(m.backprop_flops)  # flops[0]: the baseline's
        extras.append(
            dict(
                backprop_gflops=m.backprop_flops / 1e9,
                flop_speedup=flops[0] / m.backprop_flops,
                linear_share=share,
                outside_share=1.0 - share,
                lbp_layers=lbp_layers,
                linear_layers=linears,
                trainable_params=m.trainable_params,
                saved_activation_mb=m.saved_activation_bytes / 2**20,
            )
        )
        tails.append(
            f"  FLOP speedup {extras[-1]['flop_speedup']:.2f}x  outside linear layers "
            f"{100 * (1 - share):.0f}%"
        )
        log(
            f"built {label}: {lbp_layers} of {linears} linear layers LBP-WHT, "
            f"{m.backprop_flops / 1e9:.1f} GFLOPs backprop, {100 * share:.0f}% of the backward "
            "in linear layers"
        )
    run = dict(model=model, batch=batch, size=size, threads=threads, allocator=allocator)
    return _timed_rows(fns, methods, rounds, 1, run, extras, tails, log)
