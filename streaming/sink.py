"""The foreachBatch sink: decode, embed, score lines and blocks, write Kafka results and the vector store.

Order within a batch makes a crash safe: results reach Kafka (flushed) before the vector store is
written, and the batch is marked done in a ledger last. A replayed batch that the ledger knows is
skipped; one that crashed midway is redone, and every write it repeats is keyed by data (record id,
topic/partition/offset, block id), so Qdrant ends with exactly one point per line or block.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.ingest.masking import line_shape
from logmesh.streaming import blocks as block_state
from logmesh.streaming.block_sessions import BLOCK, LINE
from logmesh.streaming.decode import KafkaRow, Rejected, decode
from logmesh.streaming.outputs import ResultProducer
from logmesh.streaming.retry import RetryItems, with_retry
from logmesh.streaming.vector_store import Point
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

log = logging.getLogger("logmesh.stream.sink")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@dataclasses.dataclass(frozen=True)
class BlockSummary:
    """A block Spark's state reports as changed in this micro-batch (see block_sessions.py)."""

    block_id: str
    events: list[str]
    closed: bool
    first_time: str
    last_time: str


@dataclasses.dataclass
class BatchReport:
    batch_id: int
    rows: int = 0
    scored: int = 0
    dead_letters: int = 0
    line_anomalies: int = 0
    blocks: int = 0
    block_alerts: int = 0
    seconds: float = 0.0
    skipped: bool = False


