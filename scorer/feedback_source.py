"""Where `logmesh train --feedback` reads analyst labels: the compacted Kafka topic the feedback service writes
(key = feedback id, value = a binary logmesh.v1.Feedback), or a file of them.

The topic is read whole, from its first offset to the high watermark each partition had when reading began;
the newest value of a key wins and a tombstone (null value) withdraws the key, as compaction would leave it.

The file (`--feedback-file`) holds one Feedback per line in protobuf's JSON mapping (what
`google.protobuf.json_format.MessageToJson(feedback, indent=None)` writes), e.g.
    {"feedbackId": "fb-1", "sessionKey": "blk_1", "label": "FEEDBACK_LABEL_FALSE_ALARM",
     "scope": "FEEDBACK_SCOPE_ITEM", "action": "FEEDBACK_ACTION_LEARN"}
JSON rather than the topic's binary so that a file can be read, reviewed and edited before it trains a model;
blank lines and lines starting with # are skipped. A line that does not parse is an error naming the line.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from logmesh.v1 import feedback_pb2

TOPIC = "logmesh.feedback"


class FeedbackSourceError(Exception):
    """The feedback cannot be read; the message says where and what to do."""


class BrokerUnreachable(FeedbackSourceError):
    """No Kafka broker answered at the bootstrap address."""


@dataclasses.dataclass
class Read:
    """What a source held: the feedback, and the records that were not Feedback (skipped, named)."""
    feedback: list[feedback_pb2.Feedback]
    source: str
    unreadable: list[str] = dataclasses.field(default_factory=list)


def read_file(path: Path) -> Read:
    from google.protobuf import json_format
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FeedbackSourceError(f"cannot read --feedback-file {path}: {exc.strerror}") from None
    out: dict[str, feedback_pb2.Feedback] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fb = json_format.Parse(line, feedback_pb2.Feedback())
        except json_format.ParseError as exc:
            raise FeedbackSourceError(f"--feedback-file {path}, line {n}: not a logmesh.v1.Feedback in protobuf "
                                      f"JSON ({exc}); one JSON object per line, e.g. "
                                      '{"sessionKey": "blk_1", "label": "FEEDBACK_LABEL_FALSE_ALARM", '
                                      '"scope": "FEEDBACK_SCOPE_ITEM", "action": "FEEDBACK_ACTION_LEARN"}') from None
        out[fb.feedback_id or f"{Path(path).name}:{n}"] = fb  # a later line with the same id wins, as in the topic
    return Read(list(out.values()), f"file {path}")


def write_file(path: Path, feedback: list[feedback_pb2.Feedback]) -> None:
    """The file format read_file reads (for exports and tests)."""
    from google.protobuf import json_format
    Path(path).write_text("".join(json_format.MessageToJson(f, indent=None) + "\n" for f in feedback))


def read_topic(bootstrap: str, topic: str = TOPIC, timeout_s: float = 30.0,
               options: dict | None = None) -> Read:
    """Every live Feedback of the compacted topic (newest value per key), read from the beginning."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    from logmesh.ingest.broker import watermarks
    # the end of a partition is librdkafka's partition EOF, not offset + 1 == high watermark: a transactional
    # writer's commit markers take offsets, and compaction leaves gaps
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"logmesh-train-{time.time_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "enable.partition.eof": True, **(options or {})})
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerUnreachable(f"no Kafka broker answered at {bootstrap} ({exc.args[0]}); check --bootstrap, "
                                      "or train from an export with --feedback-file") from None
        t = meta.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise FeedbackSourceError(f"topic {topic} does not exist at {bootstrap}: the feedback service creates "
                                      f"it (deploy/kafka/kafka.sh topics); check --feedback-topic")
        remaining = {p for p, (low, high) in watermarks(consumer, topic, t.partitions, timeout_s).items() if high > low}
        assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(remaining)]
        latest: dict[bytes, bytes | None] = {}
        if assignment:
            consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise FeedbackSourceError(f"reading {topic} at {bootstrap} did not reach the end of partitions "
                                          f"{sorted(remaining)} within {timeout_s:.0f} s; retry, or use --feedback-file")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                    continue
                raise FeedbackSourceError(f"reading {topic}: {msg.error().str()}")
            latest[msg.key() or b""] = msg.value()
    finally:
        consumer.close()
    out, unreadable = [], []
    for key, value in latest.items():
        if value is None:  # tombstone: the feedback was withdrawn
            continue
        fb = feedback_pb2.Feedback()
        try:
            fb.ParseFromString(value)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError; name the record, train on the rest
            unreadable.append(f"key {key.decode('utf-8', 'replace')!r}: not a logmesh.v1.Feedback ({exc})")
            continue
        if not fb.feedback_id:
            fb.feedback_id = key.decode("utf-8", "replace")
        out.append(fb)
    return Read(out, f"topic {topic} at {bootstrap}", unreadable)
