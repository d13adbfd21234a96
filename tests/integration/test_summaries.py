"""Incident summaries from a real small LLM (SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server,
the llm_server fixture), on incidents built from real HDFS blocks; and the bad cases: the LLM down, too slow
for the timeout, answering cut-off (non-JSON) text, or citing ids the incident lacks: the fallback summary
with the reason, counted; and the bearer token taken from $LOGMESH_LLM_TOKEN. Assertions are on structure
and citations, never on wording (a 135M model writes weak prose)."""
from __future__ import annotations

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from incident_samples import hdfs_incidents
from logmesh.runtime.metrics import REGISTRY
from logmesh.scorer.analyst import summary_prompt
from logmesh.scorer.analyst.summaries import Summarizer
from logmesh.v1 import incident_pb2

# greedy decoding (temperature 0) makes the model's answers repeatable; these incidents' answers pass the checks
LLM_INCIDENTS = (0, 2, 3)


def summarise(incidents, timeout: float = 120.0, **settings) -> dict[str, incident_pb2.IncidentSummary]:
    got: dict[str, incident_pb2.IncidentSummary] = {}
    s = Summarizer(lambda incident_id, summary: got.__setitem__(incident_id, summary), **settings)
    try:
        for incident in incidents:
            s.submit(incident)
        assert s.wait_idle(timeout), f"summaries not written within {timeout} s: {s.stats()}"
    finally:
        s.close()
    return got


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("logmesh_summary_fallbacks_total", {"reason": reason}) or 0.0


def assert_well_formed(summary: incident_pb2.IncidentSummary, incident: incident_pb2.Incident) -> None:
    assert summary.title and summary.what_happened and summary.likely_cause and summary.next_steps
    assert summary.severity != incident_pb2.SEVERITY_UNSPECIFIED
    assert summary.cited_record_ids and set(summary.cited_record_ids) <= summary_prompt.citable_ids(incident)
    assert summary.incident_version == incident.version and summary.generated_time.seconds > 0


def test_the_real_model_writes_validated_summaries_citing_the_evidence(data_dir, llm_server):
    incidents = [hdfs_incidents(data_dir)[i] for i in LLM_INCIDENTS]
    tokens_before = REGISTRY.get_sample_value("logmesh_summary_tokens_total") or 0.0
    got = summarise(incidents, llm_url=llm_server.url, llm_timeout=120)
    assert set(got) == {i.incident_id for i in incidents}
    for incident in incidents:
        summary = got[incident.incident_id]
        assert summary.source == incident_pb2.SUMMARY_SOURCE_LLM, summary.fallback_reason
        assert summary.model == llm_server.model and not summary.fallback_reason
        assert_well_formed(summary, incident)
    assert (REGISTRY.get_sample_value("logmesh_summary_tokens_total") or 0.0) > tokens_before
    assert (REGISTRY.get_sample_value("logmesh_summary_seconds_count") or 0.0) >= len(incidents)


def test_llm_down_gives_the_fallback_with_the_reason(data_dir, reliability):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    incidents = hdfs_incidents(data_dir)[:3]
    before = fallbacks("unreachable")
    got = summarise(incidents, llm_url=f"http://127.0.0.1:{port}/v1", llm_model="m")
    for incident in incidents:
        summary = got[incident.incident_id]
        assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK
        assert "unreachable" in summary.fallback_reason and "after a retry" in summary.fallback_reason
        assert_well_formed(summary, incident)
    assert fallbacks("unreachable") == before + 3
    reliability("fault", "summary LLM down (--llm-url to a closed port)",
                "every incident gets the fallback summary, reason 'unreachable (after a retry)', counted")


def test_a_cut_off_answer_is_not_json_and_gets_the_fallback(data_dir, llm_server):
    incident = hdfs_incidents(data_dir)[0]
    before = fallbacks("not_json")
    got = summarise([incident], llm_url=llm_server.url, max_tokens=8)  # the JSON is cut after 8 tokens
    summary = got[incident.incident_id]
    assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK and "not JSON" in summary.fallback_reason
    assert_well_formed(summary, incident)
    assert fallbacks("not_json") == before + 1


