"""Sweeps on a SLURM cluster: one ``sbatch`` job per run, state from the scheduler and the runs'
own files (pure Python, stdlib only; PyYAML for a ``.yaml`` options file).

    from lbp_wht.slurm import SlurmOptions, submit_sweep
    report = submit_sweep(runs, SlurmOptions(partition="gpu", gpus_per_run=1, time="12:00:00"),
                          resume_args=("--resume",))

This is the cluster counterpart of :func:`lbp_wht.sweep.run_sweep` (which runs the same
:class:`~lbp_wht.sweep.Run` s as processes on one machine); the scheduling is SLURM's.

**What is submitted.** One job per run (not an array: every run keeps its own script, output
and job id). The job script, ``<work_dir>/slurm_job.sh`` (what a dry run prints; ``sbatch`` it
to resubmit by hand), asks for the run's resources (:class:`SlurmOptions`), runs in the work dir
(``--chdir``), appends its stdout and stderr to ``<work_dir>/slurm-<job id>.out`` and runs the
run's command with ``resume_args`` appended (``tools/train.py --resume``): a first attempt finds
no checkpoint and starts from the config's weights, a resubmitted or requeued one continues
from the newest checkpoint in the work dir. A run of several processes (``tasks_per_run > 1``:
one per GPU, on one or more nodes) goes through ``tools/slurm_train.sh`` (``srun``, the training
with ``--launcher slurm``).

**State of a run** (:func:`run_status`), from what every cluster has, accounting or not:

* ``done`` / ``changed``: its record is complete (``changed``: made with another config digest,
  as in :mod:`lbp_wht.sweep`);
* ``queued`` / ``running``: ``squeue`` lists a pending / running job for it: the job id recorded
  in the work dir (``slurm_jobs.json``), or any job of this user whose working directory is the
  run's work dir (which also finds a job whose id a crashed sweep did not get to record);
* ``locked``: a process on this machine holds the run's lock (a local sweep, a job on this host);
* ``ended``: its last job left the queue without a complete record (failed, cancelled, timed out,
  preempted without requeue, node failure; ``squeue`` / ``scontrol`` / ``sacct`` say which while
  they still know the job, and the record says ``interrupted`` or ``failed``);
* ``stale``: a work dir without a complete record and without a job (a killed local attempt);
* ``todo``: nothing yet.

**What a sweep does** (:func:`submit_sweep`): skips ``done``, ``changed`` (unless
``rerun_changed``), ``queued``, ``running`` and ``locked`` runs; submits ``todo`` runs and
resubmits ``ended`` and ``stale`` ones in place, so that they resume from their last checkpoint.
A work dir whose (incomplete) record was made with another config digest cannot be resumed: it
is moved aside to ``<work_dir>.stale-<UTC time>`` (never deleted, as the local sweep does) and
the run starts afresh. With ``wait=True`` it then follows the jobs until none is queued or
running (and tops up to ``max_jobs``); without, it returns at once (run it again to see the
states, and to resubmit what ended without finishing).

**Never two jobs for one run.** Submission takes an exclusive lock per run (the sibling file
``.<name>.submit.lock``; not the run lock, which the training takes on the node). Under it the
state is decided again, with a fresh ``squeue`` whenever the work dir records a job the earlier
query did not list or an unfinished submission; a marker is written before ``sbatch`` and the
job id right after it (atomic writes). A failed ``sbatch`` is followed by a query by work dir
(the controller may have accepted the job before the error, say a time-out): a job found there
is recorded; otherwise nothing more is submitted by that invocation. If ``squeue`` cannot
answer, nothing is submitted; a waiting sweep rides out a few failed ``squeue`` calls.

**Time limits and preemption.** Jobs are submitted with ``--requeue`` and
``--signal=B:USR1@<signal_lead_s>``: that long before the time limit the job script stops the
training with SIGTERM (it records ``interrupted`` and exits) and requeues its own job
(``scontrol requeue``), if a checkpoint was saved during this attempt (otherwise the run would
loop without progress; it then ends and says to raise ``time``). A preemption (SIGTERM, then
SLURM's requeue) goes the same way: the requeued job resumes from the last checkpoint. A
cancelled or timed-out job is resubmitted by the next sweep and resumes too.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

from .records import RecordError, load_record, write_record
from .sweep import (
    LAST_CHECKPOINT,
    DigestFn,
    Run,
    RunLock,
    check_unique,
    format_duration,
    log_tail,
    move_aside,
    parse_progress,
    record_digest,
    record_state,
)

__all__ = [
    "SCRIPT_NAME",
    "JOBS_NAME",
    "SLURM_TRAIN",
    "ACTIVE_STATES",
    "SlurmConfigError",
    "SchedulerError",
    "SlurmOptions",
    "OPTION_HELP",
    "load_options_file",
    "Job",
    "Queue",
    "SlurmClient",
    "RunStatus",
    "run_status",
    "read_jobs",
    "job_script",
    "output_path",
    "SlurmResult",
    "SlurmReport",
    "dry_run_scripts",
    "submit_sweep",
    "add_arguments",
    "options_from_args",
    "time_limit_s",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``srun`` wrapper for runs of several processes (the OpenMMLab ``slurm_train.sh``).
SLURM_TRAIN = REPO_ROOT / "tools" / "slurm_train.sh"
#: The job script in the run's work dir.
SCRIPT_NAME = "slurm_job.sh"
#: The run's submissions (job ids, times) in its work dir.
JOBS_NAME = "slurm_jobs.json"

#: ``squeue`` states of a job that is not over (it may still run, or runs): never resubmitted.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "SPECIAL_EXIT",
        "RESV_DEL_HOLD",
    }
)
#: ``squeue`` failures in a row after which a waiting sweep gives up (the jobs go on).
_MAX_POLL_FAILURES = 10
_QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"})


class SlurmConfigError(ValueError):
    """Bad SLURM options (unknown key, wrong type or value); the message names it."""


class SchedulerError(RuntimeError):
    """A SLURM command failed or is missing; the message has the command and its error."""


# --------------------------------------------------------------------------------- options
#: Every option (the keys of an options file; the tool's flags are the same with dashes).
OPTION_HELP: dict[str, str] = {
    "partition": "partition (sbatch --partition); default: the cluster's default",
    "account": "account to charge (--account)",
    "qos": "quality of service (--qos)",
    "time": "time limit per job, e.g. 12:00:00 or 2-00:00:00 (--time); a run longer than "
    "this is stopped before the limit and requeued, resuming from its last checkpoint",
    "mem": "memory per node, e.g. 32G (--mem)",
    "cpus_per_task": "CPUs per process (--cpus-per-task); also OMP_NUM_THREADS of the run",
    "gpus_per_run": "GPUs per run (default 1; 0 for CPU jobs); more than 1: one process per GPU "
    "through tools/slurm_train.sh",
    "gpus_per_node": "GPUs per node for runs over several nodes (default: all of a run's GPUs on "
    "one node, at most 8)",
    "tasks_per_run": "processes per run (default: one per GPU; set it for CPU-only distributed "
    "runs)",
    "gpu_type": "GPU type in the request, --gres=gpu:TYPE:N (e.g. a100)",
    "constraint": "node features (--constraint)",
    "sbatch_args": "more sbatch options, verbatim (a list, or one string split like a shell)",
    "setup": "shell lines the job runs first, in the repository (module load ..., source "
    ".venv/bin/activate)",
    "requeue": "requeue a job stopped by preemption or the time limit (default true)",
    "signal_lead_s": "seconds before the time limit at which a job stops and requeues itself "
    "(default 120)",
    "max_jobs": "at most this many of the sweep's jobs queued or running at once (default: all)",
}

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.I)


def time_limit_s(text: str) -> int | None:
    """Seconds of a SLURM time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``); None for ``UNLIMITED`` / ``INFINITE``.

    Raises:
        SlurmConfigError: not a SLURM time.
    """
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(text.strip())
    if not m:
        raise SlurmConfigError(
            f"time {text!r}: not a SLURM time limit; use minutes, H:MM:SS or D-HH:MM:SS "
            "(e.g. 12:00:00, 2-00:00:00)"
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if b is None:  # minutes
        return int(a) * 60
    if c is None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


@dataclass(frozen=True)
class SlurmOptions:
    """The resources and behaviour of a sweep's jobs; see :data:`OPTION_HELP` for each field.

    Derived: :attr:`tasks` (processes per run), :attr:`nodes`, :attr:`tasks_per_node`,
    :attr:`distributed` (more than one process: ``tools/slurm_train.sh``).

    Raises:
        SlurmConfigError: a value of the wrong type or out of range, naming the key.
    """

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
            value = getattr(self, f.name)
            if f.name in ("sbatch_args", "setup"):
                object.__setattr__(self, f.name, _str_tuple(f.name, value))
            elif f.name == "requeue":
                object.__setattr__(self, f.name, _bool(f.name, value))
            elif f.name in _INT_KEYS:
                object.__setattr__(self, f.name, _int(f.name, value, _INT_KEYS[f.name]))
            elif value is not None:
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise SlurmConfigError(f"{f.name}: expected a string, got {value!r}")
                text = str(value).strip()
                if not text or any(c.isspace() for c in text):
                    raise SlurmConfigError(f"{f.name}: {value!r} must be one word, not empty")
                object.__setattr__(self, f.name, text)
        if self.time is not None:
            limit = time_limit_s(self.time)
            if limit is not None and limit <= self.signal_lead_s:
                raise SlurmConfigError(
                    f"time {self.time!r} ({limit} s) is not longer than signal_lead_s "
                    f"({self.signal_lead_s} s, when a job stops to requeue itself); raise time "
                    "or lower signal_lead_s"
                )
        if self.mem is not None and not _MEM.match(self.mem):
            raise SlurmConfigError(f"mem {self.mem!r}: expected a size such as 32G or 64000M")
        gpus, tasks = self.gpus_per_run, self.tasks_per_run
        if gpus > 0 and tasks is not None and tasks != gpus:
            raise SlurmConfigError(
                f"tasks_per_run={tasks} with gpus_per_run={gpus}: a run has one process per GPU; "
                "leave tasks_per_run unset (it is only for CPU-only distributed runs)"
            )
        if self.gpus_per_node is not None and gpus and gpus % self.gpus_per_node:
            raise SlurmConfigError(
                f"gpus_per_run={gpus} is not a multiple of gpus_per_node={self.gpus_per_node}"
            )

    @property
    def tasks(self) -> int:
        """Processes per run: one per GPU (at least one)."""
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
        """Options from a mapping (an options file, flags); unknown keys are an error.

        Raises:
            SlurmConfigError: an unknown key (with the closest known one) or a bad value.
        """
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise SlurmConfigError(
                    f"{source}: unknown SLURM option {key!r}{hint} (known: {', '.join(sorted(known))})"
                )
        return cls(**dict(values))


_INT_KEYS = {  # key -> smallest allowed value
    "cpus_per_task": 1,
    "gpus_per_run": 0,
    "gpus_per_node": 1,
    "tasks_per_run": 1,
    "signal_lead_s": 1,
    "max_jobs": 1,
}


def _int(key: str, value: Any, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SlurmConfigError(f"{key}: expected a whole number, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise SlurmConfigError(f"{key}: expected a whole number, got {value!r}") from None
    if n < low:
        raise SlurmConfigError(f"{key}: {n} is below the smallest allowed value {low}")
    return n


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise SlurmConfigError(f"{key}: expected true or false, got {value!r}")


def _str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value)) if key == "sbatch_args" else (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SlurmConfigError(f"{key}: expected a list of strings, got {value!r}")


def load_options_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml`` / ``.json`` options file (keys: :data:`OPTION_HELP`).

    Raises:
        SlurmConfigError: the file is missing, unreadable, of another type, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise SlurmConfigError(f"SLURM options file {p} not found")
    if p.suffix not in (".yaml", ".yml", ".json"):
        raise SlurmConfigError(f"SLURM options file {p}: use a .yaml, .yml or .json file")
    try:
        text = p.read_text()
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - OSError, JSON, YAML and decoding errors alike
        raise SlurmConfigError(f"SLURM options file {p} cannot be read: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SlurmConfigError(
            f"SLURM options file {p}: expected a mapping of options (e.g. partition: gpu), "
            f"got a {type(data).__name__}"
        )
    return data


# ------------------------------------------------------------------------------- scheduler
@dataclass(frozen=True)
class Job:
    """A job as ``squeue`` lists it."""

    job_id: str
    state: str
    reason: str
    name: str
    work_dir: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def queued(self) -> bool:
        return self.state in _QUEUED_STATES

    def describe(self) -> str:
        why = f", {self.reason}" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"job {self.job_id} {self.state}{why}"


@dataclass
class Queue:
    """One ``squeue`` answer: this user's jobs, pending, running and recently ended."""

    jobs: list[Job]
    taken_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.by_id = {j.job_id: j for j in self.jobs}
        self.by_dir: dict[str, list[Job]] = {}
        for j in self.jobs:
            self.by_dir.setdefault(j.work_dir, []).append(j)

    def for_run(self, work_dir: Path, job_ids: Sequence[str]) -> list[Job]:
        """The jobs with one of ``job_ids`` or with ``work_dir`` as working directory."""
        found = {j.job_id: j for j in self.by_dir.get(str(work_dir), [])}
        for jid in job_ids:
            if jid in self.by_id:
                found[jid] = self.by_id[jid]
        return list(found.values())


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", str(os.getuid()))


