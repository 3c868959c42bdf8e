#!/usr/bin/env bash
# Reproduce paper Table 2: image classification, partial training (last stage + head) of EfficientFormer-L1/L7,
# EfficientFormerV2-S0/L, SwinV2-small and full training of EfficientFormerV2-S0; Full BP, LoRA,
# LoRA-all, LP_L1-r on CIFAR-100/10, Cars, Flowers, Food, Pets (50 epochs each).
# Needs: the six datasets under DATA_ROOT, the ImageNet checkpoints under CKPT_DIR (data/README.md,
# tools/fetch_checkpoints.py). Cost: 210 runs per seed of 50 epochs each (GPU time not measured
# here: the sweep prints each run's ETA after its first iterations). The Speedup / MFLOPs
# columns come from results/cost (CPU, tools/make_cost_tables.py).
#
# Usage: scripts/reproduce_table2.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
#        GPUS="0 1 2 3" DATA_ROOT=/data CKPT_DIR=/ckpt SEEDS="0 1 2" scripts/reproduce_table2.sh
# Runs the sweep (resumable: re-running skips finished runs and restarts interrupted ones), then
# writes $OUT/table2/table2.{md,csv,tex} with the paper's values beside ours.
source "$(dirname "$0")/reproduce_common.sh"
reproduce_table 2
