#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (slurmctld + slurmd as root, munge), for trying
# the sbatch scripts of this directory and for their tests (.ci/run starts it).
#
#   bash slurm/local_cluster.sh start    # install nothing; configure and start (idempotent)
#   bash slurm/local_cluster.sh stop     # stop the daemons this script started
#   bash slurm/local_cluster.sh status   # sinfo
#
# Needs root and Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). It writes
# /etc/slurm/slurm.conf only when there is none or the existing one was written by this script: a
# machine with its own SLURM configuration is never touched. The node is this host (hostname -s)
# with all its CPUs and its free memory minus 1 GiB, in one partition "debug".
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by storage-api slurm/local_cluster.sh"

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmctld and slurmd run as root here)"
    for bin in slurmctld slurmd munged sinfo; do
        command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] ||
            die "$bin not found: apt-get install -y slurm-wlm munge"
    done
    export PATH="$PATH:/usr/sbin"
    # munge: a key and the daemon
    mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
    [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    if ! running /run/munge/munged.pid; then
        su -s /bin/sh munge -c /usr/sbin/munged
    fi
    # slurm.conf
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(( $(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    [ "$mem" -gt 512 ] || mem=512
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "local_cluster.sh: $CONF exists and is not ours: using it as it is" >&2
    elif ! running /run/slurmctld.pid; then
        mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
        cat > "$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=root
ReturnToService=2
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    fi
    running /run/slurmctld.pid || slurmctld
    running /run/slurmd.pid || slurmd
    # wait until the node takes jobs

    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            sinfo
            return 0
        fi
        sleep 0.5
    done
    sinfo >&2 || true
    die "the node did not become idle (see /var/log/slurm/)"
}

stop() {
    local f
    for f in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$f"; then
            kill "$(cat "$f")"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
