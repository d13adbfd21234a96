"""Analyst feedback on a real scorer whose history reads a real anomalies topic, labels kept in a real compacted
feedback topic: submit and list, every INVALID_ARGUMENT, idempotency by client key (also across a restart),
suppression marking alerts in ListAnomalies and WatchAnomalies (new ones arrive marked), expiry ending it, the
token's identity as author, the counters in /metrics, and `logmesh feedback` end to end."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from confluent_kafka.admin import NewTopic
from prometheus_client import generate_latest

from logmesh.client import ScorerClient
from logmesh.runtime.metrics import REGISTRY
from logmesh.runtime.security import ServerSecurity
from logmesh.scorer.analyst.feedback_scope import sequence_key
from logmesh.security import ChannelSecurity
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
from logmesh.v1 import score_pb2
from waiting import wait_for

from anomaly_topic import ALERT, FINAL, AnomalyWriter, block, fed_scorer, fresh_topic, line

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
FALSE, SUPPRESS, LEARN = fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_ACTION_SUPPRESS, fpb.FEEDBACK_ACTION_LEARN
ITEM, TEMPLATE, SEQUENCE = fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_SCOPE_TEMPLATE, fpb.FEEDBACK_SCOPE_SEQUENCE
WRITE = ["E5", "E5", "E5", "E22", "E7"]
BLK = "blk_-3102267849859399193"


def feedback_topic(admin) -> str:
    name = f"t-feedback.{uuid.uuid4().hex[:8]}"
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                            config={"cleanup.policy": "compact"})])
    for future in futures.values():
        future.result(30)
    return name


def started(models, embedder, anomalies, feedback, **kw):  # type: ignore[no-untyped-def]
    server = fed_scorer(models, embedder, anomalies, feedback_topic=feedback, **kw)
    assert server.servicers["ScorerService"].feedback.wait_loaded(30), "the feedback topic to load"
    return server


class Scorer:
    """A client of one scorer: its FeedbackService and its anomaly history."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.client = ScorerClient(address, security=ChannelSecurity(token=token))
        self.stub = fsgrpc.FeedbackServiceStub(self.client.channel)

    def submit(self, **kw) -> fspb.SubmitFeedbackResponse:  # type: ignore[no-untyped-def]
        kw.setdefault("label", FALSE)
        kw.setdefault("scope", ITEM)
        kw.setdefault("action", SUPPRESS)
        return self.stub.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(**kw)), timeout=30)

    def listed(self, **kw) -> fspb.ListFeedbackResponse:  # type: ignore[no-untyped-def]
        return self.stub.ListFeedback(fspb.ListFeedbackRequest(**kw), timeout=30)

    def marks(self) -> dict[str, str]:
        """record id / "block:kind" -> suppressed_by_feedback_id of every held entry."""
        entries, _ = self.client.list_anomalies(10_000)
        return {_tag(e): e.suppressed_by_feedback_id for e in entries}

    def held(self, n: int) -> None:
        wait_for(lambda: len(self.client.list_anomalies(10_000)[0]) >= n, 30, f"the history to hold {n} entries",
                 every=0.1)

    def close(self) -> None:
        self.client.close()


def _tag(e: score_pb2.Anomaly) -> str:
    return e.line.record_id if e.HasField("line") else f"{e.block.block_id}:{e.block.kind}"


@pytest.fixture(scope="module")
def world(admin, trained_models, embedder_server):
    anomalies, feedback = fresh_topic(admin, "t-feedback"), feedback_topic(admin)
    writer = AnomalyWriter(anomalies)
    server = started(trained_models, embedder_server.address, anomalies, feedback)
    scorer = Scorer(server.address)
    blk = f"blk_fb{uuid.uuid4().hex[:6]}"
    first = line("one", block_id=blk)
    first.line.template_id = "E6"
    writer.write([first, line("two"), block(blk, ALERT, WRITE[:3]), block(blk, FINAL, WRITE)])
    scorer.held(4)
    yield scorer, writer, blk, server
    scorer.close()
    server.stop(1)


