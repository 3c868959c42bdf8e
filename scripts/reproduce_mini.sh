#!/usr/bin/env bash
# The CPU mini-reproduction behind `make demo`: pretrain a mini EfficientFormer on
# Fashion-MNIST classes 0-4, adapt it to classes 5-9 with every method (head only, Full BP, LoRA,
# LoRA-all, LoSA, LBP-WHT LP_L1-2/4/6/8, LP_Linf-3, LHE R=10; 3 seeds), measure the backprop MFLOPs of
# each method, and build proxy Tables 2 and 4, Figures 3-5 and RESULTS.md under the output folder.
# Everything goes through the full-scale path: configs/mini/demo/*.py, tools/sweep.py (resumable
# sweeps of tools/train.py runs, one record.json each), the cost record of tools/analyze_cost.py
# (lbp_wht.integrations.cost_record), tools/make_tables.py, tools/make_figures.py and
# scripts/mini_report.py (RESULTS.md: analysis/mini_results.py, whose verdicts follow the rules
# of analysis/verdicts.py).
#
#   scripts/reproduce_mini.sh [--smoke] [--out DIR] [--work DIR] [--jobs N] [--seeds "0 1 2"]
#
#   --smoke      a quick check (about 2 minutes on 2 cores): short pretraining and adaptation,
#                one seed, a subset of methods, a 500-image test subset; same kinds of files.
#   --out DIR    where tables, figures, records and RESULTS.md go
#                (default: results/mini, or results/mini-smoke with --smoke)
#   --work DIR   work dirs of the runs (checkpoints, logs; default: work_dirs/mini, or
#                DIR_OUT/work with --smoke). The pretraining and every finished run there are
#                reused when the script runs again (delete the folder to start over).
#   --jobs N     adaptation runs at a time (default: the number of CPU cores, at most 2 ... 8)
#   --seeds S    seeds of the adaptation runs (default "0 1 2"; smoke "0")
#   --extra-grid "lbp.method=a,b"   one more sweep grid of methods (e.g. the successors that
#                scripts/reproduce_benchmark.sh adds); repeatable
#   --extra-cost "tag tag"   config tags of the extra methods for the cost stage (lora-fa ...)
#
# Environment: PYTHON (default .venv/bin/python), FMNIST_ROOT (default
# /usr/share/datasets/fashion-mnist, the Debian package `dataset-fashion-mnist`; `make data`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
FMNIST_ROOT="${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}"

SMOKE=0
OUT=""
WORK=""
JOBS=""
SEEDS=""
EXTRA_GRIDS=()
EXTRA_COST=()
ARGS_TEXT="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --jobs) JOBS="$2"; shift ;;
        --seeds) SEEDS="$2"; shift ;;
        --extra-grid) EXTRA_GRIDS+=("$2"); shift ;;
        # shellcheck disable=SC2206
        --extra-cost) EXTRA_COST+=($2); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "reproduce_mini.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    OUT="${OUT:-results/mini-smoke}"
    WORK="${WORK:-$OUT/work}"
    SEEDS="${SEEDS:-0}"
else
    OUT="${OUT:-results/mini}"
    WORK="${WORK:-work_dirs/mini}"
    SEEDS="${SEEDS:-0 1 2}"
fi
if [ -z "$JOBS" ]; then
    JOBS="$(nproc 2>/dev/null || echo 2)"
    [ "$JOBS" -gt 8 ] && JOBS=8
    [ "$JOBS" -lt 2 ] && JOBS=2
fi
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"

# ---------------------------------------------------------------------------------- data
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$FMNIST_ROOT/$f.gz" ] && [ ! -f "$FMNIST_ROOT/$f" ]; then
        cat >&2 <<EOF
