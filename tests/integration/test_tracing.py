"""OpenTelemetry traces across the hops, on real parts: `logmesh serve embedder`, `logmesh serve scorer`,
`logmesh ingest` and `logmesh stream --once` as processes with the real SDK and its real OTLP/gRPC exporter,
sending to an OTLP receiver this test runs (tests/otlp_receiver.py: a gRPC server implementing
opentelemetry-proto's TraceService), through the real Kafka broker and a real local Spark job.

Traced, one record's chain is ingest's PRODUCER span -> the job task's CONSUMER span (its context came in the
record's Kafka headers) -> the task's CLIENT calls -> the embedder's and the scorer's SERVER spans (the
context came in the gRPC metadata), all with one trace id. Not traced (no flag, no OTEL_TRACES_EXPORTER),
the same commands with OTEL_EXPORTER_OTLP_ENDPOINT pointing at the receiver export nothing at all."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka_helpers import BOOTSTRAP, _consume_all, _topics
from llm_server import free_port
from otlp_receiver import Receiver
from waiting import stop_process, wait_for

from logmesh.client import EmbedderClient, ScorerClient

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.model]
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LINES = 200
PRODUCER, SERVER, CLIENT, CONSUMER = 4, 2, 3, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


@pytest.fixture(scope="module")
def head(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "HDFS_head.log"
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as src:
        path.write_text("".join(next(src) for _ in range(LINES)))
    return path


def _env(receiver: Receiver, traced: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # the collector's address in the standard variable either way: off must mean off, not "nowhere to send"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    if traced:
        env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export within 0.2 s instead of 5 s
    return env


def _stack(tmp_path: Path, models: Path, env: dict, flags: list[str]) -> tuple[subprocess.Popen, subprocess.Popen, str, str]:
    ep, sp = free_port(), free_port()
    embedder = subprocess.Popen([LOGMESH, "serve", "embedder", "--port", str(ep), *flags], env=env,
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "embedder.log").open("wb"))
    scorer = subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(sp), "--model-dir", str(models),
                               "--embedder", f"127.0.0.1:{ep}", "--state-dir", str(tmp_path / "state"), *flags],
                              env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "scorer.log").open("wb"))
    return embedder, scorer, f"127.0.0.1:{ep}", f"127.0.0.1:{sp}"


def _replay(admin, tmp_path: Path, head: Path, models: Path, env: dict, flags: list[str]) -> str:
    """The stack, one ingest of `head` and one `logmesh stream --once` over it; returns the input topic."""
    config = _topics(admin, f"t{uuid.uuid4().hex[:8]}")
    embedder, scorer, e_addr, s_addr = _stack(tmp_path, models, env, flags)
    try:
        EmbedderClient(e_addr).wait_until_serving(120)
        ScorerClient(s_addr).wait_until_serving(120)
        done = subprocess.run([LOGMESH, "ingest", str(head), "--bootstrap", BOOTSTRAP, "--topic", config.topic,
                               "--no-progress", *flags], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        done = subprocess.run([LOGMESH, "stream", "--once", "--bootstrap", BOOTSTRAP, "--topic", config.topic,
                               "--scores-topic", config.scores_topic, "--anomalies-topic", config.anomalies_topic,
                               "--dlq-topic", config.dlq_topic, "--embedder", e_addr, "--scorer", s_addr,
                               "--checkpoint", str(tmp_path / "checkpoint"), "--qdrant-path", str(tmp_path / "qdrant"),
                               *flags],
                              env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(_consume_all(config.scores_topic)) == LINES  # the job ran and scored every line
    finally:
        stop_process(embedder, 15)
        stop_process(scorer, 15)
    return config.topic


def test_a_records_spans_cross_ingest_job_embedder_and_scorer_in_one_trace(admin, trained_models, head, tmp_path):
    with Receiver() as receiver:
        topic = _replay(admin, tmp_path, head, trained_models, _env(receiver, True),
                        ["--trace", "--trace-endpoint", receiver.endpoint])
        # each record carries its producer span's context, the W3C way
        records = _consume_all(topic)
        parents = {dict(m.headers() or [])["traceparent"].decode() for m in records}
        assert len(records) == LINES and len(parents) == 1  # 200 records: one producer span (1,000 per span)

        def chain():
            spans = receiver.spans()
            by_id = {s.span_id: s for s in spans}
            producer = [s for s in spans if s.service == "logmesh-ingest" and s.kind == PRODUCER]
            tasks = [s for s in spans if s.service == "logmesh-stream" and s.kind == CONSUMER
                     and producer and s.parent_id == producer[0].span_id]

            def under_task(s) -> bool:  # a server span whose caller's span is a task span of the trace
                caller = by_id.get(s.parent_id)
                return caller is not None and caller.kind == CLIENT and caller.parent_id in {t.span_id for t in tasks}
            embeds = [s for s in spans if s.service == "logmesh-embedder" and s.kind == SERVER and under_task(s)]
            scores = [s for s in spans if s.service == "logmesh-scorer" and s.kind == SERVER and under_task(s)
                      and s.name == "logmesh.v1.ScorerService/ScoreStream"]
            return (producer, tasks, embeds, scores) if producer and tasks and embeds and scores else None

        producer, tasks, embeds, scores = wait_for(chain, 30, "the producer -> job -> embedder -> scorer chain")
        assert len(producer) == 1 and producer[0].parent_id == ""
        trace_id = producer[0].trace_id
        assert {s.trace_id for s in (*tasks, *embeds, *scores)} == {trace_id}  # one trace across the hops
        (parent,) = parents  # version-trace id-parent span id-flags (sampled: bit 0)
        version, tid, sid, flags = parent.split("-")
        assert (version, tid, sid) == ("00", trace_id, producer[0].span_id) and int(flags, 16) & 1
        assert embeds[0].name == "logmesh.v1.EmbedderService/EmbedStream"
        # no health check is traced (the CLI and the job wait for SERVING with them)
        assert not [s for s in receiver.spans() if "Health" in s.name]


def test_with_tracing_off_no_span_is_exported(admin, trained_models, head, tmp_path):
    with Receiver() as receiver:
        topic = _replay(admin, tmp_path, head, trained_models, _env(receiver, False), [])
        assert not any(m.headers() for m in _consume_all(topic))  # no traceparent in the records either
        assert receiver.spans() == [] and receiver.exports == 0
