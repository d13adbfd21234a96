"""Bad input on Kafka: what the real streaming job does with messages that are not LogRecords, and the
scorer's dead-letter count (GetStats.dead_letters). Needs the broker at 127.0.0.1:9092.

One run of the real job (Spark's Kafka source, the sink, the real embedder and scorer) over a topic where
good lines of the real log surround each kind of bad input; then each bad input is looked up in the DLQ
topic: its bytes, its key, where it came from (source.topic/partition/offset headers) and why (error).
Bad inputs that make the job fail instead get a run of their own.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from google.protobuf.json_format import MessageToJson

from logmesh.ingest.hdfs import parse_line
from logmesh.v1 import score_pb2
from waiting import wait_for

pytestmark = [pytest.mark.kafka]
BOOTSTRAP = "127.0.0.1:9092"
GOOD_LINES = 300
BROKER_MAX = 10_485_760  # message.max.bytes in deploy/kafka/kafka.sh
PRODUCER = {"bootstrap.servers": BOOTSTRAP, "message.max.bytes": BROKER_MAX, "compression.type": "none"}
NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")


# --- helpers: topics, producing with known coordinates, a read_committed reader that stops at EOF ---

def _config(admin, logs_partitions: int = 2):  # type: ignore[no-untyped-def]
    from kafka_helpers import _topics
    return _topics(admin, f"dl{uuid.uuid4().hex[:8]}", logs_partitions=logs_partitions, scores_partitions=1)


def _produce(topic: str, messages: list[tuple[bytes | None, bytes | None, int]]) -> list[tuple[int, int]]:
    """Produces (key, value, partition) in order; returns each message's (partition, offset)."""
    producer = Producer(PRODUCER)
    placed: list[tuple[int, int] | None] = [None] * len(messages)

    def delivered(i: int):  # type: ignore[no-untyped-def]
        def report(err, msg) -> None:  # type: ignore[no-untyped-def]
            assert err is None, f"message {i} not delivered: {err}"
            placed[i] = (msg.partition(), msg.offset())
        return report

    for i, (key, value, partition) in enumerate(messages):
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert all(p is not None for p in placed)
    return placed  # type: ignore[return-value]


