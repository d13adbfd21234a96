"""The Summarizer without an LLM (--llm-url not given): every incident gets the fallback summary for its version,
submit never blocks, a full queue hands the oldest waiting request the fallback (counted), and summaries are
cached per (incident_id, version)."""
from __future__ import annotations

import threading

from incident_samples import hdfs_incidents
from logmesh.scorer.analyst.summaries import NO_LLM, QUEUE_FULL, Summarizer
from logmesh.v1 import incident_pb2


class Collect:
    """The book's attach_summary side: records what is delivered; `gate` holds the worker inside deliver."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.got: list[tuple[str, incident_pb2.IncidentSummary]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, incident_id: str, summary: incident_pb2.IncidentSummary) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        self.got.append((incident_id, summary))


def test_without_llm_url_every_incident_gets_the_fallback_for_its_version(data_dir):
    incidents = hdfs_incidents(data_dir)
    deliver = Collect()
    s = Summarizer(deliver)
    try:
        for incident in incidents:
            s.submit(incident)
        assert s.wait_idle(30)
        assert sorted(i for i, _ in deliver.got) == sorted(i.incident_id for i in incidents)
        for _, summary in deliver.got:
            assert summary.source == incident_pb2.SUMMARY_SOURCE_FALLBACK and summary.fallback_reason == NO_LLM
            assert summary.incident_version == 1 and summary.generated_time.seconds > 0
        assert s.stats()["fallback_no_llm_url"] == len(incidents)
        counts = s.counts()  # GetStats' SummaryCounts
        assert (counts.llm, counts.fallback, dict(counts.fallback_reasons)) == (
            0, len(incidents), {"no_llm_url": len(incidents)})
    finally:
        s.close()


def test_cached_per_version_and_an_incident_summarised_already_is_not_asked_again(data_dir):
    incident = incident_pb2.Incident()
    incident.CopyFrom(hdfs_incidents(data_dir)[0])
    deliver = Collect()
    s = Summarizer(deliver)
    try:
        s.submit(incident)
        assert s.wait_idle(30)
        s.submit(incident)  # same version again (the book had not attached it yet): served from the cache
        assert s.wait_idle(30)
        assert len(deliver.got) == 2 and deliver.got[0][1] == deliver.got[1][1]
        incident.summary.CopyFrom(deliver.got[0][1])
        s.submit(incident)  # carries its version's summary: nothing to do
        incident.version = 2  # the evidence changed: a new summary
        s.submit(incident)
        assert s.wait_idle(30)
        assert [summary.incident_version for _, summary in deliver.got] == [1, 1, 2]
        assert s.stats()["fallback_no_llm_url"] == 2  # the cached one was not built again
    finally:
        s.close()


def test_a_full_queue_never_blocks_submit_and_the_oldest_gets_the_fallback(data_dir):
    base = hdfs_incidents(data_dir)[0]
    gate = threading.Event()
    deliver = Collect(gate)
    s = Summarizer(deliver, queue_size=4)
    try:
        first = incident_pb2.Incident()
        first.CopyFrom(base)
        s.submit(first)
        assert deliver.entered.wait(10)  # the worker is held inside deliver
        submitted = threading.Thread(target=lambda: [s.submit(_renamed(base, n)) for n in range(1, 11)])
        submitted.start()
        submitted.join(10)
        assert not submitted.is_alive(), "submit blocked while the worker was busy"
        assert s.stats()["dropped_llm"] == 6  # 10 waiting for 4 places: the 6 oldest moved to the fallback
        gate.set()
        assert s.wait_idle(30)
        reasons = {i: summary.fallback_reason for i, summary in deliver.got}
        assert len(reasons) == 11
        assert [reasons[f"inc-q{n}"] for n in range(1, 7)] == [QUEUE_FULL] * 6
        assert [reasons[f"inc-q{n}"] for n in range(7, 11)] == [NO_LLM] * 4
    finally:
        gate.set()
        s.close()


def _renamed(base: incident_pb2.Incident, n: int) -> incident_pb2.Incident:
    incident = incident_pb2.Incident()
    incident.CopyFrom(base)
    incident.incident_id = f"inc-q{n}"
    return incident
