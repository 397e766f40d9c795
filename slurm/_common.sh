# shellcheck shell=bash
# Shared by the sbatch scripts of this directory (sourced, never run). Parameter checks, the node
# list, starting and stopping the store through the COMPSs storage scripts (storage_init.sh and
# storage_stop.sh, so a job deploys exactly what enqueue_compss would), running steps so that a
# signal reaches the script at once, and the clean-up trap.
#
# A script sets SA_NAME, sources this file, checks its parameters, calls sa_begin, then runs.
# What it started is stopped on exit, on an error, on the timeout signal (#SBATCH --signal=B:USR1@N)
# and on scancel (SIGTERM), in that order: the running step, a storage_init.sh still starting, the
# deployment; then the script's own sa_finish hook, if it defines one, writes what results exist.
# A signal that comes while a process is being started and recorded waits until it is recorded, and
# signals during the clean-up are ignored (at the time limit SLURM signals every process of the job),
# so the clean-up neither misses what was started nor stops half-way.

SA_NAME="${SA_NAME:-$(basename "$0")}"
SA_APP_PID=""      # the step running now (its own process group)
SA_INIT_PID=""     # a storage_init.sh that has not returned yet
SA_DEPLOYED=()     # storage_stop.sh arguments of the deployment started (or being started)
SA_CLEANED=0
SA_HOLD=0          # 1 while a process is started and recorded: a signal then waits (SA_PENDING)
SA_PENDING=""

sa_die() {  # a bad parameter or environment: nothing has been started yet
    echo "$SA_NAME: error: $*" >&2
    exit 2
}

sa_log() { echo "[$(date +%H:%M:%S)] $SA_NAME: $*"; }

# ------------------------------------------------------------------ parameter checks
sa_positive() {  # NAME: a positive integer
    local name=$1 value=${!1}
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || sa_die "$name must be a positive integer, got '$value'"
}

sa_positive_list() {  # NAME: a non-empty space-separated list of positive integers
    local name=$1 value=${!1} v
    [ -n "${value// /}" ] || sa_die "$name must list at least one positive integer"
    for v in $value; do
        [[ "$v" =~ ^[1-9][0-9]*$ ]] || sa_die "$name must list positive integers, got '$v' in '$value'"
    done
}

sa_choice() {  # NAME CHOICE...: the value is one of the choices
    local name=$1 value=${!1} c
    shift
    for c in "$@"; do [ "$value" = "$c" ] && return 0; done
    sa_die "$name must be one of: $*; got '$value'"
}

sa_load_modules() {  # MODULES="COMPSs/3.3 python/3.12 ...": environment modules to load first
    [ -n "${MODULES:-}" ] || return 0
    if ! type module >/dev/null 2>&1; then
        local init
        for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash \
                    /usr/share/modules/init/bash; do
            # shellcheck disable=SC1090
            [ -f "$init" ] && { set +u; source "$init"; set -u; break; }
        done
    fi
    type module >/dev/null 2>&1 || sa_die "MODULES='$MODULES' is set but this system has no 'module' command"
    set +u
    # shellcheck disable=SC2086
    module load $MODULES || { set -u; sa_die "module load $MODULES failed"; }
    set -u
}

sa_check_python() {  # INTERPRETER MODULE...: the interpreter runs and can find the modules
    local python=$1
    shift
    command -v "$python" >/dev/null 2>&1 || sa_die "Python interpreter '$python' not found (set PYTHON)"
    local missing  # found, not imported: dislib imports pycompss, which only the launcher provides
    missing=$("$python" -c "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])" \
              "$@" 2>&1) || sa_die "'$python' does not run: $missing"
    [ -z "$missing" ] || sa_die "'$python' has no module $missing (install storage-api with its extras, or set PYTHON)"
}

sa_results_dir() {  # SUBDIR...: RESULTS_DIR and these folders in it, made absolute
    mkdir -p "$RESULTS_DIR" 2>/dev/null && [ -w "$RESULTS_DIR" ] ||
        sa_die "RESULTS_DIR '$RESULTS_DIR' cannot be created or written"
    RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"
    local sub
    for sub in "$@"; do mkdir -p "$RESULTS_DIR/$sub"; done
}

sa_app() {  # PATH: APP, the app of the checkout the job runs
    APP="$SA_CHECKOUT/$1"
    [ -f "$APP" ] || sa_die "$APP not found (SA_CHECKOUT='$SA_CHECKOUT')"
}

