#!/usr/bin/env bash
# A Ray cluster of one head and N worker nodes on this machine: the cluster path of the study (several
# raylets, --address, a node lost mid-study) without a cloud.
#
#   cluster/local_cluster.sh start 2                   # head + 2 worker nodes; prints the address and
#   RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/fsrf-ray-6390/auth_token \
#       python studies/tune_lambdas.py --address 127.0.0.1:6390 --smoke-test    # the driver's variables
#   cluster/local_cluster.sh status                    # `ray status` of this cluster
#   cluster/local_cluster.sh kill worker1              # SIGKILL one node's processes (a lost machine)
#   cluster/local_cluster.sh stop                      # stop this cluster, and only this one
#
# Options (after the subcommand): --port P (6390), --cpus C per node (1), --dir D (/tmp/fsrf-ray-P: Ray's
# --temp-dir and this script's state; keep it short, Ray's socket paths must stay under 108 bytes),
# --object-store-memory BYTES (300 MB per node) and --memory BYTES (2 GiB per node): every node on one
# machine believes it owns all of the RAM, so both are set explicitly. The dashboard is off.
#
# Network: Ray cannot be held to loopback. It replaces 127.0.0.1 with the machine's address and its
# gRPC servers (GCS, raylets) listen on every interface, and anyone who reaches them can run code. So
# token authentication is on by default: RAY_AUTH_MODE=token with a random token in <dir>/auth_token
# (mode 600, or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN if set), which every node, the driver and
# `ray status` must share. RAY_AUTH_MODE=disabled (the tests: a cluster that lives a minute) turns it
# off; set it the same way for the driver.
#
# `ray stop` would stop every Ray on the machine, other users' included: `stop` and `kill` find this
# cluster's processes by a marker in their environment (FSRF_RAY_NODE=<dir>/<node>) and signal those.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
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
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$dir/auth_token}
fi
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
  for _ in $(seq 50); do  # SIGKILL is not instant either: return once they are really gone
    [ -n "$(pids_of "$node")" ] || return 0; sleep 0.2
  done
}

start_node() {  # start_node NAME ARGS...: one `ray start` with this node's marker in its environment
  local name=$1; shift
  FSRF_RAY_NODE="$dir/$name" "$RAY" start --num-cpus "$cpus" \
    --object-store-memory "$store" --memory "$memory" --temp-dir "$dir" --disable-usage-stats "$@" \
    >"$dir/$name.log" 2>&1 || { echo "error: node $name did not start; see $dir/$name.log" >&2; tail -5 "$dir/$name.log" >&2; return 1; }
}

case $cmd in
  start)
    if [ -n "$(pids_of)" ]; then echo "error: a cluster is already running from $dir (stop it first)" >&2; exit 2; fi
    mkdir -p "$dir"
    if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then  # this cluster's own token
      (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH")
    fi
    trap 'signal_all KILL ""' ERR
    start_node head --head --port "$port" --include-dashboard false
    for i in $(seq "$workers"); do
      start_node "worker$i" --address "127.0.0.1:$port"
    done
    trap - ERR
    echo "127.0.0.1:$port" >"$dir/address"
    echo "ray cluster: head + $workers worker node(s), $cpus CPU(s) each, temp dir $dir"
    echo "address: 127.0.0.1:$port"
    auth="RAY_AUTH_MODE=$RAY_AUTH_MODE"
    [ -n "${RAY_AUTH_TOKEN_PATH:-}" ] && [ "$RAY_AUTH_MODE" = token ] && auth="$auth RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    echo "driver:  $auth python studies/tune_lambdas.py --address 127.0.0.1:$port ..."
    ;;
  status)
    "$RAY" status --address "127.0.0.1:$port" ;;
  kill)
    [ -n "$node" ] || { echo "error: kill needs a node name: head, worker1, ..." >&2; exit 2; }
    victims=$(pids_of "$node")
    [ -n "$victims" ] || { echo "error: no node $node running from $dir" >&2; exit 2; }
    signal_all KILL "$node"
    echo "killed node $node: pids" $victims ;;
  stop)
    signal_all TERM ""
    rm -f "$dir/address"
    echo "stopped the cluster in $dir" ;;
  *) usage ;;
esac
