"""Notifications of incidents (built from real HDFS blocks) to a real HTTP receiver the test starts: one
notification per incident and target, in Alertmanager's webhook JSON and a Slack-compatible payload, sent once
the summary is there (or after the wait), retried on 5xx, dead-lettered to the state dir after persistent
failure, not repeated after a restart, not sent for a suppressed incident."""
from __future__ import annotations

import json
import socket

import pytest

from incident_samples import hdfs_incidents
from logmesh.scorer.analyst import fallback_summary
from logmesh.scorer.analyst.notify import DEAD_LETTERS, Notifier, Target
from logmesh.v1 import incident_pb2
from webhook_receiver import WebhookReceiver


def with_summary(incident: incident_pb2.Incident) -> incident_pb2.Incident:
    out = incident_pb2.Incident()
    out.CopyFrom(incident)
    out.summary.CopyFrom(fallback_summary.build(incident, "no --llm-url"))
    out.update_id += 100
    return out


def test_target_specs():
    assert Target.parse("http://am:9093/hook") == Target("http://am:9093/hook", "alertmanager")
    assert Target.parse("slack=https://hooks.example/T/B/x") == Target("https://hooks.example/T/B/x", "slack")
    assert Target.parse("slack=https://hooks.example/T/B/x").shown == "slack=https://hooks.example"
    for bad in ("teams=https://x/y", "ftp://x/y", "slack=", "hooks.example/x"):
        with pytest.raises(ValueError, match="want \\[FORMAT=\\]http"):
            Target.parse(bad)


def test_one_notification_per_incident_and_target_in_both_formats(data_dir, tmp_path):
    incidents = hdfs_incidents(data_dir)
    with WebhookReceiver() as rx:
        n = Notifier([Target(rx.url("/am")), Target(rx.url("/slack"), "slack")], state_dir=tmp_path,
                     wait_for_summary=60)
        try:
            for incident in incidents:
                n.on_incident(incident)  # no summary yet: waits for it
            for incident in incidents:
                n.on_incident(with_summary(incident))
                n.on_incident(with_summary(incident))  # a later change of the same incident: no second one
            assert n.wait_idle(30)
        finally:
            n.close()
        am = [body for path, body in rx.posts if path == "/am"]
        slack = [body for path, body in rx.posts if path == "/slack"]
    assert sorted(b["groupLabels"]["incident_id"] for b in am) == sorted(i.incident_id for i in incidents)
    assert len(slack) == len(incidents)
    first = next(b for b in am if b["groupLabels"]["incident_id"] == incidents[0].incident_id)
    assert first["version"] == "4" and first["status"] == "firing" and first["receiver"] == "logmesh"
    assert first["commonLabels"]["kind"] == "exception" and first["commonLabels"]["severity"] == "high"
    alert = first["alerts"][0]
    assert alert["labels"]["anomaly_id"] == str(incidents[0].anomaly_ids[0])
    assert alert["startsAt"].endswith("Z") and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["annotations"]["summary"] == with_summary(incidents[0]).summary.title
    assert all(set(b) == {"text"} for b in slack)
    assert any(incidents[0].incident_id in b["text"] and incidents[0].evidence[0].record_id in b["text"]
               for b in slack)


def test_without_a_summary_it_is_sent_after_the_wait(data_dir):
    incident = hdfs_incidents(data_dir)[1]
    with WebhookReceiver() as rx:
        n = Notifier([Target(rx.url())], wait_for_summary=0.5)
        try:
            n.on_incident(incident)
            assert n.wait_idle(30)
        finally:
            n.close()
        assert [b["groupLabels"]["incident_id"] for _, b in rx.posts] == [incident.incident_id]
        assert rx.posts[0][1]["commonLabels"]["severity"] == "unknown"


def test_5xx_is_retried_and_persistent_failure_is_dead_lettered(data_dir, tmp_path, reliability):
    a, b, c = (with_summary(i) for i in hdfs_incidents(data_dir)[:3])
    with WebhookReceiver(statuses=[503, 503]) as flaky, WebhookReceiver(statuses=[500] * 20) as down, \
            WebhookReceiver(statuses=[404]) as gone:
        n = Notifier([Target(flaky.url())], state_dir=tmp_path, attempts=3, backoff=0.05)
        n2 = Notifier([Target(down.url()), Target(gone.url("/x"), "slack")], state_dir=tmp_path, attempts=3,
                      backoff=0.05)
        try:
            n.on_incident(a)
            for incident in (b, c):
                n2.on_incident(incident)
            assert n.wait_idle(30) and n2.wait_idle(30)
        finally:
            n.close()
            n2.close()
        assert flaky.attempts == 3 and [x["groupLabels"]["incident_id"] for _, x in flaky.posts] == [a.incident_id]
        assert down.attempts == 6 and not down.posts  # 3 attempts for each of b and c
        # 404 is not retried: b is dead-lettered with its first answer, c (answered 200) delivered
        assert gone.attempts == 2 and len(gone.posts) == 1 and c.incident_id in gone.posts[0][1]["text"]
    letters = [json.loads(line) for line in (tmp_path / DEAD_LETTERS).read_text().splitlines()]
    assert sorted((d["incident_id"], d["format"], d["error"]) for d in letters) == sorted(
        [(b.incident_id, "alertmanager", "HTTP 500"), (c.incident_id, "alertmanager", "HTTP 500"),
         (b.incident_id, "slack", "HTTP 404: ")])
    assert {d["payload"].get("groupLabels", {}).get("incident_id") for d in letters if d["format"] ==
            "alertmanager"} == {b.incident_id, c.incident_id}
    reliability("fault", "notification webhook answers 503 twice, then 200", "retried; delivered once")
    reliability("fault", "notification webhook answers 500 to every attempt",
                f"dead letter in the state dir ({DEAD_LETTERS}) with the payload and the error")


def test_unreachable_receiver_is_dead_lettered(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    n = Notifier([Target(f"http://127.0.0.1:{port}/hook")], state_dir=tmp_path, attempts=2, backoff=0.05)
    try:
        n.on_incident(with_summary(hdfs_incidents(data_dir)[0]))
        assert n.wait_idle(30)
    finally:
        n.close()
    (letter,) = [json.loads(line) for line in (tmp_path / DEAD_LETTERS).read_text().splitlines()]
    assert letter["error"].startswith("ConnectError")


def test_a_restart_sends_nothing_twice_and_suppressed_incidents_are_not_sent(data_dir, tmp_path):
    incidents = [with_summary(i) for i in hdfs_incidents(data_dir)]
    suppressed = incident_pb2.Incident()
    suppressed.CopyFrom(incidents[-1])
    suppressed.incident_id, suppressed.suppressed_by_feedback_id = "inc-suppressed", "fb-000001"
    with WebhookReceiver() as rx:
        for _ in range(2):  # the second Notifier is the scorer after a restart: the book replays every incident
            n = Notifier([Target(rx.url())], state_dir=tmp_path)
            try:
                for incident in [*incidents, suppressed]:
                    n.on_incident(incident)
                assert n.wait_idle(30)
            finally:
                n.close()
        sent = [b["groupLabels"]["incident_id"] for _, b in rx.posts]
    assert sorted(sent) == sorted(i.incident_id for i in incidents)