def read_committed(topic: str, timeout: float = 60.0) -> list:
    """Every committed message of `topic`, reading each partition until its end (partition EOF)."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "fetch.max.bytes": BROKER_MAX * 2,
                         "max.partition.fetch.bytes": BROKER_MAX + 1024, "receive.message.max.bytes": BROKER_MAX * 3})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out, at_end, deadline = [], set(), time.monotonic() + timeout
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"timed out reading {topic} ({len(out)} messages so far)"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_end.add(msg.partition())
                continue
            out.append(msg)
        return out
    finally:
        consumer.close()


# --- the bad inputs ---

def _score_result_bytes() -> bytes:
    """A real ScoreResult as the job writes it to logmesh.scores: the wrong message type on the input topic."""
    record = parse_line(NORMAL_LINE, "x", 1)
    return score_pb2.ScoreResult(record_id=record.id, verdict=score_pb2.VERDICT_NORMAL, score=0.04, confidence=1.0,
                                 anomaly_votes=0, normal_votes=5, template_id="E9", block_ids=record.block_ids,
                                 message=record.message, component=record.component,
                                 votes=[score_pb2.ModelVote(model="mlp", verdict=1, score=0.03)]).SerializeToString()


def _truncated_record() -> bytes:
    """A LogRecord cut off in the middle of its message field (a cut between fields would still parse)."""
    record = parse_line(NORMAL_LINE, "x", 1)
    data = record.SerializeToString()
    return data[:data.index(record.message.encode()) + 10]


# case -> (key, value, what the DLQ "error" header must say)
SURVIVABLE = {
    "malformed protobuf bytes": (b"bad-malformed", b"\xff\x00not protobuf", "not a LogRecord"),
    "truncated LogRecord": (b"bad-truncated", _truncated_record(), "not a LogRecord"),
    "empty value": (b"bad-empty", b"", "empty value"),
    "null value (tombstone)": (b"bad-null", None, "empty value"),
    "wrong message type: ScoreResult": (b"bad-scoreresult", _score_result_bytes(), "not a LogRecord"),
    "wrong message type: BlockVerdict": (b"bad-blockverdict", score_pb2.BlockVerdict(
        block_id="blk_1", verdict=2, score=0.9, events=["E5", "E22"]).SerializeToString(), "not a LogRecord"),
    "LogRecord as JSON text": (b"bad-json", MessageToJson(parse_line(NORMAL_LINE, "x", 1)).encode(), "not a LogRecord"),
    "raw text log line": (b"bad-text", NORMAL_LINE.encode(), "not a LogRecord"),
    "raw blob of 900,000 bytes": (b"bad-blob-900k", b"\xfe" * 900_000, "not a LogRecord"),
    "LogRecord without message": (b"bad-nomessage", parse_line(NORMAL_LINE, "x", 1).__class__(
        id="x:1", component="dfs.X").SerializeToString(), "without id or message"),
    "message with no key": (None, b"\x08\x96\x01 no key either", "not a LogRecord"),
}


@pytest.fixture(scope="module")
def one_run(admin, embedder_server, scorer_server, data_dir, tmp_path_factory):
    """Good lines of the real log with every survivable bad input among them, run through the job once."""
    from logmesh.streaming.job import run
    config = _config(admin)
    tmp = tmp_path_factory.mktemp("dlq-run")
    config.embedder, config.scorer = embedder_server.address, scorer_server.address
    config.qdrant_path, config.checkpoint = str(tmp / "qdrant"), str(tmp / "checkpoint")
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as f:
        records = [parse_line(next(f), "HDFS_20000.log", n + 1) for n in range(GOOD_LINES)]
    messages: list[tuple[bytes | None, bytes | None, int]] = []
    spots = {GOOD_LINES * (i + 1) // (len(SURVIVABLE) + 1): case for i, case in enumerate(SURVIVABLE)}
    cases_at: dict[int, str] = {}
    for n, record in enumerate(records):
        if n in spots:  # a bad input between good lines, alternating partitions
            key, value, _ = SURVIVABLE[spots[n]]
            cases_at[len(messages)] = spots[n]
            messages.append((key, value, len(cases_at) % 2))
        key = record.block_ids[0].encode()
        messages.append((key, record.SerializeToString(), zlib.crc32(key) % 2))
    placed = _produce(config.topic, messages)
    started = time.monotonic()
    run(config)
    seconds = time.monotonic() - started
    dlq = read_committed(config.dlq_topic)
    scores = read_committed(config.scores_topic)
    where = {case: placed[i] for i, case in cases_at.items()}
    return {"config": config, "records": records, "dlq": dlq, "scores": scores, "where": where, "seconds": seconds}


@pytest.mark.spark
def test_good_lines_around_bad_input_are_all_scored_once(one_run):
    ids = Counter(score_pb2.ScoreResult.FromString(m.value()).record_id for m in one_run["scores"])
    assert set(ids) == {r.id for r in one_run["records"]} and max(ids.values()) == 1
    assert len(one_run["dlq"]) == len(SURVIVABLE)  # the bad inputs and nothing else


def _dlq_entry(run, case: str):  # type: ignore[no-untyped-def]
    partition, offset = run["where"][case]
    found = [m for m in run["dlq"] if dict(m.headers() or [])["source.partition"] == str(partition).encode()
             and dict(m.headers() or [])["source.offset"] == str(offset).encode()]
    assert len(found) == 1, f"{case}: {len(found)} DLQ messages for {partition}/{offset}"
    return found[0]


@pytest.mark.spark
@pytest.mark.parametrize("case", list(SURVIVABLE))
def test_each_bad_input_lands_in_the_dlq_intact(one_run, case, reliability):
    key, value, why = SURVIVABLE[case]
    entry = _dlq_entry(one_run, case)
    headers = dict(entry.headers())
    partition, offset = one_run["where"][case]
    ids = Counter(score_pb2.ScoreResult.FromString(m.value()).record_id for m in one_run["scores"])
    scored_once = set(ids) == {r.id for r in one_run["records"]} and max(ids.values()) == 1
    reliability("kafka", case, f"dead-lettered with key {'kept' if entry.key() == key else 'CHANGED'}, "
                               f"{'value intact' if entry.value() == value else 'value CHANGED'} "
                               f"({0 if value is None else len(value):,} bytes), source "
                               f"{headers['source.topic'].decode()}/{partition}/{offset}; error: "
                               f"{headers['error'].decode()[:120]}; the {GOOD_LINES} good lines around it "
                               f"were {'all scored once' if scored_once else 'NOT all scored once'}",
                lost="nothing" if entry.value() == value else "the null value (now empty bytes)")
    assert entry.key() == key
    assert entry.value() == value
    assert headers["source.topic"].decode() == one_run["config"].topic
    assert why in headers["error"].decode()
    assert scored_once


# --- bad inputs that stop the job: each gets its own run ---

def _run_with(admin, embedder_server, scorer_server, tmp_path, key: bytes, value: bytes):  # type: ignore[no-untyped-def]
    from logmesh.streaming.job import run
    config = _config(admin, logs_partitions=1)
    config.embedder, config.scorer = embedder_server.address, scorer_server.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    config.max_query_restarts = 0  # a job that restarts its failed query would only replay the same batch
    config.retry_budget_s = 20.0  # a write that cannot succeed is retried this long before the batch fails
    good = [parse_line(NORMAL_LINE, "good", n).SerializeToString() for n in (1, 2)]
    placed = _produce(config.topic, [(b"blk_3587508140051953248", good[0], 0), (key, value, 0),
                                     (b"blk_3587508140051953248", good[1], 0)])
    error = None
    try:
        run(config)
    except Exception as exc:  # noqa: BLE001 - recorded, then asserted on
        error = exc
    dlq = read_committed(config.dlq_topic)
    scored = {score_pb2.ScoreResult.FromString(m.value()).record_id for m in read_committed(config.scores_topic)}
    return config, placed[1], dlq, scored, error


def _last_line(error: Exception) -> str:
    """The root cause at the end of a Spark/py4j traceback."""
    return [line.strip() for line in str(error).splitlines() if line.strip()][-1][:220]


HUGE_LOGRECORD = parse_line(NORMAL_LINE + " " + "y" * 100_000, "huge", 1)


BLOB = b"\xfe" * (BROKER_MAX - 64 * 1024)
ONE_RUN_EACH = {  # case: (key, value, what the DLQ's error header must say)
    f"LogRecord with a {len(HUGE_LOGRECORD.message):,}-byte message (limit 65,536)":
        (b"bad-huge-record", HUGE_LOGRECORD.SerializeToString(), "65536"),
    f"raw blob of {len(BLOB):,} bytes (broker max {BROKER_MAX:,})":
        (b"bad-blob", BLOB, f"value is {len(BLOB)} bytes"),
}


@pytest.mark.spark
@pytest.mark.parametrize("case", list(ONE_RUN_EACH))
def test_an_oversized_value_is_dead_lettered_and_the_job_goes_on(admin, embedder_server, scorer_server, tmp_path,
                                                                reliability, case):
    key, value, why = ONE_RUN_EACH[case]
    config, (partition, offset), dlq, scored, error = _run_with(
        admin, embedder_server, scorer_server, tmp_path, key, value)
    reliability("kafka", case,
                f"job failed: {_last_line(error)}" if error else f"{len(dlq)} DLQ message(s), {len(scored)} lines scored",
                lost="the batch (the job stops; a restart replays the same batch)" if error else "nothing")
    assert error is None
    assert scored == {"good:1", "good:2"}
    [entry] = dlq
    headers = dict(entry.headers())
    assert entry.value() == value and entry.key() == key
    assert headers["source.offset"] == str(offset).encode() and why in headers["error"].decode()


# --- GetStats.dead_letters: the scorer reads the DLQ's count from Kafka ---

@pytest.fixture()
def dlq_topic(admin) -> str:
    name = f"dl{uuid.uuid4().hex[:8]}.dlq"
    for f in admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)]).values():
        f.result(30)
    return name


def test_get_stats_counts_the_dead_letter_topic(dlq_topic, embedder_server, trained_models, scorer_server, capsys):
    from logmesh import cli
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, embedder_server.address, reload_interval=60,
                   kafka_bootstrap=BOOTSTRAP, dlq_topic=dlq_topic)
    try:
        with ScorerClient(server.address) as client:
            client.wait_until_serving(30)
            first = wait_for(lambda: (lambda s: s if s.HasField("dead_letters") else None)(client.stats()))
            assert first.dead_letters == 0
            _produce(dlq_topic, [(b"k", b"x", 0), (b"k", b"y", 1), (None, b"", 1)])
            assert wait_for(lambda: client.stats().dead_letters == 3)
            # cached: many calls in a row cost no Kafka round trip each
            started = time.monotonic()
            for _ in range(50):
                client.stats()
            assert time.monotonic() - started < 2.0
        assert cli.main(["stats", "--scorer", server.address]) == 0
        assert json.loads(capsys.readouterr().out)["dead_letters"] == "3"  # the proto's field names, as grpcurl prints them
    finally:
        server.stop(0)
    with ScorerClient(scorer_server.address) as client:  # no --kafka-bootstrap/--dlq-topic: the field is absent
        assert not client.stats().HasField("dead_letters")


def test_the_count_is_of_committed_messages_not_offsets(dlq_topic):
    """The job writes the DLQ in transactions: commit markers take offsets and aborted records stay in the
    log, so the watermarks alone would overcount (here 2 + 1 + 1 + 1 = 5 offsets for 2 dead letters)."""
    from logmesh.scorer.dead_letters import DeadLetterCount
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": f"t-{uuid.uuid4()}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(dlq_topic, value=b"a", key=b"k", partition=0)
    producer.produce(dlq_topic, value=b"b", key=b"k", partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(dlq_topic, value=b"aborted", key=b"k", partition=0)
    producer.flush(30)
    producer.abort_transaction(30)
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4()}"})
    low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, 0), timeout=10)
    consumer.close()
    assert high - low == 5
    counter = DeadLetterCount(BOOTSTRAP, dlq_topic, ttl_s=0.2)
    try:
        assert wait_for(lambda: counter.value() == 2)
        producer.begin_transaction()  # more later: only the new ones are read
        producer.produce(dlq_topic, value=b"c", key=b"k", partition=1)
        producer.commit_transaction(30)
        assert wait_for(lambda: counter.value() == 3)
        time.sleep(1.0)
        assert counter.value() == 3
    finally:
        counter.close()


def test_serve_scorer_takes_the_kafka_flags():
    from logmesh.cli import build_parser
    args = build_parser().parse_args(["serve", "scorer", "--kafka-bootstrap", BOOTSTRAP, "--dlq-topic", "logmesh.dlq"])
    assert (args.kafka_bootstrap, args.dlq_topic) == (BOOTSTRAP, "logmesh.dlq")
    args = build_parser().parse_args(["serve", "scorer"])
    assert args.dlq_topic is None  # no DLQ count unless asked (the broker defaults to 127.0.0.1:9092)


def test_a_broker_that_goes_away_leaves_the_last_count_and_is_logged_once(dlq_topic, caplog):
    from confluent_kafka import Consumer as RealConsumer
    from logmesh.scorer.dead_letters import DeadLetterCount
    _produce(dlq_topic, [(b"k", b"x", 0), (b"k", b"y", 0)])
    counter = DeadLetterCount(BOOTSTRAP, dlq_topic, ttl_s=0.2, timeout_s=3.0)  # generous: a loaded box
    assert wait_for(lambda: counter.value() == 2)
    # "the broker goes away": the counter's client now talks to a port where nothing listens
    with counter._refreshing:
        counter._consumer.close()
        counter._consumer = RealConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "gone", "log_level": 0})
    caplog.clear()  # (a first read can fail while the new topic's metadata settles: that outage is over)
    with caplog.at_level(logging.INFO, logger="logmesh.scorer.dead_letters"):
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            assert counter.value() == 2  # the last known count, answered at once
            time.sleep(0.1)
    warnings = [r for r in caplog.records if r.name == "logmesh.scorer.dead_letters" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last known one" in warnings[0].getMessage()
    counter.close()


def test_a_broker_never_reached_leaves_the_field_absent(embedder_server, trained_models):
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, embedder_server.address, reload_interval=60,
                   kafka_bootstrap="127.0.0.1:1", dlq_topic="logmesh.dlq")
    try:
        with ScorerClient(server.address) as client:
            client.wait_until_serving(30)
            started = time.monotonic()
            for _ in range(5):
                assert not client.stats().HasField("dead_letters")
            assert time.monotonic() - started < 5.0
    finally:
        server.stop(0)
