#!/usr/bin/env bash
# A real SLURM cluster on this one machine (slurmctld + slurmd as root, munge), for trying the sbatch
# scripts of this directory and for their tests (.ci/run starts one of 3 nodes).
#
#   bash slurm/local_cluster.sh start [NODES] [--netns [--rate RATE]]   # configure and start (idempotent)
#   bash slurm/local_cluster.sh stop            # stop the daemons this script started (and --netns' nodes)
#   bash slurm/local_cluster.sh status          # sinfo (and --netns' nodes: addresses, links)
#
# Needs root and Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). It writes
# /etc/slurm/slurm.conf only when there is none or the existing one was written by this script: a
# machine with its own SLURM configuration is never touched.
#   1 node:  the node is this host (hostname -s), with all its CPUs and its free memory less 1 GiB.
#   N nodes: N slurmd daemons on this host (slurmd -N), nodes sa-n1 ... sa-nN, each with all the CPUs
#            (so they are oversubscribed) and a share of the memory; the names are added to
#            /etc/hosts as 127.0.0.1. Jobs then span "nodes" the way they do on a cluster: job
#            steps (srun) land on other slurmd daemons, node lists have several names.
#   --netns: the N nodes are emulated hosts (slurm/netns_nodes.sh): node sa-nI is a network
#            namespace with the address 10.77.0.(10+I) and the host name sa-nI, on a bridge that
#            holds 10.77.0.1, where slurmctld is reached; its slurmd runs inside, so what srun starts
#            there runs on that node's network and sees its host name, as on a real cluster.
#            --rate RATE (1gbit, 100mbit, ...; default none) shapes each node's link both ways;
#            start with another rate reshapes a running cluster.
# EnforcePartLimits=ALL: sbatch refuses a request no node can ever run (the sbatch scripts' defaults
# ask for MareNostrum's nodes) instead of queueing it to pend for good.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by storage-api slurm/local_cluster.sh"
HOSTS_MARK="# storage-api slurm/local_cluster.sh"
NODES_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/netns_nodes.sh"
SUBNET=10.77.0  # --netns: the nodes' subnet (the bridge is .1, node I is .(10+I))

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mode() {  # how slurm.conf's first line names a configuration of $1 nodes, --netns when $2 is 1
    echo "($1 nodes$([ "$2" -eq 0 ] || echo ", netns"))"
}

config() {  # the slurm.conf for $1 nodes, emulated hosts when $2 is 1
    local n=$1 netns=$2 host cpus mem i
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(( ($(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) - 1024) / n ))
    [ "$mem" -gt 512 ] || mem=512
    cat <<CONF
$MARK $(mode "$n" "$netns")
ClusterName=local
SlurmctldHost=$host$([ "$netns" -eq 0 ] || echo "($SUBNET.1)")
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
    if [ "$netns" -eq 1 ]; then  # each slurmd on its own host, at the default port
        cat <<CONF
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
CONF
        for i in $(seq 1 "$n"); do
            echo "NodeName=sa-n$i NodeHostname=sa-n$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        done
    elif [ "$n" -eq 1 ]; then
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

node_names() {  # the slurmd node names of a configuration of $1 nodes (--netns when $2 is 1)
    if [ "$1" -eq 1 ] && [ "$2" -eq 0 ]; then hostname -s; else seq -f "sa-n%g" 1 "$1"; fi
}

pidfile() {  # the pid file of slurmd for node $1 (--netns when $2 is 1)
    if [ "$1" = "$(hostname -s)" ] && [ "$2" -eq 0 ]; then echo /run/slurmd.pid; else echo "/run/slurmd-$1.pid"; fi
}

start() {
    local n=1 netns=0 rate=none
    if [ $# -gt 0 ] && [[ "$1" != -* ]]; then n=$1; shift; fi
    while [ $# -gt 0 ]; do
        case "$1" in
            --netns) netns=1; shift ;;
            --rate) [ $# -ge 2 ] || die "--rate needs a value (1gbit, 100mbit, ...)"; rate=$2; shift 2 ;;
            *) die "unknown option '$1' (start [NODES] [--netns [--rate RATE]])" ;;
        esac
    done
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "NODES must be 1..99, got '$n'"
    [ "$rate" = none ] || [ "$netns" -eq 1 ] || die "--rate shapes the links of --netns' nodes: give --netns too"
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmctld and slurmd run as root here)"
    export PATH="$PATH:/usr/sbin"
    for bin in slurmctld slurmd munged mungekey sinfo $([ "$netns" -eq 0 ] || echo ip tc nsenter unshare); do
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
    wanted="$(config "$n" "$netns")"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "local_cluster.sh: $CONF exists and is not ours: using it as it is" >&2
    elif [ ! -f "$CONF" ] || ! head -n 1 "$CONF" | grep -qF "$(mode "$n" "$netns")"; then
        stop
        mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
        echo "$wanted" > "$CONF"
    fi
    sed -i "\|$HOSTS_MARK|d" /etc/hosts
    if [ "$netns" -eq 1 ]; then  # the nodes (their names resolve to their addresses)
        bash "$NODES_SH" up "$n" --rate "$rate" --prefix sa-n --subnet "$SUBNET"
    elif [ "$n" -gt 1 ]; then  # the node names resolve to this host
        echo "127.0.0.1 $(node_names "$n" 0 | tr '\n' ' ')$HOSTS_MARK" >> /etc/hosts
    fi
    running /run/slurmctld.pid || slurmctld
    local node
    for node in $(node_names "$n" "$netns"); do
        mkdir -p "/var/spool/slurmd$([ "$node" = "$(hostname -s)" ] && [ "$netns" -eq 0 ] || echo "-$node")"
        if ! running "$(pidfile "$node" "$netns")"; then
            if [ "$netns" -eq 1 ]; then
                bash "$NODES_SH" run "$node" slurmd -N "$node"  # in its namespace, with its host name
            elif [ "$n" -eq 1 ]; then
                slurmd
            else
                slurmd -N "$node"
            fi
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
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
        sleep 0.1
    done
    # --netns' nodes go with their daemons (a start in either mode makes what it needs)
    if [ -n "$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^sa-n[0-9]+$')" ]; then
        bash "$NODES_SH" down --prefix sa-n --force  # the daemons are stopped
    fi
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status)
        sinfo
        if head -n 1 "$CONF" 2>/dev/null | grep -qF "$MARK" && head -n 1 "$CONF" | grep -qF "netns"; then
            bash "$NODES_SH" status --prefix sa-n
        fi ;;
    *) echo "usage: $0 start [NODES] [--netns [--rate RATE]]|stop|status" >&2; exit 2 ;;
esac
