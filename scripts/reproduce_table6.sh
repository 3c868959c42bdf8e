#!/usr/bin/env bash
# Reproduce paper Table 6 (appendix B): LBP-WHT combined with LoRA-all, EfficientFormer-L1 partial training on
# CIFAR-100/10 (accuracy); GFLOPs and activation / gradient memory come from results/cost.
# Needs: CIFAR-100/10, the EfficientFormer-L1 checkpoint. Cost: 10 runs per seed.
#
# Usage: scripts/reproduce_table6.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table6.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table6/table6.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 6
