"""Run the sweep behind a paper table (or any grid over a config), resumably.

    # the runs of paper Table 2 (partial + full training), one seed, 4 GPUs one run each:
    python tools/sweep.py table 2 --gpus 0 1 2 3 --seeds 0
    python tools/sweep.py table 2 --dry-run            # list the runs and their state
    python tools/sweep.py table 3 4 6 7 figures        # several tables; shared runs run once

    # a new sweep: any config, any --cfg-options grid, several seeds
    python tools/sweep.py grid configs/table2/efficientformer-l1/efficientformer-l1_partial_lp-l1-r4_cifar100.py \\
        --set lbp.r=2,3,4,5,6 --seeds 0 1 2 --name l1-rsweep

Every run trains with ``tools/train.py CONFIG --work-dir WORK_ROOT/<run id> --seed S`` and
writes ``WORK_ROOT/<run id>/record.json``; a run id names the experiment cell, so a run shared by
several tables runs once. A re-run skips complete runs, resumes an interrupted run of the same
config from its checkpoint, moves other stale work dirs aside (``<run id>.stale-<UTC time>``)
and keeps a complete run of another config as CHANGED (``--rerun-changed`` re-runs it); two
sweeps never run one run. Then ``tools/make_tables.py --runs WORK_ROOT`` builds the tables.

Settings (flags, or environment variables of the same name as the scripts use): ``SEEDS``,
``MODELS``, ``DATASETS``, ``WORK_ROOT`` (default ``work_dirs/paper``), ``DATA_ROOT`` (default
``data``: the configs' ``data/<dataset>`` paths are re-rooted there), ``CKPT_DIR`` (default
``checkpoints``: the configs' ``load_from`` file names are looked up there), ``GPUS`` (device
ids; one run per GPU at a time), ``JOBS`` (runs at a time without GPUS).

On a SLURM cluster (``--launcher slurm``, env ``LAUNCHER=slurm``) the runs to (re)submit go as
one job array through submitit; options come from flags over ``--slurm-config FILE`` (same keys)::

    python tools/sweep.py table 2 --launcher slurm --partition gpu --gpus-per-run 1 \\
        --cpus-per-task 8 --mem 32G --time 12:00:00 --account myproj
    python tools/sweep.py table 2 --launcher slurm --slurm-config slurm.yaml --wait  # and follow

Bad input (unknown ``--set`` keys, empty axes, a config that does not load, a seed given twice
or out of range, a run id too long, a work root that cannot be written) is one named error and
exit 2 before anything starts. All of it: docs/RUNNING.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from lbp_wht.experiments.catalog import CONFIGS_DIR, PAPER_DIR, REPO_ROOT
from lbp_wht.experiments.runs import SweepSpecError, expected_digest, grid_runs, table_runs
from lbp_wht.runs import slurm
from lbp_wht.runs.sweep import check_unique, dry_run_listing, format_duration, run_sweep

#: Appended to a run's training command when it continues an interrupted attempt (locally: a
#: stale run of the same config with a checkpoint; on SLURM: every attempt).
RESUME_ARGS = ("--resume",)
TABLE_CHOICES = ("2", "3", "4", "5", "6", "7", "fig3", "fig5", "figures")


def _seed(text: str) -> int:
    from lbp_wht.integrations.launch import seed_value

    return seed_value(text)


def _writable(root: str) -> None:
    """The work root can be written (a probe file), else SweepSpecError naming it."""
    try:
        os.makedirs(root, exist_ok=True)
        # A probe of its own per process: sweeps started at once on one root must not remove
        # each other's probe (a shared name made the second one fail as "cannot be written").
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write_check.") as probe:
            probe.write(b"lbp_wht\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise SweepSpecError(
            f"work root {root} cannot be written ({err.strerror}); use another --work-root"
        ) from None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _env_list(name: str) -> list[str] | None:
    v = os.environ.get(name, "").replace(",", " ").split()
    return v or None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--seeds",
        nargs="+",
        type=_seed,
        default=_env_list("SEEDS") or ["0"],
        help="seeds, 0 ... 2**32 - 1 (env SEEDS; default 0)",
    )
    common.add_argument(
        "--work-root",
        default=os.environ.get("WORK_ROOT", str(REPO_ROOT / "work_dirs" / "paper")),
        help="one work dir per run under here (env WORK_ROOT)",
    )
    common.add_argument(
        "--gpus",
        nargs="+",
        default=_env_list("GPUS"),
        help="GPU ids, one run per GPU at a time (env GPUS); sets CUDA_VISIBLE_DEVICES",
    )
    common.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("JOBS", "1")),
        help="runs at a time when no GPUS are given (env JOBS)",
    )
    common.add_argument(
        "--python",
        default=os.environ.get("PYTHON", sys.executable),
        help="interpreter for tools/train.py (env PYTHON)",
    )
    common.add_argument(
        "--cfg-options", nargs="+", default=[], help="extra key=value for every run's config"
    )
    common.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    common.add_argument("--count", action="store_true", help="print only the number of runs")
    common.add_argument("--quiet-commands", action="store_true", help="dry run: ids only")
    common.add_argument(
        "--rerun-changed",
        action="store_true",
        help="move complete runs recorded with another config aside and re-run them "
        "(default: keep them and warn)",
    )
    slurm.add_arguments(common)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("table", parents=[common], help="the runs of paper tables / figures")
    t.add_argument(
        "tables",
        nargs="+",
        choices=TABLE_CHOICES,
        metavar="TABLE",
        help=f"one or more of {', '.join(TABLE_CHOICES)}",
    )
    t.add_argument("--models", nargs="+", default=_env_list("MODELS"), help="env MODELS")
    t.add_argument("--datasets", nargs="+", default=_env_list("DATASETS"), help="env DATASETS")
    t.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "data"), help="env DATA_ROOT")
    t.add_argument(
        "--ckpt-dir", default=os.environ.get("CKPT_DIR", "checkpoints"), help="env CKPT_DIR"
    )
    t.add_argument("--configs", default=str(CONFIGS_DIR), help="generated configs")
    t.add_argument("--paper", default=str(PAPER_DIR), help="paper reference")

    g = sub.add_parser("grid", parents=[common], help="a grid of --cfg-options over one config")
    g.add_argument("config")
    g.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="grid axes (several in one --set or in several)",
    )
    g.add_argument("--name", help="run id prefix (default: the config's name)")
    args = p.parse_args(argv)

    try:
        args.seeds = [_seed(s) for s in args.seeds]  # the environment's too
        if len(set(args.seeds)) != len(args.seeds):
            raise SweepSpecError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
        runs = _runs(args)
        if not runs:
            raise SweepSpecError("the sweep has no runs")
        check_unique(runs)
        if not (args.count or args.dry_run):
            from lbp_wht.integrations.launch import load_config

            if args.launcher == "local" and shutil.which(args.python) is None:
                raise SweepSpecError(
                    f"--python {args.python}: no such executable (the interpreter of the "
                    "project's environment, e.g. .venv/bin/python; env PYTHON)"
                )
            for config in sorted({str(r.meta["config"]) for r in runs if r.meta.get("config")}):
                load_config(config)  # every config loads: one named error before anything starts
            _writable(args.work_root)
    except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as err:
        print(f"sweep: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if args.count:
        print(len(runs))
        return 0
    if args.launcher == "slurm":
        return _slurm(args, runs)
    if args.dry_run:
        print(
            dry_run_listing(
                runs, show_commands=not args.quiet_commands, expected_digest=expected_digest
            )
        )
        return 0
    if args.gpus:
        slot_env = [{"CUDA_VISIBLE_DEVICES": str(g)} for g in args.gpus]
        jobs = len(slot_env)
    else:
        slot_env, jobs = None, max(1, args.jobs)
    print(
        f"sweep: {len(runs)} runs under {args.work_root}; "
        f"{'GPUs ' + ' '.join(args.gpus) if args.gpus else f'{jobs} at a time'}; "
        f"commands: {shlex.join(runs[0].command)} ...",
        file=sys.stderr,
    )
    # A scheduler's SIGTERM (e.g. slurm) stops the sweep like Ctrl-C: running children are
    # terminated, their runs stay incomplete and are redone by the next sweep.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run_sweep(
            runs,
            jobs=jobs,
            slot_env=slot_env,
            expected_digest=expected_digest,
            rerun_changed=args.rerun_changed,
            resume_args=RESUME_ARGS,
        )
    except KeyboardInterrupt:
        print("sweep interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    print(report.summary(), file=sys.stderr)
    for r in report.results:
        if r.status not in ("done", "skipped"):
            print(f"  {r.status}: {r.run.run_id}  ({r.run.log_path})", file=sys.stderr)
    if report.wall_s > 0 and not report.ok:
        print(
            f"re-run the same command to retry ({format_duration(report.wall_s)})", file=sys.stderr
        )
    return 0 if report.ok else 1


def _slurm(args: argparse.Namespace, runs: list) -> int:
    try:
        options = slurm.options_from_args(args)
        how = dict(
            expected_digest=expected_digest,
            rerun_changed=args.rerun_changed,
            resume_args=RESUME_ARGS,
        )
        if args.dry_run:
            print(slurm.dry_run_scripts(runs, options, show_scripts=not args.quiet_commands, **how))
            return 0
        report = slurm.submit_sweep(runs, options, wait=args.wait, poll_s=args.poll, **how)
    except KeyboardInterrupt:
        print(
            "sweep: stopped following; the jobs go on (run the same command to see them)",
            file=sys.stderr,
        )
        return 130
    except (slurm.SlurmConfigError, slurm.SchedulerError) as err:
        print(f"sweep: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    for r in report.results:
        if r.status == "failed":
            print(f"  failed: {r.run.run_id}  {r.message}", file=sys.stderr)
    if not args.wait and any(r.status in ("submitted", "resubmitted") for r in report.results):
        print(
            "jobs submitted; run the same command again to see their states and resubmit what "
            "ended unfinished (or add --wait to follow them)",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def _runs(args: argparse.Namespace) -> list:
    if args.cmd == "table":
        return table_runs(
            args.tables,
            seeds=args.seeds,
            work_root=args.work_root,
            configs=args.configs,
            models=args.models,
            datasets=args.datasets,
            data_root=args.data_root,
            ckpt_dir=args.ckpt_dir,
            python=args.python,
            extra_options=args.cfg_options,
            paper_dir=args.paper,
        )
    return grid_runs(
        args.config,
        args.set,
        seeds=args.seeds,
        work_root=args.work_root,
        name=args.name,
        python=args.python,
        extra_options=args.cfg_options,
    )


if __name__ == "__main__":
    sys.exit(main())
