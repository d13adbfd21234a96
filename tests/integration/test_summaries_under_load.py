"""LLM summaries that yield to scoring (scorer/analyst/summary_deferral.py), with a real busy scorer (the
session's in-process scorer serving ScoreStream over real HDFS lines from a client thread, counted by the real
gRPC metrics interceptor) and the real small LLM (tests/llm_server.py). Under load that does not stop until the
deferral has ended, a summary still arrives: after the maximum deferral, not never; and it is the newest version
submitted meanwhile. (The load stops once the deferral ended at its maximum: the LLM call after it is the same
call either way, and on 2 cores the load only slowed it.) With scoring quiet it starts after one window's look."""
from __future__ import annotations

import threading
import time

from incident_samples import hdfs_incidents
from logmesh.client import ScorerClient
from logmesh.scorer.analyst.summaries import Summarizer
from logmesh.scorer.analyst.summary_deferral import ScoringQuiet, scoring_messages
from logmesh.v1 import incident_pb2

MAX_WAIT_S = 6.0
LLM_INCIDENT = 0  # its greedy answer passes the checks (test_summaries.LLM_INCIDENTS)


class Load:
    """ScoreStream calls over HDFS_2k's lines, back to back, until stopped: a scorer that is never quiet."""

    def __init__(self, address: str, lines: list[str]) -> None:
        self.address, self.lines = address, lines
        self.scored = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with ScorerClient(self.address, timeout=60) as client:
            while not self._stop.is_set():
                self.scored += sum(1 for _ in client.score_lines(self.lines[:512]))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_summary_arrives_at_the_maximum_deferral_under_constant_load(data_dir, scorer_server, llm_server):
    lines = (data_dir / "HDFS_2k.log").read_text().splitlines()
    v1 = incident_pb2.Incident()
    v1.CopyFrom(hdfs_incidents(data_dir)[LLM_INCIDENT])
    v2 = incident_pb2.Incident()
    v2.CopyFrom(v1)
    v2.version = 2
    got: list[tuple[incident_pb2.IncidentSummary, float]] = []
    s = Summarizer(lambda incident_id, summary: got.append((summary, time.monotonic())), llm_url=llm_server.url,
                   llm_timeout=120, deferral=ScoringQuiet(MAX_WAIT_S))
    try:
        with Load(scorer_server.address, lines) as load:
            while load.scored == 0:
                time.sleep(0.1)
            messages = scoring_messages()
            submitted = time.monotonic()
            s.submit(v1)
            time.sleep(2)
            s.submit(v2)  # the evidence moved while the request waited
            deadline = time.monotonic() + 120
            while s.counts().deferred_at_max == 0 and not got and time.monotonic() < deadline:
                time.sleep(0.1)
            assert scoring_messages() - messages > 2 * MAX_WAIT_S  # the load went on all the while
        assert s.wait_idle(180), s.stats()
        assert len(got) == 1, [(x.incident_version, x.fallback_reason) for x, _ in got]
        summary, written = got[0]
        assert summary.source == incident_pb2.SUMMARY_SOURCE_LLM, summary.fallback_reason
        assert summary.incident_version == 2  # the version waiting when the deferral ended: one LLM call, not two
        assert written - submitted >= MAX_WAIT_S
        counts = s.counts()
        assert (counts.deferred, counts.deferred_at_max) == (1, 1)
        assert counts.delay_p50_seconds >= MAX_WAIT_S  # measured from v1's submission: the replaced one's wait counts

        quiet = incident_pb2.Incident()  # scoring stopped: the next summary does not wait for the maximum
        quiet.CopyFrom(hdfs_incidents(data_dir)[2])
        s.submit(quiet)
        assert s.wait_idle(180), s.stats()
        assert got[-1][0].source == incident_pb2.SUMMARY_SOURCE_LLM, got[-1][0].fallback_reason
        assert s.counts().deferred == 1  # not deferred: quiet at the first look
        assert s.stats()["delay_max_s"] >= MAX_WAIT_S
    finally:
        s.close()
