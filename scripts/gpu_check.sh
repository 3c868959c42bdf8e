#!/usr/bin/env bash
# The prepared GPU check: everything this repository claims about its CUDA path, in one run of
# at most 8 minutes on one H200, every stage under its own time limit (one failing stage does
# not lose the others), all output under one folder, a summary of what passed.
#
#   scripts/gpu_check.sh [--out DIR] [--pack] [--wheels DIR] [--budget SECONDS]
#                        [--stages LIST] [--cpu-smoke]
#
#   --out DIR      where everything goes (default: $OUT, the device tool's output folder)
#   --pack         DIR gets four files only: gpu_check.tar.gz (every file below, rewritten
#                  after each stage, checkpoints left out), stages.tsv, summary.md and
#                  summary.json; the rest is written to a scratch folder. The device tool
#                  returns at most 8 files from $OUT, so this is the default when DIR is $OUT.
#   --wheels DIR   OpenMMLab wheels (`make gpu-wheels`), installed with `pip --no-index
#                  --target` into a scratch folder under $TMPDIR when mmpretrain does not
#                  import (default: gpu-wheels if present)
#   --budget S     the whole run's wall-clock limit (default 470; stages get what is left)
#   --stages LIST  run only these stages (comma-separated names below; default all; env and
#                  wheels always run), e.g. a rerun of the ones that failed on a warm machine:
#                  --stages step,train --budget 200
#   --cpu-smoke    the same stages and code paths on the CPU in about a minute: tiny shapes,
#                  few rounds, the 28 px mini model, 2 training iterations (CI runs this)
#
# Stages (DIR/summary.{md,json}; each stage's log in DIR/logs/<stage>.log):
#   env         GPU, driver, torch, CUDA (nvidia-smi, torch.cuda)
#   wheels      the OpenMMLab stack from --wheels, if it is not installed
#   cuda_tests  pytest -m cuda tests/test_cuda.py (smoke: the cpu cases)
#   table8      Table 8 + ViT-B (L=197, class token) shapes, batch 1 and 64, CUDA events,
#               eager and CUDA-graph replay, FLOP bound and memory roofline (latency/table8_*)
#   step        EfficientFormer-L1 partial training step at batch 64, 224 px, bf16 autocast:
#               Full BP, LoRA-all, LP_L1-2/4/6; step, backward, peak memory (latency/step_*)
#   methods     LBP-WHT, the baselines and the successors (LoRA-FA, VeLoRA, WTA-CRS, HOT,
#               INSTANT): per-layer forward + backward on Table 8's and ViT-B's shapes, batch 1
#               and 64, and the EfficientFormer-L1 partial step at batch 64
#               (benchmark/layers_cuda.csv, benchmark/step_cuda.csv)
#   train       tools/train.py on the Table 2 config EfficientFormer-L1 LP_L1-4 CIFAR-100
#               (random init, generated CIFAR-100 files, 100 iterations, --amp); the record
#               must say complete (train/record.json)
#   cost        tools/analyze_cost.py on the device with the allocator peak (cost/record.json)
#   fusion      the backward's memory passes compiled (Triton) vs eager, batch 64 (last: it
#               compiles one kernel pair per shape)
#
# How a session with a GPU runs it (the `run` tool; carry the wheel folder):
#   make gpu-wheels        # here, before: 6.5 MB into gpu-wheels/ (ignored by git)
#   run(command="bash scripts/gpu_check.sh --out $OUT --pack", carry=["gpu-wheels"],
#       timeout_s=540)
# then unpack gpu_check.tar.gz; latency/table8_cuda.* go to results/latency/, the rest to
# results/gpu/ (results/gpu/README.md says which).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT_DIR="${OUT:-}"
PACK=""
WHEELS=""
BUDGET=470
SMOKE=0
ONLY=""
ALL_STAGES="env wheels cuda_tests table8 step methods train cost fusion"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; PACK="${PACK:-0}"; shift 2 ;;
        --pack) PACK=1; shift ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --stages) ONLY="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT_DIR" ]; then
    echo "gpu_check.sh: no output folder: pass --out DIR (or set OUT)" >&2
    exit 2
fi
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]] || [ "$BUDGET" -lt 30 ]; then
    echo "gpu_check.sh: --budget must be a whole number of seconds >= 30, got $BUDGET" >&2
    exit 2
