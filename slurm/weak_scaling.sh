#!/usr/bin/env bash
#SBATCH --job-name=sa-weak-scaling
#SBATCH --nodes=17
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=24
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --output=weak_scaling-%j.out
#
# Weak-scaling Cascade SVM with and without the store (the paper's Figures 11-12), in one job.
#
#   sbatch slurm/weak_scaling.sh                                    # MareNostrum 4: 1 master + 16 nodes
#   PROCESSORS="2 4" POINTS_PER_BLOCK=128 BLOCKS_PER_CORE=8 sbatch --nodes=3 slurm/weak_scaling.sh
#   # nodes with fewer CPUs (slurm/local_cluster.sh's): a request that fits, or the job pends for good
#   PROCESSORS="2 4" CORES_PER_SOCKET=1 POINTS_PER_BLOCK=128 BLOCKS_PER_CORE=2 ARITY=2 ITERATIONS=2 \
#       sbatch --nodes=3 --ntasks-per-node=1 --cpus-per-task=2 --time=10 slurm/weak_scaling.sh
#
# Inside its allocation the job, for every processor count P of PROCESSORS:
#   * with the store (STORAGE has "on"): starts Redis on the first node and one backend per socket on
#     the first ceil(P / SOCKETS_PER_NODE) worker nodes (numactl --cpunodebind/--membind when numactl
#     is installed and a node has several NUMA nodes; other nodes through srun), using the COMPSs
#     scripts storage_init.sh / storage_stop.sh, so the store is deployed exactly as enqueue_compss
#     deploys it; waits until every backend is registered; runs apps/csvm.py --storage for every block
#     size; stops the store;
#   * without it (STORAGE has "off"): runs apps/csvm.py --no-storage for every block size.
# The worker nodes are every node but the first (the master) when there are several, else the one node.
#
# Launcher: with COMPSs (LAUNCHER=compss, or auto when launch_compss is on PATH) each run is a
# launch_compss on the master and the worker nodes, with the store's storage conf, the bundle's jar on
# the classpath and its python/ on the pythonpath. Without it (LAUNCHER=executor) each run is
# `python -m workflows.executor`, the project's PyCOMPSs executor on Dask: for every processor count
# the job starts a Dask scheduler on the master and one `dask worker` per worker node (srun), and the
# runs use them: with the store the tasks on blocks run inside the backends that hold them and the
# others on the Dask workers; without the store every task runs on the Dask workers, over the nodes.
#
# Results, in RESULTS_DIR: runs/*.json (one per run), results.csv (one row per run: processors, block
# size, storage on/off, points, initialization and execution time, bytes moved between processes,
# score, tasks started per node, ...), weak_scaling.png, and logs/. They are written after every run, so a job that dies keeps
# what it measured. Everything the job starts is stopped by a trap on exit, error, the time-limit
# signal (--signal=B:USR1@300) and scancel, and the store's data and secrets are deleted (the props
# key keep_data=true, in STORAGE_PROPS, keeps them).
#
# Parameters (environment variables; sbatch passes the submitting environment):
#   MODULES             environment modules loaded first, e.g. "COMPSs/3.3 python/3.12" (default: none)
#   PYTHON              interpreter with storage-api[compss] installed (default: python3)
#   SA_CHECKOUT         the storage-api checkout (default: the directory above this script)
#   SOCKETS_PER_NODE    sockets (= backends = processors) per node (default: 2)
#   CORES_PER_SOCKET    cores per socket (default: 24)
#   PROCESSORS          processor counts to run, each 1..SOCKETS_PER_NODE or a multiple of it
#                       (default: "2 4 8 16 32")
#   POINTS_PER_BLOCK    block sizes in points (default: "128 1024")
#   BLOCKS_PER_CORE     blocks per core, one per block size (default: "8 1": the same points per core)
#   STORAGE             "on", "off" or "on off" (default: "on off")
#   ARITY               cascade arity (default: 48)        ITERATIONS   CSVM iterations (default: 5)
#   PLACEMENT           blocks over backends: contiguous or round-robin (default: contiguous)
#   LAUNCHER            auto, compss or executor (default: auto)
#   EXECUTOR_WORKERS    executor mode: Dask worker processes per worker node (default: the sockets used
#                       on a node x CORES_PER_SOCKET)
#   BACKEND_SLOTS       executor mode: tasks one backend runs at once (default: CORES_PER_SOCKET)
#   COMPSS_FLAGS        compss mode: extra launch_compss options (default: none)
#   STORAGE_HOME        the storage bundle (default: this checkout's scripts; in compss mode a bundle
#                       built into RESULTS_DIR/bundle with `storage-api compss-bundle`)
#   STORAGE_PROPS       a storage props file whose keys apply to every deployment (default: none)
#   NETWORK             ethernet, infiniband or data: the COMPSs node names' suffix (default: ethernet)
#   STORAGE_CPU_AFFINITY  COMPSs' map of the backends' CPUs, e.g. 0-23/24-47 (default: disabled)
#   RESULTS_DIR         where results go (default: $SLURM_SUBMIT_DIR/results/weak_scaling-$SLURM_JOB_ID)
# A bad parameter stops the job before anything is started, with a message naming it (exit 2).
set -euo pipefail

