"""Evaluate a checkpoint with an OpenMMLab config that has an ``lbp`` block.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...] [--launcher ...]

The model is built exactly as for training (same conversion; converted layers run their plain
forward in eval mode) and the checkpoint is loaded with the same key checks. Writes
``<work_dir>/test_record.json`` (``kind='test'``) with the metrics.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import lbp_wht.integrations  # noqa: E402,F401  (CPU shims before mmpretrain/mmseg/timm load)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--work-dir", help="where logs and test_record.json go")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. test_dataloader.dataset.data_root=PATH",
    )
    p.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = p.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if "runner_type" not in cfg:
        cfg.runner_type = "LBPWHTRunner"
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    print({k: v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
