"""The scorer over real gRPC, with a model trained on the real data and the real embedder behind it."""
from __future__ import annotations

import shutil
import time

import grpc
import numpy as np
import pytest

from logmesh import vectors
from logmesh.client import ScorerClient
from logmesh.ingest.hdfs import parse_line
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb
from waiting import wait_for

NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")
# Line 6336 of HDFS_20000.log: its block blk_-3102267849859399193 is labelled Anomaly.
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")


def test_score_prints_verdict_votes_and_model(scorer):
    r = scorer.score_line(NORMAL_LINE)
    assert r.verdict == score_pb2.VERDICT_NORMAL
    assert [v.model for v in r.votes] == ["tfidf_sgd", "random_forest", "mlp", "decision_tree", "embedding_sgd"]
    assert r.anomaly_votes + r.normal_votes == 5 and 0.5 <= r.confidence <= 1.0
    assert abs(r.score - np.mean([v.score for v in r.votes])) < 1e-5
    assert r.template_id == "E9" and list(r.block_ids) == ["blk_3587508140051953248"]
    assert r.model_version and r.record_id.startswith("raw:")


def test_a_known_failing_line_is_flagged(scorer):
    r = scorer.score_line(EXCEPTION_LINE)
    assert r.verdict == score_pb2.VERDICT_ANOMALY and r.anomaly_votes >= 3
    assert r.score > 0.5


def test_stream_scores_the_real_log_in_order(scorer, data_dir):
    lines = (data_dir / "HDFS_5k.log").read_text().splitlines()
    results = list(scorer.score_lines(lines, batch_size=256))
    assert len(results) == len(lines)
    assert all(r.HasField("result") for r in results)
    records = [parse_line(l, "raw") for l in lines]
    assert [r.result.template_id for r in results] == [rec.template_id for rec in records]


def test_record_with_its_own_embedding_skips_the_embedder(scorer, encoder):
    record = parse_line(NORMAL_LINE, "HDFS.log", 1)
    from logmesh.ingest.masking import line_shape
    vec = encoder.encode([line_shape(record.component, record.message)])[0]
    item = spb.ScoreItem(record=record, embedding=vectors.to_message(record.id, "all-MiniLM-L6-v2", vec))
    [out] = list(scorer.score_stream([item]))
    assert out.record_id == "HDFS.log:1" and out.result.verdict == score_pb2.VERDICT_NORMAL


def test_stats_count_what_was_scored(scorer):
    before = scorer.stats()
    for _ in range(3):
        scorer.score_line(EXCEPTION_LINE)
    scorer.score_line(NORMAL_LINE)
    after = scorer.stats()
    assert after.lines_scored - before.lines_scored == 4
    assert after.line_anomalies - before.line_anomalies == 3
    assert after.latency_p99_ms >= after.latency_p50_ms > 0
    assert after.model_version and len(after.model_members) == 5
    # scoring records nothing: the history (here without an anomalies topic) stays empty
    assert after.history_status == "off" and after.history_entries == 0 and not scorer.anomalies().anomalies


def test_without_an_artifact_the_scorer_is_not_serving_and_says_why(tmp_path, embedder_server, trained_models,
                                                                    reliability):
    from logmesh.scorer.service import serve
    server = serve(0, tmp_path / "empty", embedder_server.address, reload_interval=0.1)
    try:
        with ScorerClient(server.address) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as info:
                client.score_line(NORMAL_LINE)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "logmesh train" in info.value.details()
            status = client.stats().model_status
            assert "no model artifact" in status
            # an artifact appearing later is picked up without a restart
            appeared = time.monotonic()
            shutil.copytree(trained_models, tmp_path / "empty")
            client.wait_until_serving(10)
            serving_after = time.monotonic() - appeared
            assert client.score_line(NORMAL_LINE).model_version == client.stats().model_version
            reliability("fault", "scorer started with no model artifact",
                        f"health NOT_SERVING, Score UNAVAILABLE (\"{_short(info.value.details(), tmp_path / 'empty')}\"); "
                        f"an artifact copied in later was served after {serving_after:.1f} s "
                        "without a restart", lost="nothing (callers were told to retry)")
    finally:
        server.stop(0)


