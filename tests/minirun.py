"""Test helpers: mini (CPU) training runs through the command-line tools, as a user runs them.

The mini LP_L1-4 config on small generated Fashion-MNIST-format data trains a few iterations
in seconds. ``fault_config`` derives a config that also loads :mod:`fault_hooks` (a hook that
injects one fault, chosen by environment variables).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
MINI_CLS = ROOT / "configs/mini/mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"

ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
    PYTHONWARNINGS="ignore",
    PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
)


def write_mini_data(root: Path, n_train: int = 48, n_test: int = 16) -> str:
    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_idx_classification

    return write_idx_classification(root, n_train=n_train, n_test=n_test)


def cls_options(root: str, iters: int = 2, ckpt_every: int | None = None) -> list[str]:
    """``--cfg-options`` of a mini classification run of ``iters`` iterations on ``root``."""
    return [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={ckpt_every or iters}",
        "default_hooks.logger.interval=1",
        "train_dataloader.batch_size=8",
        f"train_dataloader.dataset.dataset.data_root={root}",
        f"val_dataloader.dataset.dataset.data_root={root}",
        f"test_dataloader.dataset.dataset.data_root={root}",
    ]


def fault_config(tmp_path: Path, base: Path = MINI_CLS) -> Path:
    """``base`` plus the fault-injecting hook of :mod:`fault_hooks`."""
    config = tmp_path / "fault_config.py"
    config.write_text(
        f"_base_ = ['{base}']\n"
        "custom_imports = dict(imports=['lbp_wht.integrations', 'lbp_wht.integrations.models',\n"
        "    'lbp_wht.integrations.runner', 'fault_hooks'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='FaultHook')]\n"
    )
    return config


def tool(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``python tools/...`` (``args[0]``) from the repository root; never raises on rc."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_ok(*args: str, **kw) -> subprocess.CompletedProcess:
    """:func:`tool` that must exit 0 (the output tails are shown if not)."""
    proc = tool(*args, **kw)
    if proc.returncode != 0:
        raise AssertionError(
            f"{args[0]} exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def load_cfg(path: Path, options: list[str], work_dir: Path):
    """Config as tools/train.py builds it (cfg-options merged), for in-process runners."""
    from mmengine.config import Config, DictAction

    import lbp_wht.integrations  # noqa: F401

    cfg = Config.fromfile(str(path))
    parsed = {}
    for opt in options:
        key, val = opt.split("=", 1)
        parsed[key] = DictAction._parse_iterable(val)
    cfg.merge_from_dict(parsed)
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    return cfg


def make_runner(cfg):
    import torch
    from mmengine.registry import RUNNERS

    torch.set_num_threads(1)
    return RUNNERS.build(cfg)
