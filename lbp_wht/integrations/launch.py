"""What ``tools/train.py`` and ``tools/test.py`` do around the runner (docs/RUNNING.md).

Before anything is built, each a named error and exit 2: the config is loaded and checked
(:func:`effective_config`), the work dir claimed (:func:`claim_work_dir`) and every missing input
listed (:func:`check_inputs`). Then :func:`run` trains or tests; a run that fails after it started
records ``failed`` (exit 1) or ``interrupted`` (exit 128 + signal).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import inspect
import os
import os.path as osp
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from mmengine.config import Config
from mmengine.runner import Runner

from lbp_wht.io import atomic_write
from lbp_wht.runs.records import RecordError, load_record, write_record
from lbp_wht.runs.sweep import LOCK_FD_ENV, RunLock, lock_path, safe_id

from .build import LBPConfigError, check_lbp_preset, close_matches, did_you_mean, validate_lbp_cfg
from .checkpoint import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    checkpoint_candidates,
    unpickling_error,
)
from .datasets import DATASET_HELP, DatasetFileError, MissingInputsError, dataset_problems
from .runner import (
    NO_WEIGHTS_MESSAGE,
    CheckpointMismatchError,
    ModelMismatchError,
    NonFiniteCheckpointError,
    NoWeightsError,
    ResumeMismatchError,
    resume_target,
)

#: Top-level config keys something reads after the file is parsed: mmengine's Runner (its
#: arguments and the ``cfg.get`` calls of its methods), the config machinery and this project.
RUNNER_KEYS = frozenset(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"} | {
    *("activation_checkpointing", "efficient_conv_bn_eval", "compile", "model_wrapper_cfg"),
    *("sync_bn", "find_unused_parameters", "gpu_ids", "strategy", "runner_type"),
    *("custom_imports", "lbp", "dataset_name"),
}


class ConfigFileError(ValueError):
    """A config file that cannot be loaded (missing, a syntax error, a missing ``_base_``)."""


class ConfigKeyError(ValueError):
    """A config key nothing reads (a typo, a file variable set too late) or a bad value."""


class WorkDirError(RuntimeError):
    """The work dir cannot take this run (not writable, a full disk, a name too long)."""


class WorkDirBusyError(WorkDirError):
    """Another process is training in this work dir."""


class WorkDirHasRunError(WorkDirError):
    """A fresh start would replace the record and checkpoints of an earlier run."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: Refused before anything ran, or failed with a message that says why: no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    *(ConfigFileError, ConfigKeyError, LBPConfigError, WorkDirError, MissingInputsError),
    *(DatasetFileError, CheckpointLoadError, CheckpointNotFoundError, UnsafeCheckpointError),
    *(CheckpointMismatchError, ModelMismatchError, NonFiniteCheckpointError, NoWeightsError),
    *(ResumeMismatchError, CheckpointSaveError, NonFiniteWeightsError, FloatingPointError),
    RecordError,
)


# ---------------------------------------------------------------------------- the config
def load_config(path: str | os.PathLike) -> Config:
    """``Config.fromfile`` with one :class:`ConfigFileError` naming the file for a missing
    file, a syntax error (with its line) or a missing ``_base_`` file."""
    if not osp.isfile(path):
        raise ConfigFileError(f"config file {path} does not exist")
    try:
        return Config.fromfile(str(path))
    except SyntaxError as err:  # mmengine's message names the file (a _base_ one, maybe)
        raise ConfigFileError(f"config file {path}: {err}") from None
    except FileNotFoundError as err:
        raise ConfigFileError(
            f"config file {path}: {err.filename or err} (a _base_ file?) does not exist"
        ) from None
    except (OSError, ValueError, TypeError, KeyError, NameError, ImportError) as err:
        raise ConfigFileError(f"config file {path} cannot be loaded: {err}") from None


def seed_value(text: Any) -> int:
    """A seed numpy and torch accept (0 ... 2**32 - 1); else an ``ArgumentTypeError`` (what
    ``argparse`` reports as it is) naming it."""
    if isinstance(text, bool) or not str(text).lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"seed {text!r}: expected a whole number")
    if not 0 <= int(text) < 2**32:
        raise argparse.ArgumentTypeError(f"seed {text}: must be between 0 and 2**32 - 1")
    return int(text)


