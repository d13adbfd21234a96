"""The FeedbackBook's rules on a real AnomalyHistory, without a broker: validation reasons, scope resolution,
which alerts and incidents a suppression covers, expiry, idempotency by client key (the topic's durability and
the gRPC service: tests/integration/test_feedback.py)."""
from __future__ import annotations

import time

import pytest

from logmesh.scorer.analyst.feedback import FeedbackBook, FeedbackRejected
from logmesh.scorer.analyst.feedback_match import anomaly_key, incident_members
from logmesh.scorer.analyst.feedback_scope import line_node, sequence_key
from logmesh.scorer.history import AnomalyHistory
from logmesh.v1 import feedback_pb2 as fpb, incident_pb2, score_pb2

BLK = "blk_-3102267849859399193"
FALSE, SUPPRESS, LEARN = fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_ACTION_SUPPRESS, fpb.FEEDBACK_ACTION_LEARN
ITEM, TEMPLATE, NODE, SEQUENCE = (fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_SCOPE_TEMPLATE, fpb.FEEDBACK_SCOPE_NODE,
                                  fpb.FEEDBACK_SCOPE_SEQUENCE)
WRITE = ["E5", "E5", "E22", "E7"]


def _line(rid: str, template: str = "E7", block: str = BLK, ip: str = "10.251.43.21") -> score_pb2.Anomaly:
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=rid, template_id=template, block_ids=[block], score=0.9, verdict=score_pb2.VERDICT_ANOMALY,
        message=f"{ip}:50010:DataXceiver: writeBlock {block} received exception java.io.IOException"))


def _block(block: str = BLK, events=WRITE, kind=score_pb2.BLOCK_VERDICT_KIND_FINAL) -> score_pb2.Anomaly:
    return score_pb2.Anomaly(block=score_pb2.BlockVerdict(block_id=block, events=events, kind=kind, score=0.9))


@pytest.fixture()
def world():
    history = AnomalyHistory()
    incidents = {"inc-1": incident_pb2.Incident(incident_id="inc-1", session_keys=[BLK], nodes=["10.251.43.21"],
                                                anomaly_ids=[1, 2])}
    book = FeedbackBook(None, history.find, incidents.get)
    history.mark = book.suppressing_anomaly
    history.add([_line("r1"), _line("r2", template="E9", block="blk_2", ip="10.0.0.9"), _block()])
    return history, book, incidents


def _fb(**kw) -> fpb.Feedback:
    kw.setdefault("label", FALSE)
    kw.setdefault("scope", ITEM)
    kw.setdefault("action", SUPPRESS)
    return fpb.Feedback(**kw)


def _marks(history: AnomalyHistory) -> dict[str, str]:
    entries, _ = history.page(100, None)
    return {(e.line.record_id or "?") if e.HasField("line") else e.block.block_id + ":block":
            e.suppressed_by_feedback_id for e in entries}


@pytest.mark.parametrize("fb, reason", [
    (fpb.Feedback(label=FALSE, scope=ITEM, action=SUPPRESS), "names no subject"),
    (_fb(record_id="nope"), "holds no flagged line"),
    (_fb(session_key="blk_404"), "holds no alert"),
    (_fb(incident_id="inc-404"), "no such incident"),
    (_fb(record_id="r1", label=0), "label 0 is unset"),
    (_fb(record_id="r1", scope=9), "scope 9 is unknown"),
    (_fb(record_id="r1", action=0), "action 0 is unset"),
    (_fb(record_id="r1", comment="x" * 4097), "4 KiB"),
    (_fb(record_id="r1", expire_time={"seconds": int(time.time()) - 60}), "not in the future"),
    (_fb(session_key="blk_2", scope=SEQUENCE), "no verdict with events"),
])
def test_rejections_say_why(world, fb, reason):
    _, book, _ = world
    with pytest.raises(FeedbackRejected, match=reason):
        book.submit(fb, "anonymous")
    assert len(book) == 0


def test_scopes_resolve(world):
    _, book, _ = world
    assert book.submit(_fb(record_id="r1", scope=TEMPLATE), "a")[0].scope_value == "E7"
    assert book.submit(_fb(record_id="r1", scope=NODE), "a")[0].scope_value == "10.251.43.21"
    assert book.submit(_fb(record_id="r1", scope=SEQUENCE), "a")[0].scope_value == sequence_key(WRITE)
    assert book.submit(_fb(session_key=BLK, scope=TEMPLATE), "a")[0].scope_value == "E7"
    assert book.submit(_fb(incident_id="inc-1", scope=NODE), "a")[0].scope_value == "10.251.43.21"
    stored = book.submit(_fb(record_id="r1"), "alice")[0]
    assert (stored.scope_value, stored.author, stored.feedback_id) == ("", "alice", "fb-000006")
    assert stored.created_time.seconds > 0


def test_node_of_lines():
    hdfs = score_pb2.ScoreResult(message="Receiving block blk_1 src: /10.250.19.102:54106 dest: /10.250.11.85:50010",
                                 block_ids=["blk_1"])
    bgl = score_pb2.ScoreResult(message="instruction cache parity error corrected", block_ids=["R02-M1-N0-C:J12-U11"])
    two = score_pb2.ScoreResult(message="from /10.0.0.1 to /10.0.0.2", block_ids=["blk_1"])
    assert [line_node(x) for x in (hdfs, bgl, two)] == ["10.250.11.85", "R02-M1-N0-C:J12-U11", ""]


