"""Running training runs: the run-record format, the resumable sweep, the SLURM sweep.

Harness, not core (the method core never imports it); the guarantees are in docs/RUNNING.md.

* :mod:`lbp_wht.runs.records` -- the one run-record format (``record.json``), ``config_digest``
  and ``provenance()``;
* :mod:`lbp_wht.runs.sweep` -- :class:`~lbp_wht.runs.sweep.Run`, run locks, the plan per run
  (skip / resume / move aside) and the local sweep;
* :mod:`lbp_wht.runs.slurm` -- the same runs on SLURM through submitit.

Importing this package imports none of them.
"""
