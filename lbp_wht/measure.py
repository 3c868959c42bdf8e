"""Measure what one training step of a model costs: backprop FLOPs and memory (pure PyTorch).

:func:`measure_step` runs a model on the same inputs:

1. (models with LBP-WHT layers) a warm-up forward + backward that fills caches such as the WHT
   projection matrices, whose one-off construction must not be counted;
2. (models with LBP-WHT layers) a forward under ``torch.no_grad()``: the inference forward of
   the same model, where LBP-WHT layers run as plain layers (no projection of ``x``); without
   LBP-WHT layers it would equal the training forward and is not run;
3. a training forward + backward under ``torch.utils.flop_counter.FlopCounterMode`` with a
   snapshot between the two, so forward and backward FLOPs are counted separately, both
   broken down by module with :class:`ModuleAttribution` (each backward op, including those
   inside a custom ``autograd.Function.backward``, is credited to the module whose forward
   created the autograd node being executed).

**Backprop FLOPs** = backward FLOPs + (training forward - no-grad forward). The second term is
the work the forward does *only because* a backward follows: LBP-WHT projects ``x`` onto the
WHT bases in the forward (Eq. 3, ``x_hat`` is what it saves), which Table 1 counts as part of
its projection cost. For every other layer the two forwards are identical and the term is 0.

The counter counts matrix products and convolutions only (2 FLOPs per multiply-add; the
weight gradient of grouped convolutions is counted with a corrected formula, see
:func:`flop_counter`); it does not count elementwise ops, normalisation, softmax or activations. As a separate, clearly
labelled *estimate* of those, an elementwise tally (one FLOP per element touched by every
other floating-point op; views, copies and padding excluded) is recorded too. The paper's
Linux ``perf`` counts would include such ops (and whatever its BLAS computed).

**Memory** (Table 6):

* saved for backward: every tensor autograd saves during the training forward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by storage (a view keeps its whole
  storage alive, so the storage's size is counted, once). This includes tensors saved by
  non-linear ops (norm inputs, activation inputs, dropout masks, softmax outputs, pooling
  inputs) and by custom functions (LBP-WHT's ``x_hat``). Parameters saved for backward (e.g.
  a linear layer's weight) are reported separately (``saved_param_bytes``): they occupy memory
  anyway. Attributed to the innermost module running when the tensor was saved.
* weight gradients: bytes of every ``.grad`` the step produced (trainable parameters).
* trainable parameters: count of ``requires_grad`` parameters.
* on CUDA: the allocator's peak during the step (absolute, and above the pre-step level).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = [
    "StepMeasurement",
    "measure_step",
    "SavedTensorTracker",
    "ElementwiseCounter",
    "default_loss",
    "trainable_parameters",
    "flop_counter",
    "ModuleAttribution",
]


def _conv_backward_flop(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``, correct for grouped (depthwise) convolutions.

    torch's own formula (``torch.utils.flop_counter.conv_backward_flop``, torch 2.13) ignores
    ``groups`` for the weight gradient and overcounts it by the number of groups: a depthwise
    3x3 conv's weight gradient comes out ``C`` times too large (checked: 64 channels, 7x7 map,
    3,612,672 counted vs 56,448). Each of grad_input and grad_weight performs exactly the
    multiply-adds of the forward convolution: ``N * prod(w_shape) * prod(spatial)`` with the
    spatial size of the convolution's output (its input for a transposed convolution), since
    ``w_shape = (C_out, C_in / groups, kh, kw)`` already accounts for the groups.
    """
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    macs = int(x_shape[0])
    for v in list(w_shape) + list(spatial):
        macs *= int(v)
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode(display=False)`` with :func:`_conv_backward_flop` for conv backward."""
    return FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop},
    )


def default_loss(output: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in ``output`` (tensor / tuple / list / dict).

    A sum is enough for FLOP and memory accounting: the loss's own backward is elementwise.
    """
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, Sequence) and not isinstance(output, str):
        parts = [default_loss(o) for o in output]
        parts = [p for p in parts if p is not None]
        if parts:
            return torch.stack(parts).sum()
    if hasattr(output, "seg_logits"):  # mmseg SegDataSample
        return default_loss(output.seg_logits.data)
    raise TypeError(
        f"default_loss cannot make a scalar from {type(output).__name__}; pass loss_fn="
    )


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(number of trainable parameter elements, number of trainable tensors), deduplicated."""
    from .conversion import trainable_summary

    s = trainable_summary(model)
    return s.trainable, s.tensors


# ------------------------------------------------------------------------------------------
class _ModuleStack:
    """Tracks the innermost running module (global forward hooks, removed on exit)."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.handles: list[Any] = []

    def __enter__(self) -> _ModuleStack:
        from torch.nn.modules import module as mm

        def pre(module: nn.Module, args: Any) -> None:
            name = self.names.get(id(module))
            self.stack.append(name if name is not None else f"<{type(module).__name__}>")

        def post(module: nn.Module, args: Any, out: Any) -> None:
            if self.stack:
                self.stack.pop()

        self.handles = [
            mm.register_module_forward_pre_hook(pre),
            mm.register_module_forward_hook(post, always_call=True),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""


class ModuleAttribution:
    """Context manager: FLOPs per module, *self* (innermost module), forward and backward.

    ``FlopCounterMode``'s own per-module figures are unreliable in the backward: its module
    tracker marks a module finished when the gradient of the module's *input* is complete,
    which never happens for an input that needs no gradient (the first layer of a partially
    trained stage) and happens late for inputs shared by several modules (q, k and v on one
    ``x``), so later backward work is credited to those modules too (seen on Segformer:
    ``decode_head.convs.0`` credited with 9x its real backward). Here every autograd node is
    labelled in the forward with the module that created it (a forward post-hook walks the
    graph from the module's outputs back to its inputs, innermost modules first), and each
    backward op is credited to the module of the node the autograd engine is executing
    (``torch._C._current_autograd_node()``). Forward ops are credited to the innermost running
    module. Ops outside any module are credited to ``""``.

    Limitation: a tensor that reaches a module other than through its positional arguments
    (keyword argument, attribute) is not a boundary; nodes created for it by the caller just
    before the call are credited to the callee.
    """

    def __init__(self, model: nn.Module, custom: dict[Any, Any] | None = None) -> None:
        from torch.utils.flop_counter import shape_wrapper

        self.names = {id(m): n for n, m in model.named_modules()}
        self.labels: dict[Any, str] = {}
        self.flops: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.phase = "fwd"
        self._stack: list[tuple[str, set[int]]] = []
        self._handles: list[Any] = []
        self.registry = dict(flop_registry)
        self.registry[torch.ops.aten.convolution_backward] = shape_wrapper(_conv_backward_flop)
        attribution = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = attribution.registry.get(func.overloadpacket)
                if formula is not None:
                    n = int(formula(*args, **kwargs, out_val=out))
                    attribution.flops[attribution.current_label()][attribution.phase] += n
                return out

        self._mode = _Mode()

    def current_label(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None:
            return self.labels.get(node, "<unlabelled backward>")
        return self._stack[-1][0] if self._stack else ""

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module), f"<{type(module).__name__}>")
        boundary = {id(t.grad_fn) for t in _tensors(args) if t.grad_fn is not None}
        self._stack.append((name, boundary))

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._stack:
            return
        name, boundary = self._stack.pop()
        queue = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
        seen: set[int] = set()
        prefix = name + "."
        while queue:
            node = queue.pop()
            if node is None or id(node) in seen or id(node) in boundary:
                continue
            seen.add(id(node))
            if type(node).__name__ == "AccumulateGrad":
                continue
            lab = self.labels.get(node)
            if lab is None:
                self.labels[node] = name
            elif not (lab == name or lab.startswith(prefix) or name == ""):
                continue  # created outside this module (the root "" contains everything)
            queue.extend(nxt for nxt, _ in node.next_functions)

    def __enter__(self) -> ModuleAttribution:
        from torch.nn.modules import module as mm

        self._handles = [
            mm.register_module_forward_pre_hook(self._pre),
            mm.register_module_forward_hook(self._post, always_call=True),
        ]
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []

    def release(self) -> None:
        """Drop the node labels (they keep autograd nodes alive)."""
        self.labels.clear()


