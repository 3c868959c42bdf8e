#!/usr/bin/env bash
# One run on several GPUs or nodes under SLURM, the OpenMMLab way (srun + --launcher slurm).
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]
#   GPUS=16 GPUS_PER_NODE=8 tools/slurm_train.sh gpu l1-r4 CONFIG work_dirs/l1-r4 --resume
# Environment: GPUS (processes, one per GPU; default 8), GPUS_PER_NODE (default GPUS, at most 8),
# CPUS_PER_TASK (default 5), GRES (default gpu:GPUS_PER_NODE; set it empty for CPU processes,
# which use gloo), SRUN_ARGS (more srun options), PYTHON (default python).
# From a login node srun allocates the nodes and runs; inside an allocation (an sbatch job, such
# as the SLURM sweep's jobs of runs with more than one GPU) it runs one step there. An empty
# PARTITION means the cluster's default. On SIGTERM (scancel, preemption) srun passes the signal
# to every process, which record the run as interrupted; `--resume` continues it.
set -euo pipefail
if [[ $# -lt 4 ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:$GPUS_PER_NODE}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# Inside an allocation: a rendezvous port of the job's own, so that two runs sharing a node do not
# collide on mmengine's default 29500 (every process computes the same one).
if [[ -n "${SLURM_JOB_ID:-}" && -z "${MASTER_PORT:-}" ]]; then
    export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
fi
ARGS=(--job-name="$JOB_NAME" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE"
      --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1)
[[ -n "$PARTITION" ]] && ARGS+=(--partition="$PARTITION")
[[ -n "$GRES" ]] && ARGS+=(--gres="$GRES")

# shellcheck disable=SC2086  # SRUN_ARGS: several options, split like a shell
PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
exec srun "${ARGS[@]}" $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"
