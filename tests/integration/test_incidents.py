"""Incidents on the real parts: a real broker (a fresh anomalies topic the way the streaming job writes it, and a
fresh compacted incidents topic), a real scorer with its history and incident book, its state dir holding the
qdrant-edge store of incident vectors, and the real embedder.

The anomalies are what the job would write: HDFS lines scored by this scorer (ScoreResults with their template
ids, reasons and event times) and block verdicts it judged, marked ALERT/FINAL as the job's alert rule does.
Checked: two blocks failing on the same DataNode the same way within minutes are one incident and an unrelated
one is another; evidence lines with their counts and the served model's normal-session fractions; similar past
incidents from the Qdrant engine; List/Get/Watch, NOT_FOUND and INVALID_ARGUMENT; and a scorer restart on the
same state dir and topics keeps the incidents, their ids and update ids, groups nothing twice, and a watcher
resuming after an update id gets exactly the changes after it. `logmesh incidents` / `logmesh incident` run as
a user runs them, against this scorer."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from confluent_kafka.admin import NewTopic

from logmesh.client import IncidentClient, ScorerClient
from logmesh.v1 import incident_pb2, score_pb2, scorer_service_pb2 as spb
from waiting import wait_for

from anomaly_topic import ALERT, AnomalyWriter, fed_scorer, fresh_topic

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
ANOMALY = score_pb2.VERDICT_ANOMALY
K = incident_pb2


def _blk() -> str:
    return f"blk_{uuid.uuid4().int % 10**18}"


def mirror_line(when: str, node: str, mirror: str, block_id: str) -> str:
    """An HDFS_v1 E12 line: a DataNode failing to write a block on to the next one of its pipeline."""
    return f"081109 {when} 2512 INFO dfs.DataNode$DataXceiver: {node}:50010:Exception writing block {block_id} to mirror {mirror}:50010"


def interrupted_line(when: str, block_id: str) -> str:
    """An HDFS_v1 E8 line (no node named)."""
    return f"081109 {when} 2650 INFO dfs.DataNode$PacketResponder: PacketResponder 2 for block {block_id} Interrupted."


def fresh_compacted(admin) -> str:  # type: ignore[no-untyped-def]
    name = f"t-incidents.{uuid.uuid4().hex[:8]}.incidents"
    futures = admin.create_topics([NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})])
    for future in futures.values():
        future.result(30)
    return name


class Scene:
    """Topics, a state dir and a scorer whose history reads the anomalies topic and whose book keeps incidents."""

    def __init__(self, admin, models: Path, embedder: str, state: Path) -> None:  # type: ignore[no-untyped-def]
        self.models, self.embedder, self.state = models, embedder, state
        self.anomalies, self.incidents = fresh_topic(admin, "t-incidents"), fresh_compacted(admin)
        self.writer = AnomalyWriter(self.anomalies)
        self.server = None
        self.start()

    def start(self) -> None:
        self.server = fed_scorer(self.models, self.embedder, self.anomalies, self.state,
                                 incidents_topic=self.incidents, incident_window_s=300.0)
        self.scorer = ScorerClient(self.server.address)
        self.client = IncidentClient(self.server.address)
        self.book = self.server.servicers["IncidentService"].book
        assert self.book.ready.wait(30)

    def stop(self) -> None:
        self.scorer.close()
        self.client.close()
        self.server.stop(1)

    def line(self, raw: str) -> score_pb2.Anomaly:
        """A flagged line as the job writes it: the scorer's own ScoreResult for the raw line."""
        result = self.scorer.score_line(raw)
        assert result.verdict == ANOMALY, f"the model does not flag {raw!r}: {result}"
        return score_pb2.Anomaly(line=result)

    def alert(self, block_id: str, lines: list[score_pb2.Anomaly], events: list[str]) -> score_pb2.Anomaly:
        """A block's ALERT as the job writes it: the scorer's verdict on the block (its lines' times, their record
        ids as the flagged ones), marked ALERT."""
        times = sorted((a.line.event_time for a in lines), key=lambda t: t.ToNanoseconds())
        verdict = self.scorer.stub.ScoreBlock(spb.ScoreBlockRequest(block=spb.BlockSession(
            block_id=block_id, events=events, closed=False, first_time=times[0], last_time=times[-1],
            anomalous_record_ids=[a.line.record_id for a in lines]))).verdict
        assert verdict.verdict == ANOMALY, verdict
        verdict.kind = ALERT
        return score_pb2.Anomaly(block=verdict)

    def write(self, *entries: score_pb2.Anomaly) -> None:
        target = self.server.servicers["ScorerService"].history.last_id + len(entries)
        self.writer.write(entries)
        wait_for(lambda: self.book.wait_idle(1) and self.book._last_grouped >= target, 30,
                 "the book to group what was written")
        self.settle()

    def settle(self) -> None:
        """Waits until the book is idle and, when the scorer summarises (a Summarizer is wired to the book: its
        summaries land asynchronously), every incident has the summary of its version."""
        summarising = self.server.servicers["ScorerService"].summarizer is not None

        def settled() -> bool:
            found, _ = self.book.page(10_000, None, include_suppressed=True)
            return self.book.wait_idle(1) and (
                not summarising or all(i.summary.incident_version == i.version for i in found))
        wait_for(settled, 30, "the book to settle")

    def all(self) -> list[incident_pb2.Incident]:
        found, token = self.client.list(10_000, include_suppressed=True)
        assert not token
        return found


