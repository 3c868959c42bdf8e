"""What ``tools/train.py`` and ``tools/test.py`` do around the runner (the tools parse arguments).

Before anything is built (fast, so a mistake costs seconds, not a queue slot):

- :func:`effective_config`: the config file, ``--cfg-options`` and the command-line settings
  merged, and checked: an option whose top-level key nothing reads is an error
  (:func:`check_override_keys`: ``lpb.r=6`` -> "did you mean 'lbp'?"; ``data_root=...``, a
  variable of the config file that was already used while the file was parsed, names the keys
  to set instead); a top-level key of the config that is a misspelling of one the runner reads
  is an error (:func:`check_config_keys`); the ``lbp`` block is type-checked
  (:func:`~lbp_wht.integrations.build.validate_lbp_cfg`).
- :func:`default_work_dir`: without ``--work-dir`` (and no ``work_dir`` in the config) each
  effective option set gets its own directory, ``work_dirs/<config>__lbp.r=6`` (+ ``seed=N``,
  ``amp``), so a sweep point never overwrites another run.
- :func:`claim_work_dir`: an exclusive lock on the work dir (the sweep's ``RunLock`` on the same
  lock file, ``<parent>/.<name>.lock``): a second run on the same directory is refused, naming
  the directory and the holder's pid. A run launched by ``lbp_wht.sweep`` finds the lock held
  for it (an inherited lock descriptor or an ancestor process holding it) and proceeds. A fresh
  (non-resume) start in a directory whose record is complete is refused too.
- :func:`check_inputs`: every missing input (checkpoint to load or resume, dataset files) in
  one :class:`~lbp_wht.integrations.datasets.MissingInputsError`.

Then :func:`run`: builds the runner and trains / tests under :class:`Interruptible`
(SIGTERM / SIGINT raise :class:`RunInterrupted`; in a distributed run a rank whose peer
stopped first waits a moment for its own signal); a run that raises leaves a record with status
``failed`` (the error) or ``interrupted`` (the signal and the command that continues it), and
the tool exits non-zero: 2 when the run was refused before it started, 1 when it failed,
128 + signal number when it was interrupted.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import os.path as osp
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmengine.config import Config

from lbp_wht.records import read_record, write_record
from lbp_wht.sweep import RunLock, safe_id

from .build import (
    LBPConfigError,
    check_lbp_preset,
    close_matches,
    did_you_mean,
    validate_lbp_cfg,
)
from .checkpoint import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    checkpoint_candidates,
)
from .datasets import (
    DATASET_HELP,
    DatasetFileError,
    DatasetNotFoundError,
    MissingInputsError,
    dataset_problems,
)
from .runner import (
    NO_WEIGHTS_MESSAGE,
    CheckpointMismatchError,
    NonFiniteCheckpointError,
    NoWeightsError,
    ResumeMismatchError,
)

__all__ = [
    "RUNNER_KEYS",
    "ConfigKeyError",
    "Interruptible",
    "RunInterrupted",
    "WorkDirBusyError",
    "WorkDirHasRunError",
    "add_common_arguments",
    "check_config_keys",
    "check_inputs",
    "check_override_keys",
    "claim_work_dir",
    "default_work_dir",
    "effective_config",
    "run",
    "set_local_rank",
    "work_dir_lock_path",
]

#: Top-level config keys something reads after the file is parsed: mmengine's Runner
#: (``Runner.from_cfg`` and the ``cfg.get`` calls of its methods), the config machinery, and this
#: project (``lbp``; ``dataset_name`` for the run record).
RUNNER_KEYS = frozenset(
    {
        "model",
        "work_dir",
        "train_dataloader",
        "val_dataloader",
        "test_dataloader",
        "train_cfg",
        "val_cfg",
        "test_cfg",
        "auto_scale_lr",
        "optim_wrapper",
        "param_scheduler",
        "val_evaluator",
        "test_evaluator",
        "default_hooks",
        "custom_hooks",
        "data_preprocessor",
        "load_from",
        "resume",
        "launcher",
        "env_cfg",
        "log_processor",
        "log_level",
        "visualizer",
        "default_scope",
        "randomness",
        "experiment_name",
        "activation_checkpointing",
        "efficient_conv_bn_eval",
        "compile",
        "model_wrapper_cfg",
        "sync_bn",
        "find_unused_parameters",
        "gpu_ids",
        "strategy",
        "runner_type",
        "custom_imports",
        "lbp",
        "dataset_name",
    }
)


class ConfigKeyError(ValueError):
    """A config key that nothing reads (a typo, or a file variable set too late)."""


class WorkDirBusyError(RuntimeError):
    """Another process is training in this work dir."""


class WorkDirHasRunError(RuntimeError):
    """A fresh start would overwrite the complete run in this work dir."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: Errors that mean "refused, nothing ran" or "failed, and the message says why": the tools