class SlurmClient:
    """The SLURM commands a sweep uses (``sbatch``, ``squeue``, ``scontrol``; ``sacct`` where it
    answers), with the environment they run in (e.g. ``SLURM_CONF``); jobs inherit it.

    Args:
        env: environment of the commands (default: this process's).
        user: whose jobs ``squeue`` lists (default: this user).
        timeout_s: per command; a controller that does not answer is an error, not a hang.
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, user: str | None = None, timeout_s: float = 120
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.user = user or _user()
        self.timeout_s = timeout_s

    def unavailable(self) -> str | None:
        """None if the SLURM client commands are here, else why not."""
        path = self.env.get("PATH", os.defpath)
        missing = [c for c in ("sbatch", "squeue", "scontrol") if not shutil.which(c, path=path)]
        if missing:
            return f"SLURM client commands not found ({', '.join(missing)} not on PATH)"
        return None

    def _run(self, argv: Sequence[str], cwd: str | None = None) -> str:
        try:
            proc = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=self.env,
                cwd=cwd,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SchedulerError(f"`{shlex.join(argv)}` failed: {err}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            raise SchedulerError(
                f"`{shlex.join(argv)}` exited {proc.returncode}: "
                + (" / ".join(lines[-3:]) or "no message")
            )
        return proc.stdout

    def queue(self) -> Queue:
        """This user's jobs (``squeue -t all``: also those that ended within ``MinJobAge``)."""
        out = self._run(["squeue", "-h", "-t", "all", "-u", self.user, "-o", "%i|%T|%r|%j|%Z"])
        jobs = []
        for line in out.splitlines():
            head = line.split("|", 3)
            if len(head) < 4:
                continue
            name, _, wd = head[3].rpartition("|")
            jobs.append(Job(head[0].strip(), head[1].strip(), head[2].strip(), name, wd.strip()))
        return Queue(jobs)

    def submit(self, script: Path) -> str:
        """``sbatch --parsable script``; the job id."""
        out = self._run(["sbatch", "--parsable", str(script)], cwd=str(script.parent))
        job_id = out.strip().split(";")[0]
        if not job_id.split("_")[0].isdigit():
            raise SchedulerError(f"sbatch {script} answered {out.strip()!r}, not a job id")
        return job_id

    def describe(self, job_id: str) -> str | None:
        """How a job ended, while ``scontrol`` (or ``sacct``, with accounting) still knows it."""
        try:
            out = self._run(["scontrol", "show", "job", "-o", job_id])
            kv = dict(t.split("=", 1) for t in out.split() if "=" in t)
            if "JobState" in kv:
                reason = kv.get("Reason", "None")
                return (
                    f"job {job_id} {kv['JobState']}"
                    + (f" ({reason})" if reason not in ("None", "(null)") else "")
                    + f", exit code {kv.get('ExitCode', '?')}, ran {kv.get('RunTime', '?')}"
                )
        except SchedulerError:
            pass
        if shutil.which("sacct", path=self.env.get("PATH", os.defpath)):
            try:
                out = self._run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
                first = out.strip().splitlines()[0].split("|") if out.strip() else []
                if len(first) == 2:
                    return f"job {job_id} {first[0]}, exit code {first[1]} (sacct)"
            except SchedulerError:
                pass  # no accounting on this cluster
        return None


