# Shared by scripts/reproduce_table*.sh and reproduce_figures.sh (sourced, not run).
#
# Settings (environment variables; defaults in brackets):
#   GPUS       GPU ids, one run per GPU at a time, e.g. "0 1 2 3"     [none: JOBS runs at a time]
#   JOBS       runs at a time without GPUS                            [1]
#   DATA_ROOT  where the datasets live (see data/README.md)            [data]
#   CKPT_DIR   where the ImageNet / ADE20K checkpoints live            [checkpoints]
#   SEEDS      seeds per run; several give mean ± std in the tables     ["0"]
#   MODELS     restrict to these models (preset names)                 [all of the table's]
#   DATASETS   restrict to these datasets (cifar100 cifar10 cars ...)  [all of the table's]
#   WORK_ROOT  one work dir per run (logs, checkpoints, record.json)    [work_dirs/paper]
#   OUT        where the tables / figures go                            [results]
#   PYTHON     interpreter                                              [.venv/bin/python or python]
#   LAUNCHER   local (processes here) or slurm (a job array via submitit) [local]
# With LAUNCHER=slurm (docs/RUNNING.md, "On a SLURM cluster"): LAUNCHER_CONFIG (a .yaml / .json options
#   file), PARTITION, ACCOUNT, QOS, GPUS_PER_RUN [1], CPUS_PER_TASK, MEM, TIME_LIMIT, GPU_TYPE,
#   CONSTRAINT, SBATCH_ARGS (more sbatch options), MAX_JOBS, WAIT=1 (follow the jobs to the end,
#   then build the table; otherwise the script submits, builds the table from the records there
#   are, and is run again later: it skips what is done or queued and resubmits what ended).
# Flags: --dry-run (print exactly the runs of the table and their state, with LAUNCHER=slurm the
#        commands and the array script it would submit; run nothing),
#        --tables-only (skip the sweep, just rebuild the table from the records there are).
# Any other flag is passed to tools/sweep.py (e.g. --cfg-options train_dataloader.batch_size=32).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHON
export GPUS="${GPUS:-}" JOBS="${JOBS:-1}" DATA_ROOT="${DATA_ROOT:-data}"
export CKPT_DIR="${CKPT_DIR:-checkpoints}" SEEDS="${SEEDS:-0}" MODELS="${MODELS:-}"
export DATASETS="${DATASETS:-}" WORK_ROOT="${WORK_ROOT:-work_dirs/paper}" OUT="${OUT:-results}"
export LAUNCHER="${LAUNCHER:-local}"

DRY_RUN=0
TABLES_ONLY=0
SWEEP_ARGS=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --tables-only) TABLES_ONLY=1 ;;
        -h|--help) # the calling script's header, then the settings above
                   sed -n '2,/^source/p' "${BASH_SOURCE[1]}" | grep '^#' | sed 's/^# \{0,1\}//'
                   sed -n '3,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) SWEEP_ARGS+=("$arg") ;;
    esac
done

# run_sweep TABLE... : the sweep (or its dry-run listing); returns the sweep's exit status.
run_sweep() {
    if [[ $TABLES_ONLY == 1 ]]; then return 0; fi
    local dry=()
    [[ $DRY_RUN == 1 ]] && dry=(--dry-run)
    "$PYTHON" tools/sweep.py table "$@" "${dry[@]+"${dry[@]}"}" "${SWEEP_ARGS[@]+"${SWEEP_ARGS[@]}"}"
}

# make_tables TABLE... : tables from whatever records exist (missing runs stay empty cells).
make_tables() {
    local model_args=() dataset_args=()
    [[ -n "$MODELS" ]] && model_args=(--models $MODELS)
    [[ -n "$DATASETS" ]] && dataset_args=(--datasets $DATASETS)
    "$PYTHON" tools/make_tables.py --runs "$WORK_ROOT" --out "$OUT" --tables "$@" \
        "${model_args[@]+"${model_args[@]}"}" "${dataset_args[@]+"${dataset_args[@]}"}"
}

# reproduce_table N : the sweep of paper Table N, then the table; exit 1 if a run failed.
reproduce_table() {
    local table="$1" status=0
    run_sweep "$table" || status=$?
    # A dry run that could not list the runs (e.g. a broken interpreter) is a failure too.
    if [[ $DRY_RUN == 1 ]]; then return $status; fi
    make_tables "$table"
    echo "Table $table: $OUT/table$table/table$table.{md,csv,tex}"
    if [[ $status != 0 ]]; then
        echo "some runs failed (see above); re-run this script to retry them" >&2
    elif [[ $LAUNCHER == slurm && "${WAIT:-0}" != 1 ]]; then
        echo "jobs are on the cluster: re-run this script to fill the table as they finish" >&2
    fi
    return $status
}
