#!/usr/bin/env bash
# Reproduce paper Table 3: semantic segmentation, Segformer-mit-b0 (ADE20K-pretrained) on Cityscapes and
# VOC12 aug, partial (last stage + decoder) and full training, 20k iterations, batch 8.
# Needs: Cityscapes and VOC2012 + SBD aug under DATA_ROOT, the ADE20K checkpoint under CKPT_DIR.
# Cost: 24 runs per seed of 20k iterations (GPU time not measured here).
#
# Usage: scripts/reproduce_table3.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table3.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table3/table3.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 3
