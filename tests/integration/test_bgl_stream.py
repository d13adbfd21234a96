"""BGL end to end on real parts: `logmesh ingest --format bgl` to the real broker (records keyed by node id, the
label column kept only with --line-labels), the Spark job scoring through real embedder and scorer servers (a BGL
artifact), the anomalies topic and the embedded Qdrant engine. Every line is scored exactly once, each verdict is
the one the scorer gives the line directly, each node with a flagged line alerts once, and a restart adds nothing."""
from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from logmesh.ingest.families.bgl import BglFamily
from logmesh.ingest.producer import run_ingest
from logmesh.streaming.job import run
from logmesh.streaming.vector_store import open_store
from logmesh.v1 import log_record_pb2 as lr, score_pb2, scorer_service_pb2 as spb

from bgl_helpers import bgl_data, train_bgl_models
from kafka_helpers import BOOTSTRAP, _consume_all, _topics

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.model]
LINES = 1500  # lines 2001-3500 of BGL_8k.log, a sample the model never saw (two of them print no message)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bgl-logs") / "BGL_head.log"
    path.write_text("\n".join(bgl_data("BGL_8k.log").read_text().splitlines()[2000:2000 + LINES]) + "\n")
    (path.parent / "BGL_templates.csv").symlink_to(bgl_data("BGL_templates.csv"))  # ingest names templates with it
    return path


@pytest.fixture(scope="module")
def bgl_scorer(embedder_server, tmp_path_factory, encoder):
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, train_bgl_models(tmp_path_factory, encoder.encode), embedder_server.address,
                   reload_interval=60)
    ScorerClient(server.address).wait_until_serving(60)
    yield server
    server.stop(1)


def test_ingest_keys_bgl_records_by_node_and_keeps_labels_only_when_asked(admin, replay):
    lines = replay.read_text().splitlines()
    for keep in (False, True):
        topic = f"t{uuid.uuid4().hex[:8]}.logs"
        summary = run_ingest(replay, BOOTSTRAP, topic, progress=False, family="auto", line_labels=keep)
        admin.created.append(topic)
        assert summary.produced == LINES and summary.unparsed == 0 and summary.failed == 0
        records = [(m.key().decode(), lr.LogRecord.FromString(m.value())) for m in _consume_all(topic)]
        assert len(records) == LINES
        assert all(r.family == "bgl" and key == r.block_ids[0] == lines[r.line_number - 1].split(" ")[3]
                   for key, r in records)
        alerts = sum(not l.startswith("- ") for l in lines)
        if keep:
            assert sum(r.label == lr.LABEL_ANOMALY for _, r in records) == alerts
            assert all(r.alert_category == lines[r.line_number - 1].split(" ")[0] for _, r in records
                       if r.label == lr.LABEL_ANOMALY)
        else:
            assert all(r.label == lr.LABEL_UNSPECIFIED and not r.alert_category for _, r in records)
        assert sum(r.template_id != "unknown" for _, r in records) > LINES * 0.9  # named by the list beside the file


def test_the_ingest_command_detects_bgl_and_reports_what_it_produced(admin, replay):
    import json
    import subprocess
    import sys
    topic = f"t{uuid.uuid4().hex[:8]}.logs"
    out = subprocess.run([str(Path(sys.executable).with_name("logmesh")), "ingest", "--topic", topic, "--no-progress",
                          "--json", "--limit", "300", str(replay)], capture_output=True, text=True, timeout=120)
    admin.created.append(topic)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["produced"] == 300 and summary["unparsed"] == 0
    keys = {m.key().decode() for m in _consume_all(topic)}
    assert keys <= {l.split(" ")[3] for l in replay.read_text().splitlines()}  # node ids, not record ids


