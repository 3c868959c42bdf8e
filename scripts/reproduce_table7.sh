#!/usr/bin/env bash
# Reproduce paper Table 7 (appendix C): Places365, EfficientFormer-L1 partial training, 7 methods.
# Needs: Places365 (1.8M training images) under DATA_ROOT. Cost: 7 runs per seed of 50 epochs.
#
# Usage: scripts/reproduce_table7.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table7.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table7/table7.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 7
