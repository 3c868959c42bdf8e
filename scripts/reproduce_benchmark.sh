#!/usr/bin/env bash
# LBP-WHT beside its successors (LoRA-FA, VeLoRA, WTA-CRS, HOT, INSTANT) and the paper's
# baselines on one harness, written to results/benchmark/ (README.md, table.{csv,md}, Pareto
# figures, one CSV per measurement with its .run.json):
#
#   1. accuracy: the mini protocol of `make demo` (scripts/reproduce_mini.sh) with the
#      successors added, 3 seeds, into OUT/mini (records, tables, figures, RESULTS.md);
#   2. transfer: the EfficientNet-Lite0 transfer (scripts/reproduce_transfer.sh's protocol,
#      real ImageNet weights) with the successors added, 3 seeds, into OUT/transfer;
#   3. cost: backprop FLOPs and saved activation bytes, EfficientFormer-L1 partial and full
#      (the presets) and timm ViT-B/16 partial (last 4 blocks);
#   4. fidelity: g_w / g_x cosines against exact backprop at the mini protocol's pretrained
#      checkpoint;
#   5. step: the training step of EfficientFormer-L1 partial (forward + backward + AdamW);
#   6. layers: per-layer forward + backward on Table 8's shapes and ViT-B's (batch 1 and 64);
#   7. the report (analysis/benchmark_results.py), verdicts computed from the files above.
# The timed stages (5, 6) want a quiet machine: nothing else running.
#
#   scripts/reproduce_benchmark.sh [--smoke] [--out DIR] [--work DIR] [--threads N]
#
#   --smoke      a quick check of every stage (about 3 minutes on 2 cores): the mini smoke
#                run, tiny shapes, the 28 px model, 2 rounds; same kinds of files, no verdicts
#                worth reading (default out: results/benchmark-smoke)
#   --out DIR    where everything goes (default results/benchmark)
#   --work DIR   work dirs of the mini runs (default work_dirs/benchmark; reused on a re-run)
#   --threads N  intra-op threads of the timed stages (default 2)
#
# Environment: PYTHON (default .venv/bin/python), FMNIST_ROOT (as scripts/reproduce_mini.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHON="$PY"
FMNIST_ROOT="${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}"

SMOKE=0
OUT=""
WORK=""
THREADS=2
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "reproduce_benchmark.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$THREADS" in ''|*[!0-9]*|0) echo "reproduce_benchmark.sh: --threads must be a positive integer, got '$THREADS'" >&2; exit 2 ;; esac

if [ "$SMOKE" = 1 ]; then
    OUT="${OUT:-results/benchmark-smoke}"
    WORK="${WORK:-$OUT/work}"
    SMOKE_FLAG=(--smoke)
    QUICK=(--quick)
    PRE_ITERS=30
else
    OUT="${OUT:-results/benchmark}"
    WORK="${WORK:-work_dirs/benchmark}"
    SMOKE_FLAG=()
    QUICK=()
    PRE_ITERS=400
fi
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"

T0=$(date +%s)
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null | sed "s/ / \/ /g" || echo n/a)"
stage_times=()
stage() { stage_times+=("$1=$(( $(date +%s) - $2 ))"); }
SUCCESSORS="lora_fa,velora,wta_crs,hot,instant"

t=$(date +%s)
echo "== [1/7] accuracy: the mini protocol with the successors ($OUT/mini)"
FMNIST_ROOT="$FMNIST_ROOT" scripts/reproduce_mini.sh ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"} \
    --out "$OUT/mini" --work "$WORK/mini" \
    --extra-grid "lbp.method=$SUCCESSORS" --extra-cost "lora-fa velora wta-crs hot instant"
stage accuracy "$t"

t=$(date +%s)
echo "== [2/7] accuracy: the EfficientNet-Lite0 transfer with the successors ($OUT/transfer)"
"$PY" tools/transfer.py --successors --out "$OUT/transfer" --work "$WORK/transfer" \
    --fmnist "$FMNIST_ROOT" --jobs 2 ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"}
stage transfer "$t"

t=$(date +%s)
echo "== [3/7] cost"
"$PY" tools/benchmark_methods.py cost --out "$OUT" ${QUICK[@]+"${QUICK[@]}"}
stage cost "$t"

t=$(date +%s)
echo "== [4/7] gradient fidelity at the pretrained checkpoint"
"$PY" tools/benchmark_methods.py fidelity --out "$OUT" --config configs/mini/demo/target.py \
    --threads "$THREADS" ${QUICK[@]+"${QUICK[@]}"} --cfg-options \
    "load_from=$WORK/mini/pretrain/source_s0/iter_$PRE_ITERS.pth" \
    "train_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
stage fidelity "$t"

t=$(date +%s)
echo "== [5/7] training step (timed: keep the machine quiet)"
"$PY" tools/benchmark_methods.py step --out "$OUT" --threads "$THREADS" --batch 16 --rounds 8 \
    ${QUICK[@]+"${QUICK[@]}"}
stage step "$t"

t=$(date +%s)
echo "== [6/7] per-layer latency (timed: keep the machine quiet)"
"$PY" tools/benchmark_methods.py layers --out "$OUT" --threads "$THREADS" --batches 1 64 \
    --rounds 9 ${QUICK[@]+"${QUICK[@]}"}
stage layers "$t"

stage total "$T0"
echo "== [7/7] report"
PYTHONPATH="$ROOT/analysis${PYTHONPATH:+:$PYTHONPATH}" "$PY" analysis/benchmark_results.py \
    --out "$OUT" --command "scripts/reproduce_benchmark.sh $ARGS_TEXT" \
    --load-start "$LOAD_START" --stages "${stage_times[@]}" ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"}
echo "== done in $(( $(date +%s) - T0 )) s: $OUT/README.md"
