#!/usr/bin/env bash
# The weak-scaling sweep the COMPSs way: one enqueue_compss job per configuration, as the paper's
# reference runs did (bsc-dom/split-miniapps exec_sweep.py), with the store deployed by COMPSs itself
# through the bundle's storage_init.sh / storage_stop.sh. Run it on a login node, not with sbatch:
#
#   MODULES="COMPSs/3.3 python/3.12" bash slurm/enqueue_weak_scaling.sh
#   DRY_RUN=1 PROCESSORS="2 4" bash slurm/enqueue_weak_scaling.sh     # print the commands only
#
# For every processor count P and block size it submits, when STORAGE has "on",
#   enqueue_compss --num_nodes=1+ceil(P/SOCKETS_PER_NODE) --worker_in_master_cpus=0
#                  --storage_home=BUNDLE --storage_props=PROPS (backends_per_node=min(P, SOCKETS_PER_NODE))
#                  --classpath=BUNDLE/storage-api-compss.jar --pythonpath=BUNDLE/python:SA_CHECKOUT
#                  --lang=python apps/csvm.py --storage ... --json RESULTS_DIR/runs/<run>.json
# and the same without the storage options and with --no-storage when STORAGE has "off"; then one
# sbatch job, after all of them, that writes RESULTS_DIR/results.csv and weak_scaling.png
# (apps/slurm_results.py). Job ids go to RESULTS_DIR/jobs.txt.
#
# Parameters (environment variables), as slurm/weak_scaling.sh where the names are the same:
#   MODULES, PYTHON, SA_CHECKOUT, SOCKETS_PER_NODE (2), CORES_PER_SOCKET (24),
#   PROCESSORS ("2 4 8 16 32"), POINTS_PER_BLOCK ("128 1024"), BLOCKS_PER_CORE ("8 1"),
#   STORAGE ("on off"), ARITY (48), ITERATIONS (5), PLACEMENT (contiguous), STORAGE_PROPS, NETWORK
#   STORAGE_HOME     the bundle (default: built into RESULTS_DIR/bundle with `storage-api compss-bundle`)
#   EXEC_TIME        minutes per job (default: 20 + 10 x worker nodes, as the reference sweep)
#   ENQUEUE_FLAGS    extra enqueue_compss options, e.g. "--qos=debug --project_name=bsc19" (default: none)
#   RESULTS_DIR      where results go (default: $PWD/results/enqueue_weak_scaling-<date-time>)
#   DRY_RUN          1: print the enqueue_compss and sbatch commands instead of submitting (default: 0)
# A bad parameter stops the script before anything is submitted, with a message naming it (exit 2).
set -euo pipefail

SA_NAME=enqueue_weak_scaling.sh
SA_CHECKOUT="${SA_CHECKOUT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# shellcheck source=slurm/_common.sh
source "$SA_CHECKOUT/slurm/_common.sh"

sa_sweep_params
EXEC_TIME="${EXEC_TIME:-}"
ENQUEUE_FLAGS="${ENQUEUE_FLAGS:-}"
DRY_RUN="${DRY_RUN:-0}"
RESULTS_DIR="${RESULTS_DIR:-$PWD/results/enqueue_weak_scaling-$(date +%Y%m%d-%H%M%S)}"
[ -z "$EXEC_TIME" ] || sa_positive EXEC_TIME
sa_choice DRY_RUN 0 1
[ -n "${SLURM_JOB_ID:-}" ] && [ "$DRY_RUN" = 0 ] &&
    sa_die "run this on a login node (bash $0), not inside a job: each configuration becomes its own job"
sa_load_modules
if [ "$DRY_RUN" = 0 ]; then
    command -v enqueue_compss >/dev/null 2>&1 || sa_die "enqueue_compss is not on PATH (load COMPSs with MODULES=...)"
    command -v sbatch >/dev/null 2>&1 || sa_die "sbatch is not on PATH"
fi
sa_check_python "$PYTHON" storage_api dislib
sa_app apps/csvm.py
sa_results_dir runs props
[ -z "$STORAGE_PROPS" ] || STORAGE_PROPS="$(sa_abspath "$STORAGE_PROPS")"
if [ -z "${STORAGE_HOME:-}" ]; then
    STORAGE_HOME="$RESULTS_DIR/bundle"
    "$PYTHON" -m storage_api compss-bundle "$STORAGE_HOME" >/dev/null ||
        sa_die "building the storage bundle in $STORAGE_HOME failed (javac?)"
