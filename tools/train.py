"""Train with an OpenMMLab config that has an ``lbp`` block (the paper's experiments).

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options lbp.r=6 ...] [--seed N]
                          [--launcher {none,pytorch,slurm,mpi}] [--resume [CKPT]] [--amp]

A sweep is ``--cfg-options``: ``lbp.r=6``, ``lbp.select=lp_linf``, ``lbp.method=lora_all``...
Without ``--work-dir`` each option set gets its own directory (``work_dirs/CONFIG__lbp.r=6``).
Each run writes ``<work_dir>/record.json`` (``lbp_wht.runs.records`` format; status ``running`` ->
``complete``, ``failed`` with the error, or ``interrupted`` on SIGTERM / Ctrl-C).
``--resume`` continues from the newest loadable checkpoint of the work dir (refused if the
checkpoint was trained with another method, model, data or optimiser, or holds no config to
compare unless ``--resume-unchecked``). One run per work dir at a time (a lock); a fresh start
in a dir that holds an earlier run is refused. Exit code: 0 done, 1 failed, 2 refused before it
started (one named error), 128 + signal when interrupted. Multi-GPU / multi-node:
``tools/dist_train.sh``. What survives a kill and what is refused: docs/RUNNING.md.
"""

from __future__ import annotations

import argparse
import sys

import lbp_wht.integrations  # noqa: F401  (CPU shims before mmpretrain/mmseg/timm load)
from lbp_wht.integrations import launch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument(
        "--work-dir",
        help="where logs, checkpoints and record.json go (default: derived from the config "
        "and the options)",
    )
    p.add_argument(
        "--seed",
        type=launch.seed_value,
        default=None,
        help="random seed, 0 ... 2**32 - 1 (cfg.randomness.seed)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        type=str,
        const="auto",
        help="resume from CKPT, or from the newest loadable checkpoint in the work dir if no CKPT",
    )
    p.add_argument(
        "--resume-unchecked",
        action="store_true",
        help="resume a checkpoint that holds no (readable) config without comparing it with "
        "this run's (refused otherwise)",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    return launch.parse_args(p, argv, "lbp.r=6 train_dataloader.batch_size=32")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return launch.main(
        lambda: launch.effective_config(
            args.config,
            args.cfg_options,
            work_dir=args.work_dir,
            seed=args.seed,
            resume=args.resume,
            amp=args.amp,
            launcher=args.launcher,
        ),
        "train",
        resume=args.resume is not None,
        launcher=args.launcher,
        resume_unchecked=args.resume_unchecked,
    )


if __name__ == "__main__":
    sys.exit(main())