sa_abspath() {  # PATH: made absolute (the scripts change directory)
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
}

# The CSVM sweep's parameters, shared by weak_scaling.sh and enqueue_weak_scaling.sh (documented
# there): defaults, checks, and SIZES / PER_CORE, the block sizes and their blocks per core.
sa_sweep_params() {
    MODULES="${MODULES:-}"
    PYTHON="${PYTHON:-python3}"
    SOCKETS_PER_NODE="${SOCKETS_PER_NODE:-2}"
    CORES_PER_SOCKET="${CORES_PER_SOCKET:-24}"
    PROCESSORS="${PROCESSORS:-2 4 8 16 32}"
    POINTS_PER_BLOCK="${POINTS_PER_BLOCK:-128 1024}"
    BLOCKS_PER_CORE="${BLOCKS_PER_CORE:-8 1}"
    STORAGE="${STORAGE:-on off}"
    ARITY="${ARITY:-48}"
    ITERATIONS="${ITERATIONS:-5}"
    PLACEMENT="${PLACEMENT:-contiguous}"
    STORAGE_PROPS="${STORAGE_PROPS:-}"
    NETWORK="${NETWORK:-ethernet}"
    sa_positive SOCKETS_PER_NODE
    sa_positive CORES_PER_SOCKET
    sa_positive ARITY
    sa_positive ITERATIONS
    sa_positive_list PROCESSORS
    sa_positive_list POINTS_PER_BLOCK
    sa_positive_list BLOCKS_PER_CORE
    read -r -a SIZES <<< "$POINTS_PER_BLOCK"
    read -r -a PER_CORE <<< "$BLOCKS_PER_CORE"
    [ "${#SIZES[@]}" -eq "${#PER_CORE[@]}" ] ||
        sa_die "BLOCKS_PER_CORE ('$BLOCKS_PER_CORE') needs one value per POINTS_PER_BLOCK ('$POINTS_PER_BLOCK')"
    [ -n "${STORAGE// /}" ] || sa_die "STORAGE must be on, off or 'on off'"
    local mode p
    for mode in $STORAGE; do
        [ "$mode" = on ] || [ "$mode" = off ] || sa_die "STORAGE must list on and/or off, got '$mode'"
    done
    for p in $PROCESSORS; do
        if [ "$p" -gt "$SOCKETS_PER_NODE" ] && [ $((p % SOCKETS_PER_NODE)) -ne 0 ]; then
            sa_die "PROCESSORS: $p is neither at most SOCKETS_PER_NODE ($SOCKETS_PER_NODE) nor a multiple of it"
        fi
    done
    sa_choice PLACEMENT contiguous round-robin
    sa_choice NETWORK ethernet infiniband data
    [ -z "$STORAGE_PROPS" ] || [ -f "$STORAGE_PROPS" ] || sa_die "STORAGE_PROPS '$STORAGE_PROPS' does not exist"
}

# ------------------------------------------------------------------ the allocation
sa_nodes() {  # SA_NODES: the allocation's hosts (this host outside SLURM); SA_JOB: the job id
    if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
        mapfile -t SA_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    else
        SA_NODES=("$(hostname -s)")
    fi
    [ "${#SA_NODES[@]}" -ge 1 ] || sa_die "cannot list the nodes of the allocation"
    # shellcheck disable=SC2034  # used by the scripts
    SA_JOB="${SLURM_JOB_ID:-local-$$}"
}

sa_cpus_here() {  # the CPUs this job may use on this node
    echo "${SLURM_CPUS_ON_NODE:-$(nproc)}"
}

# ------------------------------------------------------------------ running steps
# sa_run OUT ERR CMD...: run a step in its own process group, stdout to the file OUT and stderr to
# ERR ("-": the job's own, shared, not reopened), and wait for it. The redirections stay on the
# step: the traps, which may run during the wait, write to the job's output.
sa_run() {
    local out=$1 err=$2
    shift 2
    sa_hold
    if [ "$out" = - ] && [ "$err" = - ]; then
        setsid "$@" &
    elif [ "$err" = - ]; then
        setsid "$@" > "$out" &
    elif [ "$out" = - ]; then
        setsid "$@" 2> "$err" &
    elif [ "$err" = "$out" ]; then
        setsid "$@" > "$out" 2>&1 &
    else
        setsid "$@" > "$out" 2> "$err" &
    fi
    SA_APP_PID=$!
    sa_release
    local rc=0
    wait "$SA_APP_PID" || rc=$?
    SA_APP_PID=""
    return "$rc"
}