# ------------------------------------------------------------------------------ run files
def _jobs_path(run: Run) -> Path:
    return run.work_dir / JOBS_NAME


def _submit_lock(run: Run) -> RunLock:
    return RunLock(run.work_dir.parent / f".{run.work_dir.name}.submit.lock")


def read_jobs(run: Run) -> dict[str, Any]:
    """The run's submissions: ``{"jobs": [{"job_id", "submitted", ...}], "submitting": ...}``
    (empty lists if none; ``"unreadable": True`` if the file is damaged)."""
    try:
        data = load_record(_jobs_path(run))
    except RecordError:
        return {"jobs": [], "unreadable": True}
    if not data or not isinstance(data.get("jobs"), list):
        return {"jobs": []}
    return data


def _job_ids(jobs: Mapping[str, Any]) -> list[str]:
    return [str(j["job_id"]) for j in jobs.get("jobs", []) if isinstance(j, dict) and "job_id" in j]


def output_path(run: Run, job_id: str) -> Path:
    """Where a job of ``run`` writes its stdout and stderr."""
    return run.work_dir / f"slurm-{job_id}.out"


def _resume_point(run: Run) -> str | None:
    try:
        text = (run.work_dir / LAST_CHECKPOINT).read_text().strip()
    except OSError:
        return None
    return Path(text).name if text else None


