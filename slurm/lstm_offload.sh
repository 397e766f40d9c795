#!/usr/bin/env bash
#SBATCH --job-name=sa-lstm-offload
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=48
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=lstm_offload-%j.out
#
# The paper's first experiment on a cluster: a backend node serves, a client step offloads the LSTM
# training to it through a stub (apps/lstm_offload.py, the thin client: no torch, numpy or pandas).
#
#   sbatch slurm/lstm_offload.sh
#   RUNS=20 EPOCHS=100 CSV=$PWD/data/node_3_utilisation_sample_dataset.csv sbatch slurm/lstm_offload.sh
#   EPOCHS=3 sbatch --ntasks-per-node=1 --cpus-per-task=2 --time=10 slurm/lstm_offload.sh  # 2-CPU nodes
#
# The first node runs Redis and one backend (storage_init.sh, as enqueue_compss would); the client
# runs as a job step (srun) on the second node, or on the first when the job has one node. Each run
# trains on the backend with a live progress bar (in the job's output) and leaves its figures in
# RESULTS_DIR/runs/run-N.json; results.csv has one row per run (metrics, train/eval/server time,
# backend memory, the client's wall time, overhead and RSS). A trap stops everything the job started
# on exit, error, the time-limit signal (--signal=B:USR1@120) and scancel, and the store's data and
# secrets are deleted (the props key keep_data=true, in STORAGE_PROPS, keeps them).
#
# Parameters (environment variables; sbatch passes the submitting environment):
#   MODULES            environment modules loaded first (default: none)
#   PYTHON             the backend's interpreter, with storage-api[ml] installed (default: python3)
#   CLIENT_PYTHON      the client's interpreter: storage-api without extras is enough (default: PYTHON)
#   SA_CHECKOUT        the storage-api checkout (default: the directory above this script)
#   RUNS               training runs, seeds SEED, SEED+1, ... (default: 1)
#   SEED               the first run's seed (default: 0)
#   EPOCHS             epochs per pass (default: 100)       PASSES   1 or 2 (default: 2, as the paper)
#   CSV                a timestamp,CPU,MEM file read by the client and shipped (default: a series
#                      generated on the backend)
#   BACKEND_CPUS       CPUs the backend's torch may use, 0 for all of the node's (default: 0)
#   STORAGE_PROPS      a storage props file for the deployment (default: none)
#   NETWORK            ethernet, infiniband or data (default: ethernet)
#   RESULTS_DIR        where results go (default: $SLURM_SUBMIT_DIR/results/lstm_offload-$SLURM_JOB_ID)
# A bad parameter stops the job before anything is started, with a message naming it (exit 2).
set -euo pipefail

SA_NAME=lstm_offload.sh
if [ -z "${SA_CHECKOUT:-}" ]; then  # sbatch runs a copy of the script: ask SLURM for the original
    _self=""
    [ -n "${SLURM_JOB_ID:-}" ] && _self=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    SA_CHECKOUT="$(cd "$(dirname "${_self:-${BASH_SOURCE[0]}}")/.." && pwd)"
fi
[ -f "$SA_CHECKOUT/slurm/_common.sh" ] ||
    { echo "$SA_NAME: error: SA_CHECKOUT='$SA_CHECKOUT' is not a storage-api checkout" >&2; exit 2; }
# shellcheck source=slurm/_common.sh
source "$SA_CHECKOUT/slurm/_common.sh"

# ------------------------------------------------------------------ parameters
MODULES="${MODULES:-}"
PYTHON="${PYTHON:-python3}"
CLIENT_PYTHON="${CLIENT_PYTHON:-$PYTHON}"
RUNS="${RUNS:-1}"
SEED="${SEED:-0}"
EPOCHS="${EPOCHS:-100}"
PASSES="${PASSES:-2}"
CSV="${CSV:-}"
BACKEND_CPUS="${BACKEND_CPUS:-0}"
STORAGE_PROPS="${STORAGE_PROPS:-}"
NETWORK="${NETWORK:-ethernet}"
sa_nodes
RESULTS_DIR="${RESULTS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/results/lstm_offload-$SA_JOB}"