def _paths_with_value(obj: Any, value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _paths_with_value(v, value, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _paths_with_value(v, value, f"{prefix}{i}.")
    elif type(obj) is type(value) and obj == value:
        yield prefix[:-1]


def check_override_keys(cfg: Config, options: Mapping[str, Any]) -> None:
    """Refuse ``--cfg-options`` keys whose top-level key nothing reads: a typo (with the close
    match) or a variable of the config file, used only while it was parsed (with the keys that
    use its value)."""
    problems = []
    for key in options:
        top = str(key).split(".", 1)[0]
        if top in RUNNER_KEYS:
            continue
        if top not in cfg:
            near = did_you_mean(top, sorted(RUNNER_KEYS | set(cfg.keys())))
            problems.append(
                f"--cfg-options {key}: unknown top-level key `{top}`{near}; nothing reads it."
            )
            continue
        value, uses = cfg[top], []
        if not isinstance(value, (bool, Mapping)):
            uses = [u for u in _paths_with_value(cfg.to_dict(), value) if u != top][:6]
        where = f" (its value is used at {', '.join(uses)})" if uses else ""
        problems.append(
            f"--cfg-options {key}: `{top}` is a variable of the config file, used only while the "
            f"file is parsed{where}; changing it now changes nothing. Set the keys that use it instead."
        )
    if problems:
        raise ConfigKeyError("\n".join(problems))


def check_config_keys(cfg: Config) -> None:
    """Refuse top-level keys that misspell one the runner reads (``lpb``); other keys are
    variables of the config file."""
    problems = []
    for key in cfg.keys():
        near = (
            []
            if key in RUNNER_KEYS or key.startswith("_")
            else close_matches(key, RUNNER_KEYS, fuzzy=False)
        )
        if near:
            alternatives = " or ".join(map(repr, near[:2]))
            problems.append(
                f"top-level config key `{key}` is read by nothing; did you mean {alternatives}?"
            )
    if problems:
        raise ConfigKeyError("\n".join(problems) + f"\n(config {cfg.filename})")


def check_values(cfg: Config) -> None:
    """Seed and data-loader values that mmengine / PyTorch would reject with a traceback."""
    problems = []
    seed = (cfg.get("randomness") or {}).get("seed")
    if seed is not None:
        try:
            seed_value(seed)
        except argparse.ArgumentTypeError as err:
            problems.append(f"randomness.seed: {err}")
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name) or {}
        for key, low in (("batch_size", 1), ("num_workers", 0)):
            v = loader.get(key) if isinstance(loader, Mapping) else None
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                problems.append(f"{name}.{key}={v!r}: expected a whole number >= {low}")
    if problems:
        raise ConfigKeyError("\n".join(problems) + f"\n(config {cfg.filename})")


def default_work_dir(
    config: str,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    amp: bool = False,
) -> str:
    """``work_dirs/<config stem>[__<key=value,...,seed=N,amp>]``: one dir per option set (a tag
    over 80 characters is shortened and made unique by a hash)."""
    stem = osp.splitext(osp.basename(config))[0]
    parts = [f"{k}={v}" for k, v in sorted((options or {}).items())]
    parts += ([f"seed={seed}"] if seed is not None else []) + (["amp"] if amp else [])
    if not parts:
        return osp.join("work_dirs", stem)
    tag = safe_id(",".join(parts))
    if len(tag) > 80:
        tag = tag[:60] + "-" + hashlib.sha256(",".join(parts).encode()).hexdigest()[:12]
    return osp.join("work_dirs", f"{stem}__{tag}")


def effective_config(
    config: str,
    options: Mapping[str, Any] | None = None,
    *,
    work_dir: str | None = None,
    seed: int | None = None,
    resume: str | None = None,
    amp: bool = False,
    launcher: str = "none",
    load_from: str | None = None,
) -> Config:
    """The config a run uses (file, ``--cfg-options``, command-line settings), checked."""
    cfg = load_config(config)
    if options:
        check_override_keys(cfg, options)
        cfg.merge_from_dict(dict(options))
    check_config_keys(cfg)
    check_lbp_preset(validate_lbp_cfg(cfg.get("lbp")))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = default_work_dir(config, options, seed, amp)
    if seed is not None:
        cfg.randomness = dict(cfg.get("randomness") or {}, seed=seed)
    if resume is not None:
        cfg.resume = resume  # 'auto' or a path; load_from stays (used when nothing to resume)
    if load_from is not None:
        cfg.load_from, cfg.resume = load_from, False
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    cfg.setdefault("runner_type", "LBPWHTRunner")
    check_values(cfg)
    return cfg


# ---------------------------------------------------------------------------- the work dir
def global_rank(launcher: str) -> int:
    var = {"pytorch": "RANK", "slurm": "SLURM_PROCID", "mpi": "OMPI_COMM_WORLD_RANK"}
    return int(os.environ.get(var[launcher], "0")) if launcher in var else 0


def _held_for_us(lock: RunLock) -> bool:
    """The lock is held for this process: a sweep passed its descriptor (``LBP_RUN_LOCK_FD``),
    or an ancestor (a sweep, ``torchrun``) holds it."""
    try:
        fd = os.environ.get(LOCK_FD_ENV)
        if fd and osp.samestat(os.fstat(int(fd)), os.stat(lock.path)):
            return True
        holder = int(lock.holder().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    pid = os.getppid()
    while pid > 1:
        if pid == holder:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def _not_writable(work_dir: str, err: OSError) -> WorkDirError:
    full = " (the disk is full: free some space)" if err.errno == errno.ENOSPC else ""
    return WorkDirError(
        f"work dir {work_dir} cannot be written: {err.strerror}{full}; use another --work-dir"
    )


def _writable(work_dir: str) -> None:
    """The work dir can take files (a probe is written and removed) and its record can be
    replaced; else :class:`WorkDirError` naming it."""
    record = osp.join(work_dir, "record.json")
    if osp.lexists(record) and not osp.isfile(record):
        raise WorkDirError(f"work dir {work_dir}: {record} is not a file; move it away")
    try:
        os.makedirs(work_dir, exist_ok=True)
        atomic_write(osp.join(work_dir, ".write_check"), "lbp_wht\n").unlink()
    except OSError as err:
        raise _not_writable(work_dir, err) from None


def claim_work_dir(work_dir: str, *, resume: bool, launcher: str = "none") -> RunLock | None:
    """Lock ``work_dir`` for this run (None when a sweep holds it for us, or on a rank other
    than 0), refuse a fresh start over an earlier run, and check that it can be written.

    Raises:
        WorkDirBusyError: another process holds the lock (names the dir and its pid).
        WorkDirHasRunError: not resuming, and the dir holds a record or checkpoints.
        WorkDirError: the dir cannot be written (read-only, full disk, name too long).
    """
    if global_rank(launcher) != 0:
        return None
    lock = RunLock(lock_path(work_dir))
    try:
        held = lock.acquire()
    except OSError as err:  # the lock file is the first thing written
        raise _not_writable(work_dir, err) from None
    if not held and not _held_for_us(lock):
        raise WorkDirBusyError(
            f"work dir {work_dir} is in use: another training run holds its lock {lock.path} "
            f"(pid and start: {lock.holder()}). Wait for that run to finish (or stop it), or "
            "train in another directory with --work-dir."
        )
    try:
        if not resume:
            _refuse_fresh_start(work_dir)
        _writable(work_dir)
    except BaseException:
        lock.release()
        raise
    return lock if held else None


def _refuse_fresh_start(work_dir: str) -> None:
    try:
        rec = load_record(osp.join(work_dir, "record.json"))
    except RecordError as err:
        rec = {"status": f"unreadable: {err}"}
    if rec and rec.get("status") == "complete":
        raise WorkDirHasRunError(
            f"work dir {work_dir} holds a complete run (record.json, config {rec.get('config')}, "
            f"{rec.get('metric')}={rec.get('value')}); starting again would overwrite it. Use "
            "another --work-dir, continue it with --resume, or move the directory away."
        )
    ckpts = [osp.basename(p) for p in checkpoint_candidates(work_dir)]
    if rec or ckpts:
        what = [f"record status {rec.get('status')!r}"] if rec else []
        what += [f"checkpoints {', '.join(ckpts[:3])}"] if ckpts else []
        raise WorkDirHasRunError(
            f"work dir {work_dir} holds an earlier run ({'; '.join(what)}); a fresh start would "
            "replace its record and checkpoints. Continue it with --resume, move the directory "
            "away, or train in another --work-dir."
        )


# ---------------------------------------------------------------------------------- inputs
def _checkpoint_problem(what: str, path: Any) -> str | None:
    if not path or "://" in str(path):
        return None
    if not osp.exists(path):
        return (
            f"  {what}: checkpoint {path} does not exist\n    how to get it: pretrained weights "
            "with `python tools/fetch_checkpoints.py --list` (data/README.md), or point to your "
            f"file with --cfg-options {what}=PATH"
        )
    if osp.isfile(path) and osp.getsize(path) == 0:
        return f"  {what}: checkpoint {path} is empty (0 bytes): an interrupted save or copy"
    return None


def check_inputs(cfg: Config, mode: str = "train") -> None:
    """One error listing every missing input: for ``train`` the checkpoint to resume or load
    (None only with ``lbp.allow_random_init``) and the train / val data; for ``test``
    ``load_from`` and the test data. :class:`DatasetNotFoundError` if only data is missing."""
    from .datasets import DatasetNotFoundError

    resume, load_from = cfg.get("resume"), cfg.get("load_from")
    problems: list[str | None] = []
    loaders = ("test_dataloader",)
    if mode == "train":
        loaders = ("train_dataloader", "val_dataloader")
        explicit, auto = resume_target(resume, load_from)
        if explicit:
            problems.append(_checkpoint_problem("resume", explicit))
        elif not (auto and checkpoint_candidates(cfg.work_dir)):
            problems.append(_checkpoint_problem("load_from", load_from))
            if not load_from and not validate_lbp_cfg(cfg.get("lbp"))["allow_random_init"]:
                problems.append(f"  load_from: {NO_WEIGHTS_MESSAGE}")
    else:
        problems.append(_checkpoint_problem("load_from", load_from))
    ckpt = [p for p in problems if p]
    data = dataset_problems({k: cfg.get(k) for k in loaders if cfg.get(k) is not None})
    if ckpt or data:
        text = "missing inputs (all of them; nothing was started):\n" + "\n".join(ckpt + data)
        raise (MissingInputsError if ckpt else DatasetNotFoundError)(
            text + ("\n" + DATASET_HELP if data else "")
        )


# ---------------------------------------------------------------------------------- running
class Interruptible:
    """While active, SIGTERM / SIGINT raise :class:`RunInterrupted` in the main thread, once
    (later signals are ignored so that the record of the interruption gets written)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.fired: list[int] = []
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.fired:
            self.fired.append(signum)
            raise RunInterrupted(signum)

    def __enter__(self) -> Interruptible:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def settle(self, err: BaseException, grace_s: float = 0.0) -> BaseException:
        """What to record for a run that raised ``err``: a :class:`RunInterrupted` if a signal
        came, also during ``grace_s`` seconds of waiting (in a distributed run a peer that
        stopped first breaks this rank's collective before its own SIGTERM arrives)."""
        if isinstance(err, KeyboardInterrupt):
            return err
        try:
            deadline = time.monotonic() + grace_s
            while not self.fired and time.monotonic() < deadline:
                time.sleep(0.05)
        except RunInterrupted as sig:
            return sig
        return RunInterrupted(self.fired[0]) if self.fired else err


class RunFailed(Exception):
    """Wraps the exception of a run that had started (its record says so); ``__cause__``."""


def _failure_record(runner: Any, kind: str, err: BaseException) -> None:
    from mmengine.runner import BaseLoop

    from .recording import build_record

    if isinstance(err, KeyboardInterrupt):
        name = err.args[0] if isinstance(err, RunInterrupted) else "SIGINT"
        cfg = runner.cfg
        tool = f"tools/train.py {cfg.filename}"
        if cfg.get("launcher") == "pytorch":  # torchrun through tools/dist_train.sh
            n = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "N"))
            tool = f"tools/dist_train.sh {cfg.filename} {n}"
        hint = f"{tool} --work-dir {cfg.work_dir} --resume"
        status, text = "interrupted", f"interrupted by {name}; continue with: {hint}"
    else:
        status = "failed"
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
    trained = isinstance(runner._train_loop, BaseLoop)  # runner.iter would build the loop
    name = "record.json" if kind == "train" else "test_record.json"
    rec = build_record(
        runner.cfg,
        kind=kind,
        status=status,
        iterations=runner.iter if trained else 0,
        seed=runner.seed,
        work_dir=runner.work_dir,
        error=text,
        digest=getattr(runner, "config_digest", None),
        checkpoint=runner.cfg.get("load_from") if kind == "test" else None,
    )
    write_record(osp.join(runner.work_dir, name), rec)


def run(cfg: Config, kind: str = "train", *, resume_unchecked: bool = False) -> dict[str, Any]:
    """Build the runner and train or test; the test metrics. An exception once the run started
    leaves its record ``failed`` / ``interrupted`` and comes out as :class:`RunFailed` (or the
    :class:`RunInterrupted`); before that it propagates unchanged."""
    from mmengine.registry import RUNNERS

    runner = None
    with Interruptible() as guard:
        try:
            runner = RUNNERS.build(cfg)
            runner.resume_unchecked = resume_unchecked
            metrics = {} if kind == "train" else dict(runner.test())
            if kind == "train":
                runner.train()
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():  # leave the group together
                dist.barrier()
                dist.destroy_process_group()
            return metrics
        except BaseException as first:
            if runner is None or not getattr(runner, "lbp_run_started", False):
                if isinstance(first, TypeError | ValueError | KeyError) and not isinstance(
                    first, USER_ERRORS
                ):  # mmengine building the runner, loop or optimiser from a config value
                    raise ConfigKeyError(
                        f"the config does not build ({type(first).__name__}: {first}); check "
                        "the keys and values given to the runner, loops, optimiser and "
                        "schedulers (--cfg-options included)"
                    ) from first
                raise
            err = guard.settle(first, grace_s=5.0 if runner.world_size > 1 else 0.0)
            if runner.rank == 0:
                _failure_record(runner, kind, err)
            if isinstance(err, KeyboardInterrupt):
                raise err from (None if err is first else first)
            raise RunFailed(str(err)) from err


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, cfg_example: str
) -> argparse.Namespace:
    """Parse with the options both tools share (``--cfg-options``, ``--launcher``,
    ``--local-rank``); ``LOCAL_RANK`` from ``--local-rank`` unless the launcher set it."""
    from mmengine.config import DictAction

    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help=f"override config entries, e.g. {cfg_example}",
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # as mmengine expects
    return args