fi
for name in ${ONLY//,/ }; do
    if ! [[ " $ALL_STAGES " == *" $name "* ]]; then
        echo "gpu_check.sh: unknown stage $name in --stages (choose from: $ALL_STAGES)" >&2
        exit 2
    fi
done
[ -n "$ONLY" ] && ONLY="env,wheels,$ONLY"
PACK="${PACK:-1}"  # the folder came from $OUT: the device tool returns at most 8 files
[ -z "$WHEELS" ] && [ -d gpu-wheels ] && WHEELS=gpu-wheels
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a stage stopped at its limit still leaves its progress in its log
SCRATCH="${TMPDIR:-/tmp}/gpu-check-$$"  # installs and data: not sent back with OUT
mkdir -p "$SCRATCH" || exit 2
FINAL="$OUT_DIR"
if [ "$PACK" = 1 ]; then OUT_DIR="$SCRATCH/out"; fi  # packed into FINAL after every stage
mkdir -p "$OUT_DIR/logs" || exit 2
START=$(date +%s)
STAGES="$OUT_DIR/stages.tsv"
printf "stage\tstatus\trc\tseconds\tlimit\n" > "$STAGES"

# pack: with --pack, FINAL gets OUT_DIR as one archive (written aside, then renamed, so a run
# stopped mid-way still leaves the last complete one) beside the stage table and the summary.
pack() {
    [ "$PACK" = 1 ] || return 0
    tar -czf "$FINAL/gpu_check.tar.gz.part" --exclude='*.pth' -C "$OUT_DIR" . \
        && mv -f "$FINAL/gpu_check.tar.gz.part" "$FINAL/gpu_check.tar.gz"
    cp -f "$STAGES" "$FINAL/stages.tsv"
    for f in summary.md summary.json; do [ -f "$OUT_DIR/$f" ] && cp -f "$OUT_DIR/$f" "$FINAL/"; done
    return 0
}

# stage NAME LIMIT CMD...: run CMD with min(LIMIT, what is left of the budget) seconds.
stage() {
    local name=$1 limit=$2; shift 2
    if [ -n "$ONLY" ] && ! [[ ",$ONLY," == *",$name,"* ]]; then return; fi
    local left=$(( BUDGET - ($(date +%s) - START) ))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        printf "%s\tskipped\t-\t0\t%s\n" "$name" "$limit" >> "$STAGES"
        echo "== $name: skipped (budget spent)"
        return
    fi
    echo "== $name (limit ${limit}s)"
    local t0 rc status
    t0=$(date +%s)
    if [ "$(type -t "$1")" = function ]; then  # a shell function: run it in a child bash
        timeout --kill-after=10 "$limit" bash -c "$*" > "$OUT_DIR/logs/$name.log" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/logs/$name.log" 2>&1
    fi
    rc=$?
    case $rc in 0) status=passed ;; 124|137) status=timeout ;; *) status=failed ;; esac
    printf "%s\t%s\t%s\t%s\t%s\n" "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$STAGES"
    echo "   $status (rc $rc, $(( $(date +%s) - t0 ))s); log: $OUT_DIR/logs/$name.log"
    tail -n 3 "$OUT_DIR/logs/$name.log" | sed 's/^/   | /'
    pack
}

if [ $SMOKE = 1 ]; then DEV=cpu; else DEV=cuda; fi