@pytest.fixture(scope="module")
def scene(admin, trained_models, embedder_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    s = Scene(admin, trained_models, embedder_server.address, tmp_path_factory.mktemp("incidents") / "state")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def story(scene):  # type: ignore[no-untyped-def]
    """Two blocks failing on DataNode 10.251.122.65 two minutes apart (one incident) and one on other nodes."""
    a, b, other = _blk(), _blk(), _blk()
    lines = [scene.line(mirror_line("213411", "10.251.122.65", "10.251.74.79", a)),
             scene.line(interrupted_line("213412", a)),
             scene.line(mirror_line("213611", "10.251.122.65", "10.251.74.79", b)),
             scene.line(mirror_line("213500", "10.250.5.10", "10.250.5.11", other))]
    assert all(x.line.HasField("event_time") and x.line.template_id for x in lines)
    scene.write(*lines[:2], scene.alert(a, lines[:2], ["E5", "E5", "E12", "E8"]))
    scene.write(*lines[2:])
    return {"a": a, "b": b, "other": other, "lines": lines}


def _by_session(incidents):  # type: ignore[no-untyped-def]
    return {tuple(i.session_keys): i for i in incidents}


def test_blocks_failing_on_one_node_within_minutes_are_one_incident(scene, story) -> None:
    incidents = _by_session(scene.all())
    a, b, other = story["a"], story["b"], story["other"]
    assert set(incidents) == {(a, b), (other,)}
    one = incidents[(a, b)]
    assert one.state == K.INCIDENT_STATE_OPEN and one.family == "hdfs"
    assert "10.251.122.65" in one.nodes and "10.250.5.10" not in one.nodes
    assert sorted(one.anomaly_ids) == [1, 2, 3, 4] and list(incidents[(other,)].anomaly_ids) == [5]
    assert one.kind in (K.INCIDENT_KIND_EXCEPTION, K.INCIDENT_KIND_NEW_TEMPLATE)
    assert one.first_seen_time.ToJsonString() < one.last_seen_time.ToJsonString()
    assert one.max_score > 0.5 and one.reasons  # the scorer's own reasons, deduplicated
    assert scene.client.get(one.incident_id) == one


def test_evidence_lines_with_counts_against_normal(scene, story, trained_models) -> None:
    from logmesh.scorer import artifacts
    profile = artifacts.load(trained_models, artifacts.newest(trained_models)).models["block"].profile
    one = _by_session(scene.all())[(story["a"], story["b"])]
    cited = {e.record_id: e for e in one.evidence}
    flagged = {r.line.record_id: r.line for r in story["lines"][:3]}
    assert set(cited) == set(flagged)  # every flagged line of the two blocks, cited by record id
    for record_id, e in cited.items():
        r = flagged[record_id]
        assert (e.template_id, e.message, e.component, e.session_key) == (
            r.template_id, r.message, r.component, r.block_ids[0])
        assert e.event_time == r.event_time
        same = sum(1 for x in flagged.values() if x.template_id == r.template_id)
        assert e.count_in_incident == same
        want = 0.0 if r.new_template else profile.session_fraction.get(r.template_id, 0.0)
        assert e.normal_session_fraction == pytest.approx(want)
    fractions = [e.normal_session_fraction for e in one.evidence]
    assert fractions == sorted(fractions)  # most telling (rarest in normal sessions) first


def test_similar_past_incidents_come_from_the_qdrant_engine(scene, story) -> None:
    incidents = _by_session(scene.all())
    one, other = incidents[(story["a"], story["b"])], incidents[(story["other"],)]
    # the other block failed the same way (E12) on other nodes: the earlier incident is its nearest one
    assert other.similar and other.similar[0].incident_id == one.incident_id
    assert 0.5 < other.similar[0].similarity <= 1.0
    assert other.similar[0].title and other.similar[0].analyst_label == 0
    assert all(s.incident_id != other.incident_id for s in other.similar)
    store = scene.book.vectors.store  # qdrant-edge in the scorer's state dir, one point per incident
    assert type(store).__name__ == "EdgeVectorStore" and str(store.root).startswith(str(scene.state))
    assert store.count({"kind": "incident"}) == len(incidents)


def test_bad_requests(scene, story) -> None:
    with pytest.raises(grpc.RpcError) as info:
        scene.client.get("inc-999999")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "inc-999999" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        scene.client.get("")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for token in ("not-a-token", "0", "-5"):
        with pytest.raises(grpc.RpcError) as info:
            scene.client.page(page_token=token)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in info.value.details()


def test_pages_and_state_filter(scene, story) -> None:
    everything = scene.all()
    first = scene.client.page(page_size=1)
    assert [i.incident_id for i in first.incidents] == [everything[0].incident_id] and first.next_page_token
    second = scene.client.page(page_size=1, page_token=first.next_page_token)
    assert [i.incident_id for i in second.incidents] == [everything[1].incident_id]
    updates = [i.update_id for i in everything]
    assert updates == sorted(updates, reverse=True)  # most recently changed first
    assert scene.client.page(state=K.INCIDENT_STATE_CLOSED).incidents == []


def test_metrics_count_incidents(scene, story) -> None:
    from prometheus_client import generate_latest

    from logmesh.runtime.metrics import REGISTRY
    text = generate_latest(REGISTRY).decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("logmesh_scorer_incidents")}
    held = sum(1 for i in scene.all() if i.state == K.INCIDENT_STATE_OPEN)
    assert samples['logmesh_scorer_incidents{state="open"}'] >= held >= 2
    assert samples["logmesh_scorer_incidents_opened_total"] >= 2


