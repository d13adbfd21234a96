"""The incident book's grouping rules on a real AnomalyHistory (in memory) with the in-memory incident store: which
alerts become one incident, their kind, evidence lines with counts against normal, closing, summaries, suppressions,
and the feed of changes. The broker-backed store and the server are tests/integration/test_incidents.py."""
from __future__ import annotations

import math
import threading

from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.scorer.analyst import grouping
from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import MAX_EVIDENCE, PER_TEMPLATE, IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.v1 import incident_pb2, score_pb2

T0 = 1_226_260_000  # 2008-11-09, HDFS_v1's days
ANOMALY = score_pb2.VERDICT_ANOMALY
ALERT, FINAL = score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL
K = incident_pb2


def _ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def line(rid: str, block: str, at: float, template: str = "E7", node: str = "10.251.42.84", new: bool = False,
         reason: str = "5 of 5 members: lines like this carry failure evidence") -> score_pb2.Anomaly:
    text = f"{node}:50010:writeBlock {block} received exception java.io.IOException: Connection reset by peer"
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=rid, verdict=ANOMALY, score=0.9, message=text, component="dfs.DataNode$DataXceiver",
        block_ids=[block], template_id=template, event_time=_ts(at), new_template=new, reason=reason))


def block(block_id: str, kind: int, at: float, evidence_kind: str = "evidence_event",
          verdict: int = ANOMALY) -> score_pb2.Anomaly:
    return score_pb2.Anomaly(block=score_pb2.BlockVerdict(
        block_id=block_id, verdict=verdict, score=0.95, events=["E5", "E22", "E7"], kind=kind,
        first_time=_ts(at - 30), last_time=_ts(at), evidence_kind=evidence_kind,
        reasons=["event E7 never seen in a normal session"]))


class Book:
    """A started book over an in-memory history; `feed(...)` enters anomalies and waits until they are grouped."""

    def __init__(self, window_s: float = 300.0, store=None, **options) -> None:  # type: ignore[no-untyped-def]
        self.history = AnomalyHistory()
        self.store = store or MemoryIncidentStore()
        self.book = IncidentBook(self.history, self.store, normal_fraction=lambda t: {"E5": 1.0, "E22": 0.98}.get(t, 0.0),
                                 window_s=window_s, **options)
        self.seen: list[incident_pb2.Incident] = []
        self.book.subscribe(self.seen.append)
        self.book.start()

    def feed(self, *entries: score_pb2.Anomaly) -> None:
        self.history.add(list(entries))
        assert self.book.wait_idle(10)

    def all(self) -> list[incident_pb2.Incident]:
        found, token = self.book.page(500, None, include_suppressed=True)
        assert token is None
        return found

    def stop(self) -> None:
        self.book.stop()


def test_nodes_and_kinds() -> None:
    assert grouping.nodes_of("10.251.74.227:50010:Got exception while serving blk_1 to /10.251.90.64:") == [
        "10.251.74.227", "10.251.90.64"]
    assert grouping.nodes_of("version 1.2.3.4.5 and 300.1.1.1") == []
    assert grouping.block_kind(score_pb2.BlockVerdict(evidence_kind="missing_step")) == K.INCIDENT_KIND_MISSING_STEP
    assert grouping.block_kind(score_pb2.BlockVerdict(evidence_kind="failure_pattern")) == K.INCIDENT_KIND_RARE_SEQUENCE
    assert grouping.block_kind(score_pb2.BlockVerdict(evidence_kind="unfamiliar")) == K.INCIDENT_KIND_UNSPECIFIED
    assert grouping.stronger(K.INCIDENT_KIND_MISSING_STEP, K.INCIDENT_KIND_NEW_TEMPLATE) == K.INCIDENT_KIND_NEW_TEMPLATE
    assert not grouping.groupable(block("blk_1", score_pb2.BLOCK_VERDICT_KIND_INTERIM, T0))
    assert not grouping.groupable(block("blk_1", FINAL, T0, verdict=score_pb2.VERDICT_NORMAL))


