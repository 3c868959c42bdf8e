"""Resumable, lock-safe sweeps of training runs; the guarantees are in docs/RUNNING.md.

:func:`plan` decides what to do with a :class:`Run` (skip, resume, move aside) for the local
sweep (:func:`run_sweep`) and the SLURM sweep (:mod:`.slurm`). Locally each run is held under its
lock (``.<work dir>.lock``, a sibling), which the launched command inherits, so two sweeps never
run one run and a killed sweep's child keeps it.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from filelock import lock_descriptor, unlock_descriptor

from ..io import atomic_write, move_aside, utc_now
from .records import STALE_MARK, RecordError, load_record, read_record

RECORD_NAME, LOG_NAME = "record.json", "run.log"
#: mmengine's pointer to the newest checkpoint in a work dir.
LAST_CHECKPOINT = "last_checkpoint"
#: Longest run id: a file name (255 bytes) must hold it with ``.stale-<time>`` or ``.lock``.
MAX_ID = 200
#: Environment variable naming the inherited descriptor that holds a run's lock.
LOCK_FD_ENV = "LBP_RUN_LOCK_FD"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def safe_id(text: str) -> str:
    """``text`` with every run of characters unsafe in a file name replaced by ``-``."""
    return _UNSAFE.sub("-", text).strip("-")


@dataclass(frozen=True)
class Run:
    """One run: ``run_id`` (file-name safe), ``command`` (argv), ``work_dir``, ``meta`` (what
    it is: table, model, seed, config, ...), ``cwd`` the command runs in."""

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
        if len(self.run_id.encode()) > MAX_ID:
            raise ValueError(
                f"run id {self.run_id[:40]}... is {len(self.run_id.encode())} characters; at most "
                f"{MAX_ID} fit in a file name (shorten the sweep's --name or its axes)"
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
        return lock_path(self.work_dir)

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_NAME

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (with ``cd`` if it has a cwd)."""
        cmd = shlex.join(self.command)
        return f"cd {shlex.quote(self.cwd)} && {cmd}" if self.cwd else cmd


def lock_path(work_dir: str | os.PathLike, kind: str = "") -> Path:
    """``<parent>/.<name>[.<kind>].lock``: a sibling, so moving the work dir aside keeps it."""
    wd = Path(os.path.abspath(work_dir))
    return wd.parent / f".{wd.name}{'.' + kind if kind else ''}.lock"


class RunLock:
    """An exclusive ``flock`` (filelock's :func:`~filelock.lock_descriptor`) on a lock file.

    The lock belongs to the open file, so a child started with ``pass_fds=(lock.fd,)`` holds it
    as long as it lives, even if this process dies. The file says who took it (pid, time)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.fd = Path(path), None

    def acquire(self, blocking: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not lock_descriptor(fd, blocking=blocking):
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {utc_now()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            unlock_descriptor(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------ decisions
DigestFn = Callable[[Run], "str | None"]


def record_state(run: Run, expected_digest: DigestFn | None = None) -> tuple[str, str]:
    """``(state, why)``: ``done``, ``changed`` (complete, another config digest),
    ``unreadable``, ``incomplete`` or ``missing``."""
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
    want = expected_digest(run) if expected_digest else None
    if want is not None and want != have:
        return (
            "changed",
            f"record complete but made with another config (config_digest {have}, this sweep's {want})",
        )
    return "done", "record complete"


def read_last_checkpoint(work_dir: str | os.PathLike) -> str | None:
    """What ``<work_dir>/last_checkpoint`` names (None if nothing)."""
    try:
        return Path(work_dir, LAST_CHECKPOINT).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def resume_point(work_dir: Path) -> Path | None:
    """The checkpoint a resumed attempt would start from: what ``last_checkpoint`` names if it
    exists, else the newest ``*.pth`` of the work dir, else None (a hint: the training itself
    takes the newest loadable one)."""
    last = read_last_checkpoint(work_dir)
    if last and Path(work_dir, last).is_file():
        return Path(work_dir, last)
    ckpts = [p for p in Path(work_dir).glob("*.pth") if p.is_file()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


@dataclass(frozen=True)
class Plan:
    """What a sweep does with a run: ``skip`` (complete), ``changed`` (complete, other config;
    kept), ``fresh`` (its work dir must be moved aside: unreadable record, another config),
    ``resume`` (continue in place from ``point``), ``stale`` (a work dir without a checkpoint)
    or ``start`` (nothing there yet)."""

    action: str
    why: str = ""
    point: Path | None = None


def plan(run: Run, expected_digest: DigestFn | None = None, rerun_changed: bool = False) -> Plan:
    state, why = record_state(run, expected_digest)
    if state == "done":
        return Plan("skip", why)
    if state == "changed":
        return Plan("fresh" if rerun_changed else "changed", why)
    if state == "unreadable":
        return Plan("fresh", why)
    have = (read_record(run.record_path) or {}).get("config_digest")
    want = expected_digest(run) if expected_digest and have else None
    if want and want != have:
        return Plan("fresh", f"{why}, recorded with another config (digest {have}, now {want})")
    point = resume_point(run.work_dir)
    if point is not None:
        return Plan("resume", why or "no record", point)
    return Plan("stale" if run.work_dir.exists() else "start", why or "no record")


def stale_aside(work_dir: Path) -> Path:
    """Move a work dir aside to ``<work_dir>.stale-<UTC time>`` (records there are ignored)."""
    return move_aside(work_dir, STALE_MARK + re.sub("[-:]", "", utc_now()[:19]) + "Z")


def lock_holder(run: Run) -> str | None:
    """Who holds the run's lock (``pid time``) if a process does, else None."""
    lock = RunLock(run.lock_path)
    if not run.lock_path.exists():
        return None
    if not lock.acquire():
        return lock.holder()
    lock.release()
    return None


