"""Table-driven conversion test over the model zoo (issue 21): ``convert(all-linear)`` on small
random-init timm and transformers models (``tests/zoo.py``), float64, CPU, one batch.

For every model:

* ``convert(model, [rule], example_input=x)`` does not raise, and its report names every
  ``nn.Linear`` / 1x1 ``nn.Conv2d`` exactly once: replaced (with where its map comes from:
  ``map_source`` in "adapter" / "example input" / "rule", and a geometry text) or skipped with
  a reason; the layers the zoo marks as not on a spatial map (``not_maps``) are skipped;
* the first training forward + backward does not raise; with the full basis (``radius=15``)
  and zero padding the output, the input gradient and every converted layer's weight gradient
  equal those of the unconverted model (rel. err ``||a - b|| / ||b|| < 1e-4``);
* each converted layer runs the LBP-WHT function once per call of the original layer (a layer
  whose ``forward`` the model never calls, e.g. a ``qkv`` read by ``F.linear(x, qkv.weight)``,
  must not be reported converted), on a map the family has (``ZooModel.maps``), not a guess;
* with LP_L1-4 the bytes autograd saves inside the converted layers fall below what the same
  layers save in the plain model, and no call saves more than ``(P*R + E) / (L + E)`` of its
  input (``P`` 8x8 patches, ``R = 10`` bases, ``E`` prefix tokens, ``L`` map tokens); its
  gradients stay within ``LP4_BOUND`` (relative) of plain backprop: approximate, not exploding.

Each model is built once per session; each check runs on deep copies, and the runs the checks
share (the plain reference, the full-basis and the LP_L1-4 conversions, one training step each)
are computed once: about 20 s of CPU for the whole file (one intra-op thread; 30-60 s wall on
a shared 2-core machine). ``test_zoo_entry_matches_the_model`` checks the table itself (layer
counts, bypassed / dead layers, globs, nonzero reference gradients, a deterministic train-mode
forward) and needs nothing from the conversion. The LBP-WHT calls are counted by wrapping
``lbp_wht.functional._LBPFunction.apply`` (keyed by the identity of the weight it receives).
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import pytest
import torch
import torch.nn as nn
from zoo import BY_ID, ZOO, ZooModel, is_target

import lbp_wht
from lbp_wht import functional as lbp_functional
from lbp_wht.projection import WHTProjector

FULL = dict(target="all-linear", method="lbp", radius=15, padding="zero")
LP4 = dict(target="all-linear", method="lbp", radius=4)
LP4_BASES = 10  # LP_L1-4: i + j < 4
MAP_SOURCES = ("adapter", "example input", "rule")
TOL = 1e-4
LP4_BOUND = 100.0  # LP_L1-4 vs plain gradients: an approximation, not an explosion
IDS = [z.id for z in ZOO]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    nb = b.norm().item()
    return (a - b).norm().item() / nb if nb > 0 else a.norm().item()


def _matches(name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, g) for g in globs)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: intra-op threads only add synchronisation (on a loaded 2-core
    machine a float64 depthwise conv, one call per channel, is >50x slower with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- session caches ----------------------------------------------------------------------------
_BUILT: dict[str, nn.Module] = {}


def _base(z: ZooModel) -> nn.Module:
    if z.id not in _BUILT:
        pytest.importorskip(z.library)
        model = z.create(torch.float64)
        lbp_wht.keep_batchnorm_eval(model)  # norm_eval: BatchNorm on running statistics
        _BUILT[z.id] = model
    return _BUILT[z.id]


def _targets(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and is_target(m)]


class _Tracker:
    """Per named layer: calls, bytes of the input, and bytes of every storage autograd saves
    while the layer runs (parameters excluded; a view counts as its whole storage, so a slice
    that keeps the input alive shows). ``layer`` counts each storage once per layer, ``total``
    once per forward (two layers saving the same input share it)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        self.module_calls: dict[str, int] = {}  # every module (call sites of bypassed layers)
        self.input_bytes: dict[str, int] = dict.fromkeys(names, 0)
        self.layer: dict[str, int] = dict.fromkeys(names, 0)
        self.total: dict[str, int] = dict.fromkeys(names, 0)
        self._seen_layer: dict[str, set[int]] = {n: set() for n in names}
        self._seen: set[int] = set()
        self.current: str | None = None
        self.handles = []
        for name in names:
            m = model.get_submodule(name)
            self.handles.append(m.register_forward_pre_hook(self._enter(name)))
            self.handles.append(m.register_forward_hook(self._leave))
        for name, m in model.named_modules():
            self.handles.append(m.register_forward_pre_hook(self._count(name)))

    def _count(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self.module_calls[name] = self.module_calls.get(name, 0) + 1

        return hook

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self.current = name
            self.calls[name] += 1
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                self.input_bytes[name] += x.numel() * x.element_size()

        return hook

    def _leave(self, module: nn.Module, args: tuple, out: Any) -> None:
        self.current = None

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        name = self.current
        if name is not None:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr not in self.params:
                if ptr not in self._seen_layer[name]:
                    self._seen_layer[name].add(ptr)
                    self.layer[name] += nbytes
                if ptr not in self._seen:
                    self._seen.add(ptr)
                    self.total[name] += nbytes
        return t

    def saving(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class _LBPCall:
    name: str | None
    hw: tuple[int, int] | None
    prefix: int | None


class _LBPCalls:
    """Counts calls of the LBP-WHT autograd function per converted layer (keyed by the identity
    of the weight it gets) and records the map (the projector's ``(h, w)``) and the prefix
    tokens of each call."""

    def __init__(self, weights: dict[int, str]) -> None:
        self.weights = weights
        self.calls: list[_LBPCall] = []

    def __enter__(self) -> _LBPCalls:
        fn = lbp_functional._LBPFunction
        self._had = "apply" in vars(fn)
        self._orig = fn.apply
        fn.apply = self._apply  # a bound method stored on the class: not re-bound on access
        return self

    def __exit__(self, *exc: object) -> None:
        fn = lbp_functional._LBPFunction
        if self._had:
            fn.apply = self._orig
        else:
            del fn.apply

    def _apply(self, *args: Any) -> Any:
        name = hw = prefix = None
        after_layout = False
        for a in args:
            if isinstance(a, torch.Tensor) and id(a) in self.weights:
                name = self.weights[id(a)]
            elif isinstance(a, WHTProjector):
                hw = (int(a.h), int(a.w))
            elif isinstance(a, str) and a in lbp_functional.LAYOUTS:
                after_layout = True
            elif after_layout and prefix is None and type(a) is int:
                prefix = a
        self.calls.append(_LBPCall(name, hw, prefix))
        return self._orig(*args)

    def per_layer(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for c in self.calls:
            out[c.name] = out.get(c.name, 0) + 1
        return out


def _step(z: ZooModel, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One training forward; the same dropout / drop-path draws for every run of a model."""
    torch.manual_seed(0)
    return z.run(model, x)


@dataclass
class _Reference:
    targets: list[str]
    out: torch.Tensor
    x_grad: torch.Tensor
    w_grads: dict[str, torch.Tensor | None]
    tracker: _Tracker


_REF: dict[str, _Reference] = {}


def _reference(z: ZooModel) -> _Reference:
    if z.id not in _REF:
        model = copy.deepcopy(_base(z))
        names = _targets(model)
        tracker = _Tracker(model, names)
        x = z.make_input().requires_grad_()
        with tracker.saving():
            out = _step(z, model, x)
        tracker.remove()
        out.square().sum().backward()
        grads = {n: model.get_submodule(n).weight.grad for n in names}
        _REF[z.id] = _Reference(names, out.detach(), x.grad, grads, tracker)
    return _REF[z.id]


@dataclass
class _Converted:
    stage: str = "convert"  # where it stopped: convert, forward, backward, done
    error: str = ""
    report: Any = None
    out: torch.Tensor | None = None
    x_grad: torch.Tensor | None = None
    w_grads: dict[str, torch.Tensor | None] = field(default_factory=dict)
    lbp: _LBPCalls | None = None
    tracker: _Tracker | None = None

    def require(self, stage: str) -> None:
        order = ("convert", "forward", "backward", "done")
        if order.index(self.stage) < order.index(stage):
            pytest.fail(f"{self.stage} raised:\n{self.error}")


_CONVERTED: dict[tuple[str, str], _Converted] = {}


def _converted(z: ZooModel, which: str) -> _Converted:
    """The model converted with FULL or LP4: the report, one training step, its LBP-WHT calls
    and saved bytes."""
    key = (z.id, which)
    if key in _CONVERTED:
        return _CONVERTED[key]
    res = _CONVERTED[key] = _Converted()
    model = copy.deepcopy(_base(z))
    rule = FULL if which == "full" else LP4
    x = z.make_input()
    try:
        res.report = lbp_wht.convert(model, [rule], example_input=z.example_input(x.clone()))
        res.stage = "forward"
        names = [r.name for r in res.report.replaced]
        weights = {id(model.get_submodule(n).weight): n for n in names}
        res.tracker = _Tracker(model, names)
        x.requires_grad_()
        with _LBPCalls(weights) as res.lbp, res.tracker.saving():
            out = _step(z, model, x)
        res.tracker.remove()
        res.out = out.detach()
        res.stage = "backward"
        out.square().sum().backward()
        res.x_grad = x.grad
        res.w_grads = {n: model.get_submodule(n).weight.grad for n in names}
        res.stage = "done"
    except Exception as err:  # noqa: BLE001 - recorded; each check reports it as its failure
        res.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-4)}"
    return res


# ---- the checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("zid", IDS)
def test_report_names_every_linear_once(zid):
    z = BY_ID[zid]
    ref = _reference(z)
    res = _converted(z, "lp4")
    res.require("forward")
    targets = set(ref.targets)
    replaced = [r.name for r in res.report.replaced]
    skipped = [s.name for s in res.report.skipped]  # may name other convs too (kxk, strided)
    assert len(set(replaced)) == len(replaced), "a layer is replaced twice"
    assert len(set(skipped)) == len(skipped), "a layer is skipped twice"
    assert not set(replaced) & set(skipped), f"replaced and skipped: {set(replaced) & set(skipped)}"
    assert set(replaced) <= targets, f"not nn.Linear / 1x1 conv: {set(replaced) - targets}"
    missing = targets - set(replaced) - set(skipped)
    assert not missing, f"neither replaced nor skipped: {sorted(missing)}"
    assert replaced, "nothing converted"
    no_reason = [s.name for s in res.report.skipped if not str(s.reason).strip()]
    assert not no_reason, f"skipped without a reason: {no_reason}"
    bad_source = {
        r.name: getattr(r, "map_source", None)
        for r in res.report.replaced
        if getattr(r, "map_source", None) not in MAP_SOURCES
    }
    assert not bad_source, f"map_source not in {MAP_SOURCES}: {bad_source}"
    no_geometry = [r.name for r in res.report.replaced if not str(r.geometry).strip()]
    assert not no_geometry, f"no geometry text: {no_geometry}"
    not_maps = [n for n in replaced if _matches(n, z.not_maps)]
    assert not not_maps, f"converted, but their input is not a spatial map: {not_maps}"


@pytest.mark.parametrize("zid", IDS)
def test_first_step_runs_and_full_basis_is_exact(zid):
    z = BY_ID[zid]
    ref = _reference(z)
    res = _converted(z, "full")
    res.require("done")
    assert res.report.replaced, "nothing converted"
    errors = {"output": _rel(res.out, ref.out), "input grad": _rel(res.x_grad, ref.x_grad)}
    for name, want in ref.w_grads.items():
        if name in res.w_grads:
            got = res.w_grads[name]
            if (got is None) != (want is None):
                errors[name] = float("inf")
            elif want is not None:
                errors[name] = _rel(got, want)
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v < TOL}
    assert not bad, f"rel. error >= {TOL} (full basis, zero padding): {bad}"


@pytest.mark.parametrize("zid", IDS)
def test_each_converted_layer_runs_lbp_once_per_call(zid):
    z = BY_ID[zid]
    ref = _reference(z)
    res = _converted(z, "full")
    res.require("done")
    lbp = res.lbp.per_layer()
    assert None not in lbp, f"{lbp[None]} LBP-WHT calls with a weight of no converted layer"
    wrong = {}
    for r in res.report.replaced:
        # a layer the model never calls (its parent applies the weight itself) runs where the
        # report says its weight is used: once per call of that module
        site = getattr(r, "call_site", None)
        want = ref.tracker.calls[r.name] or (ref.tracker.module_calls.get(site, 0) if site else 0)
        if want == 0 or lbp.get(r.name, 0) != want:
            wrong[r.name] = (ref.tracker.calls[r.name], site, want, lbp.get(r.name, 0))
    assert not wrong, f"(calls of the layer, call site, expected, LBP-WHT calls): {wrong}"


@pytest.mark.parametrize("zid", IDS)
def test_maps_are_the_family_maps(zid):
    z = BY_ID[zid]
    res = _converted(z, "full")
    res.require("done")
    seen: dict[str, set] = {}
    for c in res.lbp.calls:
        seen.setdefault(c.name, set()).add((c.hw, c.prefix))
    wrong = {n: sorted(s) for n, s in seen.items() if any(hw not in z.maps for hw, _ in s)}
    assert not wrong, f"maps not of this model ({z.maps}): (hw, prefix) per layer {wrong}"


@pytest.mark.parametrize("zid", IDS)
def test_lp4_saved_activation_falls(zid):
    z = BY_ID[zid]
    ref = _reference(z)
    res = _converted(z, "lp4")
    res.require("done")
    names = [r.name for r in res.report.replaced]
    assert names, "nothing converted"
    plain = sum(ref.tracker.total[n] for n in names)
    lbp = sum(res.tracker.total[n] for n in names)
    rises = {
        n: (ref.tracker.layer[n], res.tracker.layer[n])
        for n in names
        if res.tracker.layer[n] > ref.tracker.layer[n]
    }
    assert lbp < plain, (
        f"saved bytes of the {len(names)} converted layers: {lbp} with LP_L1-4, {plain} plain; "
        f"layers saving more (plain, LBP): {rises}"
    )
    # each call: at most the projected input plus a copy of the prefix tokens
    bound: dict[str, float] = {}
    calls = {c.name: c for c in res.lbp.calls}
    for n in names:
        c = calls.get(n)
        if c is None or c.hw is None:
            continue
        e, l_map = c.prefix or 0, c.hw[0] * c.hw[1]
        patches = math.ceil(c.hw[0] / 8) * math.ceil(c.hw[1] / 8)
        frac = (patches * LP4_BASES + e) / (l_map + e)
        bound[n] = frac * res.tracker.input_bytes[n] + 64 * res.tracker.calls[n]
    over = {n: (res.tracker.layer[n], int(b)) for n, b in bound.items() if res.tracker.layer[n] > b}
    assert not over, f"saved more than (P*R + E) / (L + E) of the input (saved, bound): {over}"


@pytest.mark.parametrize("zid", IDS)
def test_lp4_gradients_stay_bounded(zid):
    """LP_L1-4 approximates (on random-init models the weight gradients of converted layers are
    off by up to ~5x); it must not explode. A padded token whose gradient plain backprop
    multiplies by zero (e.g. ``F.normalize`` of an all-zero key in a padded Swin V2 window,
    ~1e10) must not leak into the real positions through the projection."""
    z = BY_ID[zid]
    ref = _reference(z)
    res = _converted(z, "lp4")
    res.require("done")
    errors = {"input grad": _rel(res.x_grad, ref.x_grad)}
    for name, got in res.w_grads.items():
        want = ref.w_grads[name]
        if want is not None and got is not None:
            errors[name] = _rel(got, want)
    bad = {k: f"{v:.1e}" for k, v in errors.items() if not v < LP4_BOUND}
    assert not bad, f"LP_L1-4 gradient rel. error >= {LP4_BOUND}: {bad}"


# ---- the table itself --------------------------------------------------------------------------
@pytest.mark.parametrize("zid", IDS)
def test_zoo_entry_matches_the_model(zid):
    z = BY_ID[zid]
    ref = _reference(z)
    assert len(ref.targets) == z.targets, f"{len(ref.targets)} nn.Linear / 1x1 conv layers"
    bypassed = {n for n in ref.targets if ref.tracker.calls[n] == 0}
    assert bypassed == {n for n in ref.targets if _matches(n, z.bypassed)}, sorted(bypassed)
    no_grad = {n for n in ref.targets if ref.w_grads[n] is None or not ref.w_grads[n].any()}
    assert no_grad == {n for n in ref.targets if _matches(n, z.dead)}, (
        f"zero weight gradient (a vacuous comparison): {sorted(no_grad)}"
    )
    multi = {n for n in ref.targets if ref.tracker.calls[n] > 1}
    assert multi == {n for n in ref.targets if _matches(n, z.multi_call)}, sorted(multi)
    for glob in z.not_maps + z.bypassed + z.multi_call + z.dead:
        assert any(fnmatchcase(n, glob) for n in ref.targets), f"{glob!r} matches no layer"
    again = _step(z, copy.deepcopy(_base(z)), z.make_input())
    assert torch.equal(again.detach(), ref.out), "train-mode forward is not deterministic"
    assert ref.out.shape == (z.shape[0], 5)


def test_zoo_covers_the_issue():
    libraries = ("timm", "transformers")
    families = {
        lib: {z.family.split(" (")[0] for z in ZOO if z.library == lib} for lib in libraries
    }
    assert len(families["timm"]) >= 20, families["timm"]
    assert len(families["transformers"]) >= 5, families["transformers"]
    assert any(z.shape[0] == 1 for z in ZOO) and any(z.shape[0] > 1 for z in ZOO)
    assert any(z.shape[2] == z.shape[3] for z in ZOO)
    assert sum(z.shape[2] != z.shape[3] for z in ZOO) > len(ZOO) // 2