# ---- env ------------------------------------------------------------------------------------
env_info() {
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "host: $(hostname)"; echo "python: $($PY --version 2>&1)"
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" - <<'EOF'
import json, os, platform
import torch
info = dict(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            cpu=platform.processor() or platform.machine(), logical_cpus=os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version())
for mod in ("triton", "timm", "mmengine", "mmpretrain", "mmcv", "cv2", "pandas", "matplotlib"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:  # absent or broken: say which
        info[mod] = f"unavailable ({type(e).__name__})"
print(json.dumps(info, indent=2))
EOF
}
export -f env_info
export PY OUT_DIR WHEELS SMOKE ROOT SCRATCH
stage env 30 env_info
[ $SMOKE = 0 ] && ! grep -q '"cuda_available": true' "$OUT_DIR/logs/env.log" \
    && echo "   warning: torch sees no CUDA device; the CUDA stages will fail"

# ---- wheels ---------------------------------------------------------------------------------
install_wheels() {
    if "$PY" -c "import lbp_wht.integrations, mmpretrain, mmengine, mmcv, cv2" 2>/dev/null; then
        echo "OpenMMLab stack already importable; nothing installed"; return 0
    fi
    if [ -z "$WHEELS" ] || ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "mmpretrain does not import and no wheel folder (--wheels, make gpu-wheels)" >&2
        return 1
    fi
    local site="$SCRATCH/site"
    "$PY" -m pip install -q --no-index --no-deps --target "$site" "$WHEELS"/*.whl || return 1
    echo "installed into $site: $(ls "$WHEELS" | tr '\n' ' ')"
    PYTHONPATH="$site:$PYTHONPATH" "$PY" -c "import lbp_wht.integrations, mmpretrain, mmcv, cv2; print('mmpretrain', mmpretrain.__version__, 'cv2', cv2.__version__)"
}
export -f install_wheels
stage wheels 60 install_wheels
[ -d "$SCRATCH/site" ] && export PYTHONPATH="$SCRATCH/site:$PYTHONPATH"

# ---- CUDA tests -----------------------------------------------------------------------------
if [ $SMOKE = 1 ]; then
    stage cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        -k "cpu and not compile" --junitxml "$OUT_DIR/cuda_tests.xml"
else
    stage cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
        tests/test_fusion.py -rs --junitxml "$OUT_DIR/cuda_tests.xml"
fi

# ---- Table 8 on the device ------------------------------------------------------------------
LAT="$OUT_DIR/latency"
if [ $SMOKE = 1 ]; then
    stage table8 60 "$PY" tools/benchmark_latency.py --device cpu --quick --batches 2 --r 2 \
        --shapes tiny --variants eager --out "$LAT"
else
    stage table8 100 "$PY" tools/benchmark_latency.py --device cuda --batches 1 64 \
        --variants eager graph --shapes table8 vit-b --out "$LAT"
fi

# ---- training step --------------------------------------------------------------------------
if [ $SMOKE = 1 ]; then
    stage step 90 "$PY" tools/benchmark_step.py --device cpu --quick --scopes partial \
        --amp bf16 --out "$LAT"
else
    stage step 110 "$PY" tools/benchmark_step.py --device cuda --batch 64 --size 224 \
        --amp bf16 --scopes partial --rounds 10 --warmup 3 --out "$LAT"
fi

# ---- LBP-WHT beside its successors: per-layer and training step (results/benchmark) ---------
export BENCH="$OUT_DIR/benchmark"
methods_run() {
    if [ $SMOKE = 1 ]; then  # the step of every method is the benchmark smoke's (CI runs it)
        "$PY" tools/benchmark_methods.py layers --quick --out "$BENCH"
    else
        "$PY" tools/benchmark_methods.py layers --device cuda --batches 1 64 --rounds 10 \
            --out "$BENCH" \
            && "$PY" tools/benchmark_methods.py step --device cuda --batch 64 --rounds 5 \
                --out "$BENCH"
    fi
}
export -f methods_run
stage methods 120 methods_run

# ---- tools/train.py on a paper config -------------------------------------------------------
TRAIN="$OUT_DIR/train"
train_run() {
    local n_train=6400 n_test=640 batch=64 workers=8 amp=--amp shm
    if [ $SMOKE = 1 ]; then n_train=4; n_test=2; batch=2; workers=0; amp=""; fi
    # Loader workers hand batches over in /dev/shm (9.6 MB each at 64 x 3 x 224 x 224 uint8, a
    # few prefetched per worker); where it is small they would die of SIGBUS.
    shm=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
    if [ "$workers" -gt 0 ] && [ "${shm:-0}" -lt 1048576 ]; then
        echo "/dev/shm has ${shm:-no} kB free: data loading in the main process (0 workers)"
        workers=0
    fi
    mkdir -p "$TRAIN"
    local data="$SCRATCH/cifar100"
    "$PY" -c "from lbp_wht.benchmark.generated_data import write_cifar100 as w; print(w('$data', $n_train, $n_test))" || return 1
    # The paper config, unchanged but for: generated data (the MD5-relaxed loader), random
    # init, one epoch of n_train / batch iterations (100 on the GPU), no checkpoint interval.
    cat > "$TRAIN/check_config.py" <<EOF
_base_ = ["$ROOT/configs/table2/efficientformer-l1/efficientformer-l1_partial_lp-l1-r4_cifar100.py"]
custom_imports = dict(
    imports=["lbp_wht.integrations", "lbp_wht.integrations.models", "lbp_wht.integrations.runner",
             "lbp_wht.benchmark.generated_data"],
    allow_failed_imports=False,
)
load_from = None
lbp = dict(allow_random_init=True)
_data = dict(type="GeneratedCIFAR100", data_root="$data")
train_dataloader = dict(batch_size=$batch, num_workers=$workers, persistent_workers=False, dataset=_data)
val_dataloader = dict(batch_size=$batch, num_workers=$workers, persistent_workers=False, dataset=_data)
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=10))
EOF
    "$PY" tools/train.py "$TRAIN/check_config.py" --work-dir "$TRAIN/work" $amp
    local rc=$?
    find "$TRAIN/work" -name "*.pth" -delete  # checkpoints stay out of what comes back
    [ $rc = 0 ] || return $rc
    "$PY" - "$TRAIN/work/record.json" <<'EOF'
import json, sys
rec = json.load(open(sys.argv[1]))
print({k: rec.get(k) for k in ("status", "iterations", "metric", "method", "dataset", "seconds")})
sys.exit(0 if rec.get("status") == "complete" else f"record status is {rec.get('status')!r}")
EOF
}
export -f train_run
export TRAIN
stage train 150 train_run

# ---- cost on the device ---------------------------------------------------------------------
if [ $SMOKE = 1 ]; then
    stage cost 60 "$PY" tools/analyze_cost.py --model mini-efficientformer --method lbp_wht \
        --scope partial --r 4 --device cpu --batch 2 --no-elementwise --out "$OUT_DIR/cost/record.json"
else
    stage cost 60 "$PY" tools/analyze_cost.py --model efficientformer-l1 --method lbp_wht \
        --scope partial --r 4 --device cuda --batch 64 --out "$OUT_DIR/cost/record.json"
fi

# ---- compiled memory passes (last: compiles per shape) ---------------------------------------
if [ $SMOKE = 1 ]; then
    stage fusion 90 "$PY" tools/benchmark_latency.py --device cpu --quick --batches 2 --r 2 \
        --shapes tiny --variants eager compiled compiled_bwd --name fusion --out "$LAT"
else
    stage fusion 200 "$PY" tools/benchmark_latency.py --device cuda --batches 64 --r 2 4 6 \
        --variants eager compiled compiled_bwd --shapes table8 --name fusion --out "$LAT"
fi

# ---- summary --------------------------------------------------------------------------------
"$PY" - "$OUT_DIR" "$SMOKE" "$(( $(date +%s) - START ))" <<'EOF'
import csv, json, sys
from pathlib import Path
out, smoke, seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
stages = list(csv.DictReader(open(out / "stages.tsv"), delimiter="\t"))
files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "logs" not in p.parts
               and "work" not in p.parts)
ok = all(s["status"] == "passed" for s in stages)
json.dump(dict(mode="cpu-smoke" if smoke else "gpu", passed=ok, seconds=seconds, stages=stages,
               files=files), open(out / "summary.json", "w"), indent=2)
lines = [f"# GPU check summary ({'cpu-smoke' if smoke else 'gpu'}): "
         f"{'all stages passed' if ok else 'NOT all stages passed'}, {seconds} s", "",
         "| stage | status | rc | seconds | limit |", "| --- | --- | ---: | ---: | ---: |"]
lines += [f"| {s['stage']} | {s['status']} | {s['rc']} | {s['seconds']} | {s['limit']} |" for s in stages]
lines += ["", "Files: " + ", ".join(f"`{f}`" for f in files)]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:len(stages) + 4]))
EOF
pack
[ "$PACK" = 1 ] && echo "packed: $FINAL/gpu_check.tar.gz (tar -xzf it to read the files)"
rc=0
grep -q -v -P "\tpassed\t|^stage\t" "$STAGES" && rc=1
rm -rf "$SCRATCH"
exit $rc
