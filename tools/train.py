"""Train with an OpenMMLab config that has an ``lbp`` block (the paper's experiments).

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options lbp.r=6 ...] [--seed N]
                          [--launcher {none,pytorch,slurm,mpi}] [--resume [CKPT]] [--amp]

A sweep is ``--cfg-options``: ``lbp.r=6``, ``lbp.select=lp_linf``, ``lbp.method=lora_all``...
Each run writes ``<work_dir>/record.json`` (``lbp_wht.records`` format; status ``running`` ->
``complete``, or ``failed`` with the error). Multi-GPU / multi-node: ``tools/dist_train.sh``.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import traceback

# The repository root on sys.path, so `python tools/train.py` works without installing.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import lbp_wht.integrations  # noqa: E402,F401  (CPU shims before mmpretrain/mmseg/timm load)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument("--work-dir", help="where logs, checkpoints and record.json go")
    p.add_argument("--seed", type=int, default=None, help="random seed (cfg.randomness.seed)")
    p.add_argument(
        "--resume",
        nargs="?",
        type=str,
        const="auto",
        help="resume from CKPT, or from the latest checkpoint in the work dir if no CKPT",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. lbp.r=6 train_dataloader.batch_size=32",
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


def build_cfg(args: argparse.Namespace):
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.seed is not None:
        cfg.randomness = dict(cfg.get("randomness") or {}, seed=args.seed)
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = build_cfg(args)

    from mmengine.registry import RUNNERS
    from mmengine.runner import BaseLoop

    from lbp_wht.integrations.recording import build_record
    from lbp_wht.records import write_record

    if "runner_type" not in cfg:
        cfg.runner_type = "LBPWHTRunner"
    runner = RUNNERS.build(cfg)
    try:
        runner.train()
    except BaseException as err:  # a failed run still leaves a record saying so
        if runner.rank == 0:
            write_record(
                osp.join(runner.work_dir, "record.json"),
                build_record(
                    runner.cfg,
                    kind="train",
                    status="failed",
                    # runner.iter would build the train loop (and its dataset) if not built yet
                    iterations=runner.iter if isinstance(runner._train_loop, BaseLoop) else 0,
                    seed=runner.seed,
                    work_dir=runner.work_dir,
                    error="".join(traceback.format_exception_only(type(err), err)).strip(),
                ),
            )
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
