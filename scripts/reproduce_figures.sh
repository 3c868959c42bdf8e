#!/usr/bin/env bash
# Reproduce paper Figures 3, 4 and 5.
#   Figure 3: CIFAR-100 accuracy vs backprop MFLOPs, partial training of the five classification
#             models: Full BP, LoRA, LoRA-all and LBP-WHT LP_L1-2..8 (50 runs per seed, most
#             shared with Table 2); MFLOPs from results/cost.
#   Figure 4: marginal accuracy, the slope of Figure 3's LBP-WHT curve (no extra runs).
#   Figure 5: the 8x8 WHT energy spectrum of g_y in the last attention block of
#             EfficientFormer-L1 (1 run: configs/figure5/, spectrum.json saved by LBPWHTHook).
# Needs: CIFAR-100 under DATA_ROOT, the ImageNet checkpoints under CKPT_DIR; a GPU.
#
# Usage: scripts/reproduce_figures.sh [--dry-run] [--tables-only] [tools/sweep.py flags]
# Writes $OUT/figures/figure{3,4,5}.{png,pdf} and the plotted numbers as CSV.
source "$(dirname "$0")/reproduce_common.sh"
status=0
run_sweep figures || status=$?
if [[ $DRY_RUN == 1 ]]; then exit $status; fi
model_args=()
[[ -n "$MODELS" ]] && model_args=(--models $MODELS)
"$PYTHON" tools/make_figures.py --runs "$WORK_ROOT" --out "$OUT/figures" \
    "${model_args[@]+"${model_args[@]}"}"
exit $status
