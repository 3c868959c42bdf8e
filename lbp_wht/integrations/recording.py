"""``RunRecordHook``: one machine-readable record per run (``lbp_wht.records`` format).

A training run writes ``<work_dir>/record.json``: ``status='running'`` when training starts,
``'complete'`` with the final validation metric when it ends (``tools/train.py`` writes
``'failed'`` with the error if it raises). ``tools/test.py`` runs write
``<work_dir>/test_record.json`` (``kind='test'``). Later tools turn the records into the
paper's tables (``lbp_wht.records.read_records``).

Record fields: kind, status, config, work_dir, model, dataset, method, select, r, rank (number of
WHT bases; None for full BP / plain LoRA), lora_rank, scope, seed, iterations, epochs,
max_iters, metric (name), value, metrics (all of the last evaluation), wall_time_s, timestamp
(UTC ISO 8601), git_commit, git_dirty, machine, world_size, torch, lbp (the whole block).
"""

from __future__ import annotations

import datetime as _dt
import os.path as osp
import platform
import subprocess
import time
from typing import Any

import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from lbp_wht.records import write_record

from .build import lbp_rank, uses_lora, validate_lbp_cfg

__all__ = ["RunRecordHook", "build_record", "git_state", "machine_description", "PRIMARY_METRICS"]

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
) -> dict[str, Any]:
    """Assemble one run record from a config (with an ``lbp`` block) and run facts."""
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
            **extra,
        )
        write_record(osp.join(runner.work_dir, filename), rec)

    def before_run(self, runner: Any) -> None:
        self._t0 = time.time()

    def before_train(self, runner: Any) -> None:
        self._kind = "train"
        self._write(runner, "running", self.filename)

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
            self._write(runner, "complete", self.filename)
        elif self._kind == "test":
            self._write(runner, "complete", self.test_filename, checkpoint=runner._load_from)