SA_NAME=weak_scaling.sh
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
sa_sweep_params
LAUNCHER="${LAUNCHER:-auto}"
EXECUTOR_WORKERS="${EXECUTOR_WORKERS:-}"
BACKEND_SLOTS="${BACKEND_SLOTS:-$CORES_PER_SOCKET}"
COMPSS_FLAGS="${COMPSS_FLAGS:-}"
STORAGE_CPU_AFFINITY="${STORAGE_CPU_AFFINITY:-disabled}"
sa_nodes
RESULTS_DIR="${RESULTS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/results/weak_scaling-$SA_JOB}"
sa_positive BACKEND_SLOTS
[ -z "$EXECUTOR_WORKERS" ] || sa_positive EXECUTOR_WORKERS
sa_choice LAUNCHER auto compss executor

MASTER="${SA_NODES[0]}"
if [ "${#SA_NODES[@]}" -gt 1 ]; then WORKERS=("${SA_NODES[@]:1}"); else WORKERS=("$MASTER"); fi
for p in $PROCESSORS; do
    if [ "$p" -gt $((SOCKETS_PER_NODE * ${#WORKERS[@]})) ]; then
        sa_die "PROCESSORS: $p needs $(( (p + SOCKETS_PER_NODE - 1) / SOCKETS_PER_NODE )) worker nodes; the job has" \
               "${#WORKERS[@]} (${SA_NODES[*]}; the first node is the master when there are several)"
    fi
done

sa_load_modules
sa_app apps/csvm.py
if [ "$LAUNCHER" = auto ]; then
    if command -v launch_compss >/dev/null 2>&1; then LAUNCHER=compss; else LAUNCHER=executor; fi
fi
if [ "$LAUNCHER" = compss ]; then
    command -v launch_compss >/dev/null 2>&1 || sa_die "LAUNCHER=compss but launch_compss is not on PATH (MODULES?)"
    sa_check_python "$PYTHON" storage_api dislib
else
    sa_check_python "$PYTHON" storage_api dislib workflows.executor
fi
sa_results_dir runs logs
if [ -z "${STORAGE_HOME:-}" ]; then
    if [ "$LAUNCHER" = compss ]; then
        STORAGE_HOME="$RESULTS_DIR/bundle"
        "$PYTHON" -m storage_api compss-bundle "$STORAGE_HOME" >/dev/null ||
            sa_die "building the storage bundle in $STORAGE_HOME failed (javac?)"
    else
        STORAGE_HOME="$SA_CHECKOUT/storage_api/_compss"
    fi
fi
[ -x "$STORAGE_HOME/scripts/storage_init.sh" ] || sa_die "STORAGE_HOME '$STORAGE_HOME' has no scripts/storage_init.sh"
[ -z "$STORAGE_PROPS" ] || STORAGE_PROPS="$(sa_abspath "$STORAGE_PROPS")"
cd "$SA_CHECKOUT"

# ------------------------------------------------------------------ the sweep
FAILED=0
RUNS=0

sa_finish() {
    "$PYTHON" "$SA_CHECKOUT/apps/slurm_results.py" csvm "$RESULTS_DIR" --plot ||
        echo "$SA_NAME: warning: could not write the results table or plot" >&2
}

# run_csvm P MODE POINTS_PER_BLOCK BLOCKS_PER_CORE "WORKERS": one run of apps/csvm.py, its log in logs/
run_csvm() {
    local p=$1 mode=$2 ppb=$3 bpc=$4 workers=$5
    local tag="p${p}-ppb${ppb}-storage-${mode}"
    local args=(--processors "$p" --cores-per-processor "$CORES_PER_SOCKET" --blocks-per-core "$bpc"
                --points-per-block "$ppb" --arity "$ARITY" --iterations "$ITERATIONS" --placement "$PLACEMENT"
                --json "$RESULTS_DIR/runs/$tag.json")
    if [ "$mode" = on ]; then args+=(--storage); else args+=(--no-storage); fi
    local cmd
    if [ "$LAUNCHER" = compss ]; then
        cmd=(launch_compss --master_node="$MASTER" --worker_nodes="$workers" --lang=python
             --pythonpath="$SA_CHECKOUT:$STORAGE_HOME/python")
        if [ "$mode" = on ]; then
            cmd+=(--storage_conf="$SA_STORAGE_CONF" --env_script="$VARS" --classpath="$STORAGE_HOME/storage-api-compss.jar")
        fi
        # shellcheck disable=SC2206
        cmd+=($COMPSS_FLAGS "$APP" "${args[@]}")
    else
        cmd=("$PYTHON" -m workflows.executor --scheduler "$DASK_FILE" --backend-slots "$BACKEND_SLOTS" "$APP"
             "${args[@]}")
    fi
    RUNS=$((RUNS + 1))
    sa_log "run $tag: ${cmd[*]}"
    if sa_run "$RESULTS_DIR/logs/$tag.log" "$RESULTS_DIR/logs/$tag.log" "${cmd[@]}"; then
        grep -E "^(csvm:|initialization time|execution time|bytes moved|score)" "$RESULTS_DIR/logs/$tag.log" |
            sed 's/^/    /' || true
        "$PYTHON" "$SA_CHECKOUT/apps/slurm_results.py" csvm "$RESULTS_DIR" >/dev/null
    else
        FAILED=$((FAILED + 1))
        echo "$SA_NAME: run $tag failed; its log ($RESULTS_DIR/logs/$tag.log) ends with:" >&2
        tail -n 20 "$RESULTS_DIR/logs/$tag.log" >&2
    fi
}

sa_begin
sa_log "job $SA_JOB: master $MASTER, worker nodes ${WORKERS[*]}; launcher $LAUNCHER; results in $RESULTS_DIR"
VARS="$RESULTS_DIR/logs/storage_env.sh"
for p in $PROCESSORS; do
    n_nodes=$(( (p + SOCKETS_PER_NODE - 1) / SOCKETS_PER_NODE ))
    per_node=$(( p < SOCKETS_PER_NODE ? p : SOCKETS_PER_NODE ))
    workers="${WORKERS[*]:0:$n_nodes}"
    if [ "$LAUNCHER" = executor ]; then
        DASK_FILE="$RESULTS_DIR/logs/dask-p$p.json"
        if ! sa_dask_up "$MASTER" "$workers" "${EXECUTOR_WORKERS:-$((per_node * CORES_PER_SOCKET))}" "$DASK_FILE"; then
            FAILED=$((FAILED + 1))
            continue
        fi
    fi
    for mode in $STORAGE; do
        if [ "$mode" = on ]; then
            props="$RESULTS_DIR/logs/storage-p$p.props"
            sa_props "$props" "$per_node"
            if ! sa_store_up "$SA_JOB.p$p" "$MASTER" "$workers" "$props" "$VARS"; then
                FAILED=$((FAILED + 1))
                continue
            fi
        fi
        for i in "${!SIZES[@]}"; do
            run_csvm "$p" "$mode" "${SIZES[$i]}" "${PER_CORE[$i]}" "$workers"
        done
        [ "$mode" = off ] || sa_store_down
    done
    [ "$LAUNCHER" != executor ] || sa_dask_down
done
sa_log "$RUNS runs, $FAILED failed; results: $RESULTS_DIR/results.csv"
[ "$FAILED" -eq 0 ]
