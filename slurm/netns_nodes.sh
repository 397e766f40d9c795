#!/usr/bin/env bash
# Emulated hosts on this one machine: each node a Linux network namespace with its own address and
# host name, joined by a bridge, its link shaped with token-bucket filters (tc tbf) in both
# directions. slurm/local_cluster.sh --netns runs its slurmd daemons on them; the tests
# (tests/netkit.py) run backends and clients on them.
#
#   bash slurm/netns_nodes.sh up N [--rate RATE] [--prefix P] [--subnet A.B.C] [--new] [--owner PID]
#   bash slurm/netns_nodes.sh down [--prefix P] [--force]
#   bash slurm/netns_nodes.sh status [--prefix P]
#   bash slurm/netns_nodes.sh run NODE COMMAND [ARGS...]
#
# up makes (or brings to this shape: idempotent) nodes P1 ... PN (default prefix sa-n, so sa-n1 ...):
#   - namespace PI, whose interface eth0 has the address A.B.C.(10+I)/24 (default subnet 10.77.0; a
#     private network, RFC 1918, that no other interface of this machine uses),
#     plus its own loopback, and no default route: a node reaches the subnet and nothing else;
#   - a veth pair, its host end (named PI) on the bridge Pbr, which holds A.B.C.1 in this machine's
#     own namespace (the "host" side: Redis or slurmctld can listen there);
#   - with --rate (a tc rate: 1gbit, 100mbit, ...): a tbf qdisc on both ends of the pair, so what
#     the node sends (eth0) and what it receives (the host end) each flow at RATE; --rate none
#     leaves the links unshaped (up with a new rate reshapes running nodes). Without --rate or
#     --subnet, up keeps the running nodes' own (first up: unshaped, 10.77.0);
#   - /etc/hosts lines "A.B.C.(10+I) PI", marked with the prefix so that down removes them.
#   --new fails (status 3) when nodes with that prefix exist and their --owner process still runs;
#   nodes whose owner is gone are removed first. Tests use it to claim a prefix of their own.
# down removes the nodes, the bridge and the /etc/hosts lines of the prefix (nothing else); it
#   refuses while processes run on the nodes (a cluster's slurmd, a test's backends), unless --force.
# run executes COMMAND on NODE: in its network namespace and in a UTS namespace of its own whose
# host name is NODE (`ip netns exec` would keep this machine's host name, and mount a /sys of its
# own, without the cgroup hierarchies slurmd needs). It execs all the way, so the process started
# is COMMAND itself (same pid), as `srun` or `ssh` would start it.
#
# Needs root, iproute2 (ip, tc) and util-linux (nsenter, unshare, flock). Traffic stays inside the namespaces
# this script makes: nodes have no route out and the bridge forwards nothing beyond them.
set -euo pipefail

LOCK=/run/lock/storage-api-netns.lock
STATE=/run/storage-api-netns  # one file per prefix: its owner pid, subnet and rate

die() { echo "netns_nodes.sh: error: $1" >&2; exit "${2:-1}"; }

mark() { echo "# storage-api netns $1"; }

nodes_of() {  # the namespaces of prefix $1, in order
    ip netns list | awk '{print $1}' | grep -E "^$1[0-9]+$" | sort -V || true
}

check_prefix() {
    # ending in a letter or '-': node names (prefix + number) of two prefixes never coincide
    [[ "$1" =~ ^[a-z][a-z0-9-]{0,9}[a-z-]$ ]] || die "prefix '$1': 2 to 11 of [a-z0-9-], a letter first, no digit last"
}

tbf() {  # tbf on device $2 of namespace $1 ("" = this one) at rate $3, or none
    local ns=(${1:+-n "$1"}) dev=$2 rate=$3
    if [ "$rate" = none ]; then
        tc "${ns[@]}" qdisc del dev "$dev" root 2>/dev/null || true
    else
        # burst: 10 ms at the rate, at least 32 KiB (the rate cannot be reached with a burst below
        # one timer tick's worth); the queue holds 50 ms, beyond that packets drop, as on a switch.
        local bits
        bits=$(tc_bits "$rate")
        local burst=$(( bits / 8 / 100 ))
        [ "$burst" -ge 32768 ] || burst=32768
        tc "${ns[@]}" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 50ms
    fi
}

