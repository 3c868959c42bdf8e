#!/usr/bin/env bash
# Reproduce paper Table 5 (appendix A): full training of all five classification models; Full BP, LoRA(-all),
# LP_L1-4/6/7/8 on the six datasets.
# Needs: as Table 2. Cost: 168 runs per seed of 50 epochs with backprop through the whole
# model (GPU time not measured here).
#
# Usage: scripts/reproduce_table5.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table5.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table5/table5.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 5
