"""Resumable, lock-safe sweeps of training runs (pure Python, stdlib only).

A *sweep* is a list of :class:`Run` s. Each run has a unique id, a command (argv) and a work
directory; the command is expected to write a run record (:mod:`lbp_wht.records`) at
``work_dir / record.json`` with ``status == "complete"`` when, and only when, it finished.

Guarantees:

* **Skip what is done.** A run whose record is complete is never started again.
* **Re-run what is not, losing nothing.** A work dir without a complete record (a killed or
  failed attempt, or a record that cannot be read: truncated, not JSON, not an object, not
  UTF-8, a directory) is stale. Given ``resume_args`` (``("--resume",)`` for
  ``tools/train.py``), a stale run whose record is readable (or absent), was made with the
  config the sweep would run now (its ``config_digest`` is not known to differ) and whose work
  dir holds a checkpoint is *resumed in place*: its command runs again with ``resume_args``
  appended, so hours of an interrupted run are not redone (the training side checks that the
  checkpoint is loadable and of the same config). Every other stale work dir is *moved aside*
  to ``<work_dir>.stale-<UTC time>`` (never deleted; the sweep says where) and the run starts
  from scratch, so nothing of an attempt of another config leaks into the new one.
* **Tell a changed run from a finished one.** Given ``expected_digest`` (the
  :func:`lbp_wht.records.config_digest` of the config the run would train now), a complete
  record whose ``config_digest`` differs was made with other options. Such a run is *kept*
  and reported as ``changed`` (a warning per run and in the summary), because the digest also
  covers placement options such as the data root that do not change the result; with
  ``rerun_changed=True`` it is moved aside and re-run. A record without ``config_digest``
  (written before records had one) cannot be compared: it is kept and said so.
* **One runner per run.** Before touching a run the sweep takes an exclusive ``fcntl.flock``
  on ``.<work_dir name>.lock`` (a sibling file, so moving the work dir never removes it) and
  the launched command *inherits* that lock. Two sweeps started at once therefore never run
  or write the same run; and if a sweep is SIGKILLed, its still-running child keeps the lock,
  so a restarted sweep waits for that child instead of starting a duplicate next to it. A run
  held by someone else is revisited at the end of the pass: the sweep blocks on the lock,
  then skips the run if its record became complete, or runs it itself.
* **Atomic records.** Records are written with :func:`lbp_wht.records.write_record` (temp file
  + ``os.replace``), so a reader sees the old record or the new one, never a partial file.

Hence killing a sweep at any moment and starting it again ends with the same set of records as
an uninterrupted sweep.

Progress: the command's output goes to ``work_dir / run.log``; the sweep tails it and shows a
per-run progress bar with the run's own ETA (mmengine's ``Iter(train) [i/n]`` / ``Epoch(train)
[e][i/n] ... eta: ...`` log lines, or generic ``PROGRESS i/n`` lines), the sweep's ETA from the
mean duration of the runs it finished, and one summary line per finished run.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .records import STALE_MARK, RecordError, load_record, read_record

__all__ = [
    "Run",
    "RunLock",
    "RunResult",
    "SweepReport",
    "run_state",
    "record_state",
    "record_digest",
    "check_unique",
    "log_tail",
    "move_aside",
    "resume_point",
    "dry_run_listing",
    "run_sweep",
    "parse_progress",
    "format_duration",
    "safe_id",
]

RECORD_NAME = "record.json"
LOG_NAME = "run.log"
#: mmengine's pointer to the newest checkpoint in a work dir.
LAST_CHECKPOINT = "last_checkpoint"

_ID_OK = re.compile(r"[^A-Za-z0-9._+=-]+")


def safe_id(text: str) -> str:
    """``text`` with every run of characters unsafe in a file name replaced by ``-``."""
    return _ID_OK.sub("-", text).strip("-")


@dataclass(frozen=True)
class Run:
    """One run of a sweep.

    Attributes:
        run_id: unique, file-name-safe name (also the default work dir name).
        command: argv of the process that trains / evaluates and writes the record.
        work_dir: the run's own directory; a stale one is resumed in place or moved aside
            when the run restarts (module docstring).
        meta: what the run is (table, model, dataset, method, r, seed, ...), for listings.
        record_name: file name of the record inside ``work_dir``.
        cwd: directory the command runs in (None: the sweep's own working directory).
    """

    run_id: str
    command: tuple[str, ...]
    work_dir: Path
    meta: Mapping[str, Any] = field(default_factory=dict)
    record_name: str = RECORD_NAME
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not self.run_id or safe_id(self.run_id) != self.run_id:
            raise ValueError(
                f"run id {self.run_id!r} must be non-empty and file-name safe "
                f"(letters, digits, . _ + = -); e.g. {safe_id(self.run_id)!r}"
            )
        if not self.command:
            raise ValueError(f"run {self.run_id!r} has an empty command")
        object.__setattr__(self, "command", tuple(str(c) for c in self.command))
        object.__setattr__(self, "work_dir", Path(self.work_dir))

    @property
    def record_path(self) -> Path:
        return self.work_dir / self.record_name

    @property
    def lock_path(self) -> Path:
        # A sibling of the work dir: the work dir itself is moved aside when a stale run
        # restarts, and moving a lock file others may hold open would break mutual exclusion.
        return self.work_dir.parent / f".{self.work_dir.name}.lock"

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_NAME

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (with ``cd`` if it has a cwd)."""
        cmd = shlex.join(self.command)
        return f"cd {shlex.quote(self.cwd)} && {cmd}" if self.cwd else cmd


class RunLock:
    """Exclusive ``fcntl.flock`` on a run's lock file.

    The lock belongs to the open file description, so a child started with
    ``pass_fds=(lock.fd,)`` holds it too, for as long as it lives, even if this process dies.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if someone holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        # Who holds it, for the "waiting for ..." message of other sweeps.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


DigestFn = Callable[[Run], "str | None"]


def record_state(run: Run, expected_digest: DigestFn | None = None) -> tuple[str, str]:
    """``(state, why)`` of the run's record: ``done``, ``changed`` (complete, other config
    digest), ``unreadable``, ``incomplete`` or ``missing``."""
    try:
        rec = load_record(run.record_path)
    except RecordError as err:
        return "unreadable", str(err)
    if rec is None:
        return "missing", ""
    if rec.get("status") != "complete":
        return "incomplete", f"record status {rec.get('status')!r}"
    have = rec.get("config_digest")
    if not have:
        return "done", "record complete (it has no config_digest: made before digests; kept)"
    want = expected_digest(run) if expected_digest is not None else None
    if want is not None and want != have:
        return "changed", (
            f"record complete but made with another config (config_digest {have}, this sweep's "
            f"{want})"
        )
    return "done", "record complete"


def record_digest(run: Run) -> str | None:
    """The ``config_digest`` of the run's record (None: no record, none recorded, or unreadable)."""
    try:
        rec = load_record(run.record_path)
    except RecordError:
        return None
    return rec.get("config_digest") if rec else None