class SavedTensorTracker:
    """Context manager: bytes of the tensors autograd saves for backward, by storage.

    Args:
        model: used to tell parameters/buffers (not activations) from activations and to
            name modules.

    After the context: ``activation_bytes``, ``param_bytes``, ``count``, ``by_module`` (innermost
    module name -> activation bytes; ``""`` for ops outside any module).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.activation_bytes = 0
        self.param_bytes = 0
        self.count = 0
        self.by_module: dict[str, int] = defaultdict(int)
        self._seen: set[tuple[str, int]] = set()
        self._param_keys = {self._key(t) for t in list(model.parameters()) + list(model.buffers())}
        self._stack = _ModuleStack(model)
        self._hooks: Any = None

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[str, int]:
        return (str(t.device), t.untyped_storage().data_ptr())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = self._key(t)
            nbytes = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            return t
        if key in self._seen:
            return t
        self._seen.add(key)
        if key in self._param_keys:
            self.param_bytes += nbytes
        else:
            self.activation_bytes += nbytes
            self.count += 1
            self.by_module[self._stack.current] += nbytes
        return t

    def __enter__(self) -> SavedTensorTracker:
        self._stack.__enter__()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._stack.__exit__(*exc)


# ------------------------------------------------------------------------------------------
# Ops that move or create data without floating-point arithmetic (not counted as elementwise).
_DATA_MOVEMENT = set(
    """
    clone copy copy_ _to_copy to cat stack index_select index index_put index_put_ gather
    scatter scatter_ constant_pad_nd reflection_pad2d replication_pad2d new_zeros
    new_empty new_empty_strided new_ones zeros zeros_like ones ones_like empty empty_like
    empty_strided full full_like fill fill_ zero_ arange lift_fresh lift_fresh_copy
    contiguous _unsafe_view clamp_min_ masked_fill masked_fill_ where roll flip repeat
    select_backward slice_backward as_strided_scatter detach alias bernoulli_
    native_dropout _local_scalar_dense embedding
    """.split()
)


class ElementwiseCounter(TorchDispatchMode):
    """Tally of elements touched by non-GEMM floating-point ops: an *estimate* of the
    FLOPs that a matmul-only counter misses (one FLOP per element per op; a lower bound for
    ops such as normalisation or GELU that need several instructions per element).

    For each op not in ``FlopCounterMode``'s registry and not a view / copy / fill, the count
    is the largest floating-point numel among its inputs and outputs (so reductions count
    their input). ``total`` and ``by_op`` accumulate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        name = packet.__name__
        if packet in flop_registry or func.is_view or name in _DATA_MOVEMENT:
            return out
        best = 0
        for t in _tensors(args, kwargs, out):
            if t.is_floating_point() or t.is_complex():
                best = max(best, t.numel())
        if best:
            self.total += best
            self.by_op[name] += best
        return out