@pytest.mark.parametrize("given, reason", [
    ({}, "names no subject"),
    ({"record_id": "rec-nowhere"}, "holds no flagged line"),
    ({"session_key": "blk_404"}, "holds no alert"),
    ({"incident_id": "inc-404"}, "no such incident"),
    ({"record_id": "rec-one", "label": 0}, "label 0 is unset"),
    ({"record_id": "rec-one", "label": 7}, "label 7 is unknown"),
    ({"record_id": "rec-one", "scope": 0}, "scope 0 is unset"),
    ({"record_id": "rec-one", "scope": 9}, "scope 9 is unknown"),
    ({"record_id": "rec-one", "action": 0}, "action 0 is unset"),
    ({"record_id": "rec-two", "scope": TEMPLATE}, "no template id"),
    ({"record_id": "rec-one", "scope": fpb.FEEDBACK_SCOPE_NODE}, "names no single node"),
    ({"record_id": "rec-one", "expire_time": {"seconds": 1_000_000_000}}, "not in the future"),
    ({"record_id": "rec-one", "comment": "é" * 2049}, "4 KiB"),
])
def test_invalid_feedback_is_refused_with_its_reason_and_stores_nothing(world, given, reason):
    scorer, *_ = world
    before = len(scorer.listed(include_expired=True, page_size=500).feedback)
    with pytest.raises(grpc.RpcError) as info:
        scorer.submit(**given) if given else scorer.stub.SubmitFeedback(
            fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(label=FALSE, scope=ITEM, action=SUPPRESS)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details()
    assert len(scorer.listed(include_expired=True, page_size=500).feedback) == before
    with pytest.raises(grpc.RpcError) as info:
        scorer.listed(page_token="x")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_submit_list_and_a_suppression_marks_listed_and_watched_alerts(world):
    scorer, writer, blk, _ = world
    seen: list[score_pb2.Anomaly] = []
    watcher = ScorerClient(scorer.client.address)
    stream = watcher.watch(timeout=60)
    threading.Thread(target=lambda: [seen.append(e) for e in _until_cancelled(stream)], daemon=True).start()
    time.sleep(0.5)
    reply = scorer.submit(session_key=blk, scope=SEQUENCE, comment="replication retry, harmless", author="alice")
    fb = reply.feedback
    assert not reply.duplicate and fb.feedback_id.startswith("fb-") and fb.author == "alice"
    assert fb.scope_value == sequence_key(WRITE) and fb.created_time.seconds > time.time() - 60
    marks = scorer.marks()
    assert marks[f"{blk}:{FINAL}"] == fb.feedback_id  # the exact sequence
    assert marks[f"{blk}:{ALERT}"] == "" and marks["rec-one"] == ""  # a prefix, a line: other stories
    # a new block that ends with the same story arrives marked; listing and watching agree
    other = f"blk_fb{uuid.uuid4().hex[:6]}"
    writer.write([block(other, FINAL, WRITE), block(other + "x", FINAL, WRITE + ["E9"])])
    wait_for(lambda: len(seen) >= 2, 30, "the watcher to see both new blocks", every=0.1)
    assert {_tag(e): e.suppressed_by_feedback_id for e in seen} == {f"{other}:{FINAL}": fb.feedback_id,
                                                                     f"{other}x:{FINAL}": ""}
    assert scorer.marks()[f"{other}:{FINAL}"] == fb.feedback_id
    listed = scorer.listed().feedback
    assert listed[0] == fb
    watcher.close()  # cancels the watch


def _until_cancelled(stream):  # type: ignore[no-untyped-def]
    try:
        yield from stream
    except grpc.RpcError:
        return


def test_a_learn_only_label_marks_nothing_and_expiry_ends_a_suppression(world):
    scorer, *_ = world
    learn = scorer.submit(record_id="rec-two", action=LEARN, label=fpb.FEEDBACK_LABEL_NORMAL).feedback
    assert scorer.marks()["rec-two"] == ""
    short = scorer.submit(record_id="rec-two", expire_time={"seconds": int(time.time()) + 2}).feedback
    assert scorer.marks()["rec-two"] == short.feedback_id
    wait_for(lambda: scorer.marks()["rec-two"] == "", 10, "the suppression to expire", every=0.1)
    in_force = [f.feedback_id for f in scorer.listed(page_size=500).feedback]
    assert learn.feedback_id in in_force and short.feedback_id not in in_force
    assert short.feedback_id in [f.feedback_id for f in scorer.listed(page_size=500, include_expired=True).feedback]


def test_counters_in_metrics(world):
    scorer, writer, blk, _ = world
    scorer.submit(record_id="rec-one", comment="metrics")  # ITEM: marks rec-one
    text = generate_latest(REGISTRY).decode()
    assert 'logmesh_scorer_feedback_total{action="FEEDBACK_ACTION_SUPPRESS",label="FEEDBACK_LABEL_FALSE_ALARM"}' in text
    before = _sample(text, "logmesh_scorer_suppressed_alerts_total")
    again = line("one", block_id=blk)
    again.line.template_id = "E6"
    writer.write([again, line("unrelated")])  # rec-one again (covered) and a line nobody labelled
    wait_for(lambda: _sample(generate_latest(REGISTRY).decode(), "logmesh_scorer_suppressed_alerts_total")
             == before + 1, 30, "the suppressed-alerts counter to count the covered line", every=0.1)


def _sample(text: str, name: str) -> float:
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))


