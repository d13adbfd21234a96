#!/usr/bin/env bash
# A Spark standalone cluster on this machine from the .venv pyspark's own jars: one master, N workers.
#
#   deploy/spark/cluster.sh start    # master + workers, waits until every worker is ALIVE
#   deploy/spark/cluster.sh status   # master URL, workers and applications (from the master's /json/)
#   deploy/spark/cluster.sh stop
#   logmesh stream --master spark://127.0.0.1:7177 ...
#
# Daemons run through pyspark's sbin/spark-daemon.sh (pid files, logs); everything lives under
# $LOGMESH_SPARK_DIR (default var/spark): pids/, logs/, work/worker-N/ (executors' stdout/stderr), conf/.
# Defaults suit a 2-core 24 GiB box: 2 workers of 1 core and 2 GiB each (an executor takes the default
# spark.executor.memory, 1 GiB heap, leaving room for its Python workers). env:
#   LOGMESH_SPARK_DIR, LOGMESH_SPARK_MASTER_PORT (7177), LOGMESH_SPARK_MASTER_UI_PORT (8180),
#   LOGMESH_SPARK_WORKERS (2), LOGMESH_SPARK_WORKER_CORES (1), LOGMESH_SPARK_WORKER_MEMORY (2g),
#   LOGMESH_SPARK_WORKER_UI_PORT (8181: worker N serves on 8181+N-1; 0: any free port),
#   LOGMESH_SPARK_DAEMON_MEMORY (512m), LOGMESH_SPARK_START_TIMEOUT_S (120),
#   LOGMESH_PYTHON (python with pyspark; default .venv/bin/python).
# The job's executors run the driver's Python (PYSPARK_PYTHON, set by streaming/spark.py to the venv's) and
# get the Kafka connector jars from the driver (spark.jars, deploy/spark/fetch.sh): nothing is installed on
# the workers. Several clusters can run side by side with different dirs and ports (the tests do).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${LOGMESH_PYTHON:-$REPO/.venv/bin/python}"
DIR="${LOGMESH_SPARK_DIR:-$REPO/var/spark}"
MASTER_PORT="${LOGMESH_SPARK_MASTER_PORT:-7177}"
MASTER_UI_PORT="${LOGMESH_SPARK_MASTER_UI_PORT:-8180}"
WORKERS="${LOGMESH_SPARK_WORKERS:-2}"
WORKER_CORES="${LOGMESH_SPARK_WORKER_CORES:-1}"
WORKER_MEMORY="${LOGMESH_SPARK_WORKER_MEMORY:-2g}"
WORKER_UI_PORT="${LOGMESH_SPARK_WORKER_UI_PORT:-8181}"
HOST=127.0.0.1
MASTER_URL="spark://$HOST:$MASTER_PORT"
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

say() { echo "spark/cluster: $*"; }
die() { echo "spark/cluster: error: $*" >&2; exit 1; }

[[ -x "$PY" ]] || die "no python at $PY: create the venv first (make venv) or set LOGMESH_PYTHON"
SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" ||
  die "pyspark is not importable from $PY: install it (make venv) first"
[[ -x "$SPARK_HOME/sbin/spark-daemon.sh" ]] || die "$SPARK_HOME/sbin/spark-daemon.sh missing: this pyspark wheel ships no sbin scripts"
command -v java >/dev/null || die "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"

export SPARK_HOME SPARK_LOCAL_IP="$HOST"
export SPARK_PID_DIR="$DIR/pids" SPARK_LOG_DIR="$DIR/logs" SPARK_CONF_DIR="$DIR/conf"
export SPARK_IDENT_STRING="logmesh-$MASTER_PORT"  # pid and log names: one cluster per master port
export SPARK_DAEMON_MEMORY="${LOGMESH_SPARK_DAEMON_MEMORY:-512m}"
export PYSPARK_PYTHON="$PY"
daemon() { "$SPARK_HOME/sbin/spark-daemon.sh" "$@"; }

# The master's /json/ as one line per fact, or nothing when it does not answer.
master_state() {
  "$PY" - "http://$HOST:$MASTER_UI_PORT/json/" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
state = json.load(urllib.request.urlopen(sys.argv[1], timeout=3))
print(f"master {state['url']} {state['status']}")
for w in state["workers"]:
    print(f"worker {w['id']} {w['state']} cores {w['coresused']}/{w['cores']} memory {w['memoryused']}/{w['memory']} MiB")
for a in state["activeapps"]:
    print(f"app {a['id']} {a['name']} {a['state']} cores {a['cores']}")
EOF
}

alive_workers() { master_state | grep -c '^worker .* ALIVE' || true; }

start() {
  mkdir -p "$SPARK_PID_DIR" "$SPARK_LOG_DIR" "$SPARK_CONF_DIR"
  daemon start "$MASTER_CLASS" 1 --host "$HOST" --port "$MASTER_PORT" --webui-port "$MASTER_UI_PORT" >/dev/null
  for ((i = 1; i <= WORKERS; i++)); do
    mkdir -p "$DIR/work/worker-$i"
    daemon start "$WORKER_CLASS" "$i" --host "$HOST" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
      --webui-port "$((WORKER_UI_PORT ? WORKER_UI_PORT + i - 1 : 0))" --work-dir "$DIR/work/worker-$i" "$MASTER_URL" >/dev/null
  done
  local deadline=$((SECONDS + ${LOGMESH_SPARK_START_TIMEOUT_S:-120}))
  until [[ "$(alive_workers)" -ge "$WORKERS" ]]; do
    if ((SECONDS > deadline)); then
      master_state >&2
      die "not all $WORKERS workers ALIVE after ${LOGMESH_SPARK_START_TIMEOUT_S:-120}s; logs in $SPARK_LOG_DIR"
    fi
    sleep 1
  done
  say "$MASTER_URL up with $WORKERS workers ($WORKER_CORES core, $WORKER_MEMORY each); master UI http://$HOST:$MASTER_UI_PORT"
}

stop() {
  for ((i = WORKERS; i >= 1; i--)); do daemon stop "$WORKER_CLASS" "$i" >/dev/null || true; done
  daemon stop "$MASTER_CLASS" 1 >/dev/null || true
  say "stopped $MASTER_URL"
}

status() {
  local state
  state="$(master_state)"
  [[ -n "$state" ]] || { say "no master answers at http://$HOST:$MASTER_UI_PORT ($MASTER_URL)"; return 3; }
  echo "$state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