def _tensors(*objs: Any) -> Iterable[torch.Tensor]:
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            yield from _tensors(*obj)
        elif isinstance(obj, dict):
            yield from _tensors(*obj.values())


# ------------------------------------------------------------------------------------------
@dataclass
class StepMeasurement:
    """Result of :func:`measure_step` for one batch. Use :meth:`per_image` for per-image values.

    FLOP fields are matmul/conv FLOPs (2 per multiply-add) as counted by ``FlopCounterMode``;
    ``*_elementwise`` fields are the :class:`ElementwiseCounter` estimate.
    """

    batch: int
    forward_flops: int
    forward_nograd_flops: int
    backward_flops: int
    backward_by_op: dict[str, int]
    forward_by_op: dict[str, int]
    per_module: dict[str, dict[str, int]]
    forward_elementwise: int
    backward_elementwise: int
    forward_nograd_elementwise: int
    backward_elementwise_by_op: dict[str, int]
    saved_activation_bytes: int
    saved_param_bytes: int
    saved_tensors: int
    saved_by_module: dict[str, int]
    weight_grad_bytes: int
    trainable_params: int
    trainable_tensors: int
    device: str
    cuda_peak_bytes: int | None = None
    cuda_step_peak_bytes: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: integer multiply-accumulates (HOT's simulated INT4 products), not in any FLOP field
    int_macs: int = 0

    @property
    def forward_extra_flops(self) -> int:
        """Training forward minus no-grad forward (LBP-WHT's projection of ``x``)."""
        return self.forward_flops - self.forward_nograd_flops

    @property
    def backprop_flops(self) -> int:
        """Backward FLOPs + forward work done only for the backward (see module doc)."""
        return self.backward_flops + self.forward_extra_flops

    def module_backprop(self, name: str) -> int:
        """Backprop FLOPs of module ``name`` and its children (``per_module`` holds *self*
        figures: each op is credited to the innermost module that ran it)."""
        total = 0
        for mod, d in self.per_module.items():
            if mod == name or mod.startswith(name + ".") or name == "":
                total += d.get("bwd", 0) + d.get("fwd", 0) - d.get("fwd_nograd", 0)
        return total

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["forward_extra_flops"] = self.forward_extra_flops
        d["backprop_flops"] = self.backprop_flops
        return d

    def per_image(self) -> dict[str, Any]:
        """Every batch-proportional quantity divided by the batch size.

        FLOPs and saved activations scale with the batch; weight-gradient bytes and
        parameter counts do not and are copied as they are.
        """
        b = self.batch
        d = self.as_dict()
        scaled = """forward_flops forward_nograd_flops backward_flops forward_extra_flops
        backprop_flops forward_elementwise backward_elementwise forward_nograd_elementwise
        saved_activation_bytes int_macs""".split()
        for k in scaled:
            d[k] = d[k] / b
        for k in ("backward_by_op", "forward_by_op", "backward_elementwise_by_op"):
            d[k] = {op: v / b for op, v in d[k].items()}
        d["saved_by_module"] = {m: v / b for m, v in d["saved_by_module"].items()}
        d["per_module"] = {
            m: {k: v / b for k, v in vals.items()} for m, vals in d["per_module"].items()
        }
        d["per"] = "image"
        return d


def _by_op(counter: FlopCounterMode) -> dict[str, int]:
    glob = counter.get_flop_counts().get("Global", {})
    return {str(op).split(".")[-1]: int(v) for op, v in glob.items()}


def _maybe(ctx: Any) -> Any:
    return contextlib.nullcontext() if ctx is None else ctx


def _sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) - b.get(k, 0)}


