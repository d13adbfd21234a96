"""What a Spark task does to Kafka messages and blocks: decode, embed, score (lines and blocks), build the
output rows and vector-store points. Runs in executor Python workers (the block operator's state
function, or a pandas UDF in the two-branch plan), never in the driver.

Each Python worker keeps one EmbedderClient and one ScorerClient per address (created on first use after
the worker forked), so N executors drive N streams to the services' pool. A shape is embedded once per
call, and the scorer gets the vector with each line (ScoreItem.embedding), so it does not embed it again.

Log records a task emits under `logmesh.stream` are collected (`TaskLogs`) and travel to the driver in
the output rows (kind "log"), which logs them again: a retry in an executor shows in the job's log.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import grpc
import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh import vectors
from logmesh.ingest.families import record_shape
from logmesh.streaming.decode import KafkaRow, Rejected, decode
from logmesh.streaming.retry import RetryItems, with_retry
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

log = logging.getLogger("logmesh.stream.work")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
LINE, DEAD, BLOCK, LOG = "line", "dead", "block", "log"
# The rows the block operator (or the two-branch plan's line UDF) hands the writer (sink.py), one per
# Kafka message (kind line or dead), per changed or ended block (block), and per call that logged (log).
# value: a line's ScoreResult, a block's BlockVerdict, a dead letter's original bytes.
WORK_SCHEMA = ("kind string, topic string, partition int, offset long, key binary, value binary, record_id string, "
               "reason string, anomalous boolean, alert boolean, final boolean, point_id string, vector binary, "
               "payload string, ended string, pid int")
WORK_COLUMNS = [column.split()[0] for column in WORK_SCHEMA.split(", ")]
_clients: dict[tuple[str, str], object] = {}
ATTACH_VECTORS = os.environ.get("LOGMESH_SCORE_WITH_VECTORS", "1") != "0"  # 0: let the scorer embed (A/B only)


@dataclasses.dataclass(frozen=True)
class WorkSettings:
    """What a task needs to reach the services (pickled to the executors with the plan)."""

    embedder: str
    scorer: str
    store_lines: str = "anomalous"  # which lines get a vector point besides every block: anomalous | all
    rpc_batch: int = 256
    retry_budget_s: float = 300.0
    trace: bool = False  # OpenTelemetry spans of the task's work (runtime/tracing.py); off by default
    trace_endpoint: str | None = None  # their OTLP/gRPC collector; None: the standard OTEL_* environment


def _security(trace: bool):  # type: ignore[no-untyped-def]
    """The environment's channel security; traced, its channels carry the task's trace context."""
    if not trace:
        return None
    from logmesh.security import ChannelSecurity
    from logmesh.runtime import tracing
    return tracing.traced_security(ChannelSecurity.from_env())


def embedder_client(address: str, trace: bool = False):  # type: ignore[no-untyped-def]
    from logmesh.client import EmbedderClient
    key = ("embedder", address, trace)
    if key not in _clients:
        _clients[key] = EmbedderClient(address, security=_security(trace))
    return _clients[key]


def scorer_client(address: str, trace: bool = False):  # type: ignore[no-untyped-def]
    from logmesh.client import ScorerClient
    key = ("scorer", address, trace)
    if key not in _clients:
        _clients[key] = ScorerClient(address, security=_security(trace))
    return _clients[key]


def warm_up_task(settings: WorkSettings, writer=None, writer_partitions: int = 0):  # type: ignore[no-untyped-def]
    """A mapInPandas function that readies the Python worker it runs in before the first micro-batch: the
    task code and what it imports (pandas, pyarrow, protobuf, grpc, confluent-kafka), the frozen heap,
    connected channels to both services, and with `writer` (the sink's WriterSettings, the driver's fence
    done) this worker's transactional producers of the write tasks' first `writer_partitions` partitions
    (sink.warm_producers). Spark then reuses the worker for the query's tasks, so the first batch no
    longer pays for forking and importing in every worker it needs (two per task: the state function's
    and the write task's), nor for a new producer in its write tasks."""
    def run(frames):  # type: ignore[no-untyped-def]
        import time
        from logmesh.streaming import block_sessions, sink  # noqa: F401 (the imports are the point)
        # what GroupState.update imports on its first call (pyspark/sql/streaming/state.py): compiled from
        # pyspark.zip's source in every worker, 0.28 s of the first batch's state function (py-spy, 01:55 run)
        import pyspark.testing.utils  # noqa: F401
        block_sessions._freeze_worker_heap()
        for client in (embedder_client(settings.embedder, settings.trace), scorer_client(settings.scorer, settings.trace)):
            try:
                client.wait_until_serving(10)  # connects the channel
            except Exception:  # noqa: BLE001 - a warm-up only: the tasks retry a service that is down
                pass
        started = time.perf_counter()
        error = warm_work_path(settings)
        work_s = time.perf_counter() - started
        made, producers_s = 0, 0.0
        if writer is not None:
            made, producers_s, failed = sink.warm_producers(writer, writer_partitions)
            error = "; ".join(e for e in (error, failed and f"producers: {failed}") if e)
        seen = [tuple(row) for f in frames if "pid" in f
                for row in f[WARM_UP_COLUMNS].itertuples(index=False)]  # the workers before this one
        mine = (os.getpid(), work_s, error, made, producers_s)
        yield pd.DataFrame([*seen, mine], columns=WARM_UP_COLUMNS)
    return run


# what warm_up_task yields per worker: the work path's time and failure, the producers made and their time
WARM_UP_SCHEMA = "pid int, work_s double, error string, producers int, producers_s double"
WARM_UP_COLUMNS = [column.split()[0] for column in WARM_UP_SCHEMA.split(", ")]


WARM_UP_LINE = ("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 "
                "src: /10.250.19.102:54106 dest: /10.250.19.102:50010")


def warm_work_path(settings: WorkSettings) -> str:
    """One real HDFS line, in no block, through the functions a task runs: decode, shape (the masks' first
    use), embed, score (the first ScoreStream of this worker's channel), its output row, a WORK frame, and
    one open block scored (ScoreBlockStream). The scorer is pure, so nothing is recorded but its counters;
    nothing is written. The first micro-batch paid for these first uses (py-spy, docs/benchmarks.md's cold
    start). Returns "" or why it failed (a warm-up only: the tasks retry a service that is down)."""
    from logmesh.ingest.hdfs import parse_line
    try:
        record = parse_line(WARM_UP_LINE, "logmesh-warm-up", os.getpid())
        del record.block_ids[:]
        lines = score_messages([KafkaRow("logmesh-warm-up", 0, 0, None, record.SerializeToString())],
                               dataclasses.replace(settings, retry_budget_s=5.0), "warm-up")
        pd.DataFrame(line_rows(lines, settings), columns=WORK_COLUMNS, dtype=object)
        score_blocks([spb.BlockSession(block_id="logmesh-warm-up", events=[record.template_id])],
                     dataclasses.replace(settings, retry_budget_s=5.0), "warm-up")
        return "" if lines.results[0] is not None else f"warm-up line rejected: {lines.rejected[0]}"
    except Exception as exc:  # noqa: BLE001
        return str(exc)[:200]


class TaskLogs(logging.Handler):
    """Collects what `logmesh.stream` loggers emit during one task call, for the driver to log again."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict] = []
        self._logger = logging.getLogger("logmesh.stream")
        self._level = self._logger.level

    def __enter__(self) -> "TaskLogs":
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        extra["executor_pid"] = os.getpid()
        self.records.append({"logger": record.name, "level": record.levelno, "msg": record.getMessage(),
                             "extra": json.loads(json.dumps(extra, default=str))})

    def row(self) -> tuple | None:
        """The kind "log" row carrying the records, or None when nothing was logged."""
        if not self.records:
            return None
        return (LOG, None, None, None, None, None, None, None, None, None, None, None, None,
                json.dumps(self.records), None, os.getpid())


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def relog(payload: str) -> None:
    """Logs again, in this (driver) process, records a task collected (TaskLogs.row)."""
    for r in json.loads(payload):
        extra = {k: v for k, v in r.get("extra", {}).items() if k not in _STANDARD}
        logging.getLogger(r["logger"]).log(int(r["level"]), r["msg"], extra=extra)


@dataclasses.dataclass
class Lines:
    """The outcome of one call's messages, by position: a ScoreResult or a rejection, and for scored lines
    their record and vector."""

    rows: list[KafkaRow]
    records: list[log_record_pb2.LogRecord | None]
    results: list[score_pb2.ScoreResult | None]
    rejected: list[str | None]
    vectors: list[np.ndarray | None]

    def anomalous(self, i: int) -> bool:
        result = self.results[i]
        return result is not None and result.verdict == score_pb2.VERDICT_ANOMALY


def kafka_rows(frame: pd.DataFrame) -> list[KafkaRow]:
    traced = frame["traceparent"] if "traceparent" in frame.columns else [None] * len(frame)  # tracing on
    return [KafkaRow(t, int(p), int(o), None if k is None else bytes(k), None if v is None else bytes(v), c)
            for t, p, o, k, v, c in zip(frame["topic"], frame["partition"], frame["offset"], frame["key"],
                                        frame["value"], traced)]


def score_messages(rows: list[KafkaRow], settings: WorkSettings, what: str = "task") -> Lines:
    """Decodes, embeds each distinct shape once, and scores every message that is a LogRecord; what does
    not decode, or what a service refuses as invalid, is a rejection (for the DLQ). A service that is down
    is retried within the budget (streaming/retry.py); then GaveUp fails the task. Traced (settings.trace),
    in one span continuing the first record's trace (runtime/tracing.task_span)."""
    if not settings.trace:
        return _score_messages(rows, settings, what)
    from logmesh.runtime import tracing
    tracing.setup("stream", True, settings.trace_endpoint)
    with tracing.task_span("logmesh.stream score", [r.traceparent for r in rows], {"logmesh.messages": len(rows)}):
        return _score_messages(rows, settings, what)


def _score_messages(rows: list[KafkaRow], settings: WorkSettings, what: str) -> Lines:
    n = len(rows)
    out = Lines(rows, [None] * n, [None] * n, [None] * n, [None] * n)
    good: list[int] = []
    for i, row in enumerate(rows):
        outcome = decode(row)
        if isinstance(outcome, Rejected):
            out.rejected[i] = outcome.reason
        else:
            out.records[i] = outcome
            good.append(i)
    if not good:
        return out
    shapes = {i: record_shape(out.records[i]) for i in good}  # the family's shape, as the scorer keys it
    table, refused = _embed(list(dict.fromkeys(shapes.values())), settings, what)
    kept = []
    for i in good:
        if shapes[i] in refused:  # e.g. a line over the embedder's length limit: dead-lettered, the rest go on
            out.rejected[i] = f"embedder rejected the line: {refused[shapes[i]]}"
        else:
            out.vectors[i] = table[shapes[i]]
            kept.append(i)
    results, invalid = _score(kept, out, settings, what, shapes)
    for i in kept:
        if i in invalid:
            out.rejected[i] = f"scorer rejected the line: {invalid[i]}"
            out.vectors[i] = None
        else:
            out.results[i] = results[i]
    return out


def _embed(distinct: list[str], settings: WorkSettings, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    client = embedder_client(settings.embedder, settings.trace)

    def attempt() -> tuple[np.ndarray, dict]:
        matrix, failed = client.embed_each(distinct, batch_size=settings.rpc_batch)
        down = [f for f in failed.values() if f.code == UNAVAILABLE]
        if down:
            raise RetryItems(f"{len(down)} shapes unavailable: {down[0].message}")
        return matrix, failed

    matrix, failed = with_retry(attempt, f"embed {what}", settings.retry_budget_s)
    refused = {distinct[i]: f.message for i, f in failed.items()}
    return {s: matrix[i] for i, s in enumerate(distinct) if s not in refused}, refused


def _score(kept: list[int], lines: Lines, settings: WorkSettings, what: str,
           shapes: dict[int, str]) -> tuple[dict[int, score_pb2.ScoreResult], dict[int, str]]:
    """Results by position; lines the scorer rejects as invalid apart. The first line of each shape (`shapes`:
    by position, as masked for the embedder) carries its vector."""
    client = scorer_client(settings.scorer, settings.trace)
    results: dict[int, score_pb2.ScoreResult] = {}
    invalid: dict[int, str] = {}
    pending = list(kept)
    # the vector travels with the first line of each shape (the scorer keys what it is given by shape): the
    # scorer embeds nothing, and the other lines of the shape stay small
    items, sent = {}, set()
    for i in kept:
        record, shape = lines.records[i], shapes[i]
        if shape in sent or not ATTACH_VECTORS:
            items[i] = spb.ScoreItem(record=record)
        else:
            sent.add(shape)
            items[i] = spb.ScoreItem(record=record, embedding=vectors.to_message(record.id, "", lines.vectors[i]))  # type: ignore[union-attr,arg-type]

    def attempt() -> None:
        nonlocal pending
        replies = list(client.score_stream((items[i] for i in pending), batch_size=settings.rpc_batch, timeout=120))
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
        with_retry(attempt, f"score {what}", settings.retry_budget_s)
    return results, invalid


def line_rows(lines: Lines, settings: WorkSettings) -> list[tuple]:
    """A WORK row per message: the line's ScoreResult (and its point when the store keeps it), or the
    dead letter with its original bytes and why."""
    pid = os.getpid()
    out = []
    for i, row in enumerate(lines.rows):
        result = lines.results[i]
        if result is None:
            out.append((DEAD, row.topic, row.partition, row.offset, row.key, row.value, "", lines.rejected[i],
                        None, None, None, None, None, None, None, pid))
            continue
        anomalous = lines.anomalous(i)
        point = settings.store_lines == "all" or anomalous
        vector = lines.vectors[i]
        out.append((LINE, row.topic, row.partition, row.offset, None, result.SerializeToString(), result.record_id,
                    None, anomalous, None, None, row.coordinates if point else None,
                    np.ascontiguousarray(vector, np.float32).tobytes() if point and vector is not None else None,
                    json.dumps(line_payload(lines.records[i], result)) if point else None, None, pid))  # type: ignore[arg-type]
    return out


def line_payload(record: log_record_pb2.LogRecord, result: score_pb2.ScoreResult) -> dict:
    return {
        "kind": "line", "record_id": record.id, "text": record.message, "component": record.component,
        "label": label_name(record.label),
        "timestamp": record.event_time.ToJsonString() if record.HasField("event_time") else "",
        "source": record.source, "index": record.line_number, "template": record.template_id,
        "block_ids": list(record.block_ids), "is_anomaly": result.verdict == score_pb2.VERDICT_ANOMALY,
        "score": float(result.score), "votes": {v.model: float(v.score) for v in result.votes},
        "model_version": result.model_version,
    }


def label_name(label: int) -> str:
    return log_record_pb2.Label.Name(label).removeprefix("LABEL_").lower()


def score_blocks(sessions: list[spb.BlockSession], settings: WorkSettings, what: str = "task") -> list[score_pb2.BlockVerdict]:
    """The scorer's verdict per block (pure: FINAL when closed, INTERIM when open; the alert rule is the
    caller's)."""
    if not sessions:
        return []
    client = scorer_client(settings.scorer, settings.trace)

    def attempt() -> list[score_pb2.BlockVerdict]:
        replies = list(client.score_blocks(sessions, batch_size=settings.rpc_batch, timeout=120))
        failed = [r for r in replies if r.HasField("error")]
        if failed:
            if all(r.error.code == UNAVAILABLE for r in failed):
                raise RetryItems(f"{len(failed)} blocks unavailable: {failed[0].error.message}")
            raise RuntimeError(f"block {failed[0].block_id} rejected: {failed[0].error.message}")
        return [r.verdict for r in replies]
    return with_retry(attempt, f"score blocks of {what}", settings.retry_budget_s)


def timestamp(value: str | None) -> Timestamp | None:
    if not value:
        return None
    out = Timestamp()
    out.FromJsonString(value)
    return out


def now_ts() -> Timestamp:
    out = Timestamp()
    out.GetCurrentTime()
    return out