#: print their message without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigKeyError,
    LBPConfigError,
    WorkDirBusyError,
    WorkDirHasRunError,
    MissingInputsError,
    DatasetFileError,
    CheckpointLoadError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    CheckpointMismatchError,
    NonFiniteCheckpointError,
    NoWeightsError,
    ResumeMismatchError,
    CheckpointSaveError,
    NonFiniteWeightsError,
    FloatingPointError,
)


# ---------------------------------------------------------------------------------------------
# the effective config
# ---------------------------------------------------------------------------------------------
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
    """Refuse ``--cfg-options`` keys that nothing would read (see module docstring).

    Args:
        cfg: the config as loaded from its file (before the options are merged).
        options: dotted key -> value, as ``mmengine.config.DictAction`` parses them.

    Raises:
        ConfigKeyError: naming each offending key, with a close match or the keys to set.
    """
    problems = []
    for key in options:
        top = str(key).split(".", 1)[0]
        if top in RUNNER_KEYS:
            continue
        if top in cfg:
            value = cfg[top]
            plain = cfg.to_dict()
            uses = (
                [] if isinstance(value, (bool, Mapping)) else list(_paths_with_value(plain, value))
            )
            uses = [u for u in uses if u != top][:6]
            where = f" (its value is used at {', '.join(uses)})" if uses else ""
            problems.append(
                f"--cfg-options {key}: `{top}` is a variable of the config file, used only while "
                f"the file is parsed{where}; changing it now changes nothing. Set the keys that "
                "use it instead."
            )
        else:
            problems.append(
                f"--cfg-options {key}: unknown top-level key `{top}`"
                f"{did_you_mean(top, sorted(RUNNER_KEYS | set(cfg.keys())))}; nothing reads it."
            )
    if problems:
        raise ConfigKeyError("\n".join(problems))


def check_config_keys(cfg: Config) -> None:
    """Refuse top-level keys that are a misspelling of a key the runner reads (``lpb``).

    Other top-level keys are variables of the config file (``data_root``, ``num_classes``, ...)
    and are allowed. Misspellings: within 1 edit (keys up to 4 characters) or 2 edits.
    """
    problems = []
    for key in cfg.keys():
        if key in RUNNER_KEYS or key.startswith("_"):
            continue
        near = close_matches(key, RUNNER_KEYS, fuzzy=False)
        if near:
            problems.append(
                f"top-level config key `{key}` is read by nothing; did you mean "
                f"{' or '.join(repr(c) for c in near[:2])}?"
            )
    if problems:
        raise ConfigKeyError("\n".join(problems) + f"\n(config {cfg.filename})")


def default_work_dir(
    config: str,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    amp: bool = False,
) -> str:
    """``work_dirs/<config stem>`` plus ``__<key=value,...>`` of the effective options.

    The options are sorted (their order does not matter), ``seed=N`` and ``amp`` are added when
    given; a tag longer than 80 characters is shortened and made unique by a hash.
    """
    stem = osp.splitext(osp.basename(config))[0]
    parts = [f"{k}={v}" for k, v in sorted((options or {}).items())]
    parts += [f"seed={seed}"] if seed is not None else []
    parts += ["amp"] if amp else []
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
    """The config a run uses, checked (module docstring).

    Args:
        config: config file.
        options: ``--cfg-options`` (dotted key -> value).
        work_dir: ``--work-dir`` (default: the config's, else :func:`default_work_dir`).
        seed: ``--seed`` (``randomness.seed``).
        resume: ``"auto"`` (newest loadable checkpoint of the work dir) or a checkpoint path.
        amp: mixed precision (``AmpOptimWrapper`` with dynamic loss scaling).
        launcher: ``none`` / ``pytorch`` / ``slurm`` / ``mpi``.
        load_from: the checkpoint to evaluate (``tools/test.py``).
    """
    if not osp.isfile(config):
        raise MissingInputsError(f"config file {config} does not exist")
    cfg = Config.fromfile(config)
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
    if "runner_type" not in cfg:
        cfg.runner_type = "LBPWHTRunner"
    return cfg


# ---------------------------------------------------------------------------------------------
# the work dir
# ---------------------------------------------------------------------------------------------
def work_dir_lock_path(work_dir: str | os.PathLike) -> Path:
    """``<parent>/.<name>.lock``: the lock file ``lbp_wht.sweep.Run.lock_path`` uses too."""
    wd = Path(work_dir).resolve()
    return wd.parent / f".{wd.name}.lock"