def test_same_node_template_and_minutes_is_one_incident_unrelated_is_another() -> None:
    b = Book()
    try:
        b.feed(line("r1", "blk_1", T0), block("blk_1", ALERT, T0),
               line("r2", "blk_2", T0 + 120),  # same DataNode, same template, two minutes on: the same story
               line("r3", "blk_3", T0 + 60, node="10.250.19.102"),  # another node: another incident
               line("r4", "blk_4", T0 + 3600))  # the same node an hour later: another incident
        incidents = {tuple(i.session_keys): i for i in b.all()}
        assert set(incidents) == {("blk_1", "blk_2"), ("blk_3",), ("blk_4",)}
        first = incidents[("blk_1", "blk_2")]
        assert first.incident_id == "inc-000001" and list(first.anomaly_ids) == [1, 2, 3]
        assert first.nodes == ["10.251.42.84"] and first.family == "hdfs"
        assert first.kind == K.INCIDENT_KIND_EXCEPTION
        assert first.first_seen_time.seconds == T0 - 30 and first.last_seen_time.seconds == T0 + 120
        assert "blk_1: event E7 never seen in a normal session" in first.reasons
        assert math.isclose(first.max_score, 0.95, rel_tol=1e-6)
        # the hour-later line moved the event time past the others' window: they closed; it stays open
        assert incidents[("blk_4",)].state == grouping.OPEN
        states = {i.incident_id: i.state for i in b.all()}
        assert states["inc-000001"] == grouping.CLOSED and states["inc-000002"] == grouping.CLOSED
    finally:
        b.stop()


def test_evidence_counts_against_normal_and_most_telling_first() -> None:
    b = Book()
    try:
        lines = [line(f"e7-{i}", "blk_9", T0 + i, "E7") for i in range(5)]
        lines += [line("e5-0", "blk_9", T0 + 10, "E5"), line("e5-1", "blk_9", T0 + 11, "E5")]
        lines += [line("new-0", "blk_9", T0 + 12, "unknown", new=True, reason="new template x")]
        b.feed(*lines)
        [incident] = b.all()
        by_template: dict[str, list] = {}
        for e in incident.evidence:
            by_template.setdefault(e.template_id, []).append(e)
        assert {t: len(v) for t, v in by_template.items()} == {"E7": PER_TEMPLATE, "E5": 2, "unknown": 1}
        assert {t: v[0].count_in_incident for t, v in by_template.items()} == {"E7": 5, "E5": 2, "unknown": 1}
        assert by_template["E5"][0].normal_session_fraction == 1.0
        assert by_template["E7"][0].normal_session_fraction == 0.0  # no normal session holds E7
        assert incident.evidence[-1].template_id == "E5"  # the template every normal session holds comes last
        assert [e.record_id for e in by_template["E7"]] == ["e7-0", "e7-1", "e7-2"]
        assert incident.kind == K.INCIDENT_KIND_NEW_TEMPLATE
        assert incident.evidence[0].session_key == "blk_9" and incident.evidence[0].message.startswith("10.251")
        # a template the served model knows nothing about: unknown, not "never in normal"
        b.book.normal_fraction = None
        b.feed(line("late", "blk_9", T0 + 13, "E9"))
        [incident] = b.all()
        assert [math.isnan(e.normal_session_fraction) for e in incident.evidence if e.template_id == "E9"] == [True]
    finally:
        b.stop()


def test_evidence_is_bounded_and_keeps_every_template() -> None:
    b = Book()
    try:
        b.feed(*[line(f"r{t}-{i}", "blk_5", T0 + i, f"T{t}") for t in range(20) for i in range(4)])
        [incident] = b.all()
        assert len(incident.evidence) == MAX_EVIDENCE
        assert {e.template_id for e in incident.evidence} == {f"T{t}" for t in range(20)}
        assert all(e.count_in_incident == 4 for e in incident.evidence)
    finally:
        b.stop()


def test_versions_update_ids_summaries_and_the_feed() -> None:
    b = Book()
    try:
        b.feed(line("r1", "blk_1", T0))
        [one] = b.all()
        assert (one.version, one.update_id) == (1, 1)
        b.feed(line("r2", "blk_1", T0 + 1))
        [two] = b.all()
        assert (two.version, two.update_id) == (2, 2)
        # a summary for an old version is dropped; one for the current version is kept and moves update_id only
        b.book.attach_summary(two.incident_id, incident_pb2.IncidentSummary(title="old", incident_version=1))
        assert b.book.wait_idle(5)
        assert not b.book.get(two.incident_id).HasField("summary")
        b.book.attach_summary(two.incident_id, incident_pb2.IncidentSummary(title="Writes failed", incident_version=2))
        assert b.book.wait_idle(5)
        got = b.book.get(two.incident_id)
        assert got.summary.title == "Writes failed" and (got.version, got.update_id) == (2, 3)
        assert [(i.version, i.update_id) for i in b.seen] == [(1, 1), (2, 2), (2, 3)]
        changes, last = b.book.changes_after(1, timeout=0)
        assert [c.update_id for c in changes] == [3] and last == 3  # each incident once, as it stands
        assert b.book.get("inc-999999") is None
    finally:
        b.stop()


