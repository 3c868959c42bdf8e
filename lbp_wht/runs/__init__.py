"""Running training runs (harness, not core): :mod:`.records` (the run-record format),
:mod:`.sweep` (runs, locks, the plan per run, the local sweep), :mod:`.slurm` (the same on
SLURM through submitit). Importing this package imports none of them; docs/RUNNING.md.
"""