def global_rank(launcher: str) -> int:
    """This process's rank from the launcher's environment (0 without a launcher)."""
    var = {"pytorch": "RANK", "slurm": "SLURM_PROCID", "mpi": "OMPI_COMM_WORLD_RANK"}
    name = var.get(launcher)
    return int(os.environ.get(name, "0")) if name else 0


def _holds_inherited_lock(path: Path) -> bool:
    """Whether this process inherited a descriptor that holds the lock on ``path``."""
    try:
        target = os.stat(path)
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in fds:
        try:
            fd = int(name)
            st = os.fstat(fd)
        except (OSError, ValueError):
            continue
        if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
            continue
        try:  # succeeds at once if this descriptor's open file already holds the lock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            continue
    return False


def _ancestors() -> set[int]:
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _holder_pid(lock: RunLock) -> int | None:
    try:
        return int(lock.holder().split()[0])
    except (ValueError, IndexError):
        return None


def claim_work_dir(work_dir: str, *, resume: bool, launcher: str = "none") -> RunLock | None:
    """Lock ``work_dir`` for this run (module docstring); None when the lock is held for us
    (by the sweep that launched this process) or on a rank other than 0.

    Raises:
        WorkDirBusyError: another process holds the lock (names the dir and its pid).
        WorkDirHasRunError: not resuming, and the dir holds a complete record.
    """
    if global_rank(launcher) != 0:
        return None
    lock = RunLock(work_dir_lock_path(work_dir))
    held = lock.acquire(blocking=False)
    if not held and not (_holds_inherited_lock(lock.path) or _holder_pid(lock) in _ancestors()):
        raise WorkDirBusyError(
            f"work dir {work_dir} is in use: another training run holds its lock {lock.path} "
            f"(pid and start: {lock.holder()}). Wait for that run to finish (or stop it), or "
            "train in another directory with --work-dir."
        )
    record = read_record(osp.join(work_dir, "record.json"))
    if not resume and isinstance(record, dict) and record.get("status") == "complete":
        if held:
            lock.release()
        raise WorkDirHasRunError(
            f"work dir {work_dir} holds a complete run (record.json, config "
            f"{record.get('config')}, {record.get('metric')}={record.get('value')}); starting "
            "again would overwrite it. Use another --work-dir, continue it with --resume, or "
            "move the directory away."
        )
    return lock if held else None


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
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
    """Raise one error listing every missing input of a ``train`` or ``test`` run.

    Train: the checkpoint to resume (``resume=<path>``), ``load_from`` (unless an automatic
    resume has a checkpoint to take; None is refused unless ``lbp.allow_random_init``), the
    train and val datasets. Test: ``load_from`` and the
    test dataset.

    Raises:
        DatasetNotFoundError: only datasets are missing.
        MissingInputsError: a checkpoint is missing (datasets too, possibly).
    """
    problems: list[str] = []
    resume, load_from = cfg.get("resume"), cfg.get("load_from")
    if mode == "train":
        explicit = resume if isinstance(resume, str) and resume != "auto" else None
        if resume is True and load_from:
            explicit = load_from
        auto = resume == "auto" or (resume is True and not load_from)
        if explicit:
            problems.append(_checkpoint_problem("resume", explicit))
        elif not (auto and checkpoint_candidates(cfg.work_dir)):
            problems.append(_checkpoint_problem("load_from", load_from))
            if not load_from and not validate_lbp_cfg(cfg.get("lbp"))["allow_random_init"]:
                problems.append(f"  load_from: {NO_WEIGHTS_MESSAGE}")
        loaders = {k: cfg.get(k) for k in ("train_dataloader", "val_dataloader")}
    else:
        problems.append(_checkpoint_problem("load_from", load_from))
        loaders = {"test_dataloader": cfg.get("test_dataloader")}
    ckpt = [p for p in problems if p]
    data = dataset_problems({k: v for k, v in loaders.items() if v is not None})
    if not ckpt and not data:
        return
    text = "missing inputs (all of them; nothing was started):\n" + "\n".join(ckpt + data)
    if data:
        text += "\n" + DATASET_HELP
    raise (MissingInputsError if ckpt else DatasetNotFoundError)(text)


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
class Interruptible:
    """While active (``with``), SIGTERM and SIGINT raise :class:`RunInterrupted` in the main
    thread, once: later signals are ignored, so that the record of the interruption gets
    written. Inactive outside the main thread (signals can only be handled there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.fired: list[int] = []
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.fired:
            return
        self.fired.append(signum)
        raise RunInterrupted(signum)

    def __enter__(self) -> Interruptible:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def settle(self, err: BaseException, grace_s: float = 0.0) -> BaseException:
        """The exception to record for a run that raised ``err``: a :class:`RunInterrupted`
        if a signal came (also during ``grace_s`` seconds of waiting for one), else ``err``.

        The wait is for distributed runs: when the scheduler stops all ranks, a peer that
        stopped first breaks this rank's collective before this rank's own SIGTERM arrives.
        """
        if isinstance(err, KeyboardInterrupt):
            return err
        try:
            deadline = time.monotonic() + grace_s
            while not self.fired and time.monotonic() < deadline:
                time.sleep(0.05)
        except RunInterrupted as sig:
            return sig
        return RunInterrupted(self.fired[0]) if self.fired else err


def _command_hint(cfg: Config) -> str:
    if cfg.get("launcher") == "pytorch":  # torchrun through tools/dist_train.sh
        n = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "N"))
        return f"tools/dist_train.sh {cfg.filename} {n} --work-dir {cfg.work_dir} --resume"
    return f"tools/train.py {cfg.filename} --work-dir {cfg.work_dir} --resume"


def _failure_record(runner: Any, kind: str, err: BaseException) -> None:
    from mmengine.runner import BaseLoop

    from .recording import build_record

    if isinstance(err, KeyboardInterrupt):
        name = err.args[0] if isinstance(err, RunInterrupted) else "SIGINT"
        status = "interrupted"
        text = f"interrupted by {name}; continue with: {_command_hint(runner.cfg)}"
    else:
        status = "failed"
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
    trained = isinstance(runner._train_loop, BaseLoop)  # runner.iter would build the loop
    filename = "record.json" if kind == "train" else "test_record.json"
    write_record(
        osp.join(runner.work_dir, filename),
        build_record(
            runner.cfg,
            kind=kind,
            status=status,
            iterations=runner.iter if trained else 0,
            seed=runner.seed,
            work_dir=runner.work_dir,
            error=text,
            digest=getattr(runner, "config_digest", None),
            checkpoint=runner.cfg.get("load_from") if kind == "test" else None,
        ),
    )


def _close_process_group() -> None:
    """Leave the process group together: a rank that exits while another still talks to it can
    abort in gloo's teardown ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class RunFailed(Exception):
    """Wraps the exception of a run that had started (its record says so); ``__cause__``."""