def run_state(run: Run, expected_digest: DigestFn | None = None) -> str:
    """``done``, ``changed``, ``running`` (its lock is held), ``stale`` (a work dir without a
    complete record) or ``todo``."""
    state, _ = record_state(run, expected_digest)
    if state in ("done", "changed"):
        return state
    if lock_holder(run) is not None:
        return "running"
    return "stale" if run.work_dir.exists() else "todo"


def check_unique(runs: Sequence[Run]) -> None:
    """Raise ValueError if two runs share an id or a work dir."""
    ids: set[str] = set()
    dirs: dict[Path, str] = {}
    for run in runs:
        if run.run_id in ids:
            raise ValueError(f"duplicate run id {run.run_id!r} in the sweep")
        wd = run.work_dir.resolve()
        if wd in dirs:
            raise ValueError(f"runs {dirs[wd]!r} and {run.run_id!r} share the work dir {wd}")
        ids.add(run.run_id)
        dirs[wd] = run.run_id


def dry_run_listing(
    runs: Sequence[Run], *, show_commands: bool = True, expected_digest: DigestFn | None = None
) -> str:
    """One line per run (state, id; its command) and a count by state."""
    check_unique(runs)
    lines, states = [], []
    for i, run in enumerate(runs, 1):
        states.append(run_state(run, expected_digest))
        lines.append(f"[{i}/{len(runs)}] {states[-1]:7s} {run.run_id}")
        lines += [f"    {run.shell()}"] if show_commands else []
    return "\n".join(lines + [f"{len(runs)} runs ({tally(states) or 'none'})"])


def tally(states: Iterable[str]) -> str:
    """``2 done, 1 todo``: how many of each state, sorted by name."""
    return ", ".join(f"{v} {k}" for k, v in sorted(Counter(states).items()))


# ------------------------------------------------------------------------------- progress
_LINE = re.compile(r"(Iter|Epoch)\((train|val|test)\)\s*(?:\[\s*(\d+)\]\s*)?\[\s*(\d+)/(\d+)\]")
_GENERIC = re.compile(r"PROGRESS\s+(\d+)/(\d+)")
_ETA = re.compile(r"eta:\s*((?:\d+ days?, )?\d+:\d\d:\d\d)")


def parse_progress(text: str, max_epochs: int | None = None) -> tuple[float, str, str] | None:
    """``(fraction, the run's own ETA or "", phase)`` from the last progress line of a log:
    mmengine's ``Iter(train) [50/20000]`` / ``Epoch(train) [3][50/782]`` (the whole run with
    ``max_epochs``), their ``val`` / ``test`` forms, or ``PROGRESS i/n``."""
    found = [(m.start(), m.groups()) for m in _LINE.finditer(text)]
    found += [(m.start(), ("Iter", "train", None, *m.groups())) for m in _GENERIC.finditer(text)]
    if not found:
        return None
    pos, (kind, phase, ep, i, n) = max(found, key=lambda f: f[0])
    frac = int(i) / max(int(n), 1)
    if kind == "Epoch" and phase == "train" and ep is not None and max_epochs:
        frac = (int(ep) - 1 + frac) / max_epochs
    end = text.find("\n", pos)
    eta = _ETA.search(text[pos : end if end >= 0 else len(text)])
    return min(max(frac, 0.0), 1.0), (eta.group(1) if eta else ""), phase


