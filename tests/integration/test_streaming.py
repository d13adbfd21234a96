"""The Spark job end to end on real parts: the Kafka broker, Spark's Kafka source, the embedder and
scorer servers, and the embedded Qdrant engine. Needs the broker at 127.0.0.1:9092 (.ci/run starts it)."""
from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from logmesh.ingest.hdfs import block_ids, parse_line
from logmesh.ingest.producer import run_ingest
from logmesh.streaming.job import StreamConfig, run
from logmesh.streaming.vector_store import open_store
from logmesh.v1 import score_pb2

from kafka_helpers import BOOTSTRAP, CommittedCount, _consume_all, _topics  # noqa: F401 (used below)

pytestmark = [pytest.mark.kafka, pytest.mark.spark]
LINES = 3000


@pytest.fixture(scope="module")
def first_lines(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "HDFS_head.log"
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as src:
        path.write_text("".join(next(src) for _ in range(LINES)))
    return path


@pytest.mark.parametrize("plan", ["single-pass", "two-branch"])
def test_replay_scores_every_line_once_and_restart_adds_nothing(admin, embedder_server, scorer_server, first_lines,
                                                                data_dir, tmp_path, plan):
    """Both block-state plans: the single pass of a new checkpoint, and the two branches a checkpoint
    started before the single pass keeps (its Spark folder exists but no plan is recorded)."""
    from logmesh.streaming.job import block_plan
    config = _topics(admin, f"t{uuid.uuid4().hex[:8]}")
    config.embedder, config.scorer = embedder_server.address, scorer_server.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    if plan == "two-branch":
        (tmp_path / "checkpoint" / "spark").mkdir(parents=True)
    summary = run_ingest(first_lines, BOOTSTRAP, config.topic, labels_csv=data_dir / "anomaly_label.csv",
                         progress=False)
    assert summary.produced == LINES
    bad = [b"\xff\x00not protobuf", b"", score_pb2.ScoreResult(record_id="x", score=0.5).SerializeToString()]
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i, value in enumerate(bad):
        producer.produce(config.topic, value=value, key=f"bad-{i}".encode(), partition=0)
    producer.flush(30)

    reports = []
    run(config, on_report=reports.append)
    assert block_plan(config.checkpoint, config.block_clock, record=False) == plan

    scores = _consume_all(config.scores_topic)
    ids = Counter(score_pb2.ScoreResult.FromString(m.value()).record_id for m in scores)
    assert len(ids) == LINES and max(ids.values()) == 1  # every line exactly once
    dlq = _consume_all(config.dlq_topic)
    assert sorted(m.value() for m in dlq) == sorted(bad)  # bytes intact
    for m in dlq:
        headers = dict(m.headers())
        assert headers["source.topic"].decode() == config.topic and headers["source.partition"] == b"0"
        assert m.key().startswith(b"bad-") and headers["error"]
    flagged = {r.record_id for r in (score_pb2.ScoreResult.FromString(m.value()) for m in scores)
               if r.verdict == score_pb2.VERDICT_ANOMALY}
    blocks = {b for line in first_lines.read_text().splitlines() for b in block_ids(line)}
    store = open_store(path=config.qdrant_path)
    assert store.count({"kind": "block"}) == len(blocks)
    assert store.count({"kind": "line"}) == len(flagged)
    # a block point carries its whole story so far, in log order
    block = "blk_-1608999687919862906"
    expected = [parse_line(l).template_id for l in first_lines.read_text().splitlines() if block in l]
    point = store.retrieve([block])[block]
    assert point.payload["events"] == expected and point.payload["verdict"] in ("normal", "anomaly")
    assert abs(float((point.vector ** 2).sum()) - 1.0) < 0.2  # a mean of unit vectors of near-identical lines
    store.close()
    # the Kafka ledger (written in each task's transaction) knows each partition's last committed batch
    from logmesh.streaming.outputs import LEDGER_TOPIC, job_id, read_ledger
    ledger = read_ledger(BOOTSTRAP, LEDGER_TOPIC, job_id(config.checkpoint))
    written = [r for r in reports if r.partitions and not r.skipped]
    assert ledger and max(ledger.values()) == max(r.batch_id for r in written)
    # the work ran in executor tasks: the Python workers that made the RPCs and wrote are not this driver
    import os
    work_pids = {p for r in reports for p in r.work_pids}
    assert work_pids and os.getpid() not in work_pids
    assert os.getpid() not in {p for r in reports for p in r.task_pids}
    assert sum(r.scored for r in reports) == LINES
    # every write task does work: the single pass's two bucket keys land in distinct shuffle partitions (keys
    # 0 and 1 both hashed to partition 1, so one task did every line while the other core idled), and both
    # commit; two branches have the lines branch's 4 Kafka partitions and the state's 2 (whose block rows
    # write only alerts, so not every one commits a transaction)
    assert max(r.partitions for r in reports) == (2 if plan == "single-pass" else 4 + 2), [r.partitions for r in reports]
    if plan == "single-pass":
        assert sorted(ledger) == [0, 1], ledger

    run(config)  # a restart from the checkpoint: nothing new to read, nothing written again
    assert len(_consume_all(config.scores_topic)) == LINES
    store = open_store(path=config.qdrant_path)
    assert store.count({"kind": "block"}) == len(blocks) and store.count({"kind": "line"}) == len(flagged)
    store.close()



def test_store_lines_all_keeps_one_point_per_line(admin, embedder_server, scorer_server, first_lines, tmp_path):
    config = _topics(admin, f"t{uuid.uuid4().hex[:8]}")
    config.embedder, config.scorer, config.store_lines = embedder_server.address, scorer_server.address, "all"
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    run_ingest(first_lines, BOOTSTRAP, config.topic, limit=500, progress=False)
    run(config)
    run(config)
    store = open_store(path=config.qdrant_path)
    assert store.count({"kind": "line"}) == 500
    store.close()


def test_a_scorer_that_comes_up_late_is_waited_for_and_nothing_is_dropped(embedder_server, trained_models,
                                                                          first_lines):
    """The executor-side work's retry with backoff: the scorer is down when the task starts and up 2 s
    later; every line comes back scored, and the scorer got each line's vector (ScoreItem.embedding)."""
    import socket
    import threading
    from logmesh.scorer.service import serve
    from logmesh.streaming.decode import KafkaRow
    from logmesh.streaming.work import WorkSettings, score_messages

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [KafkaRow("logs", 0, n, None, parse_line(line, "HDFS_head.log", n + 1).SerializeToString())
            for n, line in enumerate(first_lines.read_text().splitlines()[:400])]
    servers = []
    threading.Timer(2.0, lambda: servers.append(serve(port, trained_models, embedder_server.address))).start()
    try:
        lines = score_messages(rows, WorkSettings(embedder_server.address, f"127.0.0.1:{port}", retry_budget_s=60))
    finally:
        for server in servers:
            server.stop(0)
    assert all(r is not None for r in lines.results) and not any(lines.rejected)
    assert len({r.record_id for r in lines.results}) == 400


@pytest.mark.parametrize("command", ["stream", "ingest"])
def test_a_bad_kafka_option_is_refused_with_librdkafkas_reason(command):
    """--kafka-option KEY=VALUE goes to librdkafka as is (SASL/SSL settings); a property it does not know
    or a malformed option stops the command before it connects anywhere, saying which and why."""
    import subprocess
    import sys
    logmesh = str(Path(sys.executable).with_name("logmesh"))
    done = subprocess.run([logmesh, command, "--kafka-option", "sasl.mechanism=PLAIN",
                           "--kafka-option", "no.such.property=1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert 'No such configuration property: "no.such.property"' in done.stderr and "--kafka-option" in done.stderr
    done = subprocess.run([logmesh, command, "--kafka-option", "security.protocol"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "expected KEY=VALUE" in done.stderr


def test_kafka_options_reach_the_job_config():
    import argparse
    from logmesh.streaming.job import add_args, config_from_args
    p = argparse.ArgumentParser()
    add_args(p)
    options = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "logmesh",
               "sasl.password": "pw=with=equals"}
    config = config_from_args(p.parse_args([a for k, v in options.items() for a in ("--kafka-option", f"{k}={v}")]))
    assert config.kafka_options == options
    with pytest.raises(SystemExit):  # the set is checked as a whole: SASL without credentials is refused
        config_from_args(p.parse_args(["--kafka-option", "security.protocol=SASL_SSL",
                                       "--kafka-option", "sasl.mechanism=PLAIN"]))


def test_spark_kafka_source_options_default_a_short_fetch_wait_that_the_user_can_override():
    """The Kafka source waits at most 10 ms on an empty fetch (the broker's 500 ms default held up the
    micro-batch after every lull); the user's Kafka settings reach the source as kafka.KEY and win."""
    from logmesh.streaming.job import StreamConfig, kafka_source_options
    options = kafka_source_options(StreamConfig(topic="t", kafka_options={"security.protocol": "SASL_SSL"}))
    assert options["kafka.fetch.max.wait.ms"] == "10" and options["subscribe"] == "t"
    assert options["kafka.security.protocol"] == "SASL_SSL" and options["maxOffsetsPerTrigger"] == "40000"
    mine = kafka_source_options(StreamConfig(spark_kafka_options={"fetch.max.wait.ms": "250"}))
    assert mine["kafka.fetch.max.wait.ms"] == "250"


def test_a_checkpoint_keeps_the_block_clock_it_started_with(tmp_path, capsys):
    """The clock is part of the checkpointed plan (watermark, timeout kind): recorded at the first start,
    another one refused up front with what to do; `logmesh stream` says it and exits 2 before Spark starts."""
    import argparse
    from logmesh.streaming.job import add_args, check_block_clock, config_from_args
    checkpoint = tmp_path / "cp"
    check_block_clock(checkpoint, "event")
    check_block_clock(checkpoint, "event")  # the same clock again: fine
    with pytest.raises(ValueError, match="--block-clock event, or use a new --checkpoint"):
        check_block_clock(checkpoint, "processing")
    p = argparse.ArgumentParser()
    add_args(p)
    with pytest.raises(SystemExit) as exit_:
        config_from_args(p.parse_args(["--checkpoint", str(checkpoint)]))
    assert exit_.value.code == 2 and "closes blocks on the event clock" in capsys.readouterr().err
    older = tmp_path / "older"  # started before the clock was recorded: it ran on the processing clock
    (older / "spark").mkdir(parents=True)
    check_block_clock(older, "processing", record=False)
    with pytest.raises(ValueError, match="processing clock"):
        check_block_clock(older, "event")


def test_a_checkpoint_keeps_the_block_plan_it_started_with(tmp_path):
    """New checkpoints on the processing clock take the single pass, the event clock two branches, and a
    checkpoint started before plans were recorded (two Kafka sources in its offset log) keeps two."""
    from logmesh.streaming.block_sessions import with_block_sessions
    from logmesh.streaming.job import block_plan
    assert block_plan(tmp_path / "new", "processing") == "single-pass"
    (tmp_path / "new" / "spark").mkdir()  # the query has run since: the recorded plan holds
    assert block_plan(tmp_path / "new", "processing") == "single-pass"
    assert block_plan(tmp_path / "event", "event") == "two-branch"
    (tmp_path / "older" / "spark").mkdir(parents=True)
    assert block_plan(tmp_path / "older", "processing") == "two-branch"
    assert (tmp_path / "older" / "block-plan").read_text().strip() == "two-branch"
    assert block_plan(tmp_path / "unrecorded", "processing", record=False) == "single-pass"
    assert not (tmp_path / "unrecorded").exists()
    with pytest.raises(ValueError, match="processing clock only"):
        with_block_sessions(None, 1000, "event", plan="single-pass")


def test_a_single_pass_checkpoint_keeps_its_bucket_keys_and_an_older_one_keeps_0_and_1(tmp_path):
    """New single-pass checkpoints record keys that Spark's shuffle sends to distinct partitions; a single-pass
    checkpoint started before (its state keyed 0 and 1) keeps those; two branches use their own 32 buckets."""
    from logmesh.streaming.block_sessions import _murmur3_int
    from logmesh.streaming.job import SHUFFLE_PARTITIONS, bucket_keys
    keys = bucket_keys(tmp_path / "new", "single-pass")
    assert sorted(_murmur3_int(k) % SHUFFLE_PARTITIONS for k in keys) == list(range(SHUFFLE_PARTITIONS))
    (tmp_path / "new" / "spark").mkdir()
    assert bucket_keys(tmp_path / "new", "single-pass") == keys  # recorded at the first start
    (tmp_path / "older" / "spark").mkdir(parents=True)
    assert bucket_keys(tmp_path / "older", "single-pass") is None
    assert bucket_keys(tmp_path / "event", "two-branch") is None
    # Spark's own hash of an int (F.hash, the function HashPartitioning uses) agrees on the first keys:
    # pinned from pyspark 4.3 (spark.range(4).select(F.hash(F.col("id").cast("int"))))
    assert [_murmur3_int(i) for i in range(4)] == [933211791, -559580957, 1765031574, -1823081949]


def test_the_driver_serves_the_jobs_metrics(admin, embedder_server, scorer_server, first_lines, data_dir, tmp_path):
    """`--metrics-port`: the driver's /metrics (scraped over HTTP, read with prometheus_client's parser) counts
    what the job did: every line read and scored, the micro-batches, the blocks, and a lag of 0 on every input
    partition once the topic is drained."""
    import socket
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from logmesh.runtime.metrics import stop_metrics
    config = _topics(admin, f"t{uuid.uuid4().hex[:8]}")
    config.embedder, config.scorer = embedder_server.address, scorer_server.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        config.metrics_port = s.getsockname()[1]

    def scrape() -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    lines = 600
    run_ingest(first_lines, BOOTSTRAP, config.topic, limit=lines, progress=False)
    reports = []
    try:
        run(config, on_report=reports.append)
        # the server outlives the query, in this process; Spark's listener bus may deliver the last
        # batch's progress a moment after the query ended
        deadline = time.monotonic() + 30
        while True:
            after = scrape()
            lag = {dict(k[1])["partition"]: v for k, v in after.items()
                   if k[0] == "logmesh_stream_kafka_consumer_lag" and dict(k[1])["topic"] == config.topic}
            if (len(lag) == 4 and set(lag.values()) == {0}) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        stop_metrics()
    # the registry is the process's: other tests' jobs may have counted before, so compare with what this
    # job's own reports say, and with the lines produced
    assert sum(r.scored for r in reports) == lines
    assert after[("logmesh_stream_lines_scored_total", ())] >= lines
    assert after[("logmesh_stream_input_rows_total", ())] >= lines
    assert after[("logmesh_stream_micro_batches_total", (("kind", "data"),))] >= 1
    assert after[("logmesh_stream_blocks_scored_total", ())] >= sum(r.blocks for r in reports) > 0
    assert after[("logmesh_stream_micro_batch_duration_seconds_count", ())] >= 1
    assert after[("logmesh_build_info", (("component", "stream"),))] == 1
    assert sorted(lag) == ["0", "1", "2", "3"] and set(lag.values()) == {0}, lag
    producers = {dict(k[1])["producer"]: v for k, v in after.items() if k[0] == "logmesh_stream_write_tasks_total"}
    # the first write of each partition reuses a producer the Python workers' warm-up made (sink.warm_producers)
    assert producers.get("warm", 0) >= 1, producers
