"""Wall-clock benchmarks of the LBP-WHT backward (paper Table 8, appendix D).

* :mod:`.timing`: interleaved timing of several callables, the quartiles, paired ratios, load
  average and provenance fields the timings are reported with, the CPU memory-allocator switch;
* :mod:`.latency`: the per-layer Table 8 benchmark, the projection-implementation comparison and
  the ablation of each optimisation of the backward;
* :mod:`.e2e`: the backward of one partial-training step of a whole model;
* :mod:`.step`: the whole training step (forward + backward + optimizer) per method;
* :mod:`.generated_data`: a small generated CIFAR-100 in its on-disk format, for pipeline
  checks (``scripts/gpu_check.sh``).

Results are plain rows (dicts); :mod:`lbp_wht.reporting.latency_tables` writes them as CSV,
Markdown and figures.
"""

from __future__ import annotations

import argparse
import re


def check_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    positive: tuple[str, ...] = (),
    nonnegative: tuple[str, ...] = (),
    device: bool = False,
) -> None:
    """The benchmark tools' option checks: ``parser.error`` (exit 2) unless each option (``dest``)
    of ``positive`` / ``nonnegative`` (every value of a list) is >= 1 / >= 0 and, with
    ``device``, ``--device`` is ``cpu``, ``cuda`` or ``cuda:<i>``."""
    for names, low, need in ((positive, 1, "positive"), (nonnegative, 0, ">= 0")):
        for name in names:
            value = getattr(args, name)
            many = isinstance(value, (list, tuple))
            bad = [v for v in (value if many else [value]) if v < low]
            if bad:
                got = list(bad) if many else value
                parser.error(f"--{name.replace('_', '-')} must be {need}, got {got}")
    if device and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:<index>, got {args.device!r}")