def test_suppression_refresh_moves_update_id_not_version() -> None:
    suppressed = {"on": ""}
    b = Book(suppression=lambda incident: suppressed["on"])
    try:
        b.feed(line("r1", "blk_1", T0))
        suppressed["on"] = "fb-000001"
        b.book.refresh_suppressions()
        assert b.book.wait_idle(5)
        [got] = b.all()
        assert got.suppressed_by_feedback_id == "fb-000001" and (got.version, got.update_id) == (1, 2)
        assert b.book.page(50, None)[0] == []  # listed only when suppressed ones are asked for
        b.book.refresh_suppressions()  # nothing changed: no update
        assert b.book.wait_idle(5)
        assert b.book.last_update_id == 2
    finally:
        b.stop()


def test_quiet_incident_closes_and_a_late_final_joins_it() -> None:
    b = Book(window_s=0.3)
    try:
        b.feed(line("r1", "blk_1", T0), block("blk_1", ALERT, T0))
        closed = threading.Event()
        b.book.subscribe(lambda i: i.state == grouping.CLOSED and closed.set())
        assert closed.wait(5), "a quiet incident closes after the window (wall clock)"
        b.feed(block("blk_1", FINAL, T0 + 0.1))  # the block's final verdict: same story, back in its incident
        [incident] = b.all()
        assert list(incident.anomaly_ids) == [1, 2, 3] and incident.version == 2
        closed.clear()
        assert closed.wait(5)
        b.feed(line("r9", "blk_1", T0 + 100))  # the same block long after its incident closed: a new incident
        assert [list(i.anomaly_ids) for i in b.all()] == [[4], [1, 2, 3]]
    finally:
        b.stop()


def test_restart_resumes_ids_update_ids_and_groups_nothing_twice() -> None:
    store = MemoryIncidentStore()
    history = AnomalyHistory()
    first = IncidentBook(history, store).start()
    history.add([line("r1", "blk_1", T0), line("r2", "blk_2", T0 + 3600)])
    assert first.wait_idle(10)
    first.stop()
    again = IncidentBook(history, store).start()  # the same history (as a state dir keeps it) and store
    try:
        assert again.wait_idle(10)
        assert [i.incident_id for i in again.page(50, None)[0]] == ["inc-000002", "inc-000001"]
        history.add([line("r3", "blk_3", T0 + 7200)])
        assert again.wait_idle(10)
        found = {i.incident_id: list(i.anomaly_ids) for i in again.page(50, None)[0]}
        assert found == {"inc-000001": [1], "inc-000002": [2], "inc-000003": [3]}  # r1, r2 not grouped again
        assert again.get("inc-000003").update_id > 2  # the feed goes on where it was
    finally:
        again.stop()


def test_an_entry_without_event_time_joins_by_session_and_moves_no_times() -> None:
    b = Book()
    try:
        untimed = score_pb2.Anomaly(block=score_pb2.BlockVerdict(block_id="blk_1", verdict=ANOMALY, score=0.9,
                                                                 kind=ALERT, evidence_kind="missing_step"))
        b.feed(line("r1", "blk_1", T0), untimed, line("r2", "blk_2", T0 + 60))  # recorded now, in 2026
        [incident] = b.all()
        assert list(incident.session_keys) == ["blk_1", "blk_2"]  # the wall clock did not split the story
        assert (incident.first_seen_time.seconds, incident.last_seen_time.seconds) == (T0, T0 + 60)
    finally:
        b.stop()


def test_console_views_keep_strings_as_data() -> None:
    from logmesh.console import incident_views
    incident = incident_pb2.Incident(incident_id="inc-000007", state=grouping.OPEN, kind=K.INCIDENT_KIND_EXCEPTION)
    incident.evidence.add(record_id="r2", message="<b>late</b>", event_time=_ts(T0 + 5), normal_session_fraction=float("nan"))
    incident.evidence.add(record_id="r1", message="early", event_time=_ts(T0), normal_session_fraction=0.25)
    view = incident_views.detail(incident)
    assert [e["record_id"] for e in view["timeline"]] == ["r1", "r2"]
    assert [e["normal_session_fraction"] for e in view["evidence"]] == [None, 0.25]  # NaN: unknown, not a number
    assert view["evidence"][0]["message"] == "<b>late</b>" and view["state"] == "open" and view["kind"] == "exception"
    assert view["summary"] is None and view["anomaly_sources"] == []
    incident.anomaly_sources.extend(["<t>/0/4", ""])
    assert incident_views.detail(incident)["anomaly_sources"] == ["<t>/0/4", ""]


def test_incident_detail_lists_the_newest_sources(capsys) -> None:
    from logmesh.cli import incidents as cli
    incident = incident_pb2.Incident(incident_id="inc-000003", anomaly_ids=list(range(1, 24)),
                                     anomaly_sources=[f"a/0/{n}" for n in range(22)] + [""])
    cli._detail(incident)
    shown = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("  read at:"))
    assert shown == "  read at:  " + ", ".join([f"a/0/{n}" for n in range(3, 22)] + ["-"]) + " (+3 older)"