# ---------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class RunStatus:
    """A run's state on the cluster (module docstring) and what it rests on."""

    state: str
    detail: str = ""
    job: Job | None = None  # the active job (queued / running), or the last one seen
    fresh: bool = False  # the work dir has to be moved aside before (re)submitting


def run_status(
    run: Run,
    queue: Queue | None,
    expected_digest: DigestFn | None = None,
    jobs: Mapping[str, Any] | None = None,
) -> RunStatus:
    """The state of ``run`` (module docstring); ``queue`` None: no scheduler to ask (a dry
    run on a machine without SLURM), so recorded jobs read as ``submitted``."""
    rstate, why = record_state(run, expected_digest)
    if rstate == "done":
        return RunStatus("done", why)
    if rstate == "changed":
        return RunStatus("changed", why, fresh=True)
    jobs = read_jobs(run) if jobs is None else jobs
    ids = _job_ids(jobs)
    if queue is None:
        if ids:
            return RunStatus("submitted", f"job {ids[-1]} submitted earlier (no squeue here)")
    else:
        found = queue.for_run(run.work_dir, ids)
        active = [j for j in found if j.active]
        if active:
            job = active[-1]
            return RunStatus("queued" if job.queued else "running", job.describe(), job)
    lock = RunLock(run.lock_path)
    if run.lock_path.exists():
        if not lock.acquire():
            return RunStatus("locked", f"its lock {run.lock_path} is held by {lock.holder()}")
        lock.release()
    if not run.work_dir.exists():
        return RunStatus("todo")
    want = expected_digest(run) if expected_digest is not None else None
    have = record_digest(run)
    fresh = bool(want and have and want != have)
    parts = []
    if ids:
        last = queue.by_id.get(ids[-1]) if queue is not None else None
        parts.append(last.describe() if last else f"job {ids[-1]} is no longer queued")
    rec = why or rstate
    parts.append(rec if rstate != "missing" else "no record")
    if fresh:
        parts.append(f"recorded with another config (digest {have}, now {want}): starts afresh")
    else:
        point = _resume_point(run)
        parts.append(f"resumes from {point}" if point else "no checkpoint yet")
    job = queue.by_id.get(ids[-1]) if (queue is not None and ids) else None
    return RunStatus("ended" if ids else "stale", "; ".join(parts), job, fresh)


# ----------------------------------------------------------------------------- job script
def _sbatch_lines(run: Run, options: SlurmOptions) -> list[str]:
    wd = str(run.work_dir)
    args = [
        f"--job-name={run.run_id}",
        f"--chdir={wd}",
        f"--output={wd}/slurm-%j.out",
        "--open-mode=append",
        "--requeue" if options.requeue else "--no-requeue",
        f"--signal=B:USR1@{options.signal_lead_s}",
    ]
    if options.distributed:
        args += [f"--nodes={options.nodes}", f"--ntasks-per-node={options.tasks_per_node}"]
    else:
        args.append("--ntasks=1")
    if options.gpus_per_run:
        per_node = options.tasks_per_node if options.distributed else options.gpus_per_run
        kind = f"{options.gpu_type}:" if options.gpu_type else ""
        args.append(f"--gres=gpu:{kind}{per_node}")
    for key, flag in (
        ("cpus_per_task", "--cpus-per-task"),
        ("mem", "--mem"),
        ("time", "--time"),
        ("partition", "--partition"),
        ("account", "--account"),
        ("qos", "--qos"),
        ("constraint", "--constraint"),
    ):
        value = getattr(options, key)
        if value is not None:
            args.append(f"{flag}={value}")
    args += list(options.sbatch_args)
    return [f"#SBATCH {a}" for a in args]


