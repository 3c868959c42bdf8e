#!/usr/bin/env bash
# Reproduce paper Table 8 (appendix D): latency of backprop through the last two linear layers of
# EfficientFormer-L1 and L7 ((Cx, Cy, L) = (448,1792,49), (1792,448,49), (768,3072,49),
# (3072,768,49)), Full BP vs LP_L1-2/4/6, on CPU and, where present, on a CUDA GPU.
# Needs: no data; minutes on a CPU. The paper measured a Jetson Nano; ours runs on this machine.
#
# Usage: scripts/reproduce_table8.sh [--dry-run] [--tables-only] [tools/benchmark_latency.py flags]
#        THREADS=1 (CPU threads) DEVICES="cpu cuda" (default: cpu, plus cuda if torch sees one)
# Writes results/latency/table8_<device>.{csv,md} (tools/benchmark_latency.py) and then
# $OUT/table8/table8.{md,csv,tex} in the paper's layout with the paper's values beside ours.
# --tables-only times nothing: it builds $OUT/table8 from the CSVs in results/latency
# (`tools/benchmark_latency.py --tables-only` rebuilds their Markdown and figures).
source "$(dirname "$0")/reproduce_common.sh"
THREADS="${THREADS:-1}"
# Fail now (also for --dry-run) when the interpreter cannot run the benchmark at all.
if ! "$PYTHON" -c "import torch, lbp_wht.benchmark.latency" 2>/dev/null; then
    echo "reproduce_table8.sh: $PYTHON cannot import torch and lbp_wht (run \`make setup\`, or set PYTHON to the project's interpreter)" >&2
    exit 1
fi
if [[ -z "${DEVICES:-}" ]]; then
    DEVICES=cpu
    if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        DEVICES="cpu cuda"
    fi
fi
cmds=()
for dev in $DEVICES; do
    cmds+=("$PYTHON tools/benchmark_latency.py --device $dev --threads $THREADS --batches 1 64 ${SWEEP_ARGS[*]+"${SWEEP_ARGS[*]}"}")
done
if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "${cmds[@]}"
    echo "${#cmds[@]} benchmark command(s): the 16 rows of Table 8 (4 shapes x Full BP, LP_L1-2/4/6) per device, batches 1 and 64"
    exit 0
fi
if [[ $TABLES_ONLY == 0 ]]; then
    for c in "${cmds[@]}"; do
        echo "+ $c"
        $c
    done
fi
"$PYTHON" tools/make_tables.py --latency results/latency --out "$OUT" --tables 8
echo "Table 8: $OUT/table8/table8.{md,csv,tex}"
