#!/usr/bin/env bash
# A Ray cluster of one head and N worker nodes on this machine, on loopback: the cluster path of the
# study (lost nodes, --address, several raylets) without a cloud.
#
#   cluster/local_cluster.sh start 2                   # head + 2 worker nodes; prints the address
#   RAY_AUTH_MODE=disabled python studies/tune_lambdas.py --address 127.0.0.1:6390 --smoke-test
#   cluster/local_cluster.sh status                    # `ray status` of this cluster
#   cluster/local_cluster.sh kill worker1              # SIGKILL one node's processes (a lost machine)
#   cluster/local_cluster.sh stop                      # stop this cluster, and only this one
#
# Options (after the subcommand): --port P (6390), --cpus C per node (1), --dir D (/tmp/fsrf-ray-P: Ray's
# --temp-dir and this script's state; keep it short, Ray's socket paths must stay under 108 bytes),
# --object-store-memory BYTES (300 MB per node) and --memory BYTES (2 GiB per node): every node on one
# machine believes it owns all of the RAM, so both are set explicitly.
#
# Everything binds 127.0.0.1. Ray's token auth is set by RAY_AUTH_MODE, which must be the same for
# every node, the driver and `ray status`: this script uses $RAY_AUTH_MODE, default `disabled` (a
# loopback cluster for tests), and prints what the driver needs. `ray stop` would stop every Ray on the
# machine, other users' included: `stop` and `kill` find this cluster's processes by a marker in their
# environment (FSRF_RAY_NODE=<dir>/<node>) and signal those only.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
cmd=${1:-}; [ -n "$cmd" ] || usage; shift
workers=0; node=""
if [ "$cmd" = start ] && [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then workers=$1; shift; fi
if [ "$cmd" = kill ] && [ $# -gt 0 ] && [[ $1 != --* ]]; then node=$1; shift; fi
port=6390; cpus=1; dir=""; store=$((300 * 1024 * 1024)); memory=$((2 * 1024 * 1024 * 1024))
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --object-store-memory) store=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
dir=${dir:-/tmp/fsrf-ray-$port}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_USAGE_STATS_ENABLED=0
RAY=${RAY:-$(command -v ray || true)}
[ -n "$RAY" ] || { echo "error: ray not found (activate the project's venv)" >&2; exit 2; }

# Processes of node $1 (or of every node when $1 is empty), by the marker in /proc/<pid>/environ.
pids_of() {
  local pattern="^FSRF_RAY_NODE=$dir/${1:-}"
  [ -n "${1:-}" ] && pattern="$pattern\$"
  grep -lzsE "$pattern" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}

signal_all() {  # signal_all SIGNAL NODE: send SIGNAL to NODE's processes ("" = all), wait for them to go
  local sig=$1 node=${2:-} pids
  pids=$(pids_of "$node")
  [ -n "$pids" ] || return 0
  kill "-$sig" $pids 2>/dev/null || true
  for _ in $(seq 50); do
    pids=$(pids_of "$node"); [ -n "$pids" ] || return 0; sleep 0.2
  done
  [ "$sig" = KILL ] || kill -KILL $pids 2>/dev/null || true
}

start_node() {  # start_node NAME ARGS...: one `ray start` with this node's marker in its environment
  local name=$1; shift
  FSRF_RAY_NODE="$dir/$name" "$RAY" start --node-ip-address 127.0.0.1 --num-cpus "$cpus" \
    --object-store-memory "$store" --memory "$memory" --temp-dir "$dir" --disable-usage-stats "$@" \
    >"$dir/$name.log" 2>&1 || { echo "error: node $name did not start; see $dir/$name.log" >&2; tail -5 "$dir/$name.log" >&2; return 1; }
}

case $cmd in
  start)
    if [ -n "$(pids_of)" ]; then echo "error: a cluster is already running from $dir (stop it first)" >&2; exit 2; fi
    mkdir -p "$dir"
    trap 'signal_all KILL ""' ERR
    start_node head --head --port "$port" --include-dashboard false
    for i in $(seq "$workers"); do
      start_node "worker$i" --address "127.0.0.1:$port"
    done
    trap - ERR
    echo "127.0.0.1:$port" >"$dir/address"
    echo "ray cluster: head + $workers worker node(s), $cpus CPU(s) each, temp dir $dir"
    echo "address: 127.0.0.1:$port"
    echo "driver:  RAY_AUTH_MODE=$RAY_AUTH_MODE python studies/tune_lambdas.py --address 127.0.0.1:$port ..."
    ;;
  status)
    "$RAY" status --address "127.0.0.1:$port" ;;
  kill)
    [ -n "$node" ] || { echo "error: kill needs a node name: head, worker1, ..." >&2; exit 2; }
    [ -n "$(pids_of "$node")" ] || { echo "error: no node $node running from $dir" >&2; exit 2; }
    signal_all KILL "$node"
    echo "killed node $node" ;;
  stop)
    signal_all TERM ""
    rm -f "$dir/address"
    echo "stopped the cluster in $dir" ;;
  *) usage ;;
esac