sa_positive RUNS
sa_positive EPOCHS
sa_choice PASSES 1 2
[[ "$SEED" =~ ^[0-9]+$ ]] || sa_die "SEED must be a non-negative integer, got '$SEED'"
[[ "$BACKEND_CPUS" =~ ^[0-9]+$ ]] || sa_die "BACKEND_CPUS must be a non-negative integer, got '$BACKEND_CPUS'"
sa_choice NETWORK ethernet infiniband data
[ -z "$CSV" ] || [ -r "$CSV" ] || sa_die "CSV '$CSV' cannot be read"
[ -z "$STORAGE_PROPS" ] || [ -f "$STORAGE_PROPS" ] || sa_die "STORAGE_PROPS '$STORAGE_PROPS' does not exist"
sa_load_modules
sa_check_python "$PYTHON" storage_api workflows.models.trainer torch
sa_check_python "$CLIENT_PYTHON" storage_api tqdm
sa_app apps/lstm_offload.py
sa_results_dir runs logs
[ -z "$CSV" ] || CSV="$(sa_abspath "$CSV")"
[ -z "$STORAGE_PROPS" ] || STORAGE_PROPS="$(sa_abspath "$STORAGE_PROPS")"
STORAGE_HOME="${STORAGE_HOME:-$SA_CHECKOUT/storage_api/_compss}"
[ -x "$STORAGE_HOME/scripts/storage_init.sh" ] || sa_die "STORAGE_HOME '$STORAGE_HOME' has no scripts/storage_init.sh"
SERVER="${SA_NODES[0]}"
CLIENT="${SA_NODES[1]:-$SERVER}"
cd "$SA_CHECKOUT"

# ------------------------------------------------------------------ the job
sa_finish() {
    "$PYTHON" "$SA_CHECKOUT/apps/slurm_results.py" lstm "$RESULTS_DIR" ||
        echo "$SA_NAME: warning: could not write the results table" >&2
}

STEP=()  # the client runs as a job step on the client node (directly outside SLURM)
[ -z "${SLURM_JOB_ID:-}" ] || STEP=(srun --nodes=1 --ntasks=1 --nodelist="$CLIENT" --overlap --export=ALL)

sa_begin
sa_log "job $SA_JOB: backend on $SERVER, client on $CLIENT; results in $RESULTS_DIR"
if [ "$BACKEND_CPUS" -gt 0 ]; then export OMP_NUM_THREADS="$BACKEND_CPUS"; fi
props="$RESULTS_DIR/logs/storage.props"
sa_props "$props" 1
# the client's node is the deployment's master (it runs the app), Redis and the backend are the server's
sa_store_up "$SA_JOB.lstm" "$CLIENT" "$SERVER" "$props" "$RESULTS_DIR/logs/storage_env.sh" "$SERVER"
FAILED=0
for i in $(seq 0 $((RUNS - 1))); do
    seed=$((SEED + i))
    args=(--seed "$seed" --epochs "$EPOCHS" --passes "$PASSES" --json)
    [ -z "$CSV" ] || args+=(--csv "$CSV")
    sa_log "run $i: training on the backend (seed $seed, $EPOCHS epochs x $PASSES passes)"
    out="$RESULTS_DIR/runs/run-$(printf %03d "$i").json"
    if sa_run "$out.part" - "${STEP[@]}" "$CLIENT_PYTHON" "$APP" "${args[@]}"; then
        mv "$out.part" "$out"
        "$PYTHON" "$SA_CHECKOUT/apps/slurm_results.py" lstm "$RESULTS_DIR" --show "$out" ||
            echo "$SA_NAME: warning: could not write the results table" >&2
    else
        FAILED=$((FAILED + 1))
        rm -f "$out.part"
        echo "$SA_NAME: run $i failed" >&2
    fi
done
sa_store_down
sa_log "$RUNS runs, $FAILED failed; results: $RESULTS_DIR/results.csv"
[ "$FAILED" -eq 0 ]
