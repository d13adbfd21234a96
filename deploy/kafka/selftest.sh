#!/usr/bin/env bash
# End-to-end check of the local Kafka stack: fetch jars, broker start/stop idempotence, topics, confluent-kafka round trip, Spark's Kafka source.
#
# Runs its own broker (state in $REPO/.cache/kafka-selftest, wiped first; port LOGMESH_KAFKA_PORT,
# default the first free pair from 39092 up), so it never touches a developer's broker on 9092.
# The Spark part runs when pyspark is importable from the venv and is skipped with a notice
# otherwise (LOGMESH_SELFTEST_SPARK=1 makes it mandatory). Stops at the first failure with a
# non-zero exit; the broker is stopped on every exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${LOGMESH_PYTHON:-$REPO/.venv/bin/python}"
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -z "${LOGMESH_KAFKA_PORT:-}" ]]; then # first free pair of 39092/39093, 39192/39193, ...
  for p in $(seq 39092 100 39992); do
    if port_free "$p" && port_free $((p + 1)); then LOGMESH_KAFKA_PORT=$p; break; fi
  done
fi
export LOGMESH_KAFKA_PORT="${LOGMESH_KAFKA_PORT:?no free port pair in 39092..39993; set LOGMESH_KAFKA_PORT}"
export LOGMESH_KAFKA_DIR="${LOGMESH_SELFTEST_DIR:-$REPO/.cache/kafka-selftest}"
KAFKA="$HERE/kafka.sh"
BOOTSTRAP="127.0.0.1:$LOGMESH_KAFKA_PORT"
N=20

step() { echo "== selftest: $*"; }
fail() { echo "selftest: FAILED: $*" >&2; exit 1; }
t0=$SECONDS

[[ -x "$PY" ]] || fail "no python at $PY: run 'make venv' (or set LOGMESH_PYTHON)"
"$PY" -c 'import confluent_kafka' 2>/dev/null || fail "confluent_kafka not importable from $PY: pip install confluent-kafka"

step "fetch broker jars"
"$HERE/fetch.sh"

"$KAFKA" stop >/dev/null # a leftover selftest broker from an aborted run
rm -rf "$LOGMESH_KAFKA_DIR"
trap '"$KAFKA" stop >/dev/null 2>&1 || true' EXIT

step "start twice, wait, status"
"$KAFKA" start
out="$("$KAFKA" start)"
echo "$out"
grep -q "already running" <<<"$out" || fail "second start did not report 'already running'"
"$KAFKA" wait
"$KAFKA" status

step "topics twice"
"$KAFKA" topics
out="$("$KAFKA" topics)"
echo "$out"
[[ "$(grep -c ' exists (' <<<"$out")" == 4 ]] || fail "second 'topics' run did not find all 4 topics"

step "confluent-kafka: produce $N, consume $N on logmesh.logs"
"$PY" - "$BOOTSTRAP" "$N" <<'EOF'
import sys, time, uuid
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
bs, n = sys.argv[1], int(sys.argv[2])
md = AdminClient({"bootstrap.servers": bs}).list_topics(timeout=10)
parts = {t: len(m.partitions) for t, m in md.topics.items() if t.startswith("logmesh.")}
assert parts == {"logmesh.logs": 4, "logmesh.scores": 4, "logmesh.anomalies": 1, "logmesh.dlq": 1}, parts
p = Producer({"bootstrap.servers": bs, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
errors = []
for i in range(n):
    p.produce("logmesh.logs", key=f"blk_{i % 5}".encode(), value=f"line {i}".encode(),
              on_delivery=lambda err, msg: err and errors.append(err))
assert p.flush(15) == 0 and not errors, errors
c = Consumer({"bootstrap.servers": bs, "group.id": f"selftest-{uuid.uuid4().hex[:8]}",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe(["logmesh.logs"])
got, deadline = [], time.time() + 30
while len(got) < n and time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    assert m.error() is None, m.error()
    got.append((m.key().decode(), m.value().decode(), m.partition()))
c.commit(asynchronous=False)
c.close()
assert sorted(v for _, v, _ in got) == sorted(f"line {i}" for i in range(n)), got
assert len({p_ for _, _, p_ in got}) > 1, "all keys landed in one partition"
print(f"confluent-kafka: produced and consumed {len(got)} messages over {len({p_ for _, _, p_ in got})} partitions")
EOF

if "$PY" -c 'import pyspark' 2>/dev/null; then
  step "fetch Spark Kafka connector, then pyspark local[1] reads logmesh.logs (batch + availableNow stream) and writes logmesh.scores"
  "$REPO/deploy/spark/fetch.sh"
  JARS="$(cat "$REPO/.cache/spark-jars/jars.txt")"
  CKPT="$(mktemp -d)"
  SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$PY" "$PY" - "$BOOTSTRAP" "$N" "$JARS" "$CKPT" <<'EOF'
import sys, time
from pyspark.sql import SparkSession
bs, n, jars, ckpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = time.time()
spark = (SparkSession.builder.master("local[1]").appName("logmesh-kafka-selftest")
         .config("spark.jars", jars).config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "1").config("spark.ui.showConsoleProgress", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("WARN")
src = dict(**{"kafka.bootstrap.servers": bs}, subscribe="logmesh.logs", startingOffsets="earliest")
rows = (spark.read.format("kafka").options(**src).option("endingOffsets", "latest").load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v", "partition", "offset").collect())
assert sorted(r.v for r in rows) == sorted(f"line {i}" for i in range(n)), rows
print(f"spark batch read: {len(rows)} rows from {len({r.partition for r in rows})} partitions")
q = (spark.readStream.format("kafka").options(**src).load()
     .writeStream.format("memory").queryName("selftest_stream").option("checkpointLocation", ckpt)
     .trigger(availableNow=True).start())
q.awaitTermination(120)
streamed = spark.sql("SELECT count(*) AS c FROM selftest_stream").first().c
assert streamed == n, streamed
print(f"spark availableNow stream: {streamed} rows")
(spark.createDataFrame([(f"blk_{i}", f"score {i}") for i in range(3)], "key string, value string")
 .write.format("kafka").option("kafka.bootstrap.servers", bs).option("topic", "logmesh.scores").save())
back = (spark.read.format("kafka").options(**{"kafka.bootstrap.servers": bs}).option("subscribe", "logmesh.scores")
        .option("startingOffsets", "earliest").load().count())
assert back == 3, back
print(f"spark kafka sink: wrote and read back {back} rows; spark {spark.version}, {time.time() - t:.1f}s")
spark.stop()
EOF
  rm -rf "$CKPT"
elif [[ "${LOGMESH_SELFTEST_SPARK:-0}" == 1 ]]; then
  fail "pyspark not importable from $PY and LOGMESH_SELFTEST_SPARK=1"
else
  step "SKIPPED Spark check: pyspark not importable from $PY"
fi

"$KAFKA" status
step "stop twice"
"$KAFKA" stop
out="$("$KAFKA" stop)"
echo "$out"
grep -q "not running" <<<"$out" || fail "second stop did not report 'not running'"
if "$KAFKA" status >/dev/null; then fail "status says running after stop"; fi
trap - EXIT
echo "selftest: OK in $((SECONDS - t0))s"
