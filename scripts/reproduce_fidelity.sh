#!/usr/bin/env bash
# Gradient fidelity of LBP-WHT on the CPU demo's model (results/fidelity/): LBP-WHT's g_w and g_x
# against exact backprop for every converted layer, by base selection and padding, at the start
# of adaptation (the demo's pretrained source checkpoint, fresh head) and at its end (a Full BP
# adaptation run of the demo's config, seed 0, the same run as the demo's, with its final
# checkpoint kept). Reads the numbers against the demo's accuracies (results/mini/), so run
# `make demo` (scripts/reproduce_mini.sh) first: its pretraining is reused from its work dir.
#
#   scripts/reproduce_fidelity.sh [--out DIR] [--work DIR] [--mini DIR] [--batch N]
#
#   --out DIR    where the CSVs, figures and README.md go (default results/fidelity)
#   --work DIR   the demo's work dirs (default work_dirs/mini: pretrain/ is read, fidelity/ written)
#   --mini DIR   the demo's results (default results/mini)
#   --batch N    training images in the analysed batch (default 128)
#
# Environment: PYTHON (default .venv/bin/python), FMNIST_ROOT (default
# /usr/share/datasets/fashion-mnist). About a minute on 2 CPU cores (see results/fidelity/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
FMNIST_ROOT="${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}"
OUT=results/fidelity
WORK=work_dirs/mini
MINI=results/mini
BATCH=128
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --mini) MINI="$2"; shift ;;
        --batch) BATCH="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "reproduce_fidelity.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CKPT="$WORK/pretrain/source_s0/iter_400.pth"
if [ ! -f "$CKPT" ]; then
    echo "reproduce_fidelity.sh: $CKPT is missing: run the CPU demo first (make demo, or" \
        "scripts/reproduce_mini.sh --work $WORK), whose pretraining this analysis starts from" >&2
    exit 1
fi
CFG=configs/mini/demo/target.py
DATA_OPTS=(
    "train_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
    "val_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
    "test_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}"

echo "== [1/2] Full BP adaptation (seed 0, the demo's schedule) keeping its final checkpoint"
"$PY" tools/sweep.py grid "$CFG" --name target --seeds 0 --work-root "$WORK/fidelity" --jobs 1 \
    --set lbp.method=full_bp --cfg-options load_from="$CKPT" "${DATA_OPTS[@]}" \
    default_hooks.checkpoint.interval=200 default_hooks.checkpoint.save_last=True
END="$WORK/fidelity/target_method=full_bp_s0/iter_200.pth"
[ -f "$END" ] || { echo "reproduce_fidelity.sh: $END is missing after the run" >&2; exit 1; }

echo "== [2/2] gradient fidelity at the start and the end of adaptation"
"$PY" tools/analyze_gradients.py "$CFG" --cfg-options load_from="$CKPT" "${DATA_OPTS[@]}" \
    --checkpoint end="$END" --batch "$BATCH" --out "$OUT" --mini "$MINI" \
    --via "scripts/reproduce_fidelity.sh${ARGS_TEXT:+ $ARGS_TEXT}"