sa_kill_group() {  # PID: TERM its process group, then KILL what is left after 10 s
    local pid=$1
    kill -TERM -- "-$pid" "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------ the store
# sa_store_up ID MASTER "WORKERS" PROPS VARS [STORAGE_MASTER]: storage_init.sh of STORAGE_HOME
# (default: this checkout's scripts), then the client configuration it wrote is exported. MASTER is
# the node the app (a client of the store) runs on, STORAGE_MASTER (default MASTER) Redis' node. The
# deployment is recorded before it starts: whenever the clean-up comes, it stops what storage_init.sh
# started.
sa_store_up() {
    local id=$1 master=$2 workers=$3 props=$4 vars=$5 storage_master=${6:-$2} rc=0
    : > "$vars"
    sa_log "starting the store: deployment $id, Redis on $storage_master, backends on: $workers"
    SA_DEPLOYED=("$id" "$master" "$storage_master" "$workers" "$NETWORK" "$props")
    sa_hold
    SA_BUNDLE_PYTHON="$PYTHON" "$STORAGE_HOME/scripts/storage_init.sh" "$id" "$master" "$storage_master" "$workers" \
        "$NETWORK" "$props" "$vars" false "${STORAGE_CPU_AFFINITY:-disabled}" &
    SA_INIT_PID=$!
    sa_release
    wait "$SA_INIT_PID" || rc=$?
    SA_INIT_PID=""
    if [ "$rc" -ne 0 ]; then  # it stopped what it had started
        SA_DEPLOYED=()
        echo "$SA_NAME: storage_init.sh failed (exit $rc)" >&2
        return "$rc"
    fi
    # shellcheck disable=SC1090
    source "$vars"
    export STORAGE_API_CONFIG
    # shellcheck disable=SC2034  # used by the scripts
    SA_STORAGE_CONF="$HOME/.COMPSs/$id/storage/cfgfiles/storage.properties"
}

# sa_store_down: stop the deployment: a storage_init.sh still starting is interrupted (it stops what
# it started); a deployment whose state exists, storage_init.sh having returned or not, is stopped
# by storage_stop.sh, which deletes its data and secrets (unless the props say keep_data=true).
sa_store_down() {
    [ "${#SA_DEPLOYED[@]}" -gt 0 ] || return 0
    local args=("${SA_DEPLOYED[@]}")
    if [ -n "$SA_INIT_PID" ] && kill -0 "$SA_INIT_PID" 2>/dev/null; then
        sa_log "clean-up: interrupting storage_init.sh (it stops what it started)"
        kill -TERM "$SA_INIT_PID"
        while kill -0 "$SA_INIT_PID" 2>/dev/null; do  # wait returns early when a trapped signal comes
            wait "$SA_INIT_PID" 2>/dev/null
        done
        SA_INIT_PID=""
    fi
    local state="$HOME/.COMPSs/${args[0]}/storage/state.json" tries=0
    # storage_stop.sh ignores signals once running; one that kills it while it starts is retried
    while [ -f "$state" ] && [ "$tries" -lt 3 ]; do
        tries=$((tries + 1))
        sa_log "stopping the store: deployment ${args[0]}"
        SA_BUNDLE_PYTHON="$PYTHON" "$STORAGE_HOME/scripts/storage_stop.sh" "${args[@]}" && break
    done
    SA_DEPLOYED=()
    unset STORAGE_API_CONFIG
}

# sa_props FILE BACKENDS_PER_NODE: the storage props of one deployment (STORAGE_PROPS, if given,
# then the backends per node; a later key wins)
sa_props() {
    local file=$1 per_node=$2
    { [ -n "${STORAGE_PROPS:-}" ] && cat "$STORAGE_PROPS"; echo; echo "backends_per_node=$per_node"; } > "$file"
}

# ------------------------------------------------------------------ Dask (the executor's engine without COMPSs)
# sa_dask_up MASTER "NODES" PROCS FILE: a Dask scheduler on MASTER and one `dask worker` of PROCS
# processes (one thread each) on every node of NODES, each a job step (srun --overlap) so that it
# runs on that node; waits until all NODES x PROCS worker processes joined. FILE: the scheduler
# file, which `python -m workflows.executor --scheduler FILE` reads. Their logs go next to FILE.
SA_DASK_PIDS=()
sa_dask_up() {
    local master=$1 nodes=$2 procs=$3 file=$4 n logs
    n=$(echo "$nodes" | wc -w)
    logs="${file%.json}"
    rm -f "$file"
    sa_log "starting Dask: the scheduler on $master, $procs worker processes on each of: $nodes"
    sa_hold
    setsid srun --nodes=1 --ntasks=1 --nodelist="$master" --overlap --export=ALL \
        "$PYTHON" -m distributed.cli.dask_scheduler --scheduler-file "$file" --host "" --port 0 \
        --dashboard-address :0 > "$logs-scheduler.log" 2>&1 &
    SA_DASK_PIDS+=("$!")
    sa_release
    sa_hold
    setsid srun --nodes="$n" --ntasks="$n" --ntasks-per-node=1 --nodelist="${nodes// /,}" --overlap --export=ALL \
        "$PYTHON" -m distributed.cli.dask_worker --scheduler-file "$file" --nworkers "$procs" --nthreads 1 \
        --local-directory "${TMPDIR:-/tmp}" > "$logs-workers.log" 2>&1 &
    SA_DASK_PIDS+=("$!")
    sa_release
    if ! "$PYTHON" - "$file" "$((n * procs))" <<'PY'
import os, sys, time
from distributed import Client
path, want = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 180
while not os.path.exists(path) and time.monotonic() < deadline:
    time.sleep(0.2)
with Client(scheduler_file=path, timeout=60) as client:
    client.wait_for_workers(want, timeout=max(1, deadline - time.monotonic()))
    hosts = sorted({w["host"] for w in client.scheduler_info(n_workers=-1)["workers"].values()})
    print(f"    Dask: {want} worker processes on {' '.join(hosts)}; dashboard {client.dashboard_link}")
PY
    then
        echo "$SA_NAME: the Dask workers did not all join within 180 s; see $logs-*.log" >&2
        sa_dask_down
        return 1
    fi
}

sa_dask_down() {  # stop the scheduler and workers sa_dask_up started
    local pid
    for pid in "${SA_DASK_PIDS[@]}"; do
        sa_kill_group "$pid"
    done
    SA_DASK_PIDS=()
}

# ------------------------------------------------------------------ clean-up
sa_cleanup() {
    local rc=$?
    [ "$SA_CLEANED" -eq 0 ] || return 0
    SA_CLEANED=1
    trap - EXIT
    local sig
    for sig in TERM INT HUP USR1; do
        # shellcheck disable=SC2064
        trap "echo '$SA_NAME: received SIG$sig during the clean-up: ignored' >&2" "$sig"
    done
    set +e
    if [ -n "$SA_APP_PID" ]; then
        sa_log "clean-up: stopping the running step (pid $SA_APP_PID)"
        sa_kill_group "$SA_APP_PID"
    fi
    sa_store_down
    sa_dask_down
    if type sa_finish >/dev/null 2>&1; then
        sa_finish
    fi
    sa_log "clean-up done (exit $rc)"
    exit "$rc"
}

sa_signal() {  # the trap of one signal: say so, and exit through the EXIT trap (sa_begin's)
    local sig=$1 code=$2
    echo "$SA_NAME: received SIG$sig${3:+ ($3)}: cleaning up" >&2
    if [ "$SA_HOLD" -eq 1 ]; then
        SA_PENDING=$code
        return 0
    fi
    exit "$code"
}

# sa_hold ... sa_release around starting a process and recording its pid: bash runs a trap between
# two commands, and one run between `cmd &` and `PID=$!` would leave that process unknown to the
# clean-up.
sa_hold() { SA_HOLD=1; }

sa_release() {
    SA_HOLD=0
    [ -z "$SA_PENDING" ] || exit "$SA_PENDING"
}

sa_begin() {  # from here on everything started is stopped on the way out
    trap sa_cleanup EXIT
}

# The signal traps are installed at once: a signal before sa_begin says so and exits, nothing started.
trap 'sa_signal TERM 143 "scancel or the end of the time limit"' TERM
trap 'sa_signal INT 130' INT
trap 'sa_signal HUP 129' HUP
trap 'sa_signal USR1 138 "the time limit is near: #SBATCH --signal"' USR1
