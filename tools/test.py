"""Evaluate a checkpoint with an OpenMMLab config that has an ``lbp`` block.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...] [--launcher ...]

The model is built exactly as for training (same conversion; converted layers run their plain
forward in eval mode) and the checkpoint is loaded with the same key checks; adapters the
checkpoint holds but the model would drop, or adapters of the model the checkpoint lacks, are
errors. Writes ``<work_dir>/test_record.json`` (``kind='test'``) with the metrics; non-finite
metrics fail the run. Exit code: 0 done, 1 failed, 2 refused before it started (one named
error: missing inputs, a bad config, an unwritable work dir; docs/RUNNING.md).
"""

from __future__ import annotations

import argparse
import sys

import lbp_wht.integrations  # noqa: F401  (CPU shims before mmpretrain/mmseg/timm load)
from lbp_wht.integrations import launch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--work-dir", help="where logs and test_record.json go")
    return launch.parse_args(p, argv, "test_dataloader.dataset.data_root=PATH")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return launch.main(
        lambda: launch.effective_config(
            args.config,
            args.cfg_options,
            work_dir=args.work_dir,
            launcher=args.launcher,
            load_from=args.checkpoint,
        ),
        "test",
        launcher=args.launcher,
    )


if __name__ == "__main__":
    sys.exit(main())