def test_idempotent_by_client_key_also_across_a_restart(admin, trained_models, embedder_server, tmp_path):
    anomalies, feedback = fresh_topic(admin, "t-feedback"), feedback_topic(admin)
    AnomalyWriter(anomalies).write([line("a"), line("b")])
    server = started(trained_models, embedder_server.address, anomalies, feedback, state_dir=tmp_path / "state")
    scorer = Scorer(server.address)
    try:
        scorer.held(2)
        first = scorer.submit(record_id="rec-a", client_key="TICKET-1").feedback
        again = scorer.submit(record_id="rec-b", client_key="TICKET-1", comment="a retry")
        assert again.duplicate and again.feedback == first
        second = scorer.submit(record_id="rec-b", action=LEARN).feedback
    finally:
        scorer.close()
        server.stop(1)
    server = started(trained_models, embedder_server.address, anomalies, feedback, state_dir=tmp_path / "state")
    scorer = Scorer(server.address)
    try:
        scorer.held(2)
        after = scorer.submit(record_id="rec-a", client_key="TICKET-1")
        assert after.duplicate and after.feedback == first
        assert [f for f in scorer.listed().feedback] == [second, first]
        assert scorer.marks() == {"rec-a": first.feedback_id, "rec-b": ""}  # the suppression survived
        third = scorer.submit(record_id="rec-b").feedback
        assert int(third.feedback_id[3:]) == int(second.feedback_id[3:]) + 1  # ids go on, never reused
    finally:
        scorer.close()
        server.stop(1)


def test_the_author_is_the_token_identity_when_the_server_has_tokens(admin, trained_models, embedder_server):
    anomalies, feedback = fresh_topic(admin, "t-feedback"), feedback_topic(admin)
    AnomalyWriter(anomalies).write([line("t")])
    server = started(trained_models, embedder_server.address, anomalies, feedback,
                     security=ServerSecurity(tokens=frozenset({"analyst-token-1"})))
    scorer = Scorer(server.address, token="analyst-token-1")
    try:
        scorer.held(1)
        fb = scorer.submit(record_id="rec-t", author="someone-else").feedback
        assert fb.author.startswith("token:") and "analyst-token-1" not in fb.author
        assert scorer.submit(record_id="rec-t").feedback.author == fb.author
        with pytest.raises(grpc.RpcError) as info:
            Scorer(server.address).submit(record_id="rec-t")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        scorer.close()
        server.stop(1)