def _command(run: Run, options: SlurmOptions, resume_args: Sequence[str]) -> list[str]:
    cmd = list(run.command) + list(resume_args)
    if not options.distributed:
        return cmd
    # python tools/train.py CONFIG [options]: through tools/slurm_train.sh (srun, one process
    # per GPU, --launcher slurm), which takes the OpenMMLab arguments PARTITION JOB CONFIG WORK_DIR.
    if len(cmd) < 3 or not cmd[1].endswith("train.py"):
        raise SlurmConfigError(
            f"run {run.run_id}: more than one process per run (gpus_per_run / tasks_per_run > 1) "
            f"needs a `python tools/train.py CONFIG ...` command, not {shlex.join(cmd[:3])} ..."
        )
    python, config, rest = cmd[0], cmd[2], cmd[3:]
    if "--work-dir" in rest:  # slurm_train.sh passes WORK_DIR itself
        i = rest.index("--work-dir")
        del rest[i : i + 2]
    env = [
        f"GPUS={options.tasks}",
        f"GPUS_PER_NODE={options.tasks_per_node}",
        f"CPUS_PER_TASK={options.cpus_per_task or 1}",
        f"PYTHON={python}",
        "GRES="
        + (
            f"gpu:{options.gpu_type + ':' if options.gpu_type else ''}{options.tasks_per_node}"
            if options.gpus_per_run
            else ""
        ),
    ]
    return [
        "env",
        *env,
        str(SLURM_TRAIN),
        "@PARTITION@",
        run.run_id,
        config,
        str(run.work_dir),
    ] + rest


def job_script(run: Run, options: SlurmOptions, *, resume_args: Sequence[str] = ()) -> str:
    """The ``sbatch`` script of ``run`` (module docstring): resources, output in the work dir,
    the run's command with ``resume_args``, time-limit requeue.

    Raises:
        SlurmConfigError: the work dir has white space (``#SBATCH`` lines cannot hold it), or a
            multi-process run whose command is not ``python tools/train.py CONFIG ...``.
    """
    wd = str(run.work_dir)
    if any(c.isspace() for c in wd):
        raise SlurmConfigError(
            f"work dir {wd!r} has white space, which #SBATCH lines cannot hold; use another "
            "--work-root"
        )
    cmd = _command(run, options, resume_args)
    shell_cmd = shlex.join(cmd).replace(shlex.quote("@PARTITION@"), '"${SLURM_JOB_PARTITION:-}"')
    shell_cmd = shell_cmd.replace("@PARTITION@", '"${SLURM_JOB_PARTITION:-}"')
    cwd = run.cwd or os.getcwd()
    last = shlex.quote(f"{wd}/{LAST_CHECKPOINT}")
    lines = ["#!/bin/bash", *_sbatch_lines(run, options)]
    lines += [
        f"# Job of run {run.run_id} of an lbp_wht sweep (written by lbp_wht.slurm).",
        f"# Submit it again by hand with: sbatch {shlex.quote(wd + '/' + SCRIPT_NAME)}",
        "# Every attempt continues from the newest checkpoint in the work dir (the first finds",
        "# none and starts from the config's weights). Near the time limit (USR1) the training",
        "# is stopped and the job requeues itself if this attempt saved a checkpoint.",
        "set -u",
        f"cd {shlex.quote(cwd)} || exit 1",
        *options.setup,
        f"export LBP_SWEEP_RUN_ID={shlex.quote(run.run_id)}",
        # The job's CPUs, not what the submitting shell had.
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}"',
        f"last_ckpt() {{ cat {last} 2>/dev/null; }}",
        'start_ckpt="$(last_ckpt)"',
        "stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }",
        f'echo "== lbp_wht sweep: run {run.run_id}, job ${{SLURM_JOB_ID:-none}} (restart '
        '${SLURM_RESTART_COUNT:-0}) on $(hostname) at $(stamp)"',
        'echo "== resumes from: ${start_ckpt:-nothing yet (a fresh start)}"',
        f"cmd=({shell_cmd})",
        'echo "== command: ${cmd[*]}"',
        'stop=""',
        '"${cmd[@]}" &',
        "child=$!",
        # bash runs a trap only between commands: the training runs in the background and the
        # script waits for it, so USR1 / TERM are handled at once and passed on as SIGTERM
        # (the training then records 'interrupted' and exits; see tools/train.py).
        """trap 'stop=USR1; kill -TERM "$child" 2>/dev/null' USR1""",
        """trap 'stop=${stop:-TERM}; kill -TERM "$child" 2>/dev/null' TERM INT""",
        'while :; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || break; done',
        'echo "== exit code $rc at $(stamp)${stop:+ (stopped by SIG$stop)}"',
        'if [ "$stop" = USR1 ]; then',
        '    if [ -n "$(last_ckpt)" ] && [ "$(last_ckpt)" != "$start_ckpt" ]; then',
        '        echo "== time limit near: requeueing job $SLURM_JOB_ID; it resumes from $(last_ckpt)"',
        '        scontrol requeue "$SLURM_JOB_ID" && exit 0',
        "    else",
        '        echo "== time limit near, and this attempt saved no checkpoint: not requeued'
        ' (a longer time limit or more frequent checkpoints would let it progress)"',
        "    fi",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- sweeps
@dataclass
class SlurmResult:
    """What a SLURM sweep did with one run. ``status``: ``skipped`` (record complete),
    ``changed`` (complete, other config; kept), ``submitted``, ``resubmitted`` (resumes),
    ``queued`` / ``running`` (a job is there already), ``locked`` (a local process holds it),
    ``deferred`` (``max_jobs`` reached), ``done`` (completed while the sweep waited) or
    ``failed`` (submission failed, or with ``wait`` its job ended without a complete record)."""

    run: Run
    status: str
    job_id: str | None = None
    message: str = ""


