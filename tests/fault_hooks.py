"""Test helper (imported by the fault-test configs through ``custom_imports``): a hook that
injects one fault into a real ``tools/train.py`` run, chosen by environment variables.

``LBP_TEST_FAULT`` = ``sigterm`` (the process sends itself SIGTERM), ``fsize`` (a 1 MiB
``RLIMIT_FSIZE``: the next checkpoint save fails with EFBIG, as on a full disk),
``kill_mid_save`` (the next checkpoint save is cut to half its size and the process is
SIGKILLed before the rename) or ``nan`` (a trainable weight becomes NaN), after training
iteration ``LBP_TEST_FAULT_ITER`` (1-based).
"""

from __future__ import annotations

import os
import resource
import signal

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _kill_mid_save(tmp: str, final: str) -> None:
    with open(tmp, "r+b") as f:
        f.truncate(os.path.getsize(tmp) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class FaultHook(Hook):
    """Injects the fault named by ``LBP_TEST_FAULT`` (module docstring)."""

    priority = "LOWEST"  # after the checkpoint hook of the same iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        kind = os.environ.get("LBP_TEST_FAULT")
        if not kind or runner.iter + 1 != int(os.environ.get("LBP_TEST_FAULT_ITER", "0")):
            return
        if kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif kind == "fsize":
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        elif kind == "kill_mid_save":
            from lbp_wht import io

            io._publish = _kill_mid_save
        elif kind == "nan":
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            param = next(p for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                param.fill_(float("nan"))
        else:
            raise ValueError(f"LBP_TEST_FAULT={kind!r}")