reproduce_mini.sh: Fashion-MNIST not found: $FMNIST_ROOT/$f(.gz) is missing.
  Install it with \`make data\` (Debian/Ubuntu: apt-get install dataset-fashion-mnist), or put the
  four idx files from https://github.com/zalandoresearch/fashion-mnist in a folder and run
  FMNIST_ROOT=/that/folder scripts/reproduce_mini.sh
EOF
        exit 1
    fi
done

# ------------------------------------------------------------------------------ settings
SOURCE_CFG=configs/mini/demo/source.py
TARGET_CFG=configs/mini/demo/target.py
DATA_OPTS=(
    "train_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
    "val_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
    "test_dataloader.dataset.dataset.data_root=$FMNIST_ROOT"
)
if [ "$SMOKE" = 1 ]; then
    PRE_ITERS=30
    ADAPT_ITERS=20
    # 100 test images per class: enough to exercise evaluation, not to compare methods.
    PRE_OPTS=("train_dataloader.batch_size=64" "val_dataloader.dataset.max_per_class=100")
    ADAPT_OPTS=("val_dataloader.dataset.max_per_class=100" "lbp.lhe_iters=5")
    METHOD_GRIDS=("lbp.method=full_bp,lora_all,losa" "lbp.method=lbp_wht lbp.select=lp_l1 lbp.r=2,8")
    COST_METHODS=(full-bp lora-all losa lp-l1-r2 lp-l1-r8)
else
    PRE_ITERS=400
    ADAPT_ITERS=200
    PRE_OPTS=()
    ADAPT_OPTS=()
    METHOD_GRIDS=(
        "lbp.method=full_bp,lora,lora_all,losa"
        "lbp.method=lbp_wht lbp.select=lp_l1 lbp.r=2,4,6,8"
    )
    # Run in parallel with each other (3 runs each), one at a time within each.
    SIDE_GRIDS=("lbp.method=lbp_wht lbp.select=lp_linf lbp.r=3" "lbp.method=lbp_wht lbp.select=lhe lbp.rank=10")
    COST_METHODS=(full-bp lora lora-all losa lp-l1-r2 lp-l1-r4 lp-l1-r6 lp-l1-r8 lp-linf-r3)
fi
# Head only (linear probe, lbp.method='head_only': only the new head trains), in both modes.
METHOD_GRIDS[0]="${METHOD_GRIDS[0]/lbp.method=/lbp.method=head_only,}"
COST_METHODS=(head-only "${COST_METHODS[@]}" ${EXTRA_COST[@]+"${EXTRA_COST[@]}"})
METHOD_GRIDS+=(${EXTRA_GRIDS[@]+"${EXTRA_GRIDS[@]}"})
SCHED_OPTS() {  # schedule of a run of $1 iterations (warm-up 20 or 10% of it, cosine to the end)
    local it="$1" warm=$(( $1 < 200 ? ($1 / 10 > 1 ? $1 / 10 : 1) : 20 ))
    echo "train_cfg.max_iters=$it train_cfg.val_interval=$it param_scheduler.0.end=$warm param_scheduler.1.end=$it"
}

T0=$(date +%s)
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null | sed "s/ / \/ /g" || echo n/a)"
stage_times=()
stage() {  # stage NAME START: record the wall time of a stage (NAME=seconds)
    stage_times+=("$1=$(( $(date +%s) - $2 ))")
}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "== mini reproduction: out=$OUT work=$WORK seeds='$SEEDS' jobs=$JOBS smoke=$SMOKE"

# --------------------------------------------------------------------------- 1. pretrain
t=$(date +%s)
echo "== [1/5] pretraining on classes 0-4 ($PRE_ITERS iterations; cached in $WORK/pretrain)"
# One run: let it use every core.
OMP_NUM_THREADS="$JOBS" "$PY" tools/sweep.py grid "$SOURCE_CFG" --name source --seeds 0 \
    --work-root "$WORK/pretrain" --jobs 1 \
    --cfg-options $(SCHED_OPTS "$PRE_ITERS") "default_hooks.checkpoint.interval=$PRE_ITERS" \
    "${DATA_OPTS[@]}" ${PRE_OPTS[@]+"${PRE_OPTS[@]}"}
CKPT="$WORK/pretrain/source_s0/iter_$PRE_ITERS.pth"
if [ ! -f "$CKPT" ]; then
    echo "reproduce_mini.sh: the pretraining finished but $CKPT is missing" >&2
    exit 1
fi
stage pretrain "$t"

# ----------------------------------------------------------------------------- 2. adapt
t=$(date +%s)
# shellcheck disable=SC2206
SEED_ARR=($SEEDS)
COMMON=(--seeds "${SEED_ARR[@]}" --work-root "$WORK/adapt" --name target
        --cfg-options $(SCHED_OPTS "$ADAPT_ITERS") "load_from=$CKPT" "${DATA_OPTS[@]}"
        ${ADAPT_OPTS[@]+"${ADAPT_OPTS[@]}"})
echo "== [2/5] adaptation to classes 5-9 ($ADAPT_ITERS iterations per run, seeds: $SEEDS)"
status=0
for grid in "${METHOD_GRIDS[@]}"; do
    # shellcheck disable=SC2086
    "$PY" tools/sweep.py grid "$TARGET_CFG" --set $grid --jobs "$JOBS" "${COMMON[@]}" || status=1
done
pids=()
for grid in ${SIDE_GRIDS[@]+"${SIDE_GRIDS[@]}"}; do
    # shellcheck disable=SC2086
    "$PY" tools/sweep.py grid "$TARGET_CFG" --set $grid --jobs 1 "${COMMON[@]}" &
    pids+=($!)
done
for p in ${pids[@]+"${pids[@]}"}; do wait "$p" || status=1; done
# Figure 5: the g_y spectrum of the attention block's output projection, recorded during exact
# backprop (LP_L1-15 keeps all 64 WHT bases), as configs/figure5 does at full scale. Its own work
# root, so that this run does not join the tables.
"$PY" tools/sweep.py grid "$TARGET_CFG" --name spectrum --seeds 0 --work-root "$WORK/spectrum" \
    --set lbp.method=lbp_wht lbp.select=lp_l1 lbp.r=15 --jobs 1 \
    --cfg-options $(SCHED_OPTS "$ADAPT_ITERS") "load_from=$CKPT" "${DATA_OPTS[@]}" \
    lbp.spectrum_layer=backbone.network.3.2.token_mixer.proj \
    ${ADAPT_OPTS[@]+"${ADAPT_OPTS[@]}"} || status=1
if [ "$status" != 0 ]; then
    echo "reproduce_mini.sh: some runs failed (see the sweep output above); re-run the same command to retry them" >&2
    exit 1
fi
stage adapt "$t"

# ------------------------------------------------------------------------------- 3. cost
t=$(date +%s)
echo "== [3/5] backprop MFLOPs per method (the cost record of tools/analyze_cost.py)"
rm -rf "$OUT/cost"
"$PY" scripts/mini_report.py cost --config "$TARGET_CFG" --out "$OUT/cost" --methods "${COST_METHODS[@]}"
stage cost "$t"

# --------------------------------------------------------------------- 4. tables, figures
t=$(date +%s)
echo "== [4/5] proxy Tables 2 and 4, Figures 3-5"
# The records of the runs, kept with the results (small JSON; the work dirs are not committed).
rm -rf "$OUT/runs"
for d in "$WORK"/adapt/*/ "$WORK"/spectrum/*/ "$WORK"/pretrain/*/; do
    [ -f "$d/record.json" ] || continue
    name="$(basename "$d")"
    group="$(basename "$(dirname "$d")")"
    mkdir -p "$OUT/runs/$group/$name"
    cp "$d/record.json" "$OUT/runs/$group/$name/"
    for extra in lhe_bases.json spectrum.json lbp_conversion.txt; do
        [ -f "$d/$extra" ] && cp "$d/$extra" "$OUT/runs/$group/$name/"
    done
done
"$PY" tools/make_tables.py --runs "$OUT/runs/adapt" --cost "$OUT/cost" --tables 2 4 \
    --models mini-efficientformer --datasets fmnist-5to9 --out "$OUT"
SPECTRUM="$(ls "$OUT"/runs/spectrum/*/spectrum.json | head -1)"
"$PY" tools/make_figures.py --runs "$OUT/runs/adapt" --cost "$OUT/cost" --figures 3 4 5 \
    --models mini-efficientformer --dataset fmnist-5to9 --spectrum "$SPECTRUM" --out "$OUT/figures"
stage tables_figures "$t"

# ------------------------------------------------------------------------------ 5. report
stage total "$T0"
echo "== [5/5] RESULTS.md"
SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(--smoke)
"$PY" scripts/mini_report.py report --out "$OUT" --stages "${stage_times[@]}" \
    --command "scripts/reproduce_mini.sh $ARGS_TEXT" --jobs "$JOBS" --start "$T0" \
    --load-start "$LOAD_START" \
    --pretrain-iters "$PRE_ITERS" --adapt-iters "$ADAPT_ITERS" --seeds "${SEED_ARR[@]}" \
    ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"}
echo "== done in $(( $(date +%s) - T0 )) s: $OUT/RESULTS.md"