def main(
    cfg_factory: Any,
    kind: str,
    *,
    resume: bool = False,
    launcher: str = "none",
    resume_unchecked: bool = False,
) -> int:
    """A tool's whole run: config, work dir, inputs, run. Returns the exit code: 0 done, 1
    failed after it started (the record says why), 2 refused before it started (records
    untouched), 128 + signal number when interrupted."""
    try:
        cfg = cfg_factory()
        check_inputs(cfg, kind)
        lock = None
        if kind == "train":
            lock = claim_work_dir(cfg.work_dir, resume=resume, launcher=launcher)
        elif global_rank(launcher) == 0:
            _writable(cfg.work_dir)
        try:
            metrics = run(cfg, kind, resume_unchecked=resume_unchecked)
        finally:
            if lock is not None:
                lock.release()
    except RunInterrupted as err:
        print(f"interrupted by {err.args[0]} (see the run's record)", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except RunFailed as err:
        cause = err.__cause__
        if not isinstance(cause, USER_ERRORS):
            raise cause from None  # an unexpected error: its traceback helps
        print(f"error: {cause}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as err:  # e.g. a Pretrained init_cfg: never torch's advice
        err = unpickling_error("a checkpoint the config loads (an init_cfg?)", err)
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if metrics:
        print(metrics)
    return 0
