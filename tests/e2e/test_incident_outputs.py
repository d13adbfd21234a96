"""`logmesh serve scorer --llm-url ... --notify-url ...` as a user runs it: a real scorer process (its history
reading a fresh anomalies topic on the real broker, its incident book in a fresh compacted topic), the real
SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server (llm_server), and a real HTTP webhook
receiver started here. Flagged HDFS lines on two DataNodes, scored by this scorer, become two incidents; each
gets a summary (an LLM one or the fallback, with its reason), and the receiver gets exactly one notification
per incident in each format, with the summary in it."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from anomaly_topic import AnomalyWriter, fresh_topic
from llm_server import free_port
from logmesh.client import IncidentClient, ScorerClient
from logmesh.v1 import incident_pb2, score_pb2
from waiting import wait_for
from webhook_receiver import WebhookReceiver

LOGMESH = str(Path(sys.executable).with_name("logmesh"))


def mirror_line(when: str, node: str, mirror: str, block_id: str) -> str:
    """An HDFS_v1 E12 line: a DataNode failing to write a block on to the next one of its pipeline."""
    return (f"081109 {when} 2512 INFO dfs.DataNode$DataXceiver: {node}:50010:Exception writing block {block_id} "
            f"to mirror {mirror}:50010")


@pytest.fixture()
def scorer_process(admin, trained_models, embedder_server, llm_server, tmp_path):  # type: ignore[no-untyped-def]
    anomalies = fresh_topic(admin, "t-outputs")
    incidents = f"t-outputs.{uuid.uuid4().hex[:8]}.incidents"
    for future in admin.create_topics([NewTopic(incidents, 1, 1, config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    port = free_port()
    with WebhookReceiver() as rx:
        log = (tmp_path / "scorer.log").open("wb")
        proc = subprocess.Popen(
            [LOGMESH, "serve", "scorer", "--port", str(port), "--model-dir", str(trained_models),
             "--embedder", embedder_server.address, "--reload-interval", "60", "--state-dir", str(tmp_path / "state"),
             "--anomalies-topic", anomalies, "--incidents-topic", incidents, "--feedback-topic", "",
             "--llm-url", llm_server.url, "--llm-timeout", "120", "--notify-url", rx.url("/am"),
             "--notify-url", f"slack={rx.url('/slack')}", "--notify-wait", "300"], stdout=log, stderr=subprocess.STDOUT)
        try:
            with ScorerClient(f"127.0.0.1:{port}") as client:
                client.wait_until_serving(60)
            yield f"127.0.0.1:{port}", anomalies, rx, tmp_path
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


def test_each_incident_is_summarised_and_notified_once_per_target(scorer_process):
    address, anomalies, rx, tmp_path = scorer_process
    with ScorerClient(address) as scorer:
        flagged = [scorer.score_line(mirror_line("213411", "10.251.122.65", "10.251.74.79", "blk_1001")),
                   scorer.score_line(mirror_line("213500", "10.250.5.10", "10.250.5.11", "blk_1002"))]
    assert all(r.verdict == score_pb2.VERDICT_ANOMALY for r in flagged), flagged
    AnomalyWriter(anomalies).write([score_pb2.Anomaly(line=r) for r in flagged])
    with IncidentClient(address) as client:
        def summarised() -> list[incident_pb2.Incident] | None:
            found, _ = client.list(100, include_suppressed=True)
            done = [i for i in found if i.HasField("summary") and i.summary.incident_version == i.version]
            return found if len(found) == 2 and len(done) == 2 else None
        incidents = wait_for(summarised, 400, "two incidents, each with a summary of its version", every=2)
    by_id = {i.incident_id: i for i in incidents}
    for incident in incidents:
        s = incident.summary
        cited = {e.record_id for e in incident.evidence}
        assert s.title and s.what_happened and s.next_steps and set(s.cited_record_ids) <= cited
        if s.source == incident_pb2.SUMMARY_SOURCE_LLM:
            assert s.model and not s.fallback_reason
        else:
            assert s.source == incident_pb2.SUMMARY_SOURCE_FALLBACK and s.fallback_reason
    with ScorerClient(address) as scorer:
        counts = scorer.stats().summaries  # GetStats: what the summarizer did
    assert counts.llm + counts.fallback >= 2  # one per incident version at least
    if any(i.summary.source == incident_pb2.SUMMARY_SOURCE_LLM for i in incidents):
        assert counts.llm >= 1 and counts.completion_tokens > 0 and counts.latency_p50_seconds > 0
    wait_for(lambda: len(rx.posts) >= 4, 60, "a notification per incident and format")
    time.sleep(3)  # anything more would be a second notification
    am = [b for path, b in rx.posts if path == "/am"]
    slack = [b for path, b in rx.posts if path == "/slack"]
    assert sorted(b["groupLabels"]["incident_id"] for b in am) == sorted(by_id)
    assert len(slack) == 2 and all(any(i in b["text"] for i in by_id) for b in slack)
    for body in am:  # sent once the summary was there: it carries the summary's title
        incident = by_id[body["groupLabels"]["incident_id"]]
        assert body["commonAnnotations"]["summary"] == incident.summary.title
        assert body["alerts"] and body["status"] == "firing"
    sent = (tmp_path / "state" / "notify")
    assert sorted(p.read_text().split() for p in sent.glob("*.sent")) == [sorted(by_id)] * 2