fi
[ -x "$STORAGE_HOME/scripts/storage_init.sh" ] && [ -f "$STORAGE_HOME/storage-api-compss.jar" ] ||
    sa_die "STORAGE_HOME '$STORAGE_HOME' is not a storage bundle (scripts/storage_init.sh, storage-api-compss.jar)"

submit() {  # CMD...: submit (or print), and echo the job id
    if [ "$DRY_RUN" = 1 ]; then
        printf '%q ' "$@" >&2
        echo >&2
        echo "DRYRUN$((${#JOBS[@]} + 1))"
        return 0
    fi
    local out
    out=$("$@") || { echo "$out" >&2; sa_die "submission failed: $*"; }
    echo "$out" >&2
    sed -n 's/.*Submitted batch job \([0-9][0-9]*\).*/\1/p' <<< "$out" | tail -n 1
}

JOBS=()
: > "$RESULTS_DIR/jobs.txt"
for p in $PROCESSORS; do
    nodes=$(( (p + SOCKETS_PER_NODE - 1) / SOCKETS_PER_NODE ))
    per_node=$(( p < SOCKETS_PER_NODE ? p : SOCKETS_PER_NODE ))
    props="$RESULTS_DIR/props/storage-p$p.props"
    sa_props "$props" "$per_node"
    for mode in $STORAGE; do
        for i in "${!SIZES[@]}"; do
            tag="p${p}-ppb${SIZES[$i]}-storage-${mode}"
            cmd=(enqueue_compss --job_name="sa-$tag" --num_nodes=$((nodes + 1)) --exec_time="${EXEC_TIME:-$((20 + 10 * nodes))}"
                 --cpus_per_node=$((SOCKETS_PER_NODE * CORES_PER_SOCKET)) --worker_in_master_cpus=0 --network="$NETWORK" --lang=python)
            if [ "$mode" = on ]; then
                cmd+=(--storage_home="$STORAGE_HOME" --storage_props="$props" --classpath="$STORAGE_HOME/storage-api-compss.jar"
                      --pythonpath="$STORAGE_HOME/python:$SA_CHECKOUT")
            else
                cmd+=(--pythonpath="$SA_CHECKOUT")
            fi
            # shellcheck disable=SC2206
            cmd+=($ENQUEUE_FLAGS "$APP" --processors "$p" --cores-per-processor "$CORES_PER_SOCKET"
                  --blocks-per-core "${PER_CORE[$i]}" --points-per-block "${SIZES[$i]}" --arity "$ARITY"
                  --iterations "$ITERATIONS" --placement "$PLACEMENT" --json "$RESULTS_DIR/runs/$tag.json")
            if [ "$mode" = on ]; then cmd+=(--storage); else cmd+=(--no-storage); fi
            id=$(submit "${cmd[@]}")
            [ -n "$id" ] || sa_die "no job id in enqueue_compss's output for $tag"
            echo "$tag $id" >> "$RESULTS_DIR/jobs.txt"
            JOBS+=("$id")
        done
    done
done
deps=$(IFS=:; echo "${JOBS[*]}")
cmd=(sbatch --job-name=sa-weak-scaling-report --dependency="afterany:$deps" --ntasks=1 --time=10
     --output="$RESULTS_DIR/report-%j.out"
     --wrap="$(printf '%q ' "$PYTHON" "$SA_CHECKOUT/apps/slurm_results.py" csvm "$RESULTS_DIR" --plot)")
report=$(submit "${cmd[@]}")
echo "report $report" >> "$RESULTS_DIR/jobs.txt"
if [ "$DRY_RUN" = 1 ]; then
    echo "$SA_NAME: dry run: ${#JOBS[@]} jobs and a report job would be submitted (nothing was); the commands are above"
else
    echo "$SA_NAME: ${#JOBS[@]} jobs and a report job submitted; results will be in $RESULTS_DIR (jobs: $RESULTS_DIR/jobs.txt)"
fi
