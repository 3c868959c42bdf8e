"""``RunRecordHook``: one machine-readable record per run (``lbp_wht.records`` format).

A training run writes ``<work_dir>/record.json``: ``status='running'`` when training starts,
``'complete'`` with the final validation metric when it ends (``tools/train.py`` writes
``'failed'`` with the error if it raises, ``'interrupted'`` on SIGTERM / SIGINT). A run is never
``'complete'`` with a non-finite result: a NaN / Inf training loss stops it at that iteration
(:class:`NonFiniteLossError`; checked on every rank, so distributed runs stop together) and a
NaN / Inf evaluation metric fails it (:class:`NonFiniteMetricError`). ``tools/test.py`` runs write
``<work_dir>/test_record.json`` (``kind='test'``). Later tools turn the records into the
paper's tables (``lbp_wht.records.read_records``).

Record fields: kind, status, config, work_dir, model, dataset, method, select, r, rank (number of
WHT bases; None for full BP / plain LoRA), lora_rank, scope, seed, iterations, epochs,
max_iters, metric (name), value, metrics (all of the last evaluation), wall_time_s, timestamp
(UTC ISO 8601), git_commit, git_dirty, machine, world_size, torch, lbp (the whole block),
config_digest (:func:`lbp_wht.records.config_digest` of the effective config), and ``error``
when the run failed or was interrupted.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import os.path as osp
import platform
import subprocess
import time
from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from lbp_wht.records import config_digest, read_record, write_record

from .build import lbp_rank, uses_lora, validate_lbp_cfg

__all__ = [
    "NonFiniteLossError",
    "NonFiniteMetricError",
    "PRIMARY_METRICS",
    "NonFiniteGuardHook",
    "RunRecordHook",
    "build_record",
    "git_state",
    "machine_description",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteMetricError(FloatingPointError):
    """An evaluation metric is NaN or infinite."""


#: Metric reported as ``value``: the first of these present in the evaluation results.
PRIMARY_METRICS = ("accuracy/top1", "mIoU", "accuracy")


def git_state(cwd: str | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository at ``cwd`` (None, None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def machine_description() -> str:
    """Host, CPU and accelerator in one line."""
    parts = [platform.node(), platform.machine(), platform.processor() or ""]
    if torch.cuda.is_available():
        parts.append(f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}")
    else:
        parts.append("cpu only")
    return ", ".join(p for p in parts if p)


def _primary(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    for key in PRIMARY_METRICS:
        if key in metrics:
            return key, float(metrics[key])
    for key, val in metrics.items():
        if isinstance(val, (int, float)):
            return key, float(val)
    return None, None


def build_record(
    cfg: Any,
    *,
    kind: str,
    status: str,
    metrics: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
    iterations: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    world_size: int = 1,
    work_dir: str | None = None,
    error: str | None = None,
    checkpoint: str | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    """Assemble one run record from a config (with an ``lbp`` block) and run facts.

    ``digest``: the effective config's digest (default: :func:`~lbp_wht.records.config_digest`
    of ``cfg``; the runner passes the digest of the config before its model injection).
    """
    lbp = validate_lbp_cfg(cfg.get("lbp"))
    metrics = {
        k: (float(v) if isinstance(v, (int, float)) else v) for k, v in (metrics or {}).items()
    }
    name, value = _primary(metrics)
    commit, dirty = git_state(osp.dirname(osp.abspath(cfg.filename)) if cfg.filename else None)
    train_cfg = cfg.get("train_cfg") or {}
    lbp_used = lbp["method"].startswith("lbp_wht")
    rec = dict(
        kind=kind,
        status=status,
        config=cfg.filename,
        work_dir=work_dir,
        model=lbp["model"],
        dataset=cfg.get("dataset_name"),
        method=lbp["method"],
        select=lbp["select"] if lbp_used else None,
        r=lbp["r"] if lbp_used and lbp["select"] != "lhe" else None,
        rank=lbp_rank(lbp),
        lora_rank=lbp["lora_rank"] if uses_lora(lbp["method"]) else None,
        scope=lbp["scope"],
        seed=seed,
        iterations=iterations,
        epochs=epochs,
        max_iters=train_cfg.get("max_iters"),
        max_epochs=train_cfg.get("max_epochs"),
        metric=name,
        value=value,
        metrics=metrics,
        wall_time_s=None if wall_time_s is None else round(float(wall_time_s), 3),
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        git_commit=commit,
        git_dirty=dirty,
        machine=machine_description(),
        world_size=world_size,
        torch=torch.__version__,
        lbp={k: (list(v) if isinstance(v, tuple) else v) for k, v in lbp.items()},
        config_digest=digest or config_digest(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg),
    )
    if checkpoint is not None:
        rec["checkpoint"] = checkpoint
    if error is not None:
        rec["error"] = error
    return rec


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Writes the run record (see module docstring). Added by ``inject_lbp``."""

    priority = "VERY_LOW"  # after the logger and checkpoint hooks have seen the metrics

    def __init__(self, filename: str = "record.json", test_filename: str = "test_record.json"):
        self.filename = filename
        self.test_filename = test_filename
        self._t0: float | None = None
        self._kind: str | None = None
        self._metrics: dict[str, Any] = {}
        self._schedule_done = False
        self._keep = False

    def _write(self, runner: Any, status: str, filename: str, **extra: Any) -> None:
        if not is_main_process():
            return
        # runner.iter / runner.epoch would *build* the train loop (and its dataset) in a test run
        trained = isinstance(getattr(runner, "_train_loop", None), BaseLoop)
        rec = build_record(
            runner.cfg,
            kind=self._kind or "train",
            status=status,
            metrics=self._metrics,
            wall_time_s=None if self._t0 is None else time.time() - self._t0,
            iterations=runner.iter if trained else None,
            epochs=runner.epoch if trained else None,
            seed=runner.seed,
            world_size=get_world_size(),
            work_dir=runner.work_dir,
            digest=getattr(runner, "config_digest", None),
            **extra,
        )
        write_record(osp.join(runner.work_dir, filename), rec)

    def before_run(self, runner: Any) -> None:
        self._t0 = time.time()

    def before_train(self, runner: Any) -> None:
        self._kind = "train"
        # Resumed at the end of its schedule (nothing left to train, so no evaluation either):
        # a complete record stays as it is; otherwise after_run evaluates the final weights.
        self._schedule_done = runner.iter >= runner.max_iters
        previous = read_record(osp.join(runner.work_dir, self.filename))
        self._keep = (
            self._schedule_done
            and isinstance(previous, dict)
            and (previous.get("status") == "complete")
        )
        if self._keep:
            runner.logger.info(
                f"the run had finished its {runner.max_iters} iterations before this resume; "
                f"{self.filename} (complete) is left as it was"
            )
        else:
            self._write(runner, "running", self.filename)
        runner.lbp_run_started = True  # from here on a failure is recorded as such

    def before_test(self, runner: Any) -> None:
        runner.lbp_run_started = True

    def after_val_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        if metrics:
            self._metrics = dict(metrics)

    def after_test_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        if self._kind != "train":
            self._kind = "test"
        if metrics:
            self._metrics = dict(metrics)

    def after_run(self, runner: Any) -> None:
        if self._kind == "train":
            if self._keep:
                return
            if self._schedule_done and not self._metrics and runner._val_loop is not None:
                runner.val_loop.run()  # the final weights were never evaluated
            self._write(runner, "complete", self.filename)
        elif self._kind == "test":
            self._write(runner, "complete", self.test_filename, checkpoint=runner._load_from)


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Fails a run whose training loss or evaluation metrics are NaN / Inf (module docstring).

    Priority ``NORMAL``: it runs after the optimiser step and before the checkpoint hook
    (``VERY_LOW``), so a diverged iteration is never saved over an intact checkpoint nor kept
    as the best one. Added by ``LBPWHTRunner``.
    """

    priority = "NORMAL"

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        if loss is None:
            return
        if torch.is_tensor(loss):
            value = loss.detach().float().reshape(-1)[:1]
        else:
            value = torch.tensor([float(loss)])
        bad = (~torch.isfinite(value)).float()
        world = get_world_size()
        if world > 1:  # every rank stops at the same iteration (none hangs in an all-reduce)
            all_reduce(bad, op="sum")
        if bad.item() > 0:
            ranks = f" on {int(bad.item())} of {world} ranks" if world > 1 else ""
            raise NonFiniteLossError(
                f"training loss is not finite at iteration {runner.iter + 1} of "
                f"{runner.max_iters}{ranks} (loss={value.item()}): the run diverged or started "
                f"from non-finite weights (load_from={runner.cfg.get('load_from')!r}). Check "
                "the checkpoint, lower the learning rate (optim_wrapper.optimizer.lr) or clip "
                "gradients (optim_wrapper.clip_grad)."
            )

    def after_val_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        self._check_metrics(metrics, "validation")

    def after_test_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        self._check_metrics(metrics, "test")

    @staticmethod
    def _check_metrics(metrics: dict[str, Any] | None, what: str) -> None:
        bad = {
            k: v
            for k, v in (metrics or {}).items()
            if isinstance(v, numbers.Real) and not math.isfinite(float(v))
        }
        if bad:
            raise NonFiniteMetricError(
                f"{what} metric(s) {bad} are not finite: the model's outputs are NaN / Inf "
                "(diverged training or a non-finite checkpoint). The run is marked failed."
            )
