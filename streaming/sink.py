"""The foreachBatch sink: decode, embed, score lines and blocks, write Kafka results and the vector store.

Exactly once, per micro-batch: everything the batch writes to Kafka (scores, anomalies, dead letters)
and the ledger record saying "batch N done" are one Kafka transaction, committed last:

    produce outputs -> upsert the vector store -> produce the ledger record -> commit

A crash before the commit leaves an open transaction that the restarted job's producer (same
transactional id, derived from the job id in the checkpoint folder) fences and aborts, so
read_committed consumers never see the crashed attempt; the replayed batch is written again. The
vector store is not transactional but every write is keyed by data (topic/partition/offset for lines,
the block id for blocks, and a block point records the offsets it has counted), so the replay
overwrites instead of duplicating. A crash after the commit but before Spark commits the batch is
answered by the ledger (read at start with read_committed): the replay runs without writing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import grpc
import numpy as np
from confluent_kafka import KafkaException
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.ingest.masking import line_shape
from logmesh.streaming import blocks as block_state
from logmesh.streaming.block_sessions import BLOCK, LINE, QUIET, STREAM_STOPPED
from logmesh.streaming.decode import KafkaRow, Rejected, decode
from logmesh.streaming.outputs import Ledger, ResultProducer, TransactionAborted
from logmesh.streaming.retry import GaveUp, RetryItems, with_retry
from logmesh.streaming.vector_store import Point
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

__all__ = ["BatchReport", "BatchSink", "BlockSummary", "Ledger"]
log = logging.getLogger("logmesh.stream.sink")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
# Fault injection for the crash tests (tests/e2e/test_faults.py): "POINT:BATCH[,POINT:BATCH...]" with POINT one
# of after-produce, after-store, after-commit. The process (its process group when it leads one, so
# Spark's JVM goes too) is SIGKILLed there, as a crash would. Never set in production.
CRASH_ENV = "LOGMESH_SINK_CRASH_AT"


def _crash_point(point: str, batch_id: int) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if not wanted or f"{point}:{batch_id}" not in {w.strip() for w in wanted.split(",")}:
        return
    log.error("fault injection: SIGKILL", extra={"point": point, "batch_id": batch_id})
    for handler in logging.getLogger().handlers:
        handler.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class BlockSummary:
    """A block Spark's state reports as changed in this micro-batch (see block_sessions.py)."""

    block_id: str
    events: list[str]
    closed: bool  # its whole story: judged with missing-step evidence
    first_time: str
    last_time: str
    ended: str = ""  # the rule that ended it: block_sessions.QUIET, STREAM_STOPPED, or "" (still open)


@dataclasses.dataclass
class BatchReport:
    batch_id: int
    rows: int = 0
    scored: int = 0
    dead_letters: int = 0
    line_anomalies: int = 0
    blocks: int = 0
    block_alerts: int = 0
    blocks_closed: int = 0  # closed as complete: the stream went on without them (rule "quiet")
    blocks_cut: int = 0  # finalized as cut prefixes: the stream stopped (rule "stream-stopped")
    seconds: float = 0.0
    skipped: bool = False
    write_attempts: int = 0