def test_hot_reload_swaps_to_a_newer_artifact_and_keeps_the_last_good_one(tmp_path, embedder_server, trained_models,
                                                                          reliability):
    from logmesh.scorer import artifacts
    from logmesh.scorer.service import serve
    models = tmp_path / "models"
    shutil.copytree(trained_models, models)
    [old] = artifacts.versions(models)
    server = serve(0, models, embedder_server.address, reload_interval=0.1)
    try:
        with ScorerClient(server.address) as client:
            assert client.stats().model_version == old
            newer = artifacts.new_version("ab" * 8)
            assert newer > old
            shutil.copytree(models / old, models / newer)
            wait_for(lambda: client.stats().model_version == newer)
            assert client.score_line(NORMAL_LINE).model_version == newer
            # a corrupt artifact: the scorer keeps serving the last good one and says why
            corrupt = artifacts.new_version("cd" * 8, now=_later())
            shutil.copytree(models / old, models / corrupt)
            (models / corrupt / "model.joblib").write_bytes(b"not a model")
            wait_for(lambda: "unreadable" in client.stats().model_status)
            stats = client.stats()
            assert stats.model_version == newer and "still serving" in stats.model_status
            assert client.health() == "SERVING"
            assert client.score_line(NORMAL_LINE).model_version == newer
            reliability("fault", "corrupt model artifact appears (model.joblib = garbage)",
                        f"the last good artifact kept serving (health SERVING, lines scored with {newer}); "
                        f"GetStats says \"{_short(stats.model_status, models)}\"")
            # a newer artifact whose model file is missing: the same
            missing = artifacts.new_version("ef" * 8, now=_later(10))
            shutil.copytree(models / old, models / missing)
            (models / missing / "model.joblib").unlink()
            wait_for(lambda: missing in client.stats().model_status)
            stats = client.stats()
            assert stats.model_version == newer and "still serving" in stats.model_status
            assert client.health() == "SERVING" and client.score_line(NORMAL_LINE).model_version == newer
            reliability("fault", "model artifact with its model file missing",
                        f"the last good artifact kept serving (health SERVING); GetStats says "
                        f"\"{_short(stats.model_status, models)}\"")
    finally:
        server.stop(0)


def test_embedder_down_gives_unavailable_per_item_not_a_dead_stream(tmp_path, trained_models):
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, "127.0.0.1:1", reload_interval=60)  # nothing listens on port 1
    try:
        with ScorerClient(server.address) as client:
            results = list(client.score_lines([NORMAL_LINE, "081109 203518 143 INFO dfs.X: never seen shape"]))
            assert [r.WhichOneof("outcome") for r in results] == ["error", "error"]
            assert all(r.error.code == grpc.StatusCode.UNAVAILABLE.value[0] for r in results)
            assert "embedder unavailable" in results[0].error.message
            assert client.stats().items_rejected == 2
    finally:
        server.stop(0)


def test_an_item_with_its_embedding_is_scored_with_the_embedder_down(trained_models, encoder):
    """The vector the caller sends is the one used: no embedder call (here there is no embedder at all)."""
    from logmesh.ingest.masking import line_shape
    from logmesh.scorer.service import serve
    record = parse_line("081109 203518 143 INFO dfs.DataNode$DataXceiver: a shape this scorer never saw 7",
                        "HDFS.log", 7)
    vec = encoder.encode([line_shape(record.component, record.message)])[0]
    server = serve(0, trained_models, "127.0.0.1:1", reload_interval=60)  # nothing listens on port 1
    try:
        with ScorerClient(server.address) as client:
            given, bare = list(client.score_stream([
                spb.ScoreItem(record=record, embedding=vectors.to_message(record.id, "all-MiniLM-L6-v2", vec)),
                spb.ScoreItem(raw_line="081109 203518 143 INFO dfs.DataNode$DataXceiver: another new shape")]))
            assert given.HasField("result") and given.result.model_version
            assert bare.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    finally:
        server.stop(0)


def _short(text: str, folder, limit: int = 200) -> str:  # type: ignore[no-untyped-def]
    """A status message for docs/reliability.md: without the test's temporary folder, cut to `limit`."""
    return text.replace(f"{folder}/", "").replace(str(folder), "<model dir>")[:limit]


def _later(seconds: float = 5):
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def _session(data_dir, block_id: str) -> list[str]:
    from logmesh.ingest.hdfs import parse_line
    with open(data_dir / "HDFS_5k.log", encoding="utf-8") as f:
        return [r.template_id for r in (parse_line(l) for l in f) if block_id in r.block_ids]