class Ledger:
    """Batch ids whose writes all completed (one empty file each, beside Spark's checkpoint)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def done(self, batch_id: int) -> bool:
        return (self.directory / str(batch_id)).exists()

    def mark(self, batch_id: int) -> None:
        (self.directory / str(batch_id)).touch()


class BatchSink:
    def __init__(self, embedder: EmbedderClient, scorer: ScorerClient, outputs: ResultProducer, store,  # type: ignore[no-untyped-def]
                 ledger: Ledger, store_lines: str = "anomalous", rpc_batch: int = 256, retry_budget_s: float = 300.0,
                 on_report=None) -> None:
        self.embedder, self.scorer, self.outputs, self.store, self.ledger = embedder, scorer, outputs, store, ledger
        self.store_lines = store_lines
        self.rpc_batch = rpc_batch
        self.retry_budget_s = retry_budget_s
        self.on_report = on_report or (lambda report: None)

    # Spark calls this with each micro-batch's DataFrame.
    def __call__(self, df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        if self.ledger.done(batch_id):
            # Written before a stop, replayed because Spark had not committed it: run the plan without
            # writing again, so the stateful operator commits its state for this batch (Spark checks that).
            log.info("batch already written; replaying it without writes", extra={"batch_id": batch_id})
            df.write.format("noop").mode("append").save()
            return
        frame = df.toPandas()
        lines, blocks = frame[frame["kind"] == LINE], frame[frame["kind"] == BLOCK]
        rows = [KafkaRow(t, int(p), int(o), None if k is None else bytes(k), None if v is None else bytes(v))
                for t, p, o, k, v in zip(lines["topic"], lines["partition"], lines["offset"], lines["key"], lines["value"])]
        sessions = [BlockSummary(b, list(e), bool(c), f or "", l or "") for b, e, c, f, l in zip(
            blocks["block_id"], blocks["events"], blocks["closed"], blocks["first_time"], blocks["last_time"])]
        report = self.process(rows, batch_id, sessions)
        self.ledger.mark(batch_id)
        self.on_report(report)

    def process(self, rows: list[KafkaRow], batch_id: int, sessions: list[BlockSummary] = ()) -> BatchReport:  # type: ignore[assignment]
        """Writes one micro-batch: `rows` are its Kafka messages, `sessions` the blocks Spark's state says
        changed (or closed) in it."""
        started = time.perf_counter()
        report = BatchReport(batch_id, rows=len(rows))
        records: list[tuple[KafkaRow, log_record_pb2.LogRecord]] = []
        rejected: list[Rejected] = []
        for row in rows:
            outcome = decode(row)
            (rejected.append(outcome) if isinstance(outcome, Rejected) else records.append((row, outcome)))
        shapes = [line_shape(r.component, r.message) for _, r in records]
        vectors = self._embed(shapes, batch_id)
        results, bad = self._score([r for _, r in records], batch_id)
        rejected.extend(Rejected(records[i][0], f"scorer rejected the line: {why}") for i, why in bad.items())
        good = [(i, records[i][0], records[i][1], results[i]) for i in range(len(records)) if i not in bad]

        flagged = [res for _, _, _, res in good if res.verdict == score_pb2.VERDICT_ANOMALY]
        self.outputs.dead_letters(rejected)
        self.outputs.scores([res for _, _, _, res in good])
        self.outputs.anomalies([score_pb2.Anomaly(line=res, recorded_time=_now()) for res in flagged],
                               key_of=lambda a: a.line.record_id)
        block_points, alerts = self._blocks(good, vectors, list(sessions), batch_id)
        self.outputs.anomalies(alerts, key_of=lambda a: a.block.block_id)
        self.outputs.flush()

        line_points = [Point(row.coordinates, vectors[i], _line_payload(row, record, res))
                       for i, row, record, res in good
                       if self.store_lines == "all" or res.verdict == score_pb2.VERDICT_ANOMALY]
        self.store.upsert(line_points + block_points)

        report.scored, report.dead_letters, report.line_anomalies = len(good), len(rejected), len(flagged)
        report.blocks, report.block_alerts = len(block_points), len(alerts)
        report.seconds = time.perf_counter() - started
        log.info("batch written", extra=dataclasses.asdict(report))
        return report

    def _embed(self, shapes: list[str], batch_id: int) -> list[np.ndarray]:
        distinct = list(dict.fromkeys(shapes))
        if not distinct:
            return []
        matrix = with_retry(lambda: self.embedder.embed_many(distinct, batch_size=self.rpc_batch),
                            f"embed batch {batch_id}", self.retry_budget_s)
        table = dict(zip(distinct, matrix))
        return [table[s] for s in shapes]

    def _score(self, records: list[log_record_pb2.LogRecord],
               batch_id: int) -> tuple[list[score_pb2.ScoreResult | None], dict[int, str]]:
        """Results by position; lines the scorer rejects as invalid are returned apart, for the DLQ.
        Items that failed because a dependency was down are retried; none is dropped."""
        results: list[score_pb2.ScoreResult | None] = [None] * len(records)
        invalid: dict[int, str] = {}
        pending = list(range(len(records)))

        def attempt() -> None:
            nonlocal pending
            replies = list(self.scorer.score_stream((spb.ScoreItem(record=records[i]) for i in pending),
                                                    batch_size=self.rpc_batch, timeout=120))
            retry = []
            for i, reply in zip(pending, replies):
                if reply.HasField("result"):
                    results[i] = reply.result
                elif reply.error.code == UNAVAILABLE:
                    retry.append(i)
                else:
                    invalid[i] = reply.error.message
            pending = retry
            if retry:
                first = next(r for r in replies if r.HasField("error") and r.error.code == UNAVAILABLE)
                raise RetryItems(f"{len(retry)} lines unavailable: {first.error.message}")

        if pending:
            with_retry(attempt, f"score batch {batch_id}", self.retry_budget_s)
        return results, invalid

    def _blocks(self, good, vectors, sessions: list[BlockSummary],  # type: ignore[no-untyped-def]
                batch_id: int) -> tuple[list[Point], list[score_pb2.Anomaly]]:
        """Judges the blocks Spark's state reports, keeps each block's point (mean vector, verdict) and
        returns the alerts: a block's first anomalous verdict, and its final one when it closes anomalous."""
        if not sessions:
            return [], []
        lines_by_block: dict[str, list[block_state.BlockLine]] = {}
        labels: dict[str, int] = {}
        for i, row, record, res in good:
            block_id = record.block_ids[0] if record.block_ids else ""
            if record.label:
                labels[block_id] = record.label
            lines_by_block.setdefault(block_id, []).append(block_state.BlockLine(
                row.coordinates, row.offset, vectors[i], record.id, res.verdict == score_pb2.VERDICT_ANOMALY))
        existing = self.store.retrieve([s.block_id for s in sessions])
        merged: list[tuple[BlockSummary, dict, np.ndarray | None]] = []
        for session in sessions:
            old = existing.get(session.block_id)
            payload, vector = block_state.merge(old.payload if old else None, old.vector if old else None,
                                                lines_by_block.get(session.block_id, []))
            payload.update(kind="block", block_id=session.block_id, events=session.events, closed=session.closed,
                           first_time=session.first_time, last_time=session.last_time)
            if session.block_id in labels:
                payload["label"] = log_record_pb2.Label.Name(labels[session.block_id]).removeprefix("LABEL_").lower()
            merged.append((session, payload, vector))
        label_of = {v: k for k, v in log_record_pb2.Label.items()}
        requests = [spb.BlockSession(block_id=s.block_id, events=s.events, closed=s.closed,
                                     anomalous_record_ids=p.get("anomalous_record_ids", []),
                                     first_time=_ts(s.first_time), last_time=_ts(s.last_time),
                                     label=label_of.get(f"LABEL_{p.get('label', 'unspecified').upper()}", 0))
                    for s, p, _ in merged]
        verdicts = self._score_blocks(requests, batch_id)
        points, alerts = [], []
        for (session, payload, vector), verdict in zip(merged, verdicts):
            anomalous = verdict.verdict == score_pb2.VERDICT_ANOMALY
            kinds = []
            if anomalous and not payload.get("alerted"):
                kinds.append(score_pb2.BLOCK_VERDICT_KIND_ALERT)
                payload["alerted"] = True
            if anomalous and session.closed:
                kinds.append(score_pb2.BLOCK_VERDICT_KIND_FINAL)
            for kind in kinds:
                alert = score_pb2.BlockVerdict()
                alert.CopyFrom(verdict)
                alert.kind = kind
                alerts.append(score_pb2.Anomaly(block=alert, recorded_time=_now()))
            payload.update(verdict="anomaly" if anomalous else "normal", score=float(verdict.score),
                           is_anomaly=anomalous, model_version=verdict.model_version)
            if vector is not None:  # a block closed by timeout whose lines all failed to decode has no vector
                points.append(Point(session.block_id, vector, payload))
        return points, alerts

    def _score_blocks(self, sessions: list[spb.BlockSession], batch_id: int) -> list[score_pb2.BlockVerdict]:
        def attempt() -> list[score_pb2.BlockVerdict]:
            replies = list(self.scorer.score_blocks(sessions, batch_size=self.rpc_batch, timeout=120))
            failed = [r for r in replies if r.HasField("error")]
            if failed:
                raise RuntimeError(f"block {failed[0].block_id} rejected: {failed[0].error.message}")
            return [r.verdict for r in replies]
        return with_retry(attempt, f"score blocks of batch {batch_id}", self.retry_budget_s)


def _line_payload(row: KafkaRow, record: log_record_pb2.LogRecord, result: score_pb2.ScoreResult) -> dict:
    return {
        "kind": "line", "record_id": record.id, "text": record.message, "component": record.component,
        "label": log_record_pb2.Label.Name(record.label).removeprefix("LABEL_").lower(),
        "timestamp": record.event_time.ToJsonString() if record.HasField("event_time") else "",
        "source": record.source, "index": record.line_number, "template": record.template_id,
        "block_ids": list(record.block_ids), "is_anomaly": result.verdict == score_pb2.VERDICT_ANOMALY,
        "score": float(result.score), "votes": {v.model: float(v.score) for v in result.votes},
        "model_version": result.model_version,
    }


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now


def _ts(value: str | None) -> Timestamp | None:
    if not value:
        return None
    out = Timestamp()
    out.FromJsonString(value)
    return out