class BatchSink:
    def __init__(self, embedder: EmbedderClient, scorer: ScorerClient, outputs: ResultProducer, store,  # type: ignore[no-untyped-def]
                 ledger: Ledger | None, store_lines: str = "anomalous", rpc_batch: int = 256,
                 retry_budget_s: float = 300.0, on_report=None) -> None:
        """`ledger` None: no skip of completed batches (only for a non-transactional `outputs`, in tests)."""
        self.embedder, self.scorer, self.outputs, self.store, self.ledger = embedder, scorer, outputs, store, ledger
        self.store_lines = store_lines
        self.rpc_batch = rpc_batch
        self.retry_budget_s = retry_budget_s
        self.on_report = on_report or (lambda report: None)

    # Spark calls this with each micro-batch's DataFrame.
    def __call__(self, df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        if self.ledger is not None and self.ledger.done(batch_id):
            # Committed before a crash or stop, replayed because Spark had not committed it: run the plan
            # without writing, so the stateful operator commits its state for this batch (Spark checks that).
            log.info("batch already committed (ledger); replaying it without writes", extra={"batch_id": batch_id})
            df.write.format("noop").mode("append").save()
            self.on_report(BatchReport(batch_id, skipped=True))
            return
        frame = df.toPandas()
        lines, blocks = frame[frame["kind"] == LINE], frame[frame["kind"] == BLOCK]
        rows = [KafkaRow(t, int(p), int(o), None if k is None else bytes(k), None if v is None else bytes(v))
                for t, p, o, k, v in zip(lines["topic"], lines["partition"], lines["offset"], lines["key"], lines["value"])]
        sessions = [BlockSummary(b, list(e), bool(c), f or "", l or "", n or "") for b, e, c, f, l, n in zip(
            blocks["block_id"], blocks["events"], blocks["closed"], blocks["first_time"], blocks["last_time"],
            blocks["ended"])]
        report = self.process(rows, batch_id, sessions)
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
        vectors, refused = self._embed(shapes, batch_id)
        if refused:  # e.g. a line over the embedder's length limit: dead-lettered, the batch goes on
            rejected.extend(Rejected(row, f"embedder rejected the line: {refused[shape]}")
                            for (row, _), shape in zip(records, shapes) if shape in refused)
            kept = [i for i, shape in enumerate(shapes) if shape not in refused]
            records, vectors = [records[i] for i in kept], [vectors[i] for i in kept]
        results, bad = self._score([r for _, r in records], batch_id)
        rejected.extend(Rejected(records[i][0], f"scorer rejected the line: {why}") for i, why in bad.items())
        good = [(i, records[i][0], records[i][1], results[i]) for i in range(len(records)) if i not in bad]

        flagged = [res for _, _, _, res in good if res.verdict == score_pb2.VERDICT_ANOMALY]
        line_alerts = [score_pb2.Anomaly(line=res, recorded_time=_now()) for res in flagged]
        block_points, alerts = self._blocks(good, vectors, list(sessions), batch_id)
        line_points = [Point(row.coordinates, vectors[i], _line_payload(row, record, res))
                       for i, row, record, res in good
                       if self.store_lines == "all" or res.verdict == score_pb2.VERDICT_ANOMALY]
        report.write_attempts = self._write(batch_id, rejected, [res for _, _, _, res in good], line_alerts,
                                            alerts, line_points + block_points)

        report.scored, report.dead_letters, report.line_anomalies = len(good), len(rejected), len(flagged)
        report.blocks, report.block_alerts = len(block_points), len(alerts)
        report.blocks_closed = sum(s.ended == QUIET for s in sessions)
        report.blocks_cut = sum(s.ended == STREAM_STOPPED for s in sessions)
        report.seconds = time.perf_counter() - started
        # an idle job runs an empty micro-batch every trigger: those stay below info
        log.log(logging.INFO if rows or sessions else logging.DEBUG, "batch written", extra=dataclasses.asdict(report))
        if report.blocks_cut:
            log.info("no new line for --block-stall-ms: the blocks still open are judged as cut prefixes "
                     "(no missing-step evidence) and stay open in case the stream comes back",
                     extra={"batch_id": batch_id, "blocks_cut": report.blocks_cut})
        return report

    def _write(self, batch_id: int, rejected: list[Rejected], results: list[score_pb2.ScoreResult],
               line_alerts: list[score_pb2.Anomaly], block_alerts: list[score_pb2.Anomaly],
               points: list[Point]) -> int:
        """One transaction: outputs, store, ledger record, commit. A Kafka failure aborts it and the whole
        write is redone (bounded backoff); returns the number of attempts."""
        deadline = time.monotonic() + self.retry_budget_s
        delay, attempt = 0.5, 1
        while True:
            try:
                self.outputs.begin()
                self.outputs.dead_letters(rejected)
                self.outputs.scores(results)
                self.outputs.anomalies(line_alerts, key_of=lambda a: a.line.record_id)
                self.outputs.anomalies(block_alerts, key_of=lambda a: a.block.block_id)
                self.outputs.flush()
                _crash_point("after-produce", batch_id)
                self.store.upsert(points)
                _crash_point("after-store", batch_id)
                if self.ledger is not None:
                    self.ledger.mark(batch_id)
                self.outputs.commit()
                if self.ledger is not None:
                    self.ledger.committed(batch_id)
                _crash_point("after-commit", batch_id)
                return attempt
            except KafkaException as exc:
                err = exc.args[0] if exc.args and hasattr(exc.args[0], "fatal") else None
                fatal = bool(err is not None and err.fatal())
                if not isinstance(exc, TransactionAborted):
                    try:
                        self.outputs.abort()
                    except KafkaException:
                        fatal = True  # cannot abort: a fresh producer fences this one and aborts for it
                if time.monotonic() + delay > deadline:
                    raise GaveUp(f"writing batch {batch_id}: {exc} after {attempt} attempts") from exc
                log.warning("batch transaction failed; redoing its writes",
                            extra={"batch_id": batch_id, "attempt": attempt, "error": str(exc),
                                   "fatal": fatal, "sleep_s": delay})
                time.sleep(delay)
                if fatal:
                    self.outputs.recover()
                delay, attempt = min(delay * 2, 15.0), attempt + 1

    def _embed(self, shapes: list[str], batch_id: int) -> tuple[list[np.ndarray], dict[str, str]]:
        """A vector per shape, and the shapes the embedder refused as invalid (with why). Items that
        failed because the embedder was unavailable are retried; none is dropped."""
        distinct = list(dict.fromkeys(shapes))
        if not distinct:
            return [], {}

        def attempt() -> tuple[np.ndarray, dict]:
            matrix, failed = self.embedder.embed_each(distinct, batch_size=self.rpc_batch)
            down = [f for f in failed.values() if f.code == UNAVAILABLE]
            if down:
                raise RetryItems(f"{len(down)} shapes unavailable: {down[0].message}")
            return matrix, failed

        matrix, failed = with_retry(attempt, f"embed batch {batch_id}", self.retry_budget_s)
        table = dict(zip(distinct, matrix))
        return [table[s] for s in shapes], {distinct[i]: f.message for i, f in failed.items()}

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
                           ended=session.ended, first_time=session.first_time, last_time=session.last_time)
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
            # alerted_batch: the batch whose transaction carries the block's alert. A replay of that same
            # batch (its crashed attempt wrote the store, its alert was aborted) must alert again.
            alerted_in = payload.get("alerted_batch")
            already = payload.get("alerted", False) if alerted_in is None else int(alerted_in) < batch_id
            if anomalous and not already:
                kinds.append(score_pb2.BLOCK_VERDICT_KIND_ALERT)
                payload.update(alerted=True, alerted_batch=batch_id)
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
