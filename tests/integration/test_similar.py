"""Similar past cases come from the vector store the job writes (Qdrant's engine, here in-process through
qdrant-edge), not from an index of the scorer's own: the nearest anomalous blocks and lines, one case per
distinct story or line shape, never the entry itself; a store that fails costs the similar cases, never the
entries; the history fills them as it reads the anomalies topic; and the embedded store is one process's
only (why the scorer takes similar cases from a Qdrant server, --qdrant-url)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.masking import line_shape
from logmesh.scorer.similar import SimilarCases, block_summary
from logmesh.streaming.vector_store import Point, open_store
from logmesh.v1 import score_pb2
from waiting import wait_for

from anomaly_topic import BOOTSTRAP, FINAL, AnomalyWriter, block, fresh_topic, line

ANOMALY = score_pb2.VERDICT_ANOMALY
DIM = 8
FAILED = ["E5", "E5", "E22", "E7"]          # a write exception
DELETED = ["E5", "E22", "E11", "E9", "E20"]  # re-replication then the file deleted


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def block_point(block_id: str, vector: np.ndarray, events: list[str], anomalous: bool = True,
                label: str = "anomaly") -> Point:
    """A block point as the job writes it (streaming/sink.py): mean vector, verdict, events."""
    return Point(block_id, vector, {"kind": "block", "block_id": block_id, "events": events, "closed": True,
                                    "is_anomaly": anomalous, "verdict": "anomaly" if anomalous else "normal",
                                    "label": label})


@pytest.fixture()
def store(tmp_path):
    with open_store(path=str(tmp_path / "qdrant"), dim=DIM) as s:
        yield s


def test_similar_blocks_nearest_first_distinct_never_itself(store):
    store.upsert([
        block_point("blk_self", unit(1, 0, 0), FAILED),
        block_point("blk_twin", unit(1, 0.05, 0), FAILED),             # the same story: no new case
        block_point("blk_near", unit(1, 0.2, 0), FAILED + ["E5"]),
        block_point("blk_far", unit(0.2, 1, 0), DELETED, label="unspecified"),
        block_point("blk_normal", unit(1, 0.01, 0), ["E5", "E22", "E11"], anomalous=False),  # never a case
    ])
    entry = block("blk_self", FINAL, FAILED)
    SimilarCases(store).fill([entry])
    similar = entry.block.similar
    assert [s.id for s in similar] == ["blk_near", "blk_far"]
    assert similar[0].similarity > similar[1].similarity and similar[0].similarity <= 1.0
    assert similar[0].text == block_summary(FAILED + ["E5"]) == "5 events: E5x3 E22 E7"
    assert [s.label for s in similar] == [2, 0] and all(s.verdict == ANOMALY for s in similar)


def test_similar_lines_one_per_shape_never_itself(store, encoder):
    raw = {"self": "081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_1 received exception "
                   "java.io.IOException: Could not read from stream",
           "same": "081109 214044 2562 INFO dfs.DataNode$DataXceiver: writeBlock blk_2 received exception "
                   "java.io.IOException: Could not read from stream",
           "eof": "081109 214043 2561 INFO dfs.DataNode$PacketResponder: PacketResponder blk_3 2 Exception "
                  "java.io.EOFException",
           "reset": "081109 214043 2561 WARN dfs.DataNode$DataXceiver: 10.251.30.6:50010:Got exception while "
                    "serving blk_4 to /10.251.90.64: java.io.IOException: Connection reset by peer"}
    records = {k: parse_line(v, "HDFS.log", n) for n, (k, v) in enumerate(raw.items())}
    shapes = {k: line_shape(r.component, r.message) for k, r in records.items()}
    vectors = dict(zip(shapes.values(), encoder.encode(list(shapes.values()))))
    with open_store(path=str(store.root) + "-lines") as lines:  # 384-d: the embedder's vectors
        lines.upsert([Point(f"logs/0/{n}", vectors[shapes[k]],
                            {"kind": "line", "record_id": r.id, "text": r.message, "component": r.component,
                             "is_anomaly": True, "label": "anomaly"})
                      for n, (k, r) in enumerate(records.items())])
        entry = score_pb2.Anomaly(line=score_pb2.ScoreResult(record_id=records["self"].id, verdict=ANOMALY,
                                                             message=records["self"].message,
                                                             component=records["self"].component))
        asked: list[list[str]] = []
        SimilarCases(lines, lambda s: (asked.append(s), {x: vectors[x] for x in s})[1]).fill([entry])
    similar = entry.line.similar
    assert asked == [[shapes["self"]]]  # one vector per distinct shape
    # neither itself nor the other line of its own shape; the two other shapes, nearest first
    assert {s.id for s in similar} == {records["eof"].id, records["reset"].id}
    assert similar[0].similarity >= similar[1].similarity and all(s.label == 2 for s in similar)
    assert {s.text for s in similar} == {records["eof"].message, records["reset"].message}


def test_a_store_that_fails_costs_the_similar_cases_not_the_entries(store, caplog):
    store.upsert([block_point("blk_a", unit(1, 0), FAILED), block_point("blk_b", unit(1, 1), DELETED)])
    kept = block("blk_a", FINAL, FAILED)
    kept.block.similar.add(id="from-the-job", similarity=0.5)  # what an entry carries is left as it is
    cases = SimilarCases(store)
    cases.fill([kept])
    assert [s.id for s in kept.block.similar] == ["from-the-job"]
    store.close()
    entry = block("blk_a", FINAL, FAILED)
    cases.fill([entry])
    cases.fill([block("blk_b", FINAL, DELETED)])
    assert len(entry.block.similar) == 0
    assert sum("similar cases unavailable" in r.getMessage() for r in caplog.records) == 1  # once per outage


def test_the_history_fills_similar_cases_as_it_reads_the_topic(admin, store):
    from logmesh.scorer.history import AnomalyHistory
    from logmesh.scorer.history_service import AnomalyFeed
    store.upsert([block_point("blk_new", unit(1, 0, 0), FAILED), block_point("blk_old", unit(1, 0.3, 0), DELETED)])
    topic = fresh_topic(admin)
    AnomalyWriter(topic).write([block("blk_new", FINAL, FAILED)])
    history = AnomalyHistory()
    feed = AnomalyFeed(history, BOOTSTRAP, topic, similar=SimilarCases(store)).start()
    try:
        wait_for(lambda: len(history) == 1, what="the history to read the entry")
    finally:
        feed.stop()
    [entry], _ = history.page(10, None)
    assert [s.id for s in entry.block.similar] == ["blk_old"] and entry.id == 1


def test_the_embedded_store_is_one_process_s_only(store):
    """The job's process holds the embedded store; a second process (a scorer) cannot open it, so the history
    takes similar cases from a Qdrant server only."""
    code = ("import sys\nfrom logmesh.streaming.vector_store import open_store\n"
            "try:\n    open_store(path=sys.argv[1], dim=8)\nexcept RuntimeError as e:\n    print(e)\n    sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "already open" in done.stdout, done.stdout + done.stderr


def test_a_qdrant_server_that_does_not_answer_costs_only_the_similar_cases(admin, trained_models, embedder_server):
    """`serve scorer --qdrant-url` at a port where nothing listens: the history records every entry, without
    similar cases, and scoring goes on."""
    from kafka_helpers import _free_port
    from logmesh.client import ScorerClient
    from anomaly_topic import fed_scorer
    topic = fresh_topic(admin)
    AnomalyWriter(topic).write([block("blk_q1", FINAL, FAILED), line("q2")])
    server = fed_scorer(trained_models, embedder_server.address, topic, qdrant_url=f"http://127.0.0.1:{_free_port()}")
    try:
        with ScorerClient(server.address) as client:
            wait_for(lambda: client.stats().history_entries == 2, 60, "the history to read both entries")
            entries = client.anomalies().anomalies
            assert [len(e.block.similar) + len(e.line.similar) for e in entries] == [0, 0]
            assert client.health() == "SERVING"
    finally:
        server.stop(1)