def test_block_model_judges_known_blocks_of_the_real_log(scorer, data_dir):
    from logmesh.scorer.dataset import read_block_labels
    labels = read_block_labels(data_dir / "anomaly_label.csv")
    anomalous = "blk_-3102267849859399193"  # a labelled Anomaly block with writeBlock exceptions
    normal = "blk_-1608999687919862906"
    assert labels[anomalous] == 1 and labels[normal] == 0
    blocks = [spb.BlockSession(block_id=b, events=_session(data_dir, b) or _events_20000(data_dir, b), closed=True)
              for b in (anomalous, normal)]
    results = list(scorer.score_blocks(blocks))
    assert [r.verdict.verdict for r in results] == [score_pb2.VERDICT_ANOMALY, score_pb2.VERDICT_NORMAL]
    assert results[0].verdict.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL and results[0].verdict.model_version
    # an open prefix of a normal block is not an alarm
    prefix = spb.BlockSession(block_id=normal, events=blocks[1].events[:3], closed=False)
    reply = scorer.stub.ScoreBlock(spb.ScoreBlockRequest(block=prefix), timeout=10).verdict
    assert reply.verdict == score_pb2.VERDICT_NORMAL and reply.kind == score_pb2.BLOCK_VERDICT_KIND_INTERIM
    stats = scorer.stats()
    assert stats.blocks_scored >= 3 and stats.block_anomalies >= 1


def _events_20000(data_dir, block_id: str) -> list[str]:
    from logmesh.ingest.hdfs import parse_line
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as f:
        return [r.template_id for r in (parse_line(l) for l in f) if block_id in r.block_ids]


def test_bad_blocks_get_per_item_errors(scorer):
    blocks = [spb.BlockSession(block_id="", events=["E5"]), spb.BlockSession(block_id="blk_1"),
              spb.BlockSession(block_id="blk_2", events=["E22", "E5"])]
    results = list(scorer.score_blocks(blocks))
    assert [r.WhichOneof("outcome") for r in results] == ["error", "error", "verdict"]
    assert "empty" in results[0].error.message and "no events" in results[1].error.message


def test_watchers_receive_new_anomalies_live_with_filters(admin, trained_models, embedder_server):
    """Watchers see what the job commits to the anomalies topic as the history reads it, filtered."""
    import threading
    from anomaly_topic import ALERT, AnomalyWriter, block, fed_scorer, fresh_topic, line
    topic = fresh_topic(admin)
    server = fed_scorer(trained_models, embedder_server.address, topic)
    seen: list[score_pb2.Anomaly] = []
    blocks_seen: list[score_pb2.Anomaly] = []

    def watch(into, expected: int, **filters) -> None:
        # until as many entries as the filter should pass (one it should not have passed comes first, in topic
        # order, and fails the asserts), or a deadline generous for a loaded box
        with ScorerClient(server.address) as client:
            try:
                for entry in client.watch(timeout=30, **filters):
                    into.append(entry)
                    if len(into) == expected:
                        return
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    threads = [threading.Thread(target=watch, args=(seen, 2), kwargs={"component": "dfs.DataNode$DataXceiver"}),
               threading.Thread(target=watch, args=(blocks_seen, 1), kwargs={"blocks_only": True})]
    try:
        for t in threads:
            t.start()
        servicer = server.servicers["ScorerService"]
        wait_for(lambda: servicer._watchers == 2)  # both subscriptions are live on the server
        AnomalyWriter(topic).write([
            line("x", EXCEPTION_LINE.split(": ", 1)[1]),  # an anomalous DataXceiver line
            line("y", "PacketResponder blk_-3102267849859399193 2 Exception java.io.EOFException",
                 component="dfs.DataNode$PacketResponder"),  # anomalous, but another component
            block("blk_-3102267849859399193", ALERT, ["E5", "E22", "E7"])])
        for t in threads:
            t.join(40)
    finally:
        server.stop(1)
    # the component filter passes lines of that component, and blocks (the proto's rule)
    assert [e.line.message or e.block.block_id for e in seen] == [EXCEPTION_LINE.split(": ", 1)[1],
                                                                   "blk_-3102267849859399193"]
    assert seen[0].line.component == "dfs.DataNode$DataXceiver" and seen[0].id > 0
    assert [e.block.block_id for e in blocks_seen] == ["blk_-3102267849859399193"]