check_subnet() {  # $1: three octets of a private network (RFC 1918) that no other interface here uses
    local subnet=$1 prefix=$2 o1 o2 o3
    [[ "$subnet" =~ ^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$ ]] ||
        die "subnet '$subnet': three decimal octets without leading zeros, e.g. 10.77.0"
    o1=${BASH_REMATCH[1]} o2=${BASH_REMATCH[2]} o3=${BASH_REMATCH[3]}
    [ "$o1" -le 255 ] && [ "$o2" -le 255 ] && [ "$o3" -le 255 ] || die "subnet '$subnet': octets are 0 to 255"
    { [ "$o1" -eq 10 ] || { [ "$o1" -eq 172 ] && [ "$o2" -ge 16 ] && [ "$o2" -le 31 ]; } ||
        { [ "$o1" -eq 192 ] && [ "$o2" -eq 168 ]; }; } ||
        die "subnet '$subnet' is not of a private network (10.x.y, 172.16-31.y, 192.168.y)"
    local taken
    taken=$(ip -4 -o addr show | awk -v net="$subnet." -v own="${prefix}br" '$2 != own && index($4, net) == 1 {print $2}')
    [ -z "$taken" ] || die "subnet $subnet is in use here already (interface $(echo $taken | tr '\n' ' '))"
}

tc_bits() {  # bits per second of a tc rate such as 1gbit, 100mbit, 512kbit, 2000000bit
    local r=${1,,} n unit
    [[ "$r" =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || die "rate '$1': use NUMBER followed by bit, kbit, mbit or gbit (or none)"
    n=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[2]}
    [ "${#n}" -le 12 ] || die "rate '$1': from 8kbit to 100gbit"
    local bits
    case $unit in
        bit) bits=$n ;;
        kbit) bits=$(( n * 1000 )) ;;
        mbit) bits=$(( n * 1000000 )) ;;
        gbit) bits=$(( n * 1000000000 )) ;;
    esac
    [ "$bits" -ge 8000 ] && [ "$bits" -le 100000000000 ] || die "rate '$1': from 8kbit to 100gbit"
    echo "$bits"
}

down() {
    local prefix=$1 force=$2 node pids=""
    for node in $(nodes_of "$prefix"); do
        pids+=" $(ip netns pids "$node" 2>/dev/null | tr '\n' ' ')"
    done
    if [ "$force" != 1 ] && [ -n "${pids// /}" ]; then
        die "processes run on the nodes ${prefix}1... (pids:$(echo $pids | tr -s ' ' | sed 's/^/ /')): stop them first (a SLURM cluster's: bash slurm/local_cluster.sh stop), or down --force" 4
    fi
    for node in $(nodes_of "$prefix"); do
        ip link del "$node" 2>/dev/null || true  # the host end (the pair goes with it)
        ip netns del "$node"
    done
    ip link del "${prefix}br" 2>/dev/null || true
    sed -i "\|$(mark "$prefix")\$|d" /etc/hosts
    rm -f "$STATE/$prefix"
}

up() {
    local n=$1 rate=$2 prefix=$3 subnet=$4 new=$5 owner=$6 i node addr
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be 1..99, got '$n'"
    if [ -f "$STATE/$prefix" ]; then  # running nodes keep what was not given again
        [ -n "$rate" ] || rate=$(awk -F= '$1 == "rate" {print $2}' "$STATE/$prefix")
        [ -n "$subnet" ] || subnet=$(awk -F= '$1 == "subnet" {print $2}' "$STATE/$prefix")
    fi
    if [ -f "$STATE/$prefix" ] && [ -n "$(nodes_of "$prefix")" ] && [ -n "$subnet" ]; then
        local was_on
        was_on=$(awk -F= '$1 == "subnet" {print $2}' "$STATE/$prefix")
        [ "$subnet" = "$was_on" ] ||
            die "nodes ${prefix}1... run on subnet $was_on: take them down first to move them to $subnet"
    fi
    rate=${rate:-none}
    subnet=${subnet:-10.77.0}
    check_subnet "$subnet" "$prefix"
    [ "$rate" = none ] || tc_bits "$rate" >/dev/null
    if [ ! -f "$STATE/$prefix" ] && [ -z "$(nodes_of "$prefix")" ]; then
        # new nodes: their names must not be taken by interfaces this script did not make
        local taken
        taken=$(ip -o link show | awk -F': ' '{sub("@.*", "", $2); print $2}' |
                grep -E "^$prefix([0-9]+|br)$" || true)
        [ -z "$taken" ] || die "prefix '$prefix': interfaces $(echo $taken | tr '\n' ' ')exist already and are not its nodes"
    fi
    if [ -f "$STATE/$prefix" ] || [ -n "$(nodes_of "$prefix")" ]; then
        local was
        was=$(awk '/^owner=/ {sub("owner=", ""); print}' "$STATE/$prefix" 2>/dev/null || true)
        if [ -n "$was" ] && [ "$was" != 0 ] && ! kill -0 "$was" 2>/dev/null; then
            down "$prefix" 1  # left by a process that is gone
        elif [ "$new" = 1 ]; then
            die "nodes ${prefix}1... exist already (owner: $([ "${was:-0}" = 0 ] && echo none recorded || echo "pid $was"))" 3
        fi
    fi
    local other
    for other in "$STATE"/*; do  # two prefixes on one subnet would answer for the same addresses
        [ -f "$other" ] && [ "${other##*/}" != "$prefix" ] || continue
        ! grep -qx "subnet=$subnet" "$other" || die "subnet $subnet is used by the nodes ${other##*/}1..."
    done
    mkdir -p "$STATE"
    printf 'owner=%s\nsubnet=%s\nrate=%s\n' "$owner" "$subnet" "$rate" > "$STATE/$prefix"
    if ! ip link show "${prefix}br" >/dev/null 2>&1; then
        ip link add "${prefix}br" type bridge
        ip addr add "$subnet.1/24" dev "${prefix}br"
    fi
    ip link set "${prefix}br" up
    for node in $(nodes_of "$prefix"); do  # fewer nodes than before
        [ "${node#"$prefix"}" -le "$n" ] || { ip link del "$node" 2>/dev/null || true; ip netns del "$node"; }
    done
    local hosts=""
    for i in $(seq 1 "$n"); do
        node="$prefix$i"
        addr="$subnet.$((10 + i))"
        ip netns list | awk '{print $1}' | grep -qx "$node" || ip netns add "$node"
        if ! ip link show "$node" >/dev/null 2>&1; then
            ip link add "$node" type veth peer name eth0 netns "$node"
        fi
        ip link set "$node" master "${prefix}br" up
        ip -n "$node" addr replace "$addr/24" dev eth0
        ip -n "$node" link set eth0 up
        ip -n "$node" link set lo up
        tbf "" "$node" "$rate"        # what the node receives
        tbf "$node" eth0 "$rate"      # what the node sends
        hosts+="$addr $node $(mark "$prefix")"$'\n'
    done
    sed -i "\|$(mark "$prefix")\$|d" /etc/hosts
    printf '%s' "$hosts" >> /etc/hosts
}