def format_duration(seconds: float | None) -> str:
    """``3h05m``, ``12m03s``, ``42s`` (or ``?``)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def log_tail(path: Path, nbytes: int = 8192) -> str:
    """The last ``nbytes`` of a log file as text ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_excerpt(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log, each on an indented line of its own (for a report)."""
    return "".join(f"\n      {t}" for t in log_tail(path, 1500).strip().splitlines()[-lines:])


def result_line(run: Run, status: str, message: str = "") -> str:
    """``done    acc=85.12`` from the record of a finished run, else ``STATUS  message``."""
    if status != "done":
        return f"{status.upper():7s} {message}"
    rec = read_record(run.record_path) or {}
    value = rec.get("value")
    if not isinstance(value, (int, float)):
        return "done    no value"
    return f"done    {rec.get('metric', 'value')}={value:.2f}"


class _Progress:
    """tqdm bars on a terminal (the sweep, one per running run); lines every ``every_s`` else."""

    def __init__(self, out: IO[str], total: int, every_s: float) -> None:
        from tqdm import tqdm

        self.tqdm, self.out, self.every_s, self.last = tqdm, out, every_s, 0.0
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.bar = tqdm(total=total, desc="sweep", unit="run", file=out, disable=not self.tty)
        self.active: dict[str, tuple[Run, Any, float]] = {}
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.tqdm.write(text, file=self.out)
            self.out.flush()

    def start(self, run: Run, slot: int) -> None:
        bar = self.tqdm(
            total=1000,
            desc=run.run_id,
            position=slot + 1,
            leave=False,
            file=self.out,
            disable=not self.tty,
            bar_format="  {desc} {percentage:3.0f}%|{bar}| {postfix}",
        )
        with self.lock:
            self.active[run.run_id] = (run, bar, time.time())

    def finish(self, run: Run, counted: bool = True) -> None:
        with self.lock:
            _, bar, _ = self.active.pop(run.run_id, (None, None, 0))
            if bar is not None:
                bar.close()
            self.bar.update(counted)

    def tick(self, max_epochs: Callable[[Run], int | None]) -> None:
        rows = []
        with self.lock:
            for run, bar, start in list(self.active.values()):
                prog = parse_progress(log_tail(run.log_path), max_epochs(run))
                frac, eta, phase = prog or (0.0, "", "train")
                info = format_duration(time.time() - start)
                info = info if phase == "train" else f"{phase} {info}"
                info += f", {phase} ETA {eta}" if eta else ""
                bar.n = int(frac * 1000)
                bar.set_postfix_str(info)
                rows.append(f"  {run.run_id}  {100 * frac:5.1f}%  {info}")
        if not self.tty and rows and time.time() - self.last >= self.every_s:
            self.last = time.time()
            self.line("\n".join(rows + [f"  sweep: {self.bar.n}/{self.bar.total} finished"]))

    def close(self) -> None:
        for _, bar, _ in self.active.values():
            bar.close()
        self.bar.close()


# ---------------------------------------------------------------------------- local sweep
@dataclass
class RunResult:
    """What a sweep did with a run; ``message`` says why. ``status`` locally: done, skipped
    (record complete), changed (complete, another config; kept), failed, interrupted or locked
    (another process holds it); on SLURM also submitted, resubmitted, queued, running and
    deferred (``max_jobs``), with ``job_id`` (``done`` there: finished while ``--wait`` followed
    it)."""

    run: Run
    status: str
    wall_s: float = 0.0
    returncode: int | None = None
    message: str = ""
    job_id: str | None = None


@dataclass
class SweepReport:
    """The results in the runs' order; ``ok`` when every status is in ``good``. The summary
    counts the statuses of ``shown``, those of ``always`` even when none has it."""

    results: list[RunResult]
    wall_s: float
    title: str = "sweep"
    good: frozenset[str] = frozenset({"done", "skipped", "changed"})
    shown: tuple[str, ...] = ("done", "skipped", "changed", "failed", "interrupted", "locked")
    always: frozenset[str] = frozenset({"done", "skipped", "failed", "interrupted"})

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return all(r.status in self.good for r in self.results)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in self.shown if s in self.always or self.count(s)]
        n, wall = len(self.results), format_duration(self.wall_s)
        return f"{self.title}: {n} runs, {', '.join(parts)} in {wall}"


class _Sweep:
    def __init__(self, runs: list[Run], out: IO[str], **kw: Any) -> None:
        self.runs, self.out, self.kw = runs, out, kw
        self.jobs = max(1, int(kw["jobs"]))
        self.slot_env = list(kw["slot_env"] or [{}] * self.jobs)
        if len(self.slot_env) < self.jobs:
            raise ValueError(f"jobs={self.jobs} needs {self.jobs} slot environments")
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop, self.mutex = threading.Event(), threading.Lock()
        self.results: dict[int, RunResult] = {}

    @staticmethod
    def _settled(run: Run, p: Plan) -> RunResult:
        if p.action == "changed":
            why = p.why + "; kept (--rerun-changed moves it aside and re-runs it)"
            return RunResult(run, "changed", message=why)
        return RunResult(run, "skipped", message=p.why)

    def _max_epochs(self, run: Run) -> int | None:
        v = run.meta.get(self.kw["max_epochs_key"])
        return int(v) if isinstance(v, (int, float)) and v else None

    def execute(self, run: Run, slot: int, blocking: bool) -> RunResult:
        """Run ``run`` unless its record is complete, decided under its lock."""
        lock = RunLock(run.lock_path)
        if not lock.acquire():
            if not blocking:
                return RunResult(run, "locked", message=f"held by pid {lock.holder()}")
            self.progress.line(
                f"waiting for {run.run_id}: running elsewhere (lock {run.lock_path} held by pid/time {lock.holder()})"
            )
            lock.acquire(blocking=True)
        try:
            p = plan(run, self.kw["expected_digest"], self.kw["rerun_changed"])
            if p.action in ("skip", "changed"):
                return self._settled(run, p)
            if self.stop.is_set():
                return RunResult(run, "interrupted", message="sweep stopped")
            resume = self.kw["resume_args"] if p.action == "resume" else ()
            note = ""
            if resume:
                note = f"resumes in place from {p.point.name} ({p.why})"
            elif run.work_dir.exists():
                note = f"moved the earlier work dir aside to {stale_aside(run.work_dir)} ({p.why})"
            if note:
                self.progress.line(f"{run.run_id}: {note}")
            run.work_dir.mkdir(parents=True, exist_ok=True)
            return self._launch(run, run.command + tuple(resume), slot, lock, note)
        finally:
            lock.release()

    def _launch(self, run: Run, command: tuple, slot: int, lock: RunLock, note: str) -> RunResult:
        extra = self.slot_env[slot]
        env = {**os.environ, **extra, "LBP_SWEEP_RUN_ID": run.run_id, LOCK_FD_ENV: str(lock.fd)}
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
        atomic_write(
            run.work_dir / "command.sh",
            f"#!/bin/sh\n# re-runs this run by hand\n{prefix + ' ' if prefix else ''}{run.shell()}\n",
        )
        self.progress.start(run, slot)
        start = time.time()
        with open(run.log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    cwd=run.cwd,
                    pass_fds=(lock.fd,),
                )
            except OSError as err:  # e.g. the interpreter does not exist
                return RunResult(run, "failed", 0.0, None, f"cannot start {command[0]}: {err}")
            with self.mutex:
                self.procs[run.run_id] = proc
            try:
                rc = proc.wait()
            finally:
                with self.mutex:
                    self.procs.pop(run.run_id, None)
        wall = time.time() - start
        state, why = record_state(run, self.kw["expected_digest"])
        complete = state in ("done", "changed")
        if self.stop.is_set() and not complete:
            return RunResult(run, "interrupted", wall, rc, "sweep stopped")
        if rc == 0 and complete:  # "changed" right after the run: sweep and run disagree
            return RunResult(
                run, "done", wall, rc, note + (f"; WARNING: {why}" if state == "changed" else "")
            )
        rec = read_record(run.record_path)
        status = f" (status={rec.get('status')!r})" if rec else ""
        why = (
            f"exit code {rc}"
            if rc
            else f"exit code 0 but no complete record at {run.record_path}{status}"
        )
        excerpt = log_excerpt(run.log_path, 8)
        return RunResult(run, "failed", wall, rc, f"{why}; log {run.log_path}{excerpt}")

    def _report(self, index: int, res: RunResult, counted: bool = True) -> None:
        self.results[index] = res
        self.progress.finish(res.run, counted)
        if res.status != "skipped":
            width = len(str(len(self.runs)))
            msg = res.message if res.status == "changed" else ""
            tail = "" if res.status == "changed" else f"  wall {format_duration(res.wall_s)}"
            self.progress.line(
                f"[{index:>{width}}/{len(self.runs)}] {res.run.run_id}  "
                + (f"CHANGED {msg}" if msg else result_line(res.run, res.status, res.message))
                + tail
            )

    def _worker(self, slot: int, queue: list, deferred: list) -> None:
        while not self.stop.is_set():
            with self.mutex:
                if not queue:
                    return
                index, run = queue.pop(0)
            res = self.execute(run, slot, blocking=False)
            if res.status == "locked":
                with self.mutex:
                    deferred.append((index, run))
            else:
                self._report(index, res)

    def _pass(self, items: list[tuple[int, Run]]) -> list[tuple[int, Run]]:
        queue, deferred = list(items), []
        threads = [
            threading.Thread(target=self._worker, args=(s, queue, deferred), daemon=True)
            for s in range(self.jobs)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            self.progress.tick(self._max_epochs)
            for t in threads:
                t.join(timeout=self.kw["poll_s"] / len(threads))
        return sorted(deferred, key=lambda x: x[0])

    def run(self) -> SweepReport:
        check_unique(self.runs)
        t0, todo, changed, undigested = time.time(), [], 0, 0
        self.progress = _Progress(self.out, len(self.runs), self.kw["progress_every_s"])
        for i, run in enumerate(self.runs, 1):
            p = plan(run, self.kw["expected_digest"], self.kw["rerun_changed"])
            if p.action in ("skip", "changed"):
                undigested += "no config_digest" in p.why
                changed += p.action == "changed"
                self._report(i, self._settled(run, p))
            else:
                todo.append((i, run))
        self.progress.line(
            f"sweep: {len(self.runs)} runs, {len(self.runs) - len(todo)} already complete (skipped), {len(todo)} to run, {self.jobs} at a time"
        )
        if changed:
            self.progress.line(
                f"sweep: WARNING {changed} complete run(s) were recorded with another config (listed above as CHANGED) and are kept; --rerun-changed moves them aside and re-runs them"
            )
        if undigested and self.kw["expected_digest"] is not None:
            self.progress.line(
                f"sweep: {undigested} complete run(s) have no config digest (recorded before records had one): kept, not compared"
            )
        try:
            deferred = self._pass(todo)
            if deferred and self.kw["wait_for_locked"]:
                self.progress.line(
                    f"sweep: {len(deferred)} run(s) are being run by another process; waiting"
                )
                for index, run in deferred:  # one at a time, blocking on each lock
                    if not self.stop.is_set():
                        self._report(index, self.execute(run, 0, blocking=True))
            else:
                for index, run in deferred:
                    self._report(index, RunResult(run, "locked", message="running elsewhere"))
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
            raise
        finally:
            self.progress.close()
        ordered = [
            self.results.get(i, RunResult(r, "interrupted")) for i, r in enumerate(self.runs, 1)
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
    """Run every run whose record is not complete, ``jobs`` at a time (``slot_env``: extra
    environment per slot, e.g. ``CUDA_VISIBLE_DEVICES``); a stale run of the same config with a
    checkpoint continues with ``resume_args`` appended, other stale work dirs are moved aside.
    ``wait_for_locked``: wait for runs another process holds (else report them ``locked``)."""
    kw = dict(
        jobs=jobs,
        slot_env=slot_env,
        progress_every_s=progress_every_s,
        poll_s=poll_s,
        wait_for_locked=wait_for_locked,
        max_epochs_key=max_epochs_key,
        expected_digest=expected_digest,
        rerun_changed=rerun_changed,
        resume_args=tuple(str(a) for a in resume_args),
    )
    return _Sweep(list(runs), out if out is not None else sys.stderr, **kw).run()
