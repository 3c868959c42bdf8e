"""Distributed training on CPU: ``torchrun --nproc_per_node 2`` (gloo) through tools/train.py.

The mini LBP-WHT config trains for 2 iterations on 2 processes without DDP errors (converted
layers and frozen parameters inside DDP), and both ranks end with identical weights (DDP
averaged the low-rank gradients and every rank applied the same update). A SIGTERM to
``tools/dist_train.sh`` (a scheduler's preemption) reaches every rank and the record says
``interrupted``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MINI_CLS = ROOT / "configs/mini/mini-efficientformer_partial_lp-l1-r4_fashion-mnist.py"

DUMP_HOOK = '''
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpWeightsHook(Hook):
    """Test helper: every rank saves its final weights."""

    priority = "LOWEST"

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, osp.join(runner.work_dir, f"weights_rank{get_rank()}.pt"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_gives_identical_weights(tmp_path):
    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_idx_classification

    data = write_idx_classification(tmp_path / "data", n_train=32, n_test=8)
    (tmp_path / "dump_weights_hook.py").write_text(DUMP_HOOK)
    config = tmp_path / "ddp_config.py"
    config.write_text(
        f"_base_ = ['{MINI_CLS}']\n"
        "custom_imports = dict(imports=['lbp_wht.integrations', 'lbp_wht.integrations.models',\n"
        "    'lbp_wht.integrations.runner', 'dump_weights_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='DumpWeightsHook')]\n"
    )
    wd = tmp_path / "work"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    options = [
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
        "train_dataloader.batch_size=4",
        f"train_dataloader.dataset.dataset.data_root={data}",
        f"val_dataloader.dataset.dataset.data_root={data}",
        f"test_dataloader.dataset.dataset.data_root={data}",
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(ROOT / "tools/train.py"), str(config), "--launcher", "pytorch",
        "--work-dir", str(wd), "--cfg-options", *options,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    w0 = torch.load(wd / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(wd / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    # exact by construction: one machine, one thread, the same initial weights (DDP broadcasts
    # rank 0's), the same all-reduced gradients (gloo sends every rank the same reduced bytes)
    # and the same optimiser arithmetic on them
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"rank weights differ at {k}"
    # rank 0's checkpoint (loaded through the project's weights_only allowlist) holds them too
    import lbp_wht.integrations.runner  # noqa: F401

    saved = torch.load(wd / "iter_2.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    rec = json.loads((wd / "record.json").read_text())
    assert rec["status"] == "complete" and rec["world_size"] == 2


@pytest.mark.slow
def test_sigterm_to_dist_train_sh_records_interrupted(tmp_path):
    import signal
    import time

    import lbp_wht.integrations  # noqa: F401
    from lbp_wht.integrations.datasets import write_idx_classification

    data = write_idx_classification(tmp_path / "data", n_train=32, n_test=8)
    wd, log = tmp_path / "work", tmp_path / "log.txt"
    options = [
        "train_cfg.max_iters=1000",
        "default_hooks.checkpoint.interval=5",
        "default_hooks.logger.interval=1",
        "train_dataloader.batch_size=4",
        f"train_dataloader.dataset.dataset.data_root={data}",
        f"val_dataloader.dataset.dataset.data_root={data}",
        f"test_dataloader.dataset.dataset.data_root={data}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHON=sys.executable,
               PORT=str(_free_port()))  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "tools/dist_train.sh"), str(MINI_CLS), "2", "--work-dir", str(wd),
             "--cfg-options", *options],  # fmt: skip
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 240
        while "Iter(train) [   7/1000]" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the script exec'd torchrun: it gets the signal
        assert proc.wait(timeout=120) != 0
    rec = json.loads((wd / "record.json").read_text())
    assert rec["status"] == "interrupted" and "SIGTERM" in rec["error"], rec
    assert "tools/dist_train.sh" in rec["error"] and "--resume" in rec["error"]
    assert (wd / "iter_5.pth").exists() or (wd / "iter_10.pth").exists()
