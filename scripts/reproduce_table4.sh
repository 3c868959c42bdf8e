#!/usr/bin/env bash
# Reproduce paper Table 4: base selection (LP_L1-4, LP_Linf-3, LHE rank 10), EfficientFormer-L1 partial
# training on CIFAR-100 and CIFAR-10.
# Needs: CIFAR-100/10 under DATA_ROOT, the EfficientFormer-L1 checkpoint. Cost: 6 runs per seed
# (the LP_L1-4 runs are shared with Table 2).
#
# Usage: scripts/reproduce_table4.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table4.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table4/table4.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 4
