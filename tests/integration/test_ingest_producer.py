"""logmesh.ingest.producer: pacing and errors without a broker; round trips through the REAL Kafka broker.

The `kafka` tests expect the broker of deploy/kafka/kafka.sh at 127.0.0.1:9092 (override with
LOGMESH_KAFKA_BOOTSTRAP, or LOGMESH_KAFKA_PORT as kafka.sh reads it). They fail, never skip, when
no broker answers: start one with `deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait`.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.broker import BrokerUnavailable, check_broker
from logmesh.ingest.ingest_args import add_ingest_args
from logmesh.ingest.pacing import TokenBucket
from logmesh.ingest.producer import run_ingest
from logmesh.ingest.summary import IngestSummary
from logmesh.ingest.reader import apply_label, iter_lines, load_block_labels
from logmesh.v1 import log_record_pb2 as lr

DATA = Path(__file__).resolve().parents[3] / "shared/data/hdfs"
HDFS_5K, LABELS = DATA / "HDFS_5k.log", DATA / "anomaly_label.csv"
BOOTSTRAP = (os.environ.get("LOGMESH_KAFKA_BOOTSTRAP")
             or f"127.0.0.1:{os.environ.get('LOGMESH_KAFKA_PORT', '9092')}")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


# ---- without a broker -------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_token_bucket_paces_to_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000.0, clock=clock, sleep=clock.sleep)
    for _ in range(5000):
        bucket.take()
    # a burst of 100 (a tenth of a second) is free, the other 4,900 take 4.9 s
    assert clock.now - 100.0 == pytest.approx(4.9, abs=1e-6)


def test_token_bucket_keeps_debt_when_sleep_wakes_early() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=1.0, clock=clock, sleep=lambda s: clock.sleep(s / 2))
    for _ in range(101):
        bucket.take()
    assert clock.now - 100.0 == pytest.approx(10.0, abs=0.2)  # half-sleeps are made up by later waits


def test_token_bucket_idle_time_earns_one_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)  # burst max(1, 5/10) = 1
    clock.now += 3600
    bucket.take()
    assert clock.slept == []
    bucket.take()
    assert clock.slept == [pytest.approx(0.2)]
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_no_broker_is_a_clear_error() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as err:
        run_ingest(HDFS_5K, bootstrap=bootstrap, connect_timeout=1.0, progress=False)
    assert time.monotonic() - started < 10
    assert str(err.value).startswith(
        f"no Kafka broker at {bootstrap}: start one with `deploy/kafka/kafka.sh start` (or make kafka-up)")


def test_cli_reports_no_broker_and_bad_input(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_ingest_args(parser)
    args = parser.parse_args([str(HDFS_5K), "--bootstrap", f"127.0.0.1:{_closed_port()}", "--connect-timeout", "1"])
    assert args.func(args) == 1
    assert "error: no Kafka broker at 127.0.0.1:" in capsys.readouterr().err
    args = parser.parse_args([str(tmp_path / "missing.log")])
    assert args.func(args) == 2  # fails before any connection attempt
    assert "no such log file" in capsys.readouterr().err
    defaults = parser.parse_args([])
    assert (defaults.paths, defaults.bootstrap, defaults.topic, defaults.rate, defaults.progress) == \
        (["-"], "127.0.0.1:9092", "logmesh.logs", None, None)


def test_summary_rates_and_text() -> None:
    s = IngestSummary(topic="t", bootstrap="b", lines_read=10, produced=8, failed=2, bytes=4_000_000, seconds=2.0)
    assert s.lines_per_s == 4.0 and s.mb_per_s == 2.0
    assert s.as_dict()["lines_per_s"] == 4.0
    assert "produced 8 to t (2 failed, 0 unparsed)" in str(s)
    with pytest.raises(ValueError):
        run_ingest(HDFS_5K, compression="brotli")


# ---- against the real broker ------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _broker() -> AdminClient | str:
    try:
        return check_broker(BOOTSTRAP, timeout=10.0)
    except BrokerUnavailable as exc:  # remembered, so each test fails at once instead of waiting again
        return f"{exc}\n(the kafka tests need the real broker; they fail rather than skip)"


def _admin() -> AdminClient:
    """The broker's AdminClient; FAILS the calling test (never skips) when no broker answers."""
    broker = _broker()
    if isinstance(broker, str):
        pytest.fail(broker, pytrace=False)
    return broker


@contextlib.contextmanager
def _fresh_topic(create: bool = True) -> Iterator[str]:
    """A unique topic (4 partitions unless `create` is False), deleted afterwards."""
    admin = _admin()
    name = f"test.ingest.{uuid.uuid4().hex[:12]}"
    if create:
        admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name].result(30)
    try:
        yield name
    finally:
        try:
            admin.delete_topics([name], operation_timeout=30)[name].result(30)
        except KafkaException:
            pass  # cleanup only; the test already has its answer


