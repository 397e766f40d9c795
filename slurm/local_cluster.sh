#!/usr/bin/env bash
# A real SLURM cluster on this one machine (slurmctld + slurmd as root, munge), for trying the sbatch
# scripts of this directory and for their tests (.ci/run starts one of 3 nodes).
#
#   bash slurm/local_cluster.sh start [NODES]   # configure and start (idempotent); NODES defaults to 1
#   bash slurm/local_cluster.sh stop            # stop the daemons this script started
#   bash slurm/local_cluster.sh status          # sinfo
#
# Needs root and Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). It writes
# /etc/slurm/slurm.conf only when there is none or the existing one was written by this script: a
# machine with its own SLURM configuration is never touched.
#   1 node:  the node is this host (hostname -s), with all its CPUs and its free memory less 1 GiB.
#   N nodes: N slurmd daemons on this host (slurmd -N), nodes sa-n1 ... sa-nN, each with all the CPUs
#            (so they are oversubscribed) and a share of the memory; the names are added to
#            /etc/hosts as 127.0.0.1. Jobs then span "nodes" the way they do on a cluster: job
#            steps (srun) land on other slurmd daemons, node lists have several names.
# EnforcePartLimits=ALL: sbatch refuses a request no node can ever run (the sbatch scripts' defaults
# ask for MareNostrum's nodes) instead of queueing it to pend for good.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by storage-api slurm/local_cluster.sh"
HOSTS_MARK="# storage-api slurm/local_cluster.sh"

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

config() {  # the slurm.conf for $1 nodes
    local n=$1 host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(( ($(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) - 1024) / n ))
    [ "$mem" -gt 512 ] || mem=512
    cat <<CONF
$MARK ($n nodes)
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPidFile=/run/slurmctld.pid
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmUser=root
ReturnToService=2
KillWait=30
EnforcePartLimits=ALL
CONF
    if [ "$n" -eq 1 ]; then
        cat <<CONF
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
CONF
    else
        cat <<CONF
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
NodeName=sa-n[1-$n] NodeHostname=$host NodeAddr=127.0.0.1 Port=[17001-$((17000 + n))] CPUs=$cpus RealMemory=$mem State=UNKNOWN
CONF
    fi
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

node_names() {  # the slurmd node names of a configuration of $1 nodes
    if [ "$1" -eq 1 ]; then hostname -s; else seq -f "sa-n%g" 1 "$1"; fi
}

pidfile() {  # the pid file of slurmd for node $1 in a configuration of $2 nodes
    if [ "$2" -eq 1 ]; then echo /run/slurmd.pid; else echo "/run/slurmd-$1.pid"; fi
}

start() {
    local n=${1:-1}
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "NODES must be 1..99, got '$n'"
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmctld and slurmd run as root here)"
    export PATH="$PATH:/usr/sbin"
    for bin in slurmctld slurmd munged mungekey sinfo; do
        command -v "$bin" >/dev/null || die "$bin not found: apt-get install -y slurm-wlm munge"
    done
    # munge: a key and the daemon
    mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
    [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    running /run/munge/munged.pid || su -s /bin/sh munge -c /usr/sbin/munged
    # slurm.conf: ours, for n nodes (restarting the daemons when it changes)
    local wanted
    wanted="$(config "$n")"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "local_cluster.sh: $CONF exists and is not ours: using it as it is" >&2
    elif [ ! -f "$CONF" ] || ! head -n 1 "$CONF" | grep -qF "($n nodes)"; then
        stop
        mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
        echo "$wanted" > "$CONF"
    fi
    if [ "$n" -gt 1 ]; then  # the node names resolve to this host
        sed -i "\|$HOSTS_MARK|d" /etc/hosts
        echo "127.0.0.1 $(node_names "$n" | tr '\n' ' ')$HOSTS_MARK" >> /etc/hosts
    fi
    running /run/slurmctld.pid || slurmctld
    local node
    for node in $(node_names "$n"); do
        mkdir -p "/var/spool/slurmd$([ "$n" -eq 1 ] || echo "-$node")"
        if ! running "$(pidfile "$node" "$n")"; then
            if [ "$n" -eq 1 ]; then slurmd; else slurmd -N "$node"; fi
        fi
    done
    # wait until every node takes jobs
    for _ in $(seq 1 60); do
        if [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -cE '^(idle|mix|alloc)')" -ge "$n" ]; then
            sinfo
            return 0
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    die "the nodes did not become idle (see /var/log/slurm/)"
}

stop() {
    local f
    for f in /run/slurmd.pid /run/slurmd-*.pid /run/slurmctld.pid; do
        if running "$f"; then
            kill "$(cat "$f")"
        fi
    done
    for _ in $(seq 1 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
        sleep 0.1
    done
}

case "${1:-}" in
    start) start "${2:-1}" ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start [NODES]|stop|status" >&2; exit 2 ;;
esac