def test_cli_lists_shows_and_explains(scene, story) -> None:
    address = scene.server.address
    one = _by_session(scene.all())[(story["a"], story["b"])]
    listed = subprocess.run([LOGMESH, "incidents", "--scorer", address], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert one.incident_id in listed.stdout and story["a"] in listed.stdout
    shown = subprocess.run([LOGMESH, "incident", one.incident_id, "--scorer", address], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for e in one.evidence:
        assert e.record_id in shown.stdout
    as_json = subprocess.run([LOGMESH, "incident", one.incident_id, "--scorer", address, "--json"],
                             capture_output=True, text=True, timeout=60)
    got = json.loads(as_json.stdout)
    assert got["incident_id"] == one.incident_id and len(got["evidence"]) == len(one.evidence)
    missing = subprocess.run([LOGMESH, "incident", "inc-424242", "--scorer", address], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "inc-424242" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = subprocess.run([LOGMESH, "incidents", "--scorer", address, "--page-token", "x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "page_token" in bad.stderr and "Traceback" not in bad.stderr
    helped = subprocess.run([LOGMESH, "incidents", "--help"], capture_output=True, text=True, timeout=60)
    for option in ("--watch", "--after", "--json", "--state", "--include-suppressed", "--limit", "--page-token"):
        assert option in helped.stdout


def test_restart_keeps_incidents_ids_and_resumes_the_feed(scene, story) -> None:
    scene.settle()
    before = scene.all()
    mark = max(i.update_id for i in before)
    scene.stop()
    scene.start()  # the same state dir, anomalies topic and incidents topic
    after = scene.all()
    assert [i.SerializeToString() for i in after] == [i.SerializeToString() for i in before]
    watched = []
    watch = scene.client.watch(after_update_id=mark, timeout=60)
    c = _blk()
    scene.write(scene.line(mirror_line("220000", "10.250.9.9", "10.250.9.8", c)))  # unrelated: a new incident
    for incident in watch:
        watched.append(incident)
        if c in incident.session_keys:
            break
    fresh = [i for i in scene.all() if c in i.session_keys][0]
    numbers = sorted(int(i.incident_id.removeprefix("inc-")) for i in before)
    assert fresh.incident_id == f"inc-{numbers[-1] + 1:06d}" and fresh.update_id > mark
    assert all(i.update_id > mark for i in watched) and watched[-1].incident_id == fresh.incident_id
    ids = [a for i in scene.all() for a in i.anomaly_ids]
    assert len(ids) == len(set(ids)) == 6  # every anomaly grouped once, before and after the restart
    # a watcher resuming from the start gets every incident once, oldest change first
    replay = []
    for incident in scene.client.watch(after_update_id=1, timeout=10):
        replay.append(incident.update_id)
        if incident.update_id == fresh.update_id:
            break
    assert replay == sorted(replay) and len(replay) == len(set(replay))


def test_another_state_dir_on_the_same_topic_leaves_these_incidents_alone(scene, story, tmp_path) -> None:
    """A scorer with a fresh state dir on the same topics (its history reads the anomalies again, numbering them
    afresh) keeps its own incidents, numbered after every id the topic holds: it overwrites none of these."""
    scene.settle()
    mine = {i.incident_id: i.SerializeToString() for i in scene.all()}
    other = fed_scorer(scene.models, scene.embedder, scene.anomalies, tmp_path / "other-state",
                       incidents_topic=scene.incidents, incident_window_s=300.0)
    try:
        book = other.servicers["IncidentService"].book
        history = other.servicers["ScorerService"].history
        wait_for(lambda: history.last_id >= 6 and book.wait_idle(1), 60, "the other book to group the topic")
        with IncidentClient(other.address) as client:
            theirs, _ = client.list(1000)
        highest = max(int(i.removeprefix("inc-")) for i in mine)
        assert theirs and all(int(i.incident_id.removeprefix("inc-")) > highest for i in theirs)
        assert sorted(a for i in theirs for a in i.anomaly_ids) == [1, 2, 3, 4, 5, 6]
    finally:
        other.stop(1)
    scene.stop()
    scene.start()
    assert {i.incident_id: i.SerializeToString() for i in scene.all()} == mine


def test_readme_grpcurl_commands(scene, story, grpcurl) -> None:
    """The README's IncidentService lines, run as written against this scorer (its port for 50052)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- incident-grpcurl:", 1)[1].split("<!-- /incident-grpcurl -->", 1)[0]
    commands = [c for c in block.split("```bash", 1)[1].split("```", 1)[0].splitlines() if c.startswith("grpcurl")]
    assert len(commands) == 3
    port = scene.server.address.rsplit(":", 1)[1]
    outputs = []
    for command in commands:
        line = command.replace("grpcurl", grpcurl, 1).replace("localhost:50052", f"localhost:{port}")
        done = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60)
        streaming = "WatchIncidents" in command  # ended by its -max-time: grpcurl says DeadlineExceeded
        assert done.returncode == 0 or (streaming and "DeadlineExceeded" in done.stderr), (command, done.stderr)
        outputs.append(done.stdout)
    listed, got, watched = outputs
    # grpcurl prints the proto's own field names
    assert '"incident_id": "inc-000001"' in listed or '"incident_id": "inc-000002"' in listed
    assert json.loads(got)["incident"]["incident_id"] == "inc-000001"
    assert '"incident_id"' in watched and '"update_id"' in watched


def test_cli_watch_resumes_after_an_update_id(scene, story) -> None:
    """`logmesh incidents --watch --after N --json` prints every incident changed after N, oldest change first."""
    import signal
    everything = sorted(scene.all(), key=lambda i: i.update_id)
    after = everything[0].update_id
    proc = subprocess.Popen([LOGMESH, "incidents", "--watch", "--after", str(after), "--json", "--scorer",
                             scene.server.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)  # a watch that prints too little fails instead of hanging
    watchdog.start()
    try:
        printed = [json.loads(proc.stdout.readline() or "null") for _ in everything[1:]]
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert [p["incident_id"] for p in printed] == [i.incident_id for i in everything[1:]]
    assert [int(p["update_id"]) for p in printed] == [i.update_id for i in everything[1:]]
    assert rc == 0 and "Traceback" not in proc.stderr.read()
