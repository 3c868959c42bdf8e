"""The run record of a training or test run, and the NaN guard (docs/RUNNING.md).

:class:`RunRecordHook` writes ``record.json`` (``running``, then ``complete``; ``tools/train.py``
writes ``failed`` / ``interrupted``) or ``test_record.json``. :class:`NonFiniteGuardHook` stops a
NaN / Inf loss at that iteration on every rank and fails a NaN / Inf metric.
"""

from __future__ import annotations

import math
import numbers
import os.path as osp
import time
from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from lbp_wht.experiments.methods import method_spec
from lbp_wht.io import portable_path
from lbp_wht.runs.records import config_digest, provenance, read_record, write_record

from .build import lbp_rank, uses_lbp, validate_lbp_cfg


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteMetricError(FloatingPointError):
    """An evaluation metric is NaN or infinite."""


#: Metric reported as ``value``: the first of these present in the evaluation results.
PRIMARY_METRICS = ("accuracy/top1", "mIoU", "accuracy")


def _number(v: Any) -> Any:
    """A float for numbers and one-element tensors; anything else as it is (refused later)."""
    if torch.is_tensor(v) and v.numel() == 1:
        v = v.item()
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v


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
    """One run record from a config (with an ``lbp`` block) and the run's facts; ``digest``
    defaults to :func:`~lbp_wht.runs.records.config_digest` of ``cfg``."""
    lbp = validate_lbp_cfg(cfg.get("lbp"))
    metrics = {k: _number(v) for k, v in (metrics or {}).items()}
    name = next((k for k in PRIMARY_METRICS if k in metrics), None)
    name = name or next((k for k, v in metrics.items() if isinstance(v, float)), None)
    lbp_used = uses_lbp(lbp["method"])
    train_cfg = cfg.get("train_cfg") or {}
    rec = dict(
        kind=kind,
        status=status,
        config=cfg.filename,
        work_dir=portable_path(work_dir) if work_dir else work_dir,
        model=lbp["model"],
        dataset=cfg.get("dataset_name"),
        method=lbp["method"],
        select=lbp["select"] if lbp_used else None,
        r=lbp["r"] if lbp_used and lbp["select"] != "lhe" else None,
        rank=lbp_rank(lbp),
        lora_rank=lbp["lora_rank"] if method_spec(lbp["method"]).has_adapters else None,
        # a successor's non-default options (lbp.options); {} for its defaults
        options=dict(lbp["options"]) if method_spec(lbp["method"]).has_options else None,
        scope=lbp["scope"],
        seed=seed,
        iterations=iterations,
        epochs=epochs,
        max_iters=train_cfg.get("max_iters"),
        max_epochs=train_cfg.get("max_epochs"),
        metric=name,
        value=metrics[name] if name else None,
        metrics=metrics,
        wall_time_s=None if wall_time_s is None else round(float(wall_time_s), 3),
        **provenance(osp.dirname(osp.abspath(cfg.filename)) if cfg.filename else None),
        world_size=world_size,
        lbp={k: (list(v) if isinstance(v, tuple) else v) for k, v in lbp.items()},
        config_digest=digest or config_digest(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg),
    )
    rec.update({k: v for k, v in (("checkpoint", checkpoint), ("error", error)) if v is not None})
    return rec


@HOOKS.register_module()
class RunRecordHook(Hook):
    """Writes the run record (module docstring). Added by ``inject_lbp``."""

    priority = "VERY_LOW"  # after the logger and checkpoint hooks have seen the metrics

    def __init__(self, filename: str = "record.json", test_filename: str = "test_record.json"):
        self.filename, self.test_filename = filename, test_filename
        self._t0: float | None = None
        self._kind: str | None = None
        self._metrics: dict[str, Any] = {}
        self._schedule_done = self._keep = False

    def _write(self, runner: Any, status: str, filename: str, **extra: Any) -> None:
        if not is_main_process():
            return
        trained = isinstance(getattr(runner, "_train_loop", None), BaseLoop)  # not in a test run
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
        # Resumed at the end of its schedule: a complete record stays as it is; otherwise
        # after_run evaluates the final weights.
        self._schedule_done = runner.iter >= runner.max_iters
        previous = read_record(osp.join(runner.work_dir, self.filename)) or {}
        self._keep = self._schedule_done and previous.get("status") == "complete"
        if self._keep:
            runner.logger.info(
                f"the run had finished its {runner.max_iters} iterations before this resume; {self.filename} (complete) is left as it was"
            )
        else:
            self._write(runner, "running", self.filename)
        runner.lbp_run_started = True  # from here on a failure is recorded as such

    def before_test(self, runner: Any) -> None:
        runner.lbp_run_started = True

    def after_val_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        self._metrics = dict(metrics) if metrics else self._metrics

    def after_test_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        self._kind = self._kind if self._kind == "train" else "test"
        self._metrics = dict(metrics) if metrics else self._metrics

    def after_run(self, runner: Any) -> None:
        if self._kind == "train" and not self._keep:
            if self._schedule_done and not self._metrics and runner._val_loop is not None:
                runner.val_loop.run()  # the final weights were never evaluated
            self._write(runner, "complete", self.filename)
        elif self._kind == "test":
            self._write(runner, "complete", self.test_filename, checkpoint=runner._load_from)


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Fails a run whose training loss or evaluation metrics are NaN / Inf. Priority ``NORMAL``:
    after the optimiser step, before the checkpoint hook, so a diverged iteration is never
    saved. Added by ``LBPWHTRunner``."""

    priority = "NORMAL"

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        if loss is None:
            return
        value = (
            loss.detach().float().reshape(-1)[:1]
            if torch.is_tensor(loss)
            else torch.tensor([float(loss)])
        )
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
        self._check(metrics, "validation")

    def after_test_epoch(self, runner: Any, metrics: dict[str, Any] | None = None) -> None:
        self._check(metrics, "test")

    @staticmethod
    def _check(metrics: dict[str, Any] | None, what: str) -> None:
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