@dataclass
class SlurmReport:
    results: list[SlurmResult]
    wall_s: float
    waited: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        good = {"skipped", "changed", "done"}
        if not self.waited:
            good |= {"submitted", "resubmitted", "queued", "running", "locked", "deferred"}
        return all(r.status in good for r in self.results)

    def summary(self) -> str:
        order = ("done", "skipped", "changed", "submitted", "resubmitted", "queued", "running")
        order += ("locked", "deferred", "failed")
        parts = [f"{self.count(s)} {s}" for s in order if self.count(s) or s in ("failed",)]
        return (
            f"slurm sweep: {len(self.results)} runs, {', '.join(parts)} "
            f"in {format_duration(self.wall_s)}"
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def dry_run_scripts(
    runs: Sequence[Run],
    options: SlurmOptions,
    *,
    client: SlurmClient | None = None,
    expected_digest: DigestFn | None = None,
    rerun_changed: bool = False,
    resume_args: Sequence[str] = (),
    show_scripts: bool = True,
) -> str:
    """Each run's state and, for those a sweep would submit now, the job script; writes nothing.

    Without a scheduler here (no ``squeue``) the states come from the work dirs only.
    """
    check_unique(runs)
    client = client or SlurmClient()
    why = client.unavailable()
    queue = None
    note = ""
    if why is None:
        try:
            queue = client.queue()
        except SchedulerError as err:
            why = str(err)
    if why is not None:
        note = f"(no scheduler to ask here: {why}; states from the work dirs only)"
    lines = [note] if note else []
    counts: dict[str, int] = {}
    scripts = 0
    for i, run in enumerate(runs, 1):
        st = run_status(run, queue, expected_digest)
        counts[st.state] = counts.get(st.state, 0) + 1
        submit = _would_submit(st, rerun_changed)
        what = ("would submit" if st.state == "todo" else "would resubmit") if submit else ""
        detail = f"  ({st.detail})" if st.detail else ""
        lines.append(
            f"[{i}/{len(runs)}] {st.state:9s} {run.run_id}{detail}"
            + (f"  -> {what}" if what else "")
        )
        if submit:
            scripts += 1
            if show_scripts:
                lines.append(job_script(run, options, resume_args=resume_args))
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    lines.append(f"{len(runs)} runs ({summary or 'none'}); {scripts} job scripts to submit")
    return "\n".join(lines)


def _would_submit(st: RunStatus, rerun_changed: bool) -> bool:
    return st.state in ("todo", "stale", "ended") or (st.state == "changed" and rerun_changed)


class _SlurmSweep:
    def __init__(
        self,
        runs: Sequence[Run],
        options: SlurmOptions,
        client: SlurmClient,
        *,
        expected_digest: DigestFn | None,
        rerun_changed: bool,
        resume_args: Sequence[str],
        out: IO[str],
    ) -> None:
        self.runs = list(runs)
        self.options = options
        self.client = client
        self.expected_digest = expected_digest
        self.rerun_changed = rerun_changed
        self.resume_args = tuple(resume_args)
        self.out = out
        self.queue: Queue | None = None
        self.results: dict[int, SlurmResult] = {}
        self.blocked = ""  # why submitting stopped (a failed sbatch)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def refresh(self) -> Queue:
        self.queue = self.client.queue()
        return self.queue

    def _active_count(self) -> int:
        """The sweep's jobs that are queued or running: those ``squeue`` listed, and those this
        invocation submitted since."""
        assert self.queue is not None
        dirs = {str(r.work_dir) for r in self.runs}
        listed = {j.work_dir for j in self.queue.jobs if j.active and j.work_dir in dirs}
        new = {
            str(r.run.work_dir)
            for r in self.results.values()
            if r.status in ("submitted", "resubmitted") and r.job_id not in self.queue.by_id
        }
        return len(listed | new)

    def _status_under_lock(self, run: Run) -> RunStatus:
        jobs = read_jobs(run)
        ids = _job_ids(jobs)
        assert self.queue is not None
        unseen = bool(ids) and ids[-1] not in self.queue.by_id
        if jobs.get("submitting") or jobs.get("unreadable") or unseen:
            # Another sweep submitted since our query, or one died while submitting: ask again.
            self.refresh()
        return run_status(run, self.queue, self.expected_digest, jobs)

    def submit(self, index: int, run: Run) -> SlurmResult:
        """Submit ``run`` if it still needs it (decided under its submission lock)."""
        lock = _submit_lock(run)
        lock.acquire(blocking=True)
        try:
            st = self._status_under_lock(run)
            if not _would_submit(st, self.rerun_changed):
                return self._passive(run, st)
            if self.blocked:
                return SlurmResult(run, "deferred", message=f"not submitted: {self.blocked}")
            if self.options.max_jobs and self._active_count() >= self.options.max_jobs:
                return SlurmResult(run, "deferred", message=f"max_jobs={self.options.max_jobs}")
            resubmit = st.state in ("ended", "stale") and not st.fresh
            moved = ""
            if st.fresh and run.work_dir.exists():
                target = move_aside(run.work_dir)
                moved = f"moved the earlier work dir aside to {target}; "
            run.work_dir.mkdir(parents=True, exist_ok=True)
            script = run.work_dir / SCRIPT_NAME
            text = job_script(run, self.options, resume_args=self.resume_args)
            tmp = script.with_name(f".{SCRIPT_NAME}.tmp")
            tmp.write_text(text)
            os.replace(tmp, script)
            jobs = read_jobs(run) if not moved else {"jobs": []}
            history = [j for j in jobs.get("jobs", []) if isinstance(j, dict)]
            base = {"run_id": run.run_id, "work_dir": str(run.work_dir), "jobs": history}
            marker = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
            write_record(_jobs_path(run), {**base, "submitting": marker})
            try:
                job_id = self.client.submit(script)
            except SchedulerError as err:
                return self._submit_failed(run, base, err)
            entry = {
                "job_id": job_id,
                "submitted": _now(),
                "resumes_from": _resume_point(run) if resubmit else None,
                "host": marker["host"],
                "pid": marker["pid"],
            }
            write_record(_jobs_path(run), {**base, "jobs": history + [entry]})
        finally:
            lock.release()
        if resubmit:
            msg = f"{moved}resubmitted as job {job_id} ({st.detail})"
            return SlurmResult(run, "resubmitted", job_id, msg)
        return SlurmResult(run, "submitted", job_id, f"{moved}job {job_id}")

    def _submit_failed(self, run: Run, base: dict, err: SchedulerError) -> SlurmResult:
        # The controller may have accepted the job before the error: look for it by work dir.
        try:
            found = [j for j in self.refresh().for_run(run.work_dir, []) if j.active]
        except SchedulerError:
            found = []
        if found:
            job = found[-1]
            entry = {"job_id": job.job_id, "submitted": _now(), "note": "found after: " + str(err)}
            write_record(_jobs_path(run), {**base, "jobs": base["jobs"] + [entry]})
            return SlurmResult(run, "submitted", job.job_id, f"job {job.job_id} (sbatch: {err})")
        write_record(_jobs_path(run), base)
        self.blocked = f"an earlier sbatch failed ({err})"
        return SlurmResult(run, "failed", message=f"sbatch failed: {err}")

    def _passive(self, run: Run, st: RunStatus) -> SlurmResult:
        status = {"done": "skipped"}.get(st.state, st.state)
        job_id = st.job.job_id if st.job else None
        if st.state == "changed":
            return SlurmResult(run, "changed", None, st.detail + "; kept (--rerun-changed re-runs)")
        return SlurmResult(run, status, job_id, st.detail)

    def line(self, index: int, res: SlurmResult) -> None:
        width = len(str(len(self.runs)))
        self.say(f"[{index:>{width}}/{len(self.runs)}] {res.run.run_id}  {res.status.upper()}  "
                 f"{res.message}")  # fmt: skip

    def first_pass(self) -> None:
        self.refresh()
        for i, run in enumerate(self.runs, 1):
            res = self.submit(i, run)
            self.results[i] = res
            if res.status not in ("skipped",):
                self.line(i, res)

    def follow(self, poll_s: float, progress_every_s: float) -> None:
        """Until none of the sweep's jobs is queued or running (and none is deferred)."""
        mine = {i for i, r in self.results.items()
                if r.status in ("submitted", "resubmitted", "queued", "running", "deferred")}  # fmt: skip
        last_print = 0.0
        failures = 0
        while mine:
            time.sleep(poll_s)
            try:
                self._poll(mine)
                failures = 0
            except SchedulerError as err:
                # A busy controller times out now and then; the jobs go on meanwhile.
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
                self.say(f"slurm: {err}; asking again in {format_duration(poll_s)}")
            if time.time() - last_print >= progress_every_s and mine:
                last_print = time.time()
                self.progress(mine)

    def _poll(self, mine: set[int]) -> None:
        """One look at the queue: record what finished, submit what was deferred."""
        self.refresh()
        for i in sorted(mine):
            run, res = self.runs[i - 1], self.results[i]
            if res.status == "deferred":
                new = self.submit(i, run)
                if new.status != "deferred":
                    self.results[i] = new
                    self.line(i, new)
                if new.status in ("failed", "skipped", "changed") or (
                    new.status == "deferred" and self.blocked
                ):
                    mine.discard(i)
                continue
            st = run_status(run, self.queue, self.expected_digest)
            if st.state in ("queued", "running", "locked"):
                if st.state != res.status:
                    self.results[i] = replace(res, status=st.state, message=st.detail)
                continue
            mine.discard(i)
            if st.state in ("done", "changed"):
                final = self._finished(run, res)
            else:
                final = self._ended(run, res, st)
            self.results[i] = final
            self.line(i, final)

    def _finished(self, run: Run, res: SlurmResult) -> SlurmResult:
        rec = load_record(run.record_path) or {}
        metric, value = rec.get("metric", "value"), rec.get("value")
        val = f"{metric}={value:.2f}" if isinstance(value, (int, float)) else "no value"
        return SlurmResult(run, "done", res.job_id, f"job {res.job_id}: {val}")

    def _ended(self, run: Run, res: SlurmResult, st: RunStatus) -> SlurmResult:
        how = (self.client.describe(res.job_id) if res.job_id else None) or st.detail
        tail = ""
        if res.job_id:
            lines = log_tail(output_path(run, res.job_id), 1500).strip().splitlines()[-6:]
            tail = "".join(f"\n      {ln}" for ln in lines)
        log = output_path(run, res.job_id) if res.job_id else run.work_dir
        return SlurmResult(run, "failed", res.job_id, f"{how}; log {log}{tail}")

    def progress(self, mine: set[int]) -> None:
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        self.say("slurm: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for i in sorted(mine):
            res = self.results[i]
            if res.status != "running" or not res.job_id:
                continue
            prog = parse_progress(log_tail(output_path(self.runs[i - 1], res.job_id)))
            if prog is not None:
                frac, eta, phase = prog
                self.say(f"  {res.run.run_id} job {res.job_id}: {phase} {100 * frac:.0f}%"
                         + (f", ETA {eta}" if eta else ""))  # fmt: skip


def submit_sweep(
    runs: Sequence[Run],
    options: SlurmOptions,
    *,
    client: SlurmClient | None = None,
    expected_digest: DigestFn | None = None,
    rerun_changed: bool = False,
    resume_args: Sequence[str] = (),
    wait: bool = False,
    poll_s: float = 30.0,
    progress_every_s: float = 300.0,
    out: IO[str] | None = None,
) -> SlurmReport:
    """Submit the runs that need it (module docstring) and, with ``wait``, follow them.

    Args:
        runs: the sweep (ids and work dirs must be unique).
        options: resources and behaviour of the jobs.
        client: the SLURM commands (default: this process's environment).
        expected_digest: the config digest each run would record now (see lbp_wht.sweep).
        rerun_changed: move complete runs of another config digest aside and submit them.
        resume_args: appended to every run's command (``--resume`` for ``tools/train.py``).
        wait: follow the jobs until none is queued or running; a job that ends without a
            complete record is then ``failed`` (not resubmitted by this invocation).
        poll_s, progress_every_s: how often to ask ``squeue`` and to print progress.
        out: where the lines go (default ``sys.stderr``).

    Raises:
        SchedulerError: the SLURM commands are missing or ``squeue`` does not answer (nothing
            was submitted then, or only what the report of an earlier line said).
    """
    runs = list(runs)
    check_unique(runs)
    client = client or SlurmClient()
    why = client.unavailable()
    if why:
        raise SchedulerError(f"{why}; nothing was submitted")
    sweep = _SlurmSweep(
        runs,
        options,
        client,
        expected_digest=expected_digest,
        rerun_changed=rerun_changed,
        resume_args=resume_args,
        out=out if out is not None else sys.stderr,
    )
    t0 = time.time()
    sweep.first_pass()
    if wait:
        sweep.follow(poll_s, progress_every_s)
    ordered = [sweep.results[i] for i in range(1, len(runs) + 1)]
    return SlurmReport(ordered, time.time() - t0, waited=wait)


# ------------------------------------------------------------------------- command line
#: Flag -> (option key, environment variable the flag defaults to).
_FLAGS = {
    "--partition": ("partition", "PARTITION"),
    "--account": ("account", "ACCOUNT"),
    "--qos": ("qos", "QOS"),
    "--time": ("time", "TIME_LIMIT"),
    "--mem": ("mem", "MEM"),
    "--cpus-per-task": ("cpus_per_task", "CPUS_PER_TASK"),
    "--gpus-per-run": ("gpus_per_run", "GPUS_PER_RUN"),
    "--gpus-per-node": ("gpus_per_node", "GPUS_PER_NODE"),
    "--tasks-per-run": ("tasks_per_run", "TASKS_PER_RUN"),
    "--gpu-type": ("gpu_type", "GPU_TYPE"),
    "--constraint": ("constraint", "CONSTRAINT"),
    "--sbatch-args": ("sbatch_args", "SBATCH_ARGS"),
    "--signal-lead-s": ("signal_lead_s", "SIGNAL_LEAD_S"),
    "--max-jobs": ("max_jobs", "MAX_JOBS"),
}


def add_arguments(parser: Any) -> None:
    """The launcher flags of ``tools/sweep.py`` (an ``argparse`` group): ``--launcher``,
    ``--slurm-config FILE``, one flag per option of :data:`OPTION_HELP` (default: the
    environment variable named in its help; flags win over the file), ``--setup LINE``,
    ``--no-requeue``, ``--wait`` and ``--poll``."""
    g = parser.add_argument_group("launcher (--launcher slurm: one sbatch job per run)")
    g.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default=os.environ.get("LAUNCHER") or "local",
        help="local: processes on this machine (default); slurm: submit to SLURM (env LAUNCHER)",
    )
    g.add_argument(
        "--slurm-config",
        default=os.environ.get("LAUNCHER_CONFIG") or None,
        metavar="FILE",
        help="SLURM options file, .yaml or .json, keys as the flags below with underscores "
        "(env LAUNCHER_CONFIG)",
    )
    for flag, (key, env) in _FLAGS.items():
        g.add_argument(
            flag,
            dest=f"slurm_{key}",
            default=os.environ.get(env) or None,
            metavar="V",
            help=f"{OPTION_HELP[key]} (env {env})",
        )
    g.add_argument(
        "--setup",
        dest="slurm_setup",
        action="append",
        default=None,
        metavar="LINE",
        help=OPTION_HELP["setup"] + "; repeatable",
    )
    g.add_argument("--no-requeue", dest="slurm_requeue", action="store_false", default=None)
    g.add_argument(
        "--wait",
        action="store_true",
        default=(os.environ.get("WAIT") or "0") not in ("0", "false", "no", ""),
        help="slurm: follow the jobs until none is queued or running (env WAIT=1)",
    )
    g.add_argument("--poll", type=float, default=30.0, help="slurm: seconds between squeue calls")


def options_from_args(args: Any) -> SlurmOptions:
    """:class:`SlurmOptions` from :func:`add_arguments` flags over the ``--slurm-config`` file;
    ``sbatch_args`` and ``setup`` of the flags are added to the file's.

    Raises:
        SlurmConfigError: a bad file, key or value (the message names it).
    """
    base = load_options_file(args.slurm_config) if args.slurm_config else {}
    source = str(args.slurm_config) if args.slurm_config else "options"
    flags = {key: getattr(args, f"slurm_{key}") for key, _ in _FLAGS.values()}
    flags["requeue"] = args.slurm_requeue
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    merged["sbatch_args"] = _str_tuple("sbatch_args", base.get("sbatch_args")) + _str_tuple(
        "sbatch_args", flags["sbatch_args"]
    )
    merged["setup"] = _str_tuple("setup", base.get("setup")) + tuple(args.slurm_setup or ())
    return SlurmOptions.from_mapping(merged, source=source)
