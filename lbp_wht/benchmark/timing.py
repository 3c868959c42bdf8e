"""Interleaved timing of several callables, the statistics the timings are reported with,
and the CPU memory-allocator setting."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import gc
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch

ALLOCATORS = ("reuse", "system")


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values`` with linear interpolation between samples
    (``statistics.quantiles(..., method="inclusive")``); one value is its own quartiles."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of the per-round ratios ``num[i] / den[i]``.

    Samples of the same round were taken back to back, so a ratio per round cancels the load
    that hit both of them; the median of those ratios is the reported speedup.
    """
    return quartiles([a / b for a, b in zip(num, den)])


def iqr_cols(name: str, q: tuple[float, float, float], scale: float = 1.0) -> dict:
    """``q = (q1, median, q3)`` times ``scale`` as the columns ``name`` (the median), then
    ``name`` with ``_q1`` and with ``_q3`` at its ``{}`` (at the end where it has none)."""
    name = name if "{}" in name else name + "{}"
    return {name.format(s): v * scale for s, v in (("", q[1]), ("_q1", q[0]), ("_q3", q[2]))}


def loadavg() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages, NaN where the platform has none."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return (math.nan, math.nan, math.nan)


def provenance(rounds: int, load0: tuple[float, ...], date: str = "") -> dict:
    """The provenance fields that end every timed row, in this order: ``rounds``, the 1-minute
    load before (``load0``) and now, the torch version and ``date`` (default: now)."""
    return dict(
        rounds=rounds,
        loadavg_1m_start=round(load0[0], 2),
        loadavg_1m_end=round(loadavg()[0], 2),
        torch=torch.__version__,
        date=date or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def say(line: str) -> None:
    """Print a progress line at once (benchmarks run for minutes; output may be a pipe)."""
    print(line, flush=True)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector off inside (a collection in a timed sample would be charged to
    whichever method ran then), back to its previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    with gc_paused():
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
    return samples