def run_state(run: Run, expected_digest: DigestFn | None = None) -> str:
    """``"done"`` (complete record), ``"changed"`` (complete record of another config digest,
    see the module docstring), ``"running"`` (locked by a live process), ``"stale"`` (work dir
    without a usable complete record: resumed in place or moved aside and re-run) or
    ``"todo"``."""
    state, _ = record_state(run, expected_digest)
    if state in ("done", "changed"):
        return state
    lock = RunLock(run.lock_path)
    if run.lock_path.exists():
        if not lock.acquire():
            return "running"
        lock.release()
    return "stale" if run.work_dir.exists() else "todo"


def resume_point(work_dir: Path) -> Path | None:
    """The checkpoint a resumed attempt in ``work_dir`` would start from: the file named by
    ``last_checkpoint`` if it exists, else the newest ``*.pth`` in the work dir, else None.

    Only a hint for the sweep's decision; the training command itself picks the newest
    *loadable* checkpoint."""
    work_dir = Path(work_dir)
    try:
        named = (work_dir / LAST_CHECKPOINT).read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    if named:
        path = Path(named) if Path(named).is_absolute() else work_dir / named
        if path.is_file():
            return path
    ckpts = [p for p in work_dir.glob("*.pth") if p.is_file()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def move_aside(work_dir: Path) -> Path:
    """Rename ``work_dir`` to ``<work_dir>.stale-<UTC time>`` (``-2``, ``-3``... if taken) and
    return the new path. Records below such a directory are ignored by
    :func:`lbp_wht.records.read_records`."""
    work_dir = Path(work_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = work_dir.with_name(f"{work_dir.name}{STALE_MARK}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = work_dir.with_name(f"{work_dir.name}{STALE_MARK}{stamp}-{n}")
    os.rename(work_dir, target)
    return target


def check_unique(runs: Sequence[Run]) -> None:
    """Raise ValueError if two runs share an id or a work dir."""
    seen_id: dict[str, Run] = {}
    seen_dir: dict[Path, Run] = {}
    for run in runs:
        if run.run_id in seen_id:
            raise ValueError(f"duplicate run id {run.run_id!r} in the sweep")
        wd = run.work_dir.resolve()
        if wd in seen_dir:
            raise ValueError(
                f"runs {seen_dir[wd].run_id!r} and {run.run_id!r} share the work dir {wd}"
            )
        seen_id[run.run_id], seen_dir[wd] = run, run


def dry_run_listing(
    runs: Sequence[Run], *, show_commands: bool = True, expected_digest: DigestFn | None = None
) -> str:
    """One block per run (state, id, work dir, command) and a count by state."""
    check_unique(runs)
    lines = []
    counts: dict[str, int] = {}
    for i, run in enumerate(runs, 1):
        state = run_state(run, expected_digest)
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"[{i}/{len(runs)}] {state:7s} {run.run_id}")
        if show_commands:
            lines.append(f"    {run.shell()}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    lines.append(f"{len(runs)} runs ({summary or 'none'})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- progress
_LINE = re.compile(r"(Iter|Epoch)\((train|val|test)\)\s*(?:\[\s*(\d+)\]\s*)?\[\s*(\d+)/(\d+)\]")
_GENERIC = re.compile(r"PROGRESS\s+(\d+)/(\d+)")
_ETA = re.compile(r"eta:\s*((?:\d+ days?, )?\d+:\d\d:\d\d)")


def parse_progress(text: str, max_epochs: int | None = None) -> tuple[float, str, str] | None:
    """``(fraction done, the run's own ETA or "", phase)`` from the tail of its log, or None.

    Understands mmengine's ``Iter(train) [  50/20000]`` and ``Epoch(train) [3][ 50/782]``
    (with ``max_epochs`` known, the fraction covers the whole run), their ``(val)`` / ``(test)``
    forms (phase ``val`` / ``test``: progress through that evaluation), and ``PROGRESS i/n``.
    The last such line wins; the ETA is taken from that same line.
    """
    last: tuple[int, float, str] | None = None  # (position, fraction, phase)
    for m in _LINE.finditer(text):
        kind, phase, ep, i, n = m.groups()
        frac = int(i) / max(int(n), 1)
        if kind == "Epoch" and phase == "train" and ep is not None and max_epochs:
            frac = (int(ep) - 1 + frac) / max_epochs
        last = (m.start(), frac, phase)
    for m in _GENERIC.finditer(text):
        if last is None or m.start() > last[0]:
            last = (m.start(), int(m.group(1)) / max(int(m.group(2)), 1), "train")
    if last is None:
        return None
    pos, frac, phase = last
    end = text.find("\n", pos)
    eta = _ETA.search(text[pos : end if end >= 0 else len(text)])
    return min(max(frac, 0.0), 1.0), (eta.group(1) if eta else ""), phase


def format_duration(seconds: float | None) -> str:
    """``3h05m``, ``12m03s``, ``42s`` (or ``?``)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _bar(frac: float, width: int = 20) -> str:
    n = int(round(frac * width))
    return "[" + "#" * n + "." * (width - n) + f"] {100 * frac:5.1f}%"


def log_tail(path: Path, nbytes: int = 8192) -> str:
    """The last ``nbytes`` of a log file as text ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------- sweep
@dataclass
class RunResult:
    """Outcome of one run in a sweep: ``status`` is ``done`` (ran and completed), ``skipped``
    (record already complete), ``changed`` (complete record of another config digest, kept),
    ``failed``, ``interrupted`` or ``locked`` (another process holds the run and the sweep was
    told not to wait for it). ``message`` says why, including where a stale work dir went."""

    run: Run
    status: str
    wall_s: float = 0.0
    returncode: int | None = None
    message: str = ""


@dataclass
class SweepReport:
    results: list[RunResult]
    wall_s: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return all(r.status in ("done", "skipped", "changed") for r in self.results)

    def summary(self) -> str:
        states = ("done", "skipped", "changed", "failed", "interrupted", "locked")
        optional = ("changed", "locked")
        parts = [f"{self.count(s)} {s}" for s in states if s not in optional or self.count(s)]
        return (
            f"sweep: {len(self.results)} runs, "
            + ", ".join(parts)
            + (f" in {format_duration(self.wall_s)}")
        )


class _Display:
    """Terminal output: live progress lines on a TTY, periodic lines otherwise."""

    def __init__(self, out: IO[str], total: int, jobs: int, every_s: float) -> None:
        self.out, self.total, self.jobs, self.every_s = out, total, jobs, every_s
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.lock = threading.Lock()
        self.active: dict[str, tuple[Run, float, int]] = {}  # run_id -> (run, start, index)
        self.finished = 0
        self.failed = 0
        self.durations: list[float] = []
        self.remaining = total
        self._drawn = 0
        self._last_plain = 0.0

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\x1b[1A\x1b[2K" * (self._drawn - 1) + "\r\x1b[2K")
            self._drawn = 0

    def sweep_eta(self) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        elapsed_active = sum(min(time.time() - start, mean) for _, start, _ in self.active.values())
        return max(self.remaining * mean - elapsed_active, 0.0) / max(self.jobs, 1)

    def line(self, text: str) -> None:
        with self.lock:
            self._clear()
            self.out.write(text + "\n")
            self.out.flush()

    def start(self, run: Run, index: int) -> None:
        with self.lock:
            self.active[run.run_id] = (run, time.time(), index)

    def finish(self, res: RunResult, index: int, counted: bool = True) -> None:
        with self.lock:
            self.active.pop(res.run.run_id, None)
            self.remaining -= counted
            if res.status in ("done", "failed"):
                self.finished += 1
                self.failed += res.status == "failed"
            if res.status == "done":
                self.durations.append(res.wall_s)
        if res.status == "skipped":
            return
        if res.status == "changed":
            self.line(f"[{index}/{self.total}] {res.run.run_id}  CHANGED {res.message}")
            return
        rec = read_record(res.run.record_path) or {}
        if res.status == "done":
            metric = rec.get("metric", "value")
            value = rec.get("value")
            val = f"{metric}={value:.2f}" if isinstance(value, (int, float)) else "no value"
            what = f"done    {val}"
        else:
            what = f"{res.status.upper():7s} {res.message}"
        eta = self.sweep_eta()
        self.line(
            f"[{index:>{len(str(self.total))}}/{self.total}] {res.run.run_id}  {what}  "
            f"wall {format_duration(res.wall_s)}  | {self.remaining} left"
            + (f", sweep ETA {format_duration(eta)}" if eta is not None and self.remaining else "")
        )

    def tick(self, max_epochs: Callable[[Run], int | None]) -> None:
        with self.lock:
            rows = []
            for run, start, index in list(self.active.values()):
                prog = parse_progress(log_tail(run.log_path), max_epochs(run))
                elapsed = format_duration(time.time() - start)
                if prog is None:
                    rows.append(f"  [{index}/{self.total}] {run.run_id}  running {elapsed}")
                else:
                    frac, eta, phase = prog
                    what = "" if phase == "train" else f"{phase} "
                    rows.append(
                        f"  [{index}/{self.total}] {run.run_id}  {what}{_bar(frac)}  {elapsed}"
                        + (f"  {phase} ETA {eta}" if eta else "")
                    )
            eta = self.sweep_eta()
            if rows:
                rows.append(
                    f"  sweep: {self.total - self.remaining}/{self.total} finished"
                    + (f", ETA {format_duration(eta)}" if eta is not None else "")
                )
            if self.tty:
                self._clear()
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self.out.write("\n".join(r[:width] for r in rows))
                self._drawn = len(rows)
                self.out.flush()
            elif rows and time.time() - self._last_plain >= self.every_s:
                self._last_plain = time.time()
                self.out.write("\n".join(rows) + "\n")
                self.out.flush()

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.out.flush()


class _Sweep:
    def __init__(
        self,
        runs: Sequence[Run],
        *,
        jobs: int,
        slot_env: Sequence[Mapping[str, str]] | None,
        out: IO[str],
        progress_every_s: float,
        poll_s: float,
        wait_for_locked: bool,
        max_epochs_key: str,
        expected_digest: DigestFn | None = None,
        rerun_changed: bool = False,
        resume_args: Sequence[str] = (),
    ) -> None:
        self.runs = list(runs)
        self.expected_digest = expected_digest
        self.rerun_changed = rerun_changed
        self.resume_args = tuple(str(a) for a in resume_args)
        self.jobs = max(1, int(jobs))
        self.slot_env = list(slot_env) if slot_env else [{}] * self.jobs
        if len(self.slot_env) < self.jobs:
            raise ValueError(f"jobs={self.jobs} needs {self.jobs} slot environments")
        self.poll_s = poll_s
        self.wait_for_locked = wait_for_locked
        self.max_epochs_key = max_epochs_key
        self.display = _Display(out, len(self.runs), self.jobs, progress_every_s)
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()
        self.mutex = threading.Lock()

    def _max_epochs(self, run: Run) -> int | None:
        v = run.meta.get(self.max_epochs_key)
        return int(v) if isinstance(v, (int, float)) and v else None

    def _resume_point(self, run: Run, state: str) -> Path | None:
        """Where a stale run resumes in place (module docstring), or None: start afresh."""
        if not self.resume_args or state not in ("incomplete", "missing"):
            return None  # an unreadable record is moved aside, never continued
        want = self.expected_digest(run) if self.expected_digest is not None else None
        have = record_digest(run)
        if want and have and want != have:
            return None  # an attempt of another config: its checkpoint must not be continued
        return resume_point(run.work_dir)

    def execute(self, run: Run, index: int, slot: int, blocking: bool) -> RunResult:
        """Run ``run`` unless its record is complete (checked under the run's lock).

        With ``blocking=False`` a run held by another process comes back as ``locked``; with
        ``blocking=True`` the sweep waits for the lock first.
        """
        lock = RunLock(run.lock_path)
        if not lock.acquire(blocking=False):
            if not blocking:
                return RunResult(run, "locked", message=f"held by pid {lock.holder()}")
            self.display.line(
                f"waiting for {run.run_id}: running elsewhere (lock {run.lock_path} held by "
                f"pid/time {lock.holder()})"
            )
            lock.acquire(blocking=True)
        try:
            # Check *after* taking the lock: another sweep may have just completed it.
            state, why = record_state(run, self.expected_digest)
            if state == "done":
                return RunResult(run, "skipped", message=why)
            if state == "changed" and not self.rerun_changed:
                return RunResult(
                    run,
                    "changed",
                    message=why + "; kept (--rerun-changed moves it aside and re-runs)",
                )
            if self.stop.is_set():
                return RunResult(run, "interrupted", message="sweep stopped")
            moved, command = "", run.command
            point = self._resume_point(run, state)
            if point is not None:
                command = run.command + self.resume_args
                moved = f"resumes in place from {point.name} ({why or 'no record'})"
                self.display.line(f"{run.run_id}: {moved}")
            elif run.work_dir.exists():
                target = move_aside(run.work_dir)
                moved = f"moved the earlier work dir aside to {target} ({why or 'no record'})"
                self.display.line(f"{run.run_id}: {moved}")
            run.work_dir.mkdir(parents=True, exist_ok=point is not None)
            env = {**os.environ, **self.slot_env[slot], "LBP_SWEEP_RUN_ID": run.run_id}
            env_txt = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.slot_env[slot].items())
            (run.work_dir / "command.sh").write_text(
                "#!/bin/sh\n# written by lbp_wht.sweep; re-runs this run by hand\n"
                + (f"{env_txt} " if env_txt else "")
                + run.shell()
                + "\n"
            )
            self.display.start(run, index)
            start = time.time()
            with open(run.log_path, "ab") as log:
                # pass_fds: the child holds the run lock too (see module docstring).
                proc = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=run.cwd,
                    pass_fds=(lock.fd,),
                )
                with self.mutex:
                    self.procs[run.run_id] = proc
                try:
                    rc = proc.wait()
                finally:
                    with self.mutex:
                        self.procs.pop(run.run_id, None)
            wall = time.time() - start
            state, why = record_state(run, self.expected_digest)
            complete = state in ("done", "changed")
            if self.stop.is_set() and not complete:
                return RunResult(run, "interrupted", wall, rc, "sweep stopped")
            if rc == 0 and complete:
                # "changed" right after the run: the sweep and the run disagree on the config.
                note = f"; WARNING: {why}" if state == "changed" else ""
                return RunResult(run, "done", wall, rc, moved + note)
            rec = read_record(run.record_path)
            why = (
                f"exit code {rc}"
                if rc != 0
                else f"exit code 0 but no complete record at {run.record_path}"
                + (f" (status={rec.get('status')!r})" if rec else "")
            )
            tail = log_tail(run.log_path, 1500).strip().splitlines()[-8:]
            msg = f"{why}; log {run.log_path}" + (
                "\n      " + "\n      ".join(tail) if tail else ""
            )
            return RunResult(run, "failed", wall, rc, msg)
        finally:
            lock.release()

    def _worker(self, slot: int, queue: list[tuple[int, Run]], deferred: list) -> None:
        while not self.stop.is_set():
            with self.mutex:
                if not queue:
                    return
                index, run = queue.pop(0)
            res = self.execute(run, index, slot, blocking=False)
            if res.status == "locked":
                with self.mutex:
                    deferred.append((index, run))
                continue
            self.results[index] = res
            self.display.finish(res, index)

    def _pass(self, items: list[tuple[int, Run]], blocking: bool) -> list[tuple[int, Run]]:
        queue = list(items)
        deferred: list[tuple[int, Run]] = []
        if blocking:
            # Held runs: one at a time, in order, blocking on each lock.
            for index, run in queue:
                if self.stop.is_set():
                    break
                res = self.execute(run, index, 0, blocking=True)
                self.results[index] = res
                self.display.finish(res, index)
            return []
        threads = [
            threading.Thread(target=self._worker, args=(s, queue, deferred), daemon=True)
            for s in range(self.jobs)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            self.display.tick(self._max_epochs)
            for t in threads:
                t.join(timeout=self.poll_s / max(len(threads), 1))
        return sorted(deferred, key=lambda x: x[0])

    def run(self) -> SweepReport:
        check_unique(self.runs)
        t0 = time.time()
        self.results: dict[int, RunResult] = {}
        todo = []
        changed = undigested = 0
        for i, run in enumerate(self.runs, 1):
            state, why = record_state(run, self.expected_digest)
            undigested += state == "done" and "no config_digest" in why
            if state == "done" or (state == "changed" and not self.rerun_changed):
                res = RunResult(run, "skipped", message=why)
                if state == "changed":
                    changed += 1
                    res = RunResult(
                        run, "changed", message=why + "; kept (--rerun-changed re-runs it)"
                    )
                self.results[i] = res
                self.display.remaining -= 1
                self.display.finish(res, i, counted=False)
            else:
                todo.append((i, run))
        skipped = len(self.runs) - len(todo)
        self.display.line(
            f"sweep: {len(self.runs)} runs, {skipped} already complete (skipped), "
            f"{len(todo)} to run, {self.jobs} at a time"
        )
        if changed:
            self.display.line(
                f"sweep: WARNING {changed} complete run(s) were recorded with another config "
                "(listed above as CHANGED) and are kept; --rerun-changed moves them aside and "
                "re-runs them"
            )
        if undigested and self.expected_digest is not None:
            self.display.line(
                f"sweep: {undigested} complete run(s) have no config digest (recorded before "
                "records had one): kept, not compared"
            )
        try:
            deferred = self._pass(todo, blocking=False)
            if deferred and self.wait_for_locked:
                self.display.line(
                    f"sweep: {len(deferred)} run(s) are being run by another process; waiting"
                )
                self._pass(deferred, blocking=True)
            elif deferred:
                for index, run in deferred:
                    self.results[index] = RunResult(run, "locked", message="running elsewhere")
        except KeyboardInterrupt:
            self.stop.set()
            with self.mutex:
                procs = list(self.procs.values())
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            self.display.close()
            raise
        finally:
            self.display.close()
        ordered = [
            self.results.get(i, RunResult(run, "interrupted")) for i, run in enumerate(self.runs, 1)
        ]
        return SweepReport(ordered, time.time() - t0)


def run_sweep(
    runs: Iterable[Run],
    *,
    jobs: int = 1,
    slot_env: Sequence[Mapping[str, str]] | None = None,
    out: IO[str] | None = None,
    progress_every_s: float = 60.0,
    poll_s: float = 1.0,
    wait_for_locked: bool = True,
    max_epochs_key: str = "max_epochs",
    expected_digest: DigestFn | None = None,
    rerun_changed: bool = False,
    resume_args: Sequence[str] = (),
) -> SweepReport:
    """Run every run whose record is not complete; see the module docstring for guarantees.

    Args:
        runs: the sweep (ids and work dirs must be unique).
        jobs: runs at a time (threads, each launching one subprocess).
        slot_env: per job slot, extra environment variables (e.g. ``CUDA_VISIBLE_DEVICES``),
            so that ``jobs`` runs share ``jobs`` GPUs one each.
        out: where progress goes (default ``sys.stderr``).
        progress_every_s: on a non-TTY, print progress lines this often.
        poll_s: how often the live display is refreshed.
        wait_for_locked: at the end, wait for runs another process holds, and run them if
            that process left them incomplete (True), or report them as ``locked`` (False).
        max_epochs_key: ``run.meta`` key with the number of epochs, for epoch-based progress.
        expected_digest: the config digest each run would record now (None: unknown), to
            tell complete runs of another config (see the module docstring).
        rerun_changed: move complete runs of another config digest aside and re-run them
            (default: keep them and report them as ``changed``).
        resume_args: appended to the command of a stale run that resumes in place (module
            docstring; ``("--resume",)`` for ``tools/train.py``); empty: every stale run is
            moved aside and starts afresh.

    Returns:
        A :class:`SweepReport` (one :class:`RunResult` per run, in order).
    """
    sweep = _Sweep(
        list(runs),
        jobs=jobs,
        slot_env=slot_env,
        out=out if out is not None else sys.stderr,
        progress_every_s=progress_every_s,
        poll_s=poll_s,
        wait_for_locked=wait_for_locked,
        max_epochs_key=max_epochs_key,
        expected_digest=expected_digest,
        rerun_changed=rerun_changed,
        resume_args=resume_args,
    )
    return sweep.run()


#: Names that lived here before the paper's table catalogue moved to
#: :mod:`lbp_wht.experiments.catalog` and the vocabulary to :mod:`lbp_wht.experiments.vocab`;
#: still importable from here so that code written against the old layout keeps working.
_MOVED = {
    "catalog": (
        "Cell",
        "FIG3_BASELINES",
        "FIG3_RS",
        "FIG5_CELL",
        "TABLE_DATASETS",
        "TABLE_FILES",
        "read_paper_rows",
        "table_cells",
    ),
    "vocab": (
        "CLS_DATASETS",
        "DATASET_ALIASES",
        "METHOD_ORDER",
        "PAPER_TO_CONFIG_DATASET",
        "SEG_DATASETS",
        "SELECT_ORDER",
        "method_key",
        "method_sort_key",
        "method_tag",
        "norm_dataset",
    ),
}


def __getattr__(name: str) -> Any:
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"lbp_wht.experiments.{module}"), name)
    raise AttributeError(f"module 'lbp_wht.sweep' has no attribute {name!r}")