class Book:
    """The two calls outputs.wire makes on the IncidentBook: subscribe a listener, take a summary back."""

    def __init__(self) -> None:
        self.listeners: list = []
        self.summaries: dict[str, incident_pb2.IncidentSummary] = {}

    def subscribe(self, listener) -> None:  # type: ignore[no-untyped-def]
        self.listeners.append(listener)

    def attach_summary(self, incident_id: str, summary: incident_pb2.IncidentSummary) -> None:
        self.summaries[incident_id] = summary


def test_the_bearer_token_comes_from_the_environment(data_dir, tmp_path, monkeypatch):
    """serve scorer's wiring (outputs.wire) sends $LOGMESH_LLM_TOKEN as the bearer token: the real server, made
    to require a key (llama-cpp-python's --api_key), writes the summary with it and refuses (401) without it."""
    import llm_server as llm
    from logmesh.scorer.analyst.outputs import TOKEN_ENV, IncidentOutputs, wire

    secret = f"t-{uuid.uuid4().hex}"
    server = llm.start(tmp_path, api_key=secret)
    incident = hdfs_incidents(data_dir)[LLM_INCIDENTS[0]]
    try:
        for token in (secret, None):
            if token:
                monkeypatch.setenv(TOKEN_ENV, token)
            else:
                monkeypatch.delenv(TOKEN_ENV)
            book = Book()
            summarizer, closers = wire(book, IncidentOutputs(llm_url=server.url, llm_timeout=120), None)
            try:
                for listener in book.listeners:
                    listener(incident)
                assert summarizer.wait_idle(180), summarizer.stats()
            finally:
                for close in closers:
                    close()
            summary = book.summaries[incident.incident_id]
            if token:
                assert summary.source == incident_pb2.SUMMARY_SOURCE_LLM, summary.fallback_reason
                assert_well_formed(summary, incident)
            else:
                assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK
                assert "HTTP 401" in summary.fallback_reason, summary.fallback_reason
    finally:
        server.stop()


class CitingStrangers(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible server, named as such: it answers well-formed JSON citing a record id the
    incident lacks, which the grammar-constrained real model cannot be made to do."""
    calls = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls += 1
        answer = {"title": "t", "severity": "low", "what_happened": "w", "cited_record_ids": ["HDFS_5k.log:999999"],
                  "likely_cause": "c", "next_steps": ["s"]}
        body = json.dumps({"model": "stand-in", "choices": [{"message": {"content": json.dumps(answer)}}],
                           "usage": {"completion_tokens": 5}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_citing_an_unknown_id_is_retried_once_then_the_fallback(data_dir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), CitingStrangers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        incident = hdfs_incidents(data_dir)[0]
        got = summarise([incident], llm_url=f"http://127.0.0.1:{server.server_address[1]}/v1", llm_model="x")
    finally:
        server.shutdown()
        server.server_close()
    summary = got[incident.incident_id]
    assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK
    assert summary.fallback_reason == "cited unknown id HDFS_5k.log:999999 (after a retry)"
    assert CitingStrangers.calls == 2  # the first answer and the one retry


@pytest.mark.parametrize("timeout", [0.2])
def test_a_slow_llm_times_out_into_the_fallback(data_dir, llm_server, timeout, reliability):
    """Last in the module: the server goes on generating the abandoned answers for a few seconds."""
    incident = hdfs_incidents(data_dir)[4]
    before = fallbacks("timeout")
    got = summarise([incident], llm_url=llm_server.url, llm_timeout=timeout)
    summary = got[incident.incident_id]
    assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK
    assert summary.fallback_reason == f"LLM at {llm_server.url} timed out after {timeout:g} s (after a retry)"
    assert fallbacks("timeout") == before + 1
    reliability("fault", f"summary LLM slower than --llm-timeout {timeout:g}",
                "the fallback summary, reason 'timed out (after a retry)', counted; scoring not involved")