def test_replay_scores_every_bgl_line_once_alerts_each_flagged_node_once(admin, embedder_server, bgl_scorer, replay,
                                                                         tmp_path):
    from logmesh.client import ScorerClient
    config = _topics(admin, f"t{uuid.uuid4().hex[:8]}")
    config.embedder, config.scorer = embedder_server.address, bgl_scorer.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    assert run_ingest(replay, BOOTSTRAP, config.topic, progress=False, family="bgl", line_labels=True).produced == LINES
    run(config)

    scores = [score_pb2.ScoreResult.FromString(m.value()) for m in _consume_all(config.scores_topic)]
    ids = Counter(r.record_id for r in scores)
    assert len(ids) == LINES and max(ids.values()) == 1  # every line exactly once
    assert not _consume_all(config.dlq_topic) and sum(not r.message for r in scores) == 2  # no message: scored too
    # the job's verdicts are the scorer's own on the same lines (the job's vectors, the scorer's shapes agree)
    family = BglFamily()
    lines = replay.read_text().splitlines()
    with ScorerClient(bgl_scorer.address) as client:
        direct = {r.result.record_id: r.result.verdict for r in client.score_stream(
            spb.ScoreItem(record=family.record(l, replay.name, n)) for n, l in enumerate(lines, 1))}
    assert {r.record_id: r.verdict for r in scores} == direct
    flagged = {r.record_id for r in scores if r.verdict == score_pb2.VERDICT_ANOMALY}
    alerts = sum(not l.startswith("- ") for l in lines)
    caught = sum(not lines[int(i.rsplit(":", 1)[1]) - 1].startswith("- ") for i in flagged)
    assert caught >= 0.8 * alerts  # the detector finds most alerts of a sample it never saw

    anomalies = [score_pb2.Anomaly.FromString(m.value()) for m in _consume_all(config.anomalies_topic)]
    line_alerts = {a.line.record_id for a in anomalies if a.HasField("line")}
    assert line_alerts == flagged
    node_of = {f"{replay.name}:{n}": l.split(" ")[3] for n, l in enumerate(lines, 1)}
    block_alerts = Counter(a.block.block_id for a in anomalies if a.HasField("block")
                           and a.block.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT)
    assert set(block_alerts) == {node_of[i] for i in flagged} and max(block_alerts.values()) == 1
    for a in anomalies:
        if a.HasField("block"):
            # "frequency": a flagged node that also holds a burst of a template (rate_evidence.burst)
            assert a.block.evidence_kind in ("anomalous_lines", "frequency")
            assert set(a.block.anomalous_record_ids) <= flagged

    store = open_store(path=config.qdrant_path)
    assert store.count({"kind": "line"}) == len(flagged)
    assert store.count({"kind": "block"}) == len(set(node_of.values()))  # one point per node session
    store.close()

    run(config)  # a restart from the checkpoint: nothing new to read, nothing written again
    assert len(_consume_all(config.scores_topic)) == LINES
    assert len(_consume_all(config.anomalies_topic)) == len(anomalies)

    # `logmesh similar` on a BGL line (the label column dropped unread) and on a node's stored session
    import subprocess
    import sys
    logmesh = str(Path(sys.executable).with_name("logmesh"))
    alert = next(lines[int(i.rsplit(":", 1)[1]) - 1] for i in sorted(flagged)
                 if not lines[int(i.rsplit(":", 1)[1]) - 1].startswith("- "))
    out = subprocess.run([logmesh, "similar", "--qdrant-path", config.qdrant_path, "--embedder",
                          embedder_server.address, "--limit", "3", "APPSEV " + alert.partition(" ")[2]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    hits = out.stdout.splitlines()
    assert len(hits) == 3 and all(" line " in h and "anomaly=True" in h for h in hits)
    assert float(hits[0].split()[0]) > 0.99  # the line itself (its shape) is stored
    node = node_of[next(iter(flagged))]
    out = subprocess.run([logmesh, "similar", "--qdrant-path", config.qdrant_path, "--block", node, "--limit", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(" block " in h for h in out.stdout.splitlines()), out.stderr
