"""A BGL line's similar past cases are searched by its own shape (`COMPONENT LEVEL: message`, the one the job
embedded and the scorer memoised), not an HDFS-style `component: message`; the store is Qdrant's engine
in-process (qdrant-edge)."""
from __future__ import annotations

import numpy as np

from logmesh.ingest.families import record_shape
from logmesh.ingest.families.bgl import BglFamily
from logmesh.ingest.hdfs import parse_line
from logmesh.scorer.similar import SimilarCases, result_shape
from logmesh.streaming.vector_store import Point, open_store
from logmesh.v1 import score_pb2

ANOMALY = score_pb2.VERDICT_ANOMALY
LINES = {  # label column included, as in loghub's files; the parser drops it
    "self": "KERNDTLB 1117869872 2005.06.04 R23-M1-N8-I:J18-U11 2005-06-04-00.24.32.432192 R23-M1-N8-I:J18-U11 RAS "
            "KERNEL FATAL data TLB error interrupt",
    "same": "KERNDTLB 1117869873 2005.06.04 R23-M0-N1-C:J02-U01 2005-06-04-00.24.33.100000 R23-M0-N1-C:J02-U01 RAS "
            "KERNEL FATAL data TLB error interrupt",
    "stor": "KERNSTOR 1118536326 2005.06.11 R30-M0-N9-C:J16-U01 2005-06-11-17.32.06.211564 R30-M0-N9-C:J16-U01 RAS "
            "KERNEL FATAL data storage interrupt",
    "rts": "KERNRTSP 1119636006 2005.06.24 R10-M1-NF-C:J13-U01 2005-06-24-11.00.06.556371 R10-M1-NF-C:J13-U01 RAS "
           "KERNEL FATAL rts panic! - stopping execution",
}


def test_a_bgl_result_carries_its_level_and_rebuilds_the_records_shape():
    record = BglFamily().record(LINES["self"], "BGL.log", 1)
    result = score_pb2.ScoreResult(message=record.message, component=record.component, level_name=record.level_name)
    assert result_shape(result) == record_shape(record) == "KERNEL FATAL: data TLB error interrupt"
    hdfs = parse_line("081109 214043 2561 INFO dfs.DataNode$PacketResponder: PacketResponder blk_3 2 Exception "
                      "java.io.EOFException", "HDFS.log", 2)
    assert result_shape(score_pb2.ScoreResult(message=hdfs.message, component=hdfs.component)) == record_shape(hdfs)


def test_bgl_lines_are_searched_by_their_own_vector_one_case_per_text(tmp_path):
    family = BglFamily()
    records = {k: family.record(v, "BGL.log", n) for n, (k, v) in enumerate(LINES.items())}
    shapes = {k: record_shape(r) for k, r in records.items()}
    rng = np.random.default_rng(0)
    vectors = {s: rng.normal(size=8).astype(np.float32) for s in set(shapes.values())}  # keyed by BGL shapes only
    with open_store(path=str(tmp_path / "qdrant"), dim=8) as store:
        store.upsert([Point(f"logs/0/{n}", vectors[shapes[k]],
                            {"kind": "line", "record_id": r.id, "text": r.message, "component": r.component,
                             "is_anomaly": True, "label": "anomaly"})
                      for n, (k, r) in enumerate(records.items())])
        me = records["self"]
        entry = score_pb2.Anomaly(line=score_pb2.ScoreResult(record_id=me.id, verdict=ANOMALY, message=me.message,
                                                             component=me.component, level_name=me.level_name))
        asked: list[list[str]] = []
        SimilarCases(store, lambda s: (asked.append(s), {x: vectors[x] for x in s if x in vectors})[1]).fill([entry])
    assert asked == [["KERNEL FATAL: data TLB error interrupt"]]
    similar = entry.line.similar
    # neither itself nor the other line of its own text; the two other kinds, nearest first
    assert {s.id for s in similar} == {records["stor"].id, records["rts"].id}
    assert similar[0].similarity >= similar[1].similarity