def run(cfg: Config, kind: str = "train") -> dict[str, Any]:
    """Build the runner and train (``kind='train'``) or test; returns the test metrics.

    An exception raised once the run has started (its record says ``running``) leaves the
    record ``failed`` (with the error) or ``interrupted`` (SIGTERM / SIGINT, with the command
    that continues the run) and comes out as :class:`RunFailed` (the original as its cause);
    before that (building, loading or checking the checkpoint) the record is left as it was
    and the exception propagates unchanged.
    """
    from mmengine.registry import RUNNERS

    runner = None
    with Interruptible() as guard:
        try:
            runner = RUNNERS.build(cfg)
            if kind == "train":
                runner.train()
                metrics: dict[str, Any] = {}
            else:
                metrics = dict(runner.test())
            _close_process_group()
            return metrics
        except BaseException as first:
            if runner is None or not getattr(runner, "lbp_run_started", False):
                raise
            err = guard.settle(first, grace_s=5.0 if runner.world_size > 1 else 0.0)
            if runner.rank == 0:
                _failure_record(runner, kind, err)
            if isinstance(err, KeyboardInterrupt):
                raise err from (None if err is first else first)
            raise RunFailed(str(err)) from err


def add_common_arguments(parser: Any, cfg_example: str) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank``: the options both tools share."""
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


def set_local_rank(args: Any) -> None:
    """``LOCAL_RANK`` from ``--local-rank`` unless the launcher set it (as mmengine expects)."""
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)


def main(cfg_factory: Any, kind: str, *, resume: bool = False, launcher: str = "none") -> int:
    """A tool's whole run: config, work dir claim, input check, run; the exit code.

    Args:
        cfg_factory: callable returning the :func:`effective_config` (called inside the error
            handling, so config errors exit 2 with a message).
        kind: ``"train"`` (locks the work dir) or ``"test"``.
        resume: the run resumes (a complete record in the work dir is then expected).
        launcher: for the rank that takes the lock.

    Returns:
        0 done; 1 failed after it started (the record says why); 2 refused before it started
        (the message says why; records untouched); 128 + signal number when interrupted.
    """
    try:
        cfg = cfg_factory()
        claim = kind == "train"
        lock = claim_work_dir(cfg.work_dir, resume=resume, launcher=launcher) if claim else None
        try:
            check_inputs(cfg, kind)
            metrics = run(cfg, kind)
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    if metrics:
        print(metrics)
    return 0
