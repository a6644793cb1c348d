#!/usr/bin/env bash
# A shared MLflow tracking server for the studies: PostgreSQL as its backend store and a folder as its
# artifact store, both on this machine. Everything listens on 127.0.0.1 unless --host says otherwise.
#
#   cluster/mlflow_server.sh start                    # prints the tracking URI: http://127.0.0.1:5000
#   python studies/tune_lambdas.py --tracking-uri http://127.0.0.1:5000
#   python studies/robustness.py --from-study fsrf-tune --tracking-uri http://127.0.0.1:5000
#   cluster/mlflow_server.sh status                   # is it up, and where
#   cluster/mlflow_server.sh stop                     # stops MLflow, then PostgreSQL
#   cluster/mlflow_server.sh start --host 10.0.0.5    # on a cluster's head: reachable from its nodes
#
# Options (after the subcommand): --dir D (./mlflow-server: pgdata/, artifacts/, logs, pids, pgpass),
# --port P (5000, MLflow's HTTP port), --pg-port P (5433, PostgreSQL, always on 127.0.0.1), --host H
# (127.0.0.1: MLflow's bind address), and after `--`, extra `mlflow server` options (for --host other
# than loopback: `-- --allowed-hosts 10.0.0.5:5000`, and put authentication in front of it, e.g.
# `--app-name basic-auth`: MLflow's API has none by default and anyone who reaches it can write runs).
#
# PostgreSQL: `initdb` on first start (as the `postgres` user when this runs as root: PostgreSQL refuses
# to run as root), password authentication with a random password kept in <dir>/pgpass (mode 600);
# MLflow reads it through PGPASSFILE, so no password appears on a command line or in a tracking URI.
# Artifacts: the server stores them under <dir>/artifacts and serves them over HTTP
# (--serve-artifacts, default artifact root mlflow-artifacts:/), so drivers on other machines can log
# artifacts without sharing a filesystem with it. The server runs with --workers 1 and
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (2 processes, ~0.5 GiB, instead of ~9 and ~2 GiB).
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
cmd=${1:-}; [ -n "$cmd" ] || usage; shift
dir=$PWD/mlflow-server; port=5000; pg_port=5433; host=127.0.0.1; extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --pg-port) pg_port=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL not found (apt-get install -y postgresql, or set PGBIN)" >&2; exit 2; }
export PGPASSFILE=$dir/pgpass
unset PGPASSWORD  # it would beat the pgpass file: this server's password is the one in $PGPASSFILE

as_postgres() {  # PostgreSQL's server programs refuse to run as root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { as_postgres "$PGBIN/pg_ctl" -D "$dir/pgdata" status >/dev/null 2>&1; }

mlflow_pid() {  # the server's process (group leader), if it runs
  local pid
  pid=$(cat "$dir/mlflow.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && grep -qz "mlflow" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

uri() {  # what clients use; a wildcard bind address is shown as this machine's first address
  local shown=$host
  case $host in 0.0.0.0|::|'[::]') shown=$(hostname -I 2>/dev/null | awk '{print $1}') ;; esac
  echo "http://${shown:-$host}:$port"
}

healthy() {  # healthy URL: does an MLflow server answer there?
  if command -v curl >/dev/null; then curl -fsS -m 2 "$1/health" >/dev/null 2>&1
  else python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$1" 2>/dev/null
  fi
}

start_postgres() {
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$dir"; then
    echo "error: --dir $dir: the postgres user cannot reach this folder (a parent is private); choose another" >&2
    exit 2
  fi
  if [ ! -f "$dir/pgdata/PG_VERSION" ]; then
    umask 077
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/.pw"
    printf '127.0.0.1:*:*:postgres:%s\n' "$(cat "$dir/.pw")" >"$PGPASSFILE"
    umask 022
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir" "$dir/.pw"; fi
    as_postgres "$PGBIN/initdb" -D "$dir/pgdata" -U postgres -A scram-sha-256 --pwfile "$dir/.pw" \
      >"$dir/initdb.log" 2>&1 || { rm -f "$dir/.pw"; echo "error: initdb failed; see $dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/.pw"
  fi
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi  # its socket and log live here
  if ! pg_running; then
    as_postgres "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/postgresql.log" -w -t 60 \
      -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
      || { echo "error: PostgreSQL did not start; see $dir/postgresql.log" >&2; tail -5 "$dir/postgresql.log" >&2; exit 1; }
  fi
  local psql=("$PGBIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  # mlflow: the tracking store; optuna: the searchers' studies (--optuna-storage), a database of its own
  # because both keep an alembic_version table
  local db
  for db in mlflow optuna; do
    if [ "$("${psql[@]}" -c "select 1 from pg_database where datname = '$db'")" != 1 ]; then
      "${psql[@]}" -c "create database $db" >/dev/null
    fi
  done
}

start_mlflow() {
  if mlflow_pid >/dev/null; then echo "MLflow already running (pid $(mlflow_pid))"; return; fi
  local mlflow=${MLFLOW:-$(command -v mlflow || true)}
  [ -n "$mlflow" ] || { echo "error: mlflow not found (activate the project's venv)" >&2; exit 2; }
  mkdir -p "$dir/artifacts"
  # setsid: the server and its worker get a process group of their own, which `stop` signals whole.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$mlflow" server \
    --backend-store-uri "postgresql+psycopg2://postgres@127.0.0.1:$pg_port/mlflow" \
    --serve-artifacts --artifacts-destination "$dir/artifacts" --default-artifact-root mlflow-artifacts:/ \
    --host "$host" --port "$port" --workers 1 "${extra[@]}" >"$dir/mlflow.log" 2>&1 </dev/null &
  echo $! >"$dir/mlflow.pid"
  for _ in $(seq 120); do
    if healthy "$(uri)"; then return 0; fi
    if ! mlflow_pid >/dev/null; then break; fi
    sleep 0.5
  done
  echo "error: MLflow did not answer on $(uri); see $dir/mlflow.log" >&2
  tail -5 "$dir/mlflow.log" >&2
  stop_mlflow
  exit 1
}

stop_mlflow() {
  local pid
  pid=$(mlflow_pid) || { rm -f "$dir/mlflow.pid"; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/mlflow.pid"
}

case $cmd in
  start)
    start_postgres
    start_mlflow
    echo "PostgreSQL: 127.0.0.1:$pg_port database mlflow (data $dir/pgdata)"
    echo "artifacts:  $dir/artifacts"
    echo "tracking URI: $(uri)"
    echo "Optuna storage: postgresql+psycopg2://postgres@127.0.0.1:$pg_port/optuna (with PGPASSFILE=$dir/pgpass)"
    ;;
  status)
    if pg_running; then echo "PostgreSQL: running (data $dir/pgdata)"; else echo "PostgreSQL: stopped"; fi
    if pid=$(mlflow_pid); then echo "MLflow: running, pid $pid, $(uri)"; else echo "MLflow: stopped"; fi
    ;;
  stop)
    stop_mlflow
    if pg_running; then as_postgres "$PGBIN/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null; fi
    echo "stopped MLflow and PostgreSQL of $dir"
    ;;
  *) usage ;;
esac