def test_item_on_a_line_marks_that_line_only(world):
    history, book, incidents = world
    fb = book.submit(_fb(record_id="r1"), "a")[0]
    assert _marks(history) == {"r1": fb.feedback_id, "r2": "", f"{BLK}:block": ""}
    assert book.suppressing_incident(incidents["inc-1"]) == ""  # one line of it is not the incident


def test_item_on_a_block_marks_its_verdicts_lines_and_incident(world):
    history, book, incidents = world
    fb = book.submit(_fb(session_key=BLK), "a")[0]
    assert _marks(history) == {"r1": fb.feedback_id, "r2": "", f"{BLK}:block": fb.feedback_id}
    assert book.suppressing_incident(incidents["inc-1"]) == fb.feedback_id


def test_template_and_sequence_reach_new_alerts(world):
    history, book, _ = world
    by_template = book.submit(_fb(record_id="r2", scope=TEMPLATE), "a")[0]
    by_sequence = book.submit(_fb(session_key=BLK, scope=SEQUENCE), "a")[0]
    history.add([_line("r3", template="E9", block="blk_3"), _block("blk_4"), _block("blk_5", events=["E5"])])
    marks = _marks(history)
    assert marks["r3"] == by_template.feedback_id and marks["r2"] == by_template.feedback_id
    assert marks["blk_4:block"] == by_sequence.feedback_id and marks["blk_5:block"] == ""


def test_learn_only_does_not_suppress_and_incident_labels(world):
    history, book, _ = world
    book.submit(_fb(record_id="r1", action=LEARN), "a")
    assert not any(_marks(history).values())
    book.submit(_fb(incident_id="inc-1", label=fpb.FEEDBACK_LABEL_TRUE_ALARM, action=LEARN), "a")
    assert book.label_for_incident("inc-1") == fpb.FEEDBACK_LABEL_TRUE_ALARM
    assert book.label_for_incident("inc-2") == fpb.FEEDBACK_LABEL_UNSPECIFIED


def test_incident_item_marks_its_anomalies(world):
    history, book, incidents = world
    fb = book.submit(_fb(incident_id="inc-1"), "a")[0]
    assert book.suppressing_incident(incidents["inc-1"]) == fb.feedback_id
    marks = _marks(history)  # anomaly ids 1 (r1) and 2 (r2) are the incident's
    assert marks["r1"] == marks["r2"] == fb.feedback_id and marks[f"{BLK}:block"] == ""


def _read(rid: str, partition: int, offset: int) -> score_pb2.Anomaly:
    entry = _line(rid, block=f"blk_{rid}")
    entry.source = f"anomalies/{partition}/{offset}"
    return entry


def test_incident_item_on_a_follower_marks_its_anomalies_by_source():
    """The incident was grouped by another replica, which numbered what it read otherwise: its ids 1 and 2 are
    this history's r1 and r2, its anomalies are r2 and r3 (the sources say so)."""
    history = AnomalyHistory()
    incident = incident_pb2.Incident(incident_id="inc-1", anomaly_ids=[1, 2],
                                     anomaly_sources=["anomalies/1/3", "anomalies/0/6"])
    book = FeedbackBook(None, history.find, {"inc-1": incident}.get)
    history.mark = book.suppressing_anomaly
    history.add([_read("r1", 0, 5), _read("r2", 1, 3), _read("r3", 0, 6)])
    fb = book.submit(_fb(incident_id="inc-1"), "a")[0]
    marks = _marks(history)
    assert (marks["r1"], marks["r2"], marks["r3"]) == ("", fb.feedback_id, fb.feedback_id)


def test_incident_members_fall_back_to_ids_where_no_source_was_stored():
    old = incident_pb2.Incident(anomaly_ids=[4, 7])  # stored before anomaly_sources: ids only
    assert incident_members(old) == {4, 7}
    upgraded = incident_pb2.Incident(anomaly_ids=[4, 7, 9, 12], anomaly_sources=["a/0/1", ""])
    # the sources are those of the newest ids (9, 12); an entry without a source (12) goes by its id
    assert incident_members(upgraded) == {4, 7, "a/0/1", 12}
    entry = score_pb2.Anomaly(id=12, source="a/0/1")
    assert anomaly_key(entry) == "a/0/1" and anomaly_key(score_pb2.Anomaly(id=12)) == 12


def test_expiry_ends_a_suppression_and_tells_listeners(world):
    history, book, _ = world
    changes = []
    book.on_change(lambda: changes.append(time.time()))
    fb = book.submit(_fb(record_id="r1", expire_time={"seconds": int(time.time()) + 1, "nanos": 0}), "a")[0]
    assert _marks(history)["r1"] == fb.feedback_id
    deadline = time.time() + 5
    while _marks(history)["r1"] and time.time() < deadline:
        time.sleep(0.05)
    assert _marks(history)["r1"] == ""
    assert len(changes) == 2  # stored, expired
    assert [f.feedback_id for f in book.list(10, None, include_expired=True).labels] == [fb.feedback_id]
    assert book.list(10, None, include_expired=False).labels == []


def test_client_key_is_idempotent_and_pages(world):
    _, book, _ = world
    first, dup = book.submit(_fb(record_id="r1", client_key="k1"), "a")
    again, dup2 = book.submit(_fb(record_id="r2", client_key="k1", comment="other"), "b")
    assert (dup, dup2) == (False, True) and again == first and len(book) == 1
    for n in range(4):
        book.submit(_fb(record_id="r2", comment=str(n)), "a")
    page = book.list(2, None, False)
    assert [f.comment for f in page.labels] == ["3", "2"]
    rest = book.list(10, page.next_index, False)
    assert [f.comment for f in rest.labels] == ["1", "0", ""] and rest.next_index is None
