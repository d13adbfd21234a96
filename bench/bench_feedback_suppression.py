"""Feedback to suppression: from SubmitFeedback's call to the moment the scorer serves what the label suppresses
marked. Real broker at 127.0.0.1:9092 (`make kafka-up`), a real scorer in this process (no model needed: the
history, the incident book and FeedbackService serve without one) on fresh topics: anomalies, a compacted
feedback topic and a compacted incidents topic, with a state dir (so the book is the leased, Kafka-stored one a
deployed scorer runs). Target (issue 17): <= 1 s.

- alerts: one anomalous line per round, read by the history, labelled (ITEM, SUPPRESS); until ListAnomalies and
  a WatchAnomalies opened after the answer (resuming after the alert's id) serve it marked
  (Anomaly.suppressed_by_feedback_id).
- incidents: per round, anomalous lines of fresh blocks (each its own incident, its own template) until the book
  serves them; then each is suppressed one way: a label on the incident (ITEM), on its line (ITEM), on its line's
  template (TEMPLATE); until GetIncident and ListIncidents (include_suppressed) serve it with
  suppressed_by_feedback_id set (polled in turn), and until a WatchIncidents opened after the answer (resuming
  after the update id the incident had) sends the suppressed version.

    .venv/bin/python bench/bench_feedback_suppression.py [--rounds 50] [--legs alerts,incidents]

Prints a JSON summary: p50/p99/max in ms of the SubmitFeedback call (durable: acks=all) and of each
submit -> served-marked leg.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from logmesh.client import IncidentClient, ScorerClient
from logmesh.scorer.service import serve
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
from logmesh.v1 import incident_pb2, score_pb2

BOOTSTRAP = "127.0.0.1:9092"
FALSE, SUPPRESS = fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_ACTION_SUPPRESS
ITEM, TEMPLATE = fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_SCOPE_TEMPLATE
# how each round's incidents are suppressed: (name, the label's subject and scope)
WAYS = ("incident_item", "line_item", "line_template")


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 1), "max_ms": round(ordered[-1], 1)}


def _line(rid: str, block: str, template: str) -> score_pb2.Anomaly:
    """An anomalous line of `block` with no event time and no address: it joins an incident by its block only."""
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=rid, verdict=score_pb2.VERDICT_ANOMALY, score=0.9, template_id=template,
        message=f"writeBlock {block} received exception java.io.IOException", block_ids=[block]))


def _wait(what: str, check, timeout: float = 30.0, every: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return found


class Bench:
    def __init__(self, server, anomalies: str, tag: str) -> None:  # type: ignore[no-untyped-def]
        self.anomalies, self.tag = anomalies, tag
        self.producer = Producer({"bootstrap.servers": BOOTSTRAP})
        self.client = ScorerClient(server.address)
        self.incidents = IncidentClient(server.address)
        self.stub = fsgrpc.FeedbackServiceStub(self.client.channel)

    def write(self, entries: list[score_pb2.Anomaly]) -> None:
        for e in entries:
            self.producer.produce(self.anomalies, key=e.line.record_id.encode(), value=e.SerializeToString())
        self.producer.flush(10)

    def submit(self, **subject) -> float:  # type: ignore[no-untyped-def]
        """Submits a suppressing false-alarm label; returns perf_counter() at the call."""
        subject.setdefault("scope", ITEM)
        t0 = time.perf_counter()
        self.stub.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(
            label=FALSE, action=SUPPRESS, **subject)), timeout=30)
        return t0

    def alerts(self, rounds: int) -> dict[str, list[float]]:
        submit_ms, listed_ms, watched_ms = [], [], []
        # a first entry nobody labels: WatchAnomalies' after_id 0 means "from now", so every measured entry's
        # id must be above 1
        for i in range(-1, rounds):
            rid = f"bench-{self.tag}-{i}"
            self.write([_line(rid, "blk_1", "E7")])
            held = _wait(f"the history to read {rid}", lambda: [
                e for e in self.client.list_anomalies(5)[0] if e.line.record_id == rid])
            after = held[0].id - 1
            if i < 0:
                continue
            t0 = self.submit(record_id=rid)
            submit_ms.append((time.perf_counter() - t0) * 1000)
            _wait("the alert marked", lambda: any(e.suppressed_by_feedback_id for e in self.client.list_anomalies(5)[0]
                                                  if e.line.record_id == rid), 10, 0.001)
            listed_ms.append((time.perf_counter() - t0) * 1000)
            for e in self.client.watch(after_id=after, timeout=10):
                if e.line.record_id == rid and e.suppressed_by_feedback_id:
                    watched_ms.append((time.perf_counter() - t0) * 1000)
                    break
        return {"submit": submit_ms, "submit_to_list_marked": listed_ms, "submit_to_watch_marked": watched_ms}

    def _served(self, rid: str) -> incident_pb2.Incident | None:
        for incident in self.incidents.list(500, include_suppressed=True)[0]:
            if any(e.record_id == rid for e in incident.evidence):
                return incident
        return None

    def incident_rounds(self, rounds: int) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {
            way: {"submit": [], "submit_to_get_marked": [], "submit_to_list_marked": [], "submit_to_watch_marked": []}
            for way in WAYS}
        for i in range(rounds):
            names = {way: (f"inc-{self.tag}-{i}-{n}", f"blk_{self.tag}{i}{n}", f"T{self.tag}{i}{n}")
                     for n, way in enumerate(WAYS)}
            self.write([_line(*names[way]) for way in WAYS])
            opened = {way: _wait(f"the book to serve {names[way][0]}'s incident", lambda w=way: self._served(names[w][0]))
                      for way in WAYS}
            for way in WAYS:
                incident, (rid, _, _) = opened[way], names[way]
                assert not incident.suppressed_by_feedback_id, incident
                t0 = self.submit(**({"incident_id": incident.incident_id} if way == "incident_item" else
                                    {"record_id": rid, "scope": TEMPLATE if way == "line_template" else ITEM}))
                got = out[way]
                got["submit"].append((time.perf_counter() - t0) * 1000)
                got_at = listed_at = None
                deadline = time.monotonic() + 10
                while got_at is None or listed_at is None:  # each polled in turn, its first marked answer timed
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{incident.incident_id} was not served suppressed within 10 s ({way})")
                    if got_at is None and self.incidents.get(incident.incident_id).suppressed_by_feedback_id:
                        got_at = time.perf_counter()
                    if listed_at is None and any(
                            x.suppressed_by_feedback_id for x in self.incidents.list(500, include_suppressed=True)[0]
                            if x.incident_id == incident.incident_id):
                        listed_at = time.perf_counter()
                    time.sleep(0.001)
                got["submit_to_get_marked"].append((got_at - t0) * 1000)
                got["submit_to_list_marked"].append((listed_at - t0) * 1000)
                # a watcher opened now that resumes after the version it had seen sends the suppressed one
                for x in self.incidents.watch(after_update_id=incident.update_id, timeout=10):
                    if x.incident_id == incident.incident_id and x.suppressed_by_feedback_id:
                        got["submit_to_watch_marked"].append((time.perf_counter() - t0) * 1000)
                        break
        return out

    def close(self) -> None:
        self.client.close()
        self.incidents.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--legs", default="alerts,incidents", help="comma-separated: alerts, incidents")
    args = parser.parse_args()
    legs = set(args.legs.split(","))
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    tag = uuid.uuid4().hex[:8]
    anomalies, feedback, incidents = (f"bench-fb.{tag}.anomalies", f"bench-fb.{tag}.feedback",
                                      f"bench-fb.{tag}.incidents")
    compact = {"cleanup.policy": "compact"}
    for f in admin.create_topics([NewTopic(anomalies, 1, 1), NewTopic(feedback, 1, 1, config=compact),
                                  NewTopic(incidents, 1, 1, config=compact)]).values():
        f.result(30)
    out: dict[str, object] = {"machine": "polyglot (2 cores, shared)", "rounds": args.rounds, "target_ms": 1000}
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "models").mkdir()
        # a window of an hour: no incident closes during the run (a close is a change of its own)
        server = serve(0, Path(work) / "models", "127.0.0.1:1", reload_interval=60, kafka_bootstrap=BOOTSTRAP,
                       anomalies_topic=anomalies, feedback_topic=feedback, incidents_topic=incidents,
                       state_dir=Path(work) / "state", incident_window_s=3600.0)
        book = server.servicers["ScorerService"].feedback
        assert book.wait_loaded(30), "feedback topic did not load"
        incident_book = server.servicers["IncidentService"].book
        bench = Bench(server, anomalies, tag)
        try:
            _wait("the incident book to be owned here", lambda: incident_book.role == "owner"
                  and incident_book.status == "live", 60, 0.1)
            if "alerts" in legs:
                out["alerts"] = {k: _summary(v) for k, v in bench.alerts(args.rounds).items()}
            if "incidents" in legs:
                out["incidents"] = {way: {k: _summary(v) for k, v in got.items()}
                                    for way, got in bench.incident_rounds(args.rounds).items()}
        finally:
            bench.close()
            server.stop(1)
            admin.delete_topics([anomalies, feedback, incidents])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
