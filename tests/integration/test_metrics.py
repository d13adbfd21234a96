"""Prometheus metrics of a real server (the session's embedder, the real model), scraped over HTTP from
/metrics as Prometheus would: every RPC counted by method and status code, messages counted both ways,
latency in a histogram, refusals by admission counted with their code."""
from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from logmesh.client import EmbedderClient
from logmesh.runtime.metrics import serve_metrics, stop_metrics
from logmesh.v1 import embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc

SERVICE = "logmesh.v1.EmbedderService"
LINE = "PacketResponder 1 for block blk_123 terminating"


@pytest.fixture(scope="module")
def metrics_url():
    port = serve_metrics(0, component="test")
    yield f"http://127.0.0.1:{port}/metrics"
    stop_metrics()


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = [((s.name, tuple(sorted(s.labels.items()))), s.value)
               for family in text_string_to_metric_families(text) for s in family.samples]
    keys = [key for key, _ in samples]
    assert len(keys) == len(set(keys)), f"duplicate samples: {sorted({k for k in keys if keys.count(k) > 1})}"
    return dict(samples)


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_each_rpc_is_counted_by_method_and_code_with_its_latency(embedder_server, metrics_url):
    before = _scrape(metrics_url)
    unary = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Embed"}
    bidi = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "EmbedStream"}
    with grpc.insecure_channel(embedder_server.address) as channel:
        stub = egrpc.EmbedderServiceStub(channel)
        for _ in range(3):
            stub.Embed(epb.EmbedRequest(record_id="r", text=LINE), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(epb.EmbedRequest(record_id="r", text=""), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        batches = [epb.EmbedStreamRequest(batch_id=i, items=[epb.EmbedItem(record_id=f"{i}", text=LINE)])
                   for i in range(4)]
        assert len(list(stub.EmbedStream(iter(batches), timeout=30))) == 4
    after = _scrape(metrics_url)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("grpc_server_started_total", **unary) == 4
    assert delta("grpc_server_handled_total", **unary, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **unary, grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_msg_received_total", **unary) == 4
    assert delta("grpc_server_msg_sent_total", **unary) == 3
    assert delta("grpc_server_handling_seconds_count", **unary) == 4
    assert delta("grpc_server_handling_seconds_sum", **unary) > 0
    assert delta("grpc_server_handled_total", **bidi, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", **bidi) == 4
    assert delta("grpc_server_msg_sent_total", **bidi) == 4
    assert _value(after, "logmesh_build_info", component="test") == 1
    # 3 + 4 lookups of one shape: the first one (in this test or before it) missed, the rest hit
    lookups = delta("logmesh_embedder_cache_lookups_total", result="hit") + delta(
        "logmesh_embedder_cache_lookups_total", result="miss")
    assert lookups == 7 and delta("logmesh_embedder_cache_lookups_total", result="hit") >= 6
    assert _value(after, "logmesh_embedder_cache_bytes") > 0
    assert delta("logmesh_embedder_shapes_encoded_total") <= 1  # the one shape reached the model at most once


def test_calls_refused_by_admission_are_counted_with_their_code(encoder, metrics_url):
    """More streams than --max-open-streams allows: the extra ones end RESOURCE_EXHAUSTED, and /metrics says so."""
    from logmesh.embedder.service import serve
    from logmesh.runtime.grpc_server import Limits
    server = serve(0, encoder_factory=lambda: encoder, limits=Limits(max_open_streams=1))
    labels = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "EmbedStream"}
    try:
        with EmbedderClient(server.address) as client:
            client.wait_until_serving(60)
        before = _value(_scrape(metrics_url), "grpc_server_handled_total", **labels, grpc_code="RESOURCE_EXHAUSTED")
        release = threading.Event()

        def held():  # a stream that stays open until released, holding the only slot
            yield epb.EmbedStreamRequest(batch_id=0, items=[epb.EmbedItem(record_id="0", text=LINE)])
            release.wait(30)

        with grpc.insecure_channel(server.address) as channel:
            stub = egrpc.EmbedderServiceStub(channel)
            first = stub.EmbedStream(held(), timeout=60)
            next(first)  # the first stream is open and answered
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.EmbedStream(iter([epb.EmbedStreamRequest(batch_id=1)]), timeout=30))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            list(first)
        after = _value(_scrape(metrics_url), "grpc_server_handled_total", **labels, grpc_code="RESOURCE_EXHAUSTED")
        assert after - before == 1
    finally:
        server.stop(1)


def test_the_scorer_exposes_what_getstats_reports(scorer_server, metrics_url, tmp_path):
    """Lines, line anomalies and block verdicts by evidence kind on /metrics move with GetStats (one source),
    and the served model's version is named."""
    from logmesh.client import ScorerClient
    from logmesh.v1 import scorer_service_pb2 as spb
    lines = ["081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
             "blk_38865049064139660 terminating",
             "081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
             "received exception java.io.IOException: Could not read from stream"]
    from logmesh.runtime.grpc_server import Limits
    from logmesh.scorer.model_manager import ModelManager
    from logmesh.scorer.service import ScorerServicer
    # a second, idle scorer in this process: /metrics sums over both, one sample per label set
    idle = ScorerServicer(ModelManager(tmp_path, embed=lambda shapes, timeout: None, limits=Limits()), Limits())
    with ScorerClient(scorer_server.address) as client:
        stats_before, before = client.stats(), _scrape(metrics_url)
        results = [client.score_line(line) for line in lines]
        verdict = client.stub.ScoreBlock(spb.ScoreBlockRequest(block=spb.BlockSession(
            block_id="blk_metrics", events=["E5", "E22", "E5", "E5", "E11", "E9", "E11", "E9", "E11", "E9", "E26",
                                            "E26", "E26", "E2", "E2", "E2"], closed=True)), timeout=30).verdict
        stats_after, after = client.stats(), _scrape(metrics_url)
    flagged = sum(r.verdict == 2 for r in results)  # VERDICT_ANOMALY

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("logmesh_scorer_lines_scored_total") == stats_after.lines_scored - stats_before.lines_scored == 2
    assert delta("logmesh_scorer_line_anomalies_total") == stats_after.line_anomalies - stats_before.line_anomalies == flagged
    kind = {"verdict": "anomaly" if verdict.verdict == 2 else "normal", "evidence_kind": verdict.evidence_kind or "none"}
    assert delta("logmesh_scorer_block_verdicts_total", **kind) == 1
    assert _value(after, "logmesh_scorer_model_info", version=stats_after.model_version) == 1
    assert _value(after, "logmesh_scorer_model_reloads_total") >= 1
    score = {"grpc_type": "unary", "grpc_service": "logmesh.v1.ScorerService", "grpc_method": "Score"}
    assert delta("grpc_server_handled_total", **score, grpc_code="OK") == 2
    idle.close()
