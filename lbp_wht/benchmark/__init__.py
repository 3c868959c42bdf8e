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