def test_the_cli_submits_lists_and_explains_a_refusal(world):
    scorer, _, blk, server = world
    base = [LOGMESH, "feedback", "--scorer", server.address]
    done = subprocess.run(base + ["--record-id", "rec-one", "--label", "false-alarm", "--scope", "template",
                                  "--action", "both", "--expires", "7d", "--comment", "from the cli",
                                  "--key", "cli-1", "--author", "bob", "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    stored = json.loads(done.stdout)
    fb = stored["feedback"]
    assert (fb["scope"], fb["scope_value"], fb["action"], fb["author"]) == (
        "FEEDBACK_SCOPE_TEMPLATE", "E6", "FEEDBACK_ACTION_SUPPRESS_AND_LEARN", "bob")
    assert 6.9 * 86400 < _seconds(fb["expire_time"]) - time.time() < 7.1 * 86400
    assert scorer.marks()["rec-one"]  # template E6: rec-one's own template
    again = subprocess.run(base + ["--record-id", "rec-one", "--label", "false-alarm", "--action", "both",
                                   "--key", "cli-1"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("already stored (same --key): " + fb["feedback_id"])
    listed = subprocess.run(base + ["list", "--limit", "1"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.startswith(fb["feedback_id"]) and "scope=template=E6" in listed.stdout
    assert "more: --page-token" in listed.stderr
    refused = subprocess.run(base + ["--block", "blk_404", "--label", "normal", "--action", "learn"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("error: session_key 'blk_404'")
    assert "Traceback" not in refused.stderr


def _seconds(text: str) -> float:
    from google.protobuf.timestamp_pb2 import Timestamp
    t = Timestamp()
    t.FromJsonString(text)
    return t.seconds


def test_a_label_on_an_incident_suppresses_it_and_its_alerts(admin, trained_models, embedder_server, tmp_path):
    """With the IncidentBook: an incident labelled (ITEM, suppress) is marked in ListIncidents (hidden unless
    include_suppressed) and its alerts in ListAnomalies; the label is what SimilarIncident shows of it; a node
    label covering one of another incident's two nodes marks the line, not that incident."""
    from logmesh.client import IncidentClient
    from test_incidents import _blk, fresh_compacted, interrupted_line, mirror_line

    anomalies, feedback, incidents = fresh_topic(admin, "t-feedback"), feedback_topic(admin), fresh_compacted(admin)
    server = started(trained_models, embedder_server.address, anomalies, feedback, state_dir=tmp_path / "state",
                     incidents_topic=incidents, incident_window_s=300.0)
    scorer, client = Scorer(server.address), IncidentClient(server.address)
    book = server.servicers["IncidentService"].book
    try:
        assert book.ready.wait(30)
        a, other = _blk(), _blk()
        lines = [score_pb2.Anomaly(line=scorer.client.score_line(raw)) for raw in (
            mirror_line("213411", "10.251.122.65", "10.251.74.79", a), interrupted_line("213412", a),
            mirror_line("213500", "10.250.5.10", "10.250.5.11", other))]
        AnomalyWriter(anomalies).write(lines)
        found = wait_for(lambda: len(client.list(100, include_suppressed=True)[0]) >= 2 and
                         client.list(100, include_suppressed=True)[0], 30, "two incidents")
        by_block = {i.session_keys[0]: i for i in found}
        target, rest = by_block[a], by_block[other]
        fb = scorer.submit(incident_id=target.incident_id, label=fpb.FEEDBACK_LABEL_FALSE_ALARM).feedback
        marked = wait_for(lambda: next((i for i in client.list(100, include_suppressed=True)[0]
                                        if i.incident_id == target.incident_id and i.suppressed_by_feedback_id), None),
                          10, "the incident to be marked", every=0.05)
        assert marked.suppressed_by_feedback_id == fb.feedback_id
        assert target.incident_id not in [i.incident_id for i in client.list(100)[0]]  # hidden by default
        marks = scorer.marks()
        assert {marks[x.line.record_id] for x in lines[:2]} == {fb.feedback_id} and marks[lines[2].line.record_id] == ""
        assert server.servicers["ScorerService"].feedback.label_for_incident(target.incident_id) == FALSE
        # and what the other incident's similar past incidents say of it (the vector search found it before the
        # label; the book's refresh after the label rewrites the labels it shows)
        assert target.incident_id in [s.incident_id for s in rest.similar], list(rest.similar)
        wait_for(lambda: {s.incident_id: s.analyst_label for s in client.get(rest.incident_id).similar}.get(
            target.incident_id) == FALSE, 10, "the similar incident to show the analyst's label", every=0.05)
        # the other incident names two nodes: a NODE label on it is refused; one on its line covers the line,
        # not the incident (one of its two nodes)
        assert sorted(rest.nodes) == ["10.250.5.10", "10.250.5.11"]
        with pytest.raises(grpc.RpcError) as info:
            scorer.submit(incident_id=rest.incident_id, scope=fpb.FEEDBACK_SCOPE_NODE)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spans 2 nodes" in info.value.details()
        by_node = scorer.submit(record_id=lines[2].line.record_id, scope=fpb.FEEDBACK_SCOPE_NODE).feedback
        assert by_node.scope_value == "10.250.5.10" and scorer.marks()[lines[2].line.record_id] == by_node.feedback_id
        time.sleep(1.0)  # time for the book's refresh after the label (nothing should change)
        assert client.get(rest.incident_id).suppressed_by_feedback_id == ""
    finally:
        scorer.close()
        client.close()
        server.stop(1)
