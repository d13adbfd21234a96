"""The streaming job's side of the anomaly history, for the tests that read it: a fresh anomalies topic on the
real broker, anomalies written to it in Kafka transactions (committed or aborted) as the job writes them, and a
scorer whose history reads that topic."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterable

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from logmesh.v1 import score_pb2

BOOTSTRAP = "127.0.0.1:9092"
ANOMALY = score_pb2.VERDICT_ANOMALY
ALERT, FINAL = score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL


def fresh_topic(admin, prefix: str = "t-history", partitions: int = 1) -> str:
    """A new anomalies topic (one partition, as deploy/kafka creates logmesh.anomalies), deleted with the module."""
    name = f"{prefix}.{uuid.uuid4().hex[:8]}.anomalies"
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)
    return name


class AnomalyWriter:
    """Writes anomalies as the job does: binary logmesh.v1.Anomaly, one Kafka transaction per call."""

    def __init__(self, topic: str, bootstrap: str = BOOTSTRAP) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}",
                                  "enable.idempotence": True, "message.max.bytes": 64 * 1024 * 1024})
        self.producer.init_transactions(30)

    def write(self, anomalies: Iterable[score_pb2.Anomaly], commit: bool = True) -> None:
        self.producer.begin_transaction()
        for a in anomalies:
            key = a.line.record_id if a.HasField("line") else a.block.block_id
            self.producer.produce(self.topic, key=key.encode(), value=a.SerializeToString())
        self.producer.flush(30)
        if commit:
            self.producer.commit_transaction(30)
        else:
            self.producer.abort_transaction(30)


def line(tag: str, message: str | None = None, component: str = "dfs.DataNode$DataXceiver",
         block_id: str = "blk_-3102267849859399193") -> score_pb2.Anomaly:
    """An anomalous line as the job writes it (a ScoreResult the scorer gave, no id)."""
    text = message or f"writeBlock {block_id} received exception java.io.IOException: attempt {tag}"
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=f"rec-{tag}", verdict=ANOMALY, score=0.9, message=text, component=component,
        block_ids=[block_id], model_version="test", anomaly_votes=5))


def block(block_id: str, kind: int, events: list[str], score: float = 0.9) -> score_pb2.Anomaly:
    return score_pb2.Anomaly(block=score_pb2.BlockVerdict(
        block_id=block_id, verdict=ANOMALY, score=score, events=events, kind=kind, model_version="test"))


def fed_scorer(models: Path, embedder: str, topic: str, state_dir: Path | None = None, **kwargs):
    """An in-process scorer whose history reads `topic` (started; stop it with .stop())."""
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, models, embedder, reload_interval=60, kafka_bootstrap=BOOTSTRAP, anomalies_topic=topic,
                   state_dir=state_dir, **kwargs)
    with ScorerClient(server.address) as client:
        client.wait_until_serving(30)
    return server