def _consume(topic: str, expected: int, timeout: float = 60.0) -> list:
    """Reads the topic from the beginning of every partition until `expected` messages or timeout."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for m in consumer.consume(1000, 1.0):
                assert m.error() is None, m.error()
                messages.append(m)
        # exactly-once check on the broker side: the logs hold no more than what was read
        stored = sum(hi - lo for lo, hi in (consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                                            for p in partitions))
        assert stored == len(messages), f"{stored} messages stored, {len(messages)} read"
        return messages
    finally:
        consumer.close()


@pytest.mark.kafka
def test_hdfs_5k_round_trip_through_kafka() -> None:
    labels = load_block_labels(LABELS)
    with _fresh_topic() as topic:
        summary = run_ingest(HDFS_5K, bootstrap=BOOTSTRAP, topic=topic, labels_csv=LABELS, progress=False)
        assert (summary.lines_read, summary.produced, summary.failed, summary.unparsed) == (4519, 4519, 0, 0)
        assert summary.lines_per_s > 0 and summary.bytes > 0
        messages = _consume(topic, 4519)
    want = {f"HDFS_5k.log:{n}": apply_label(parse_line(text, source, n), labels)
            for source, n, text in iter_lines(HDFS_5K)}
    got = [lr.LogRecord.FromString(m.value()) for m in messages]
    counts = collections.Counter(r.id for r in got)
    assert len(messages) == 4519 and set(counts) == set(want) and set(counts.values()) == {1}  # each line once
    partition_of: dict[str, set[int]] = collections.defaultdict(set)
    last_line: dict[tuple[int, str], int] = {}
    for m, record in zip(messages, got):
        assert record == want[record.id]
        assert m.key() == record.block_ids[0].encode()
        partition_of[record.block_ids[0]].add(m.partition())
        key = (m.partition(), record.block_ids[0])
        assert record.line_number > last_line.get(key, 0), "a block's lines arrived out of order"
        last_line[key] = record.line_number
    assert all(len(p) == 1 for p in partition_of.values())  # keyed by block: one partition per block
    assert {r.label for r in got} == {lr.LABEL_NORMAL, lr.LABEL_ANOMALY}
    assert sum(1 for r in got if r.label == lr.LABEL_ANOMALY) == sum(
        1 for r in want.values() if r.label == lr.LABEL_ANOMALY)


@pytest.mark.kafka
def test_unparsed_lines_rate_limit_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "mixed.log"
    real = HDFS_5K.read_text().splitlines()[:290]
    src.write_text("\n".join(real[:100] + ["garbage line one", "", "another \u00e9 bad line"] + real[100:]) + "\n")
    parser = argparse.ArgumentParser()
    add_ingest_args(parser)
    with _fresh_topic(create=False) as name:  # ingest must create the missing topic itself
        args = parser.parse_args([str(src), "--bootstrap", BOOTSTRAP, "--topic", name, "--rate", "400",
                                  "--partitions", "2", "--no-progress", "--json"])
        started = time.monotonic()
        assert args.func(args) == 0
        elapsed = time.monotonic() - started
        out = json.loads(capsys.readouterr().out)
        assert (out["lines_read"], out["produced"], out["unparsed"], out["blank"]) == (293, 292, 2, 1)
        assert elapsed >= (292 - 40) / 400 - 0.05  # paced: a 40-line burst, then 400 lines/s
        assert len(_admin().list_topics(name, timeout=10).topics[name].partitions) == 2
        messages = _consume(name, 292)
    records = [lr.LogRecord.FromString(m.value()) for m in messages]
    unknown = sorted((r for r in records if r.template_id == "unknown"), key=lambda r: r.line_number)
    assert [(r.message, r.line_number) for r in unknown] == [("garbage line one", 101),
                                                             ("another \u00e9 bad line", 103)]
    keys = {r.id: m.key() for r, m in zip(records, messages)}
    assert keys["mixed.log:101"] == b"mixed.log:101"  # no block id: keyed by record id


@pytest.mark.kafka
def test_a_full_local_queue_waits_and_loses_nothing() -> None:
    """A producer queue of 20 messages fills at once (BufferError): ingest polls until librdkafka drained some
    (tenacity's retry) and produces every line exactly once, in order per block."""
    with _fresh_topic() as topic:
        s = run_ingest(HDFS_5K, bootstrap=BOOTSTRAP, topic=topic, limit=2000, progress=False,
                       extra_config={"queue.buffering.max.messages": 20, "linger.ms": 20})
        assert (s.lines_read, s.produced, s.failed) == (2000, 2000, 0)
        messages = _consume(topic, 2000)
    numbers = [lr.LogRecord.FromString(m.value()).line_number for m in messages]
    assert sorted(numbers) == list(range(1, 2001))


@pytest.mark.kafka
def test_limit_stops_early() -> None:
    with _fresh_topic() as topic:
        s = run_ingest([HDFS_5K, HDFS_5K], bootstrap=BOOTSTRAP, topic=topic, limit=1000, progress=False)
        assert (s.lines_read, s.produced, s.failed) == (1000, 1000, 0)
        assert len(_consume(topic, 1000)) == 1000


@pytest.mark.kafka
def test_an_oversized_line_fails_alone(tmp_path: Path) -> None:
    src = tmp_path / "huge.log"
    src.write_text("before\n" + "x" * 3_000_000 + "\nafter\n")  # over librdkafka's 1 MB message.max.bytes
    with _fresh_topic() as topic:
        s = run_ingest(src, bootstrap=BOOTSTRAP, topic=topic, progress=False)
        assert (s.lines_read, s.produced, s.failed, s.unparsed) == (3, 2, 1, 3)
        assert "huge.log:2" in s.first_error
        assert sorted(lr.LogRecord.FromString(m.value()).message for m in _consume(topic, 2)) == ["after", "before"]
