"""Feedback to suppression: from SubmitFeedback's call to the moment the scorer serves the alert marked
(Anomaly.suppressed_by_feedback_id), on ListAnomalies and on a WatchAnomalies opened after the submission
(resuming after the alert's id). Real broker at 127.0.0.1:9092 (`make kafka-up`), a real scorer in this process
whose history reads a fresh anomalies topic and keeps labels in a fresh compacted feedback topic (no model
needed: the history and FeedbackService serve without one). Target (issue 17): <= 1 s.

    .venv/bin/python bench/bench_feedback_suppression.py [--rounds 50]

Prints a JSON summary: p50/p99/max of the SubmitFeedback call (durable: acks=all), submit -> ListAnomalies
marked, submit -> WatchAnomalies marked.
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

from logmesh.client import ScorerClient
from logmesh.scorer.service import serve
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
from logmesh.v1 import score_pb2

BOOTSTRAP = "127.0.0.1:9092"


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 1), "max_ms": round(ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    tag = uuid.uuid4().hex[:8]
    anomalies, feedback = f"bench-fb.{tag}.anomalies", f"bench-fb.{tag}.feedback"
    for f in admin.create_topics([NewTopic(anomalies, 1, 1),
                                  NewTopic(feedback, 1, 1, config={"cleanup.policy": "compact"})]).values():
        f.result(30)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    with tempfile.TemporaryDirectory() as models:
        server = serve(0, Path(models), "127.0.0.1:1", reload_interval=60, kafka_bootstrap=BOOTSTRAP,
                       anomalies_topic=anomalies, feedback_topic=feedback)
        book = server.servicers["ScorerService"].feedback
        assert book.wait_loaded(30), "feedback topic did not load"
        client = ScorerClient(server.address)
        stub = fsgrpc.FeedbackServiceStub(client.channel)
        submit_ms, listed_ms, watched_ms = [], [], []
        try:
            # a first entry nobody labels: WatchAnomalies' after_id 0 means "from now", so every measured entry's
            # id must be above 1
            for i in range(-1, args.rounds):
                rid = f"bench-{tag}-{i}"
                entry = score_pb2.Anomaly(line=score_pb2.ScoreResult(
                    record_id=rid, verdict=score_pb2.VERDICT_ANOMALY, score=0.9, template_id="E7",
                    message="writeBlock blk_1 received exception java.io.IOException", block_ids=["blk_1"]))
                producer.produce(anomalies, key=rid.encode(), value=entry.SerializeToString())
                producer.flush(10)
                deadline = time.monotonic() + 30
                while not (held := [e for e in client.list_anomalies(5)[0] if e.line.record_id == rid]):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the history did not read {rid}")
                    time.sleep(0.01)
                after = held[0].id - 1
                if i < 0:
                    continue
                t0 = time.perf_counter()
                stub.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(
                    record_id=rid, label=fpb.FEEDBACK_LABEL_FALSE_ALARM, scope=fpb.FEEDBACK_SCOPE_ITEM,
                    action=fpb.FEEDBACK_ACTION_SUPPRESS)), timeout=30)
                submit_ms.append((time.perf_counter() - t0) * 1000)
                while not any(e.suppressed_by_feedback_id for e in client.list_anomalies(5)[0]
                              if e.line.record_id == rid):
                    time.sleep(0.001)
                listed_ms.append((time.perf_counter() - t0) * 1000)
                for e in client.watch(after_id=after, timeout=10):
                    if e.line.record_id == rid and e.suppressed_by_feedback_id:
                        watched_ms.append((time.perf_counter() - t0) * 1000)
                        break
        finally:
            client.close()
            server.stop(1)
            admin.delete_topics([anomalies, feedback])
    out = {"machine": "polyglot (2 cores, shared)", "rounds": args.rounds, "submit": _summary(submit_ms),
           "submit_to_list_marked": _summary(listed_ms), "submit_to_watch_marked": _summary(watched_ms),
           "target_ms": 1000}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