status() {
    local prefix=$1 node addr shaped
    local nodes
    nodes=$(nodes_of "$prefix")
    if [ -z "$nodes" ]; then
        echo "no nodes ${prefix}1..."
        return 0
    fi
    printf '%-10s %-16s %s\n' NODE ADDRESS LINK
    for node in $nodes; do
        addr=$(ip -n "$node" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
        shaped=$(tc -n "$node" qdisc show dev eth0 2>/dev/null | awk '/tbf/ {for (i = 1; i < NF; i++) if ($i == "rate") print $(i + 1)}')
        printf '%-10s %-16s %s\n' "$node" "${addr:-?}" "$([ -n "$shaped" ] && echo "tbf $shaped each way" || echo unshaped)"
    done
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case "$cmd" in
    run)
        [ $# -ge 2 ] || die "usage: run NODE COMMAND [ARGS...]" 2
        node=$1
        shift
        [ -e "/run/netns/$node" ] || die "no node $node (bash $0 status)"
        # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
        exec nsenter --net="/run/netns/$node" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
        ;;
    up | down | status)
        n=""
        [ "$cmd" != up ] || { n=${1:-}; [ $# -eq 0 ] || shift; }
        rate="" prefix=sa-n subnet="" new=0 owner=0 force=0
        while [ $# -gt 0 ]; do
            case "$1" in
                --rate) rate=${2:?--rate RATE}; shift 2 ;;
                --prefix) prefix=${2:?--prefix P}; shift 2 ;;
                --subnet) subnet=${2:?--subnet A.B.C}; shift 2 ;;
                --owner) owner=${2:?--owner PID}; shift 2 ;;
                --new) new=1; shift ;;
                --force) force=1; shift ;;
                *) die "unknown option '$1'" 2 ;;
            esac
        done
        check_prefix "$prefix"
        [ "$cmd" = status ] && { status "$prefix"; exit 0; }
        [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"
        for bin in ip tc nsenter unshare flock; do
            command -v "$bin" >/dev/null || die "$bin not found: apt-get install -y iproute2 util-linux"
        done
        mkdir -p "${LOCK%/*}"
        exec 9>"$LOCK"
        flock 9  # one change at a time: /etc/hosts, the state files
        if [ "$cmd" = up ]; then up "$n" "$rate" "$prefix" "$subnet" "$new" "$owner"; else down "$prefix" "$force"; fi
        ;;
    *) echo "usage: $0 up N [--rate RATE] [--prefix P] [--subnet A.B.C] [--new] [--owner PID] | down [--prefix P] [--force] | status [--prefix P] | run NODE COMMAND..." >&2
       exit 2 ;;
esac
