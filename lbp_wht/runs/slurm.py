"""Sweeps on a SLURM cluster through submitit; the guarantees are in docs/RUNNING.md.

Per run: :func:`lbp_wht.runs.sweep.plan` plus ``squeue`` (submitit's own state needs ``sacct``).
The runs to (re)submit go, under one submission lock per work root, as one job array of
:class:`TrainJob`; a job requeues itself near the time limit if it saved a checkpoint. Job ids
are kept in ``<work_dir>/slurm_jobs.json``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import SlurmExecutor

from ..io import utc_now
from .records import RecordError, load_record, write_record
from .sweep import (
    DigestFn,
    Plan,
    Run,
    RunLock,
    RunResult,
    SweepReport,
    check_unique,
    format_duration,
    lock_holder,
    log_excerpt,
    log_tail,
    parse_progress,
    plan,
    read_last_checkpoint,
    result_line,
    stale_aside,
    tally,
)

JOBS_NAME = "slurm_jobs.json"
#: submitit's folder (pickles, array scripts, wrapper logs) in each work root.
SUBMITIT_DIR = ".submitit"
#: ``squeue`` states of a job that is not over.
ACTIVE_STATES = frozenset(
    "PENDING CONFIGURING RUNNING COMPLETING SUSPENDED REQUEUED REQUEUE_HOLD REQUEUE_FED RESIZING SIGNALING STAGE_OUT STOPPED SPECIAL_EXIT RESV_DEL_HOLD".split()
)
_QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"})
_MAX_POLL_FAILURES = 10


class SlurmConfigError(ValueError):
    """Bad SLURM options (unknown key, wrong type or value); the message names it."""


class SchedulerError(RuntimeError):
    """A SLURM command failed or is missing; the message has the command and its error."""


# -------------------------------------------------------------------------------- options
OPTION_HELP: dict[str, str] = {
    "partition": "partition (sbatch --partition); default: the cluster's default",
    "account": "account to charge (--account)",
    "qos": "quality of service (--qos)",
    "time": "time limit per job, e.g. 12:00:00 or 2-00:00:00 (--time); a run longer than "
    "this is stopped before the limit and requeued, resuming from its last checkpoint",
    "mem": "memory per node, e.g. 32G (--mem)",
    "cpus_per_task": "CPUs per process (--cpus-per-task); also OMP_NUM_THREADS of the run",
    "gpus_per_run": "GPUs per run (default 1; 0 for CPU jobs); more than 1: one process per GPU",
    "gpus_per_node": "GPUs per node for runs over several nodes (default: a run's GPUs on one "
    "node, at most 8)",
    "tasks_per_run": "processes per run (default: one per GPU; for CPU-only distributed runs)",
    "gpu_type": "GPU type in the request, --gres=gpu:TYPE:N (e.g. a100)",
    "constraint": "node features (--constraint)",
    "sbatch_args": "more sbatch options as --key[=value] (a list, or one string split like a shell)",
    "setup": "shell lines the job runs first, in the repository (module load ..., source "
    ".venv/bin/activate)",
    "requeue": "requeue a job stopped by preemption or the time limit (default true)",
    "signal_lead_s": "seconds before the time limit at which a job stops and requeues itself "
    "(default 120)",
    "max_jobs": "at most this many of the sweep's jobs queued or running at once (default: all)",
}
_INT_KEYS = dict(
    cpus_per_task=1, gpus_per_run=0, gpus_per_node=1, tasks_per_run=1, signal_lead_s=1, max_jobs=1
)  # key -> smallest value
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.I)


def time_limit_s(text: str) -> int | None:
    """Seconds of a SLURM time limit (``M``, ``M:S``, ``H:M:S``, ``D-H[:M[:S]]``); None for
    ``UNLIMITED`` / ``INFINITE``."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(text.strip())
    if not m:
        raise SlurmConfigError(
            f"time {text!r}: not a SLURM time limit; use minutes, H:MM:SS or D-HH:MM:SS (e.g. 12:00:00, 2-00:00:00)"
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if b is None:  # minutes
        return int(a) * 60
    if c is None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


def _int(key: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        n = int(value)
    except ValueError:
        raise SlurmConfigError(f"{key}: expected a whole number, got {value!r}") from None
    if n < _INT_KEYS[key]:
        raise SlurmConfigError(f"{key}: {n} is below the smallest allowed value {_INT_KEYS[key]}")
    return n


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise SlurmConfigError(f"{key}: expected true or false, got {value!r}")


def _word(key: str, value: Any) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not text.isprintable():
        raise SlurmConfigError(f"{key}: {value!r} must be one word, not empty")
    if not text or len(text.split()) != 1:
        raise SlurmConfigError(f"{key}: {value!r} must be one word, not empty")
    return text


def _words(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value)) if key == "sbatch_args" else (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SlurmConfigError(f"{key}: expected a list of strings, got {value!r}")


@dataclass(frozen=True)
class SlurmOptions:
    """Resources and behaviour of a sweep's jobs (:data:`OPTION_HELP`); bad values raise
    :class:`SlurmConfigError` naming the key."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_run: int = 1
    gpus_per_node: int | None = None
    tasks_per_run: int | None = None
    gpu_type: str | None = None
    constraint: str | None = None
    sbatch_args: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    requeue: bool = True
    signal_lead_s: int = 120
    max_jobs: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("sbatch_args", "setup"):
                v = _words(f.name, v)
            elif f.name == "requeue":
                v = _bool(f.name, v)
            elif f.name in _INT_KEYS:
                v = _int(f.name, v)
            elif v is not None:
                v = _word(f.name, v)
            object.__setattr__(self, f.name, v)
        for arg in self.sbatch_args:
            if not arg.startswith("--") or len(arg) < 3:
                raise SlurmConfigError(
                    f"sbatch_args: {arg!r}: give sbatch options as --key or --key=value"
                )
        limit = time_limit_s(self.time) if self.time is not None else None
        if limit is not None and limit <= self.signal_lead_s:
            raise SlurmConfigError(
                f"time {self.time!r} ({limit} s) is not longer than signal_lead_s ({self.signal_lead_s} s, when a job stops to requeue itself); raise time or lower signal_lead_s"
            )
        if self.mem is not None and not _MEM.match(self.mem):
            raise SlurmConfigError(f"mem {self.mem!r}: expected a size such as 32G or 64000M")
        if self.gpus_per_run > 0 and self.tasks_per_run not in (None, self.gpus_per_run):
            raise SlurmConfigError(
                f"tasks_per_run={self.tasks_per_run} with gpus_per_run={self.gpus_per_run}: a run has one process per GPU; leave tasks_per_run unset (it is only for CPU-only distributed runs)"
            )
        if self.gpus_per_node and self.gpus_per_run % self.gpus_per_node:
            raise SlurmConfigError(
                f"gpus_per_run={self.gpus_per_run} is not a multiple of gpus_per_node={self.gpus_per_node}"
            )

    @property
    def tasks(self) -> int:
        return self.tasks_per_run or max(self.gpus_per_run, 1)

    @property
    def tasks_per_node(self) -> int:
        if self.gpus_per_run:
            return self.gpus_per_node or min(self.gpus_per_run, 8)
        return self.tasks

    @property
    def nodes(self) -> int:
        return math.ceil(self.tasks / self.tasks_per_node)

    @property
    def distributed(self) -> bool:
        return self.tasks > 1

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "options") -> SlurmOptions:
        known = sorted(f.name for f in fields(cls))
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise SlurmConfigError(
                    f"{source}: unknown SLURM option {key!r}{hint} (known: {', '.join(known)})"
                )
        return cls(**dict(values))

    def parameters(
        self, cwd: str, n: int = 1, comment: str | None = None, name: str = "lbp_wht"
    ) -> dict[str, Any]:
        """submitit ``SlurmExecutor`` parameters for ``n`` runs started in ``cwd``."""
        extra: dict[str, Any] = {"requeue" if self.requeue else "no-requeue": True}
        extra.update(
            {a[2:].partition("=")[0]: a.partition("=")[2] or True for a in self.sbatch_args}
        )
        limit = time_limit_s(self.time) if self.time else None
        if self.time:
            extra["time"] = self.time  # the user's own form; submitit needs minutes (below)
        params = dict(
            job_name=name,
            nodes=self.nodes,
            ntasks_per_node=self.tasks_per_node,
            signal_delay_s=self.signal_lead_s,
            wckey=None,
            stderr_to_stdout=True,
            time=math.ceil((limit or 0) / 60) or 5,
            setup=[f"cd {shlex.quote(cwd)} || exit 1", *self.setup],
            additional_parameters=extra,
            array_parallelism=max(n, 1),
        )
        if self.gpus_per_run:
            params["gres"] = (
                f"gpu:{self.gpu_type + ':' if self.gpu_type else ''}{self.tasks_per_node}"
            )
        for key in ("cpus_per_task", "mem", "partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if comment:
            params["comment"] = comment
        return params


def load_options_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml`` / ``.json`` options file."""
    p = Path(path)
    if not p.is_file():
        raise SlurmConfigError(f"SLURM options file {p} not found")
    if p.suffix not in (".yaml", ".yml", ".json"):
        raise SlurmConfigError(f"SLURM options file {p}: use a .yaml, .yml or .json file")
    try:
        import yaml

        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except Exception as err:  # noqa: BLE001 - OSError, JSON, YAML and decoding errors alike
        raise SlurmConfigError(f"SLURM options file {p} cannot be read: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise SlurmConfigError(
            f"SLURM options file {p}: expected a mapping of options (e.g. partition: gpu), got a {type(data).__name__}"
        )
    return data or {}


# ------------------------------------------------------------------------- the scheduler
@dataclass(frozen=True)
class Job:
    """A job as ``squeue -r`` lists it (array tasks one per line, ``123_4``)."""

    job_id: str
    state: str
    reason: str = ""
    comment: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def queued(self) -> bool:
        return self.state in _QUEUED

    def describe(self) -> str:
        why = f", {self.reason}" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"job {self.job_id} {self.state}{why}"


class Queue:
    """One ``squeue`` answer: this user's jobs, pending, running and recently ended."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        self.by_id = {j.job_id: j for j in self.jobs}

    def for_run(self, jobs: Mapping[str, Any]) -> list[Job]:
        """The run's jobs: those ``slurm_jobs.json`` records, and the task of an array whose
        submission a crashed sweep never recorded (its comment and index)."""
        found = [self.by_id[i] for i in _job_ids(jobs) if i in self.by_id]
        mark = jobs.get("submitting")
        if isinstance(mark, dict):
            found += [
                j
                for j in self.jobs
                if j.comment == _comment(mark.get("token")) and _task(j.job_id) == mark.get("index")
            ]
        return found


def _comment(token: Any) -> str:
    return f"lbp_wht:{token}"


def _task(job_id: str) -> int:
    return int(job_id.split("_")[1]) if "_" in job_id else 0


class _Executor(SlurmExecutor):
    """submitit's executor, also where ``srun`` is missing (dry runs), and without submitit's
    default ``--time`` when the sweep gives none (the partition's default applies)."""

    @classmethod
    def affinity(cls) -> int:
        return 2

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        lines = super()._make_submission_file_text(command, uid).splitlines()
        if "time" not in self.parameters.get("additional_parameters", {}):
            lines = [ln for ln in lines if not ln.startswith("#SBATCH --time=")]
        return "\n".join(lines) + "\n"


def _folder(root: Path) -> Path:
    if any(c.isspace() for c in str(root)):
        raise SlurmConfigError(
            f"work root {str(root)!r} has white space, which #SBATCH lines cannot hold; use another --work-root"
        )
    return root / SUBMITIT_DIR


def job_script(options: SlurmOptions, root: Path, n: int = 1, cwd: str | None = None) -> str:
    """The ``sbatch`` script of an array of ``n`` runs under ``root`` (what is submitted)."""
    ex = _Executor(_folder(Path(root)), max_num_timeout=10**6)
    ex.update_parameters(**options.parameters(cwd or os.getcwd(), n))
    if n > 1:
        ex.parameters["map_count"] = n
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


class Scheduler:
    """``squeue`` for this user's jobs, submitit for submissions (tests may stand in)."""

    def unavailable(self) -> str | None:
        missing = [c for c in ("sbatch", "squeue", "scontrol", "srun") if not shutil.which(c)]
        return (
            f"SLURM client commands not found ({', '.join(missing)} not on PATH)"
            if missing
            else None
        )

    def queue(self) -> Queue:
        argv = ["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%k"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SchedulerError(f"`{shlex.join(argv)}` failed: {err}") from None
        if proc.returncode:
            why = (proc.stderr or proc.stdout).strip()[-300:] or "no message"
            raise SchedulerError(f"`{shlex.join(argv)}` exited {proc.returncode}: {why}")
        lines = [ln.split("|", 3) for ln in proc.stdout.splitlines() if ln.count("|") >= 3]
        return Queue([Job(*(p.strip() for p in parts)) for parts in lines])

    def submit(
        self, jobs: Sequence[TrainJob], parameters: dict[str, Any], folder: Path
    ) -> list[str]:
        """Submit ``jobs`` as one array (one job if alone) with submitit; their job ids."""
        ex = _Executor(folder, max_num_timeout=10**6)
        ex.update_parameters(**parameters)
        try:
            with ex.batch():
                subs = [ex.submit(j) for j in jobs]
        except (FailedJobError, FailedSubmissionError, OSError, subprocess.SubprocessError) as err:
            raise SchedulerError(f"sbatch failed: {str(err).strip()[-500:]}") from None
        return [s.job_id for s in subs]


# ---------------------------------------------------------------------------- the jobs
def output_path(run: Run, job_id: str) -> Path:
    """Where the job ``job_id`` of ``run`` writes its output."""
    return run.work_dir / f"slurm-{job_id}.out"


class TrainJob(submitit.helpers.Checkpointable):
    """What a job's task runs: the run's command in its cwd, output appended to
    ``slurm-<job id>.out`` in its work dir. On submitit's USR2 (``signal_lead_s`` before the
    time limit) :meth:`checkpoint` stops the training (SIGTERM: it records ``interrupted``) and
    requeues the job if this attempt saved a checkpoint; else the job ends."""

    def __init__(self, run: Run, command: Sequence[str], distributed: bool = False) -> None:
        self.run, self.command, self.distributed = run, list(command), distributed
        self.proc: subprocess.Popen | None = None
        self.start_ckpt = ""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "proc": None}

    def _say(self, text: str) -> None:
        with open(self.out, "a") as f:
            f.write(f"== {text}\n")

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        self.out, wd = output_path(self.run, env.job_id), self.run.work_dir
        self.start_ckpt, rank = read_last_checkpoint(wd) or "", env.global_rank
        child_env = {
            **os.environ,
            "LBP_SWEEP_RUN_ID": self.run.run_id,
            "OMP_NUM_THREADS": os.environ.get(
                "SLURM_CPUS_PER_TASK", os.environ.get("OMP_NUM_THREADS", "1")
            ),
        }
        if self.distributed:  # one rendezvous port per job: two runs may share a node
            child_env.setdefault("MASTER_PORT", str(20000 + int(env.raw_job_id) % 20000))
        if rank == 0:
            self._say(
                f"lbp_wht sweep: run {self.run.run_id}, job {env.job_id} (restart {os.environ.get('SLURM_RESTART_COUNT', 0)}) on {socket.gethostname()} at {utc_now()}"
            )
            self._say(f"resumes from: {self.start_ckpt or 'nothing yet (a fresh start)'}")
            self._say(f"command: {shlex.join(self.command)}")
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.run.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN),
            )
            # A preemption's SIGTERM may reach only this process: pass it on.
            signal.signal(signal.SIGTERM, lambda *_: self.proc.send_signal(signal.SIGTERM))
            while (rc := self.proc.poll()) is None:
                time.sleep(0.5)
        if rank == 0:
            self._say(f"exit code {rc} at {utc_now()}")
        if rc:
            raise RuntimeError(f"run {self.run.run_id}: exit code {rc} (output {self.out})")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + 600
            while proc.returncode is None and time.monotonic() < end:
                try:  # not proc.wait(): __call__ may hold its lock in the frame we interrupted
                    pid, status = os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                time.sleep(0.2)
        now = read_last_checkpoint(self.run.work_dir)
        self._say(
            f"exit code {proc.returncode if proc else None} at {utc_now()} (stopped by SIGUSR2)"
        )
        if now and now != self.start_ckpt:
            self._say(
                f"time limit near: requeueing job {submitit.JobEnvironment().job_id}; it resumes from {now}"
            )
            return submitit.helpers.DelayedSubmission(
                TrainJob(self.run, self.command, self.distributed)
            )
        self._say(
            "time limit near, and this attempt saved no checkpoint: not requeued (a longer time limit or more frequent checkpoints would let it progress)"
        )
        return None


# -------------------------------------------------------------------------------- states
def read_jobs(run: Run) -> dict[str, Any]:
    """``slurm_jobs.json``: ``{"jobs": [{"job_id", "submitted", ...}], "submitting": ...}``."""
    try:
        data = load_record(run.work_dir / JOBS_NAME)
    except RecordError:
        return {"jobs": [], "unreadable": True}
    return data if data and isinstance(data.get("jobs"), list) else {"jobs": []}


def _job_ids(jobs: Mapping[str, Any]) -> list[str]:
    return [str(j["job_id"]) for j in jobs.get("jobs", []) if isinstance(j, dict) and "job_id" in j]


@dataclass(frozen=True)
class RunStatus:
    """``done``, ``changed``, ``queued`` / ``running`` (a job is there), ``locked`` (a process
    here holds the run), ``ended`` (its last job left the queue unfinished), ``stale`` (a work
    dir, no job) or ``todo``; ``submitted`` in a dry run without ``squeue``."""

    state: str
    detail: str = ""
    job: Job | None = None
    plan: Plan | None = None

    @property
    def fresh(self) -> bool:
        return self.plan is not None and self.plan.action in ("fresh", "changed")


def run_status(run: Run, queue: Queue | None, expected_digest: DigestFn | None = None) -> RunStatus:
    p = plan(run, expected_digest)
    if p.action in ("skip", "changed"):
        return RunStatus("done" if p.action == "skip" else "changed", p.why, plan=p)
    jobs = read_jobs(run)
    ids = _job_ids(jobs)
    if queue is None and ids:
        return RunStatus("submitted", f"job {ids[-1]} submitted earlier (no squeue here)", plan=p)
    active = [j for j in (queue.for_run(jobs) if queue else []) if j.active]
    if active:
        return RunStatus(
            "queued" if active[-1].queued else "running", active[-1].describe(), active[-1], p
        )
    holder = lock_holder(run)
    if holder is not None:
        return RunStatus("locked", f"its lock {run.lock_path} is held by {holder}", plan=p)
    if p.action == "start":
        return RunStatus("todo", plan=p)
    last = queue.by_id.get(ids[-1]) if queue is not None and ids else None
    parts = [last.describe() if last else f"job {ids[-1]} is no longer queued"] if ids else []
    parts += [
        p.why,
        "starts afresh"
        if p.action == "fresh"
        else f"resumes from {p.point.name}"
        if p.point
        else "no checkpoint yet",
    ]
    return RunStatus("ended" if ids else "stale", "; ".join(parts), last, p)


def _would_submit(st: RunStatus, rerun_changed: bool) -> bool:
    return st.state in ("todo", "stale", "ended") or (st.state == "changed" and rerun_changed)


# -------------------------------------------------------------------------------- sweeps
#: Statuses of a run still in SLURM's or a local process's hands; with ``deferred``, ``ok``
#: for a report that did not wait.
_LIVE = ("submitted", "resubmitted", "queued", "running", "locked")


def job_command(run: Run, options: SlurmOptions, resume_args: Sequence[str]) -> list[str]:
    cmd = list(run.command) + list(resume_args)
    if options.distributed and (len(cmd) < 3 or not cmd[1].endswith("train.py")):
        raise SlurmConfigError(
            f"run {run.run_id}: more than one process per run (gpus_per_run / tasks_per_run > 1) needs a `python tools/train.py CONFIG ...` command, not {shlex.join(cmd[:3])} ..."
        )
    return cmd + (["--launcher", "slurm"] if options.distributed else [])


class _SlurmSweep:
    def __init__(
        self, runs: list[Run], options: SlurmOptions, sched: Scheduler, out: IO[str], **kw: Any
    ) -> None:
        self.runs, self.options, self.sched, self.out = runs, options, sched, out
        self.expected_digest = kw["expected_digest"]
        self.rerun_changed, self.resume_args = kw["rerun_changed"], kw["resume_args"]
        self.results: dict[int, RunResult] = {}
        self.blocked = ""  # why submitting stopped (a failed sbatch)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def line(self, i: int, res: RunResult) -> None:
        width = len(str(len(self.runs)))
        self.say(
            f"[{i:>{width}}/{len(self.runs)}] {res.run.run_id}  {res.status.upper()}  {res.message}"
        )

    def _passive(self, run: Run, st: RunStatus) -> RunResult:
        kept = "; kept (--rerun-changed re-runs)" if st.state == "changed" else ""
        status = "skipped" if st.state == "done" else st.state
        job_id = st.job.job_id if st.job else None
        return RunResult(run, status, message=st.detail + kept, job_id=job_id)

    def submit_pass(self, indices: Sequence[int]) -> None:
        """Decide on and submit ``indices`` (1-based), under each work root's submission lock,
        with a ``squeue`` taken under it (another sweep may have submitted meanwhile)."""
        before = {i: self.results[i].status for i in indices if i in self.results}
        groups: dict[tuple[Path, str], list[int]] = {}
        for i in indices:
            run = self.runs[i - 1]
            groups.setdefault((run.work_dir.parent, run.cwd or os.getcwd()), []).append(i)
        for (root, cwd), items in sorted(groups.items()):
            with RunLock(root / ".slurm-submit.lock") as lock:
                lock.acquire(blocking=True)
                queue, todo = self.sched.queue(), []
                for i in items:
                    st = run_status(self.runs[i - 1], queue, self.expected_digest)
                    if _would_submit(st, self.rerun_changed):
                        todo.append((i, st))
                    else:
                        self.results[i] = self._passive(self.runs[i - 1], st)
                room = len(todo)
                if self.options.max_jobs:
                    live = sum(r.status in _LIVE[:4] for r in self.results.values())
                    room = max(0, self.options.max_jobs - live)
                if self.blocked:
                    room = 0
                for i, _ in todo[room:]:
                    why = self.blocked or f"max_jobs={self.options.max_jobs}"
                    self.results[i] = RunResult(self.runs[i - 1], "deferred", message=why)
                if todo[:room]:
                    self._submit(todo[:room], root, cwd)
        for i in indices:
            if self.results[i].status != before.get(i, "skipped"):
                self.line(i, self.results[i])

    def _submit(self, todo: list[tuple[int, RunStatus]], root: Path, cwd: str) -> None:
        """One array of ``todo``: a marker in each run's job list first (so that a crash after
        ``sbatch`` is found by the array's comment), the job ids after."""
        token, kept, moved = uuid.uuid4().hex[:12], {}, {}
        runs = [self.runs[i - 1] for i, _ in todo]
        commands = [job_command(r, self.options, self.resume_args) for r in runs]
        for k, (i, st) in enumerate(todo):
            run = self.runs[i - 1]
            if st.fresh and run.work_dir.exists():
                moved[i] = f"moved the earlier work dir aside to {stale_aside(run.work_dir)}; "
            run.work_dir.mkdir(parents=True, exist_ok=True)
            history = [] if i in moved else read_jobs(run)["jobs"]
            kept[i] = {"run_id": run.run_id, "work_dir": str(run.work_dir), "jobs": history}
            mark = dict(
                token=token, index=k, since=utc_now(), host=socket.gethostname(), pid=os.getpid()
            )
            write_record(run.work_dir / JOBS_NAME, {**kept[i], "submitting": mark})
        jobs = [TrainJob(r, c, self.options.distributed) for r, c in zip(runs, commands)]
        name = runs[0].run_id if len(runs) == 1 else f"lbp_wht-{len(runs)}runs"
        params = self.options.parameters(cwd, len(jobs), _comment(token), name)
        note = ""
        try:
            ids = self.sched.submit(jobs, params, _folder(root))
        except SchedulerError as err:  # the controller may have accepted it before the error
            note = f" ({err})"
            try:
                found = {
                    _task(j.job_id): j.job_id
                    for j in self.sched.queue().jobs
                    if j.comment == _comment(token)
                }
            except SchedulerError:
                found = {}
            ids = [found.get(k) for k in range(len(todo))]
            if not found:
                self.blocked = f"not submitted: an earlier sbatch failed ({err})"
        for (i, st), job_id in zip(todo, ids):
            run = self.runs[i - 1]
            point = st.plan.point.name if st.plan and st.plan.point else None
            entry = {"job_id": job_id, "submitted": utc_now(), "resumes_from": point}
            jobs_done = kept[i]["jobs"] + ([entry] if job_id else [])
            write_record(run.work_dir / JOBS_NAME, {**kept[i], "jobs": jobs_done})
            if job_id is None:
                res = RunResult(run, "failed", message=f"sbatch failed:{note}")
            elif st.state in ("ended", "stale") and i not in moved:
                msg = f"resubmitted as job {job_id} ({st.detail}){note}"
                res = RunResult(run, "resubmitted", message=msg, job_id=job_id)
            else:
                msg = f"{moved.get(i, '')}job {job_id}{note}"
                res = RunResult(run, "submitted", message=msg, job_id=job_id)
            self.results[i] = res

    def _final(self, run: Run, res: RunResult, st: RunStatus) -> RunResult:
        """``done``, or ``failed`` with the end of the job's output."""
        if st.state in ("done", "changed"):
            msg = f"job {res.job_id}: {result_line(run, 'done')[8:]}"
            return RunResult(run, "done", message=msg, job_id=res.job_id)
        if not res.job_id:
            return RunResult(run, "failed", message=f"{st.detail}; log {run.work_dir}")
        out = output_path(run, res.job_id)
        msg = f"{st.detail}; log {out}{log_excerpt(out, 6)}"
        return RunResult(run, "failed", message=msg, job_id=res.job_id)

    def follow(self, poll_s: float, progress_every_s: float) -> None:
        """Until none of the sweep's jobs is queued or running and none is deferred; a job that
        ends without a complete record is ``failed`` (not resubmitted by this invocation)."""
        mine = {i for i, r in self.results.items() if r.status in _LIVE + ("deferred",)}
        last, failures = 0.0, 0
        while mine:
            time.sleep(poll_s)
            try:
                queue = self.sched.queue()
                failures = 0
            except SchedulerError as err:  # a busy controller times out now and then
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
                self.say(f"slurm: {err}; asking again in {format_duration(poll_s)}")
                continue
            for i in sorted(mine):
                run, res = self.runs[i - 1], self.results[i]
                if res.status not in _LIVE:  # deferred (submitted below) or a failed submission
                    if res.status != "deferred" or self.blocked:
                        mine.discard(i)
                    continue
                st = run_status(run, queue, self.expected_digest)
                if st.state in ("queued", "running", "locked"):
                    self.results[i] = replace(res, status=st.state, message=st.detail)
                else:
                    mine.discard(i)
                    self.results[i] = self._final(run, res, st)
                    self.line(i, self.results[i])
            deferred = sorted(i for i in mine if self.results[i].status == "deferred")
            if deferred and not self.blocked:
                self.submit_pass(deferred)
            if mine and time.time() - last >= progress_every_s:
                last = time.time()
                self.progress(mine)

    def progress(self, mine: set[int]) -> None:
        self.say("slurm: " + tally(r.status for r in self.results.values()))
        for i in sorted(mine):
            res = self.results[i]
            if res.status != "running" or not res.job_id:
                continue
            prog = parse_progress(log_tail(output_path(res.run, res.job_id)))
            if prog is not None:
                eta = f", ETA {prog[1]}" if prog[1] else ""
                self.say(
                    f"  {res.run.run_id} job {res.job_id}: {prog[2]} {100 * prog[0]:.0f}%{eta}"
                )


def submit_sweep(
    runs: Sequence[Run],
    options: SlurmOptions,
    *,
    scheduler: Scheduler | None = None,
    expected_digest: DigestFn | None = None,
    rerun_changed: bool = False,
    resume_args: Sequence[str] = (),
    wait: bool = False,
    poll_s: float = 30.0,
    progress_every_s: float = 300.0,
    out: IO[str] | None = None,
) -> SweepReport:
    """Submit the runs that need it and, with ``wait``, follow them until none is queued or
    running (a job that ends unfinished is then ``failed``). Raises :class:`SchedulerError`
    when SLURM is missing or ``squeue`` does not answer (nothing was submitted then)."""
    runs = list(runs)
    check_unique(runs)
    sched = scheduler or Scheduler()
    why = sched.unavailable()
    if why:
        raise SchedulerError(f"{why}; nothing was submitted")
    sweep = _SlurmSweep(
        runs,
        options,
        sched,
        out if out is not None else sys.stderr,
        expected_digest=expected_digest,
        rerun_changed=rerun_changed,
        resume_args=tuple(resume_args),
    )
    t0 = time.time()
    sweep.submit_pass(range(1, len(runs) + 1))
    if wait:
        sweep.follow(poll_s, progress_every_s)
    return SweepReport(
        [sweep.results[i] for i in range(1, len(runs) + 1)],
        time.time() - t0,
        title="slurm sweep",
        good=frozenset({"skipped", "changed", "done", *(() if wait else (*_LIVE, "deferred"))}),
        shown=("done", "skipped", "changed", *_LIVE, "deferred", "failed"),
        always=frozenset({"failed"}),
    )


def dry_run_scripts(
    runs: Sequence[Run],
    options: SlurmOptions,
    *,
    scheduler: Scheduler | None = None,
    expected_digest: DigestFn | None = None,
    rerun_changed: bool = False,
    resume_args: Sequence[str] = (),
    show_scripts: bool = True,
) -> str:
    """Each run's state and, for those a sweep would submit now, its command and the array
    script; writes nothing. Without a scheduler here the states come from the work dirs."""
    check_unique(runs)
    sched = scheduler or Scheduler()
    queue, why = None, sched.unavailable()
    if why is None:
        try:
            queue = sched.queue()
        except SchedulerError as err:
            why = str(err)
    lines = [f"(no scheduler to ask here: {why}; states from the work dirs only)"] if why else []
    states: list[str] = []
    todo: list[Run] = []
    for i, run in enumerate(runs, 1):
        st = run_status(run, queue, expected_digest)
        states.append(st.state)
        what = (
            ("would submit" if st.state == "todo" else "would resubmit")
            if _would_submit(st, rerun_changed)
            else ""
        )
        lines.append(
            f"[{i}/{len(runs)}] {st.state:9s} {run.run_id}"
            + (f"  ({st.detail})" if st.detail else "")
            + (f"  -> {what}" if what else "")
        )
        if what:
            todo.append(run)
            lines += (
                [f"    {shlex.join(job_command(run, options, resume_args))}"]
                if show_scripts
                else []
            )
    if todo and show_scripts:
        lines.append(job_script(options, todo[0].work_dir.parent, len(todo), todo[0].cwd))
    summary = f"{len(runs)} runs ({tally(states) or 'none'}); {len(todo)} runs to submit"
    return "\n".join(lines + [summary])


# ------------------------------------------------------------------------- command line
#: The options that are flags (``--cpus-per-task``) and environment variables of the scripts
#: (``CPUS_PER_TASK``; ``TIME_LIMIT`` for ``time``).
_FLAG_KEYS = [k for k in OPTION_HELP if k not in ("setup", "requeue")]


def add_arguments(parser: Any) -> None:
    """``--launcher``, ``--slurm-config FILE``, one flag per option (default: its environment
    variable; flags win over the file), ``--setup``, ``--no-requeue``, ``--wait``, ``--poll``."""
    g = parser.add_argument_group("launcher (--launcher slurm: the runs as a SLURM job array)")
    env = os.environ.get
    g.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default=env("LAUNCHER") or "local",
        help="local: processes on this machine (default); slurm: submit to SLURM (env LAUNCHER)",
    )
    g.add_argument(
        "--slurm-config",
        default=env("LAUNCHER_CONFIG") or None,
        metavar="FILE",
        help="SLURM options file, .yaml or .json, keys as the flags below with underscores (env LAUNCHER_CONFIG)",
    )
    for key in _FLAG_KEYS:
        var = "TIME_LIMIT" if key == "time" else key.upper()
        g.add_argument(
            "--" + key.replace("_", "-"),
            dest=f"slurm_{key}",
            default=env(var) or None,
            metavar="V",
            help=f"{OPTION_HELP[key]} (env {var})",
        )
    g.add_argument(
        "--setup",
        dest="slurm_setup",
        action="append",
        metavar="LINE",
        help=OPTION_HELP["setup"] + "; repeatable",
    )
    g.add_argument("--no-requeue", dest="slurm_requeue", action="store_false", default=None)
    g.add_argument(
        "--wait",
        action="store_true",
        default=(env("WAIT") or "0") not in ("0", "false", "no", ""),
        help="slurm: follow the jobs until none is queued or running (env WAIT=1)",
    )
    g.add_argument("--poll", type=float, default=30.0, help="slurm: seconds between squeue calls")


def options_from_args(args: Any) -> SlurmOptions:
    """:class:`SlurmOptions` from the flags over the ``--slurm-config`` file (``sbatch_args``
    and ``setup`` of both are joined)."""
    base = load_options_file(args.slurm_config) if args.slurm_config else {}
    flags = {key: getattr(args, f"slurm_{key}") for key in _FLAG_KEYS}
    flags["requeue"] = args.slurm_requeue
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    merged["sbatch_args"] = _words("sbatch_args", base.get("sbatch_args")) + _words(
        "sbatch_args", flags["sbatch_args"]
    )
    merged["setup"] = _words("setup", base.get("setup")) + tuple(args.slurm_setup or ())
    return SlurmOptions.from_mapping(merged, source=str(args.slurm_config or "options"))