def measure_step(
    model: nn.Module,
    inputs: Any,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    batch: int | None = None,
    warmup: int | None = None,
    elementwise: bool = True,
    forward_context: Any = None,
) -> StepMeasurement:
    """Count and measure one training step of ``model`` on ``inputs``.

    Args:
        model: the (converted, frozen as intended) model; its train/eval mode is used as is
            (call ``model.train()`` first; ``norm_eval`` hooks keep BatchNorm in eval mode).
        inputs: passed to ``forward``; a tensor by default.
        forward: ``forward(model, inputs) -> output``; default ``model(inputs)``.
        loss_fn: ``loss_fn(output) -> scalar``; default :func:`default_loss` (a sum).
        batch: batch size for per-image figures; default ``inputs.shape[0]``.
        warmup: warm-up steps before counting. Default: 1 if the model has LBP-WHT layers
            (they build their projection matrices on first use, and the counter would see
            those GEMMs), the most ``calibration_batches`` of its INSTANT layers (they run
            exact backprop while calibrating), else 0.
        elementwise: also run the :class:`ElementwiseCounter` estimate.
        forward_context: a context manager entered around the counted training forward only
            (e.g. :class:`lbp_wht.cost.LinearLayerTracer`, to trace the same pass).

    Without LBP-WHT, VeLoRA or WTA-CRS layers the no-grad forward would equal the training
    forward (no layer does forward work for the backward), so it is not run and ``forward_nograd_flops`` is set to
    the counted training forward.

    Returns:
        A :class:`StepMeasurement` for the whole batch. Parameter ``.grad`` are set to None
        before the counted step and left holding that step's gradients.
    """
    fwd = forward or (lambda m, x: m(x))
    lossf = loss_fn or default_loss
    if batch is None:
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("measure_step: pass batch= when inputs is not a tensor")
        batch = int(inputs.shape[0])
    params = [p for p in model.parameters()]
    if not any(p.requires_grad for p in params):
        raise ValueError(
            "measure_step: the model has no trainable parameter, so a training step does "
            "nothing; check the freeze patterns"
        )
    device = next((p.device for p in params), torch.device("cpu"))
    t0 = time.perf_counter()

    from .layers import LBPMixin
    from .rowwise import RowwiseMixin

    has_lbp = any(isinstance(m, LBPMixin) for m in model.modules())
    # Layers whose training forward differs from inference (VeLoRA's coefficients, WTA-CRS's
    # row selection): the no-grad forward is run for them too.
    differs = has_lbp or any(isinstance(m, RowwiseMixin) for m in model.modules())
    if warmup is None:
        from .instant import calibration_steps

        # INSTANT layers run exact backprop while they calibrate: count the steps after it.
        warmup = max(1 if has_lbp else 0, calibration_steps(model))
    for _ in range(warmup):
        lossf(fwd(model, inputs)).backward()
    for p in params:
        p.grad = None

    # (2) inference forward of the same model (only LBP-WHT layers behave differently).
    nograd_ew = ElementwiseCounter() if elementwise and differs else None
    fwd_nograd_mod: dict[str, int] | None = None
    fwd_nograd = None
    if differs:
        with torch.no_grad():
            with flop_counter() as c0, ModuleAttribution(model) as a0, _maybe(nograd_ew):
                fwd(model, inputs)
        fwd_nograd = int(c0.get_total_flops())
        fwd_nograd_mod = {n: v["fwd"] for n, v in a0.flops.items()}

    # (3) counted training step.
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    ew_f = ElementwiseCounter() if elementwise else None
    ew_b = ElementwiseCounter() if elementwise else None
    tracker = SavedTensorTracker(model)
    ctx = _maybe(forward_context)
    attribution = ModuleAttribution(model)
    from .hot import count_int_macs

    with flop_counter() as counter, attribution, count_int_macs() as int_macs:
        with tracker, ctx, _maybe(ew_f):
            out = fwd(model, inputs)
            loss = lossf(out)
        fwd_total = int(counter.get_total_flops())
        fwd_ops = _by_op(counter)
        attribution.phase = "bwd"
        with _maybe(ew_b):
            loss.backward()
    total = int(counter.get_total_flops())
    all_ops = _by_op(counter)
    attributed = {n: dict(v) for n, v in attribution.flops.items()}
    attribution.release()
    # HOT's integer products ran as float32 GEMMs, which the counter took for FP32 FLOPs
    # (2 per multiply-accumulate, in mm): move them out of the backward, per layer.
    names = {id(m): n for n, m in model.named_modules()}
    int_total = sum(int_macs.values())
    for owner, macs in int_macs.items():
        rec = attributed.setdefault(names.get(owner, ""), {})
        rec["bwd"] = rec.get("bwd", 0) - 2 * macs
    total -= 2 * int_total
    if int_total:
        all_ops["mm"] = all_ops.get("mm", 0) - 2 * int_total
    fwd_mod = {n: v.get("fwd", 0) for n, v in attributed.items()}
    bwd_mod = {n: v.get("bwd", 0) for n, v in attributed.items()}
    notes = []
    if sum(fwd_mod.values()) != fwd_total or sum(bwd_mod.values()) != total - fwd_total:
        notes.append(
            "per-module attribution does not add up to the counter's totals "
            f"(forward {sum(fwd_mod.values())} vs {fwd_total}, backward "
            f"{sum(bwd_mod.values())} vs {total - fwd_total})"
        )
    cuda_peak = cuda_step = None
    if cuda:
        torch.cuda.synchronize(device)
        cuda_peak = int(torch.cuda.max_memory_allocated(device))
        cuda_step = cuda_peak - int(base_alloc)
    del out, loss
    if fwd_nograd is None:
        fwd_nograd, fwd_nograd_mod = fwd_total, fwd_mod

    per_module: dict[str, dict[str, int]] = {}
    for name in set(fwd_mod) | set(bwd_mod) | set(fwd_nograd_mod):
        per_module[name] = dict(
            fwd=fwd_mod.get(name, 0),
            fwd_nograd=fwd_nograd_mod.get(name, 0),
            bwd=bwd_mod.get(name, 0),
        )

    seen: set[int] = set()
    grad_bytes = 0
    for p in params:
        if p.grad is not None and id(p) not in seen:
            seen.add(id(p))
            grad_bytes += p.grad.numel() * p.grad.element_size()
    n_train, t_train = trainable_parameters(model)
    return StepMeasurement(
        batch=batch,
        forward_flops=fwd_total,
        forward_nograd_flops=fwd_nograd,
        backward_flops=total - fwd_total,
        backward_by_op=_sub(all_ops, fwd_ops),
        forward_by_op=fwd_ops,
        per_module=per_module,
        forward_elementwise=ew_f.total if ew_f else 0,
        backward_elementwise=ew_b.total if ew_b else 0,
        forward_nograd_elementwise=(
            nograd_ew.total if nograd_ew else (ew_f.total if ew_f and not differs else 0)
        ),
        backward_elementwise_by_op=dict(ew_b.by_op) if ew_b else {},
        saved_activation_bytes=tracker.activation_bytes,
        saved_param_bytes=tracker.param_bytes,
        saved_tensors=tracker.count,
        saved_by_module=dict(tracker.by_module),
        weight_grad_bytes=grad_bytes,
        trainable_params=n_train,
        trainable_tensors=t_train,
        device=str(device),
        cuda_peak_bytes=cuda_peak,
        cuda_step_peak_bytes=cuda_step,
        seconds=time.perf_counter() - t0,
        notes=notes,
        int_macs=int_total,
    )
