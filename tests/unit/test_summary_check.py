"""The checks an LLM's summary must pass, the deterministic fallback and the prompt, on incidents built from real
HDFS data (tests/incident_samples.py). No model here: tests/integration/test_summaries.py asks the real one."""
from __future__ import annotations

import json

import pytest

from incident_samples import hdfs_incidents
from logmesh.scorer.analyst import fallback_summary, summary_check, summary_prompt
from logmesh.v1 import incident_pb2


@pytest.fixture(scope="module")
def incident(data_dir):
    return hdfs_incidents(data_dir)[0]


def answer(incident, **changes):
    body = {"title": "Block delete failed", "severity": "high", "what_happened": "A delete hit a missing block.",
            "cited_record_ids": [incident.evidence[0].record_id], "likely_cause": "The block was gone.",
            "next_steps": ["Check the DataNode", "Run fsck"]}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None})


def test_a_complete_answer_citing_evidence_is_a_summary(incident):
    citable = summary_prompt.citable_ids(incident)
    summary = summary_check.parse(answer(incident, severity="High"), incident, citable)
    assert summary.severity == incident_pb2.SEVERITY_HIGH
    assert list(summary.cited_record_ids) == [incident.evidence[0].record_id]
    assert summary.incident_version == incident.version and len(summary.next_steps) == 2


@pytest.mark.parametrize("content, kind, words", [
    ("The block is broken, check it.", "not_json", "not JSON"),
    ("[1, 2]", "not_json", "not an object"),
    (None, "missing_field", "'likely_cause'"),
    ("severity-urgent", "bad_severity", "'urgent'"),
    ("unknown-id", "unknown_citation", "cited unknown id HDFS_5k.log:999999"),
    ("empty-steps", "missing_field", "'next_steps'"),
])
def test_a_bad_answer_says_what_is_wrong(incident, content, kind, words):
    if content is None:
        content = answer(incident, likely_cause=None)
    elif content == "severity-urgent":
        content = answer(incident, severity="urgent")
    elif content == "unknown-id":
        content = answer(incident, cited_record_ids=[incident.evidence[0].record_id, "HDFS_5k.log:999999"])
    elif content == "empty-steps":
        content = answer(incident, next_steps=[])
    with pytest.raises(summary_check.InvalidSummary) as err:
        summary_check.parse(content, incident, summary_prompt.citable_ids(incident))
    assert err.value.kind == kind and words in str(err.value)


def test_the_prompt_lists_every_shown_evidence_line_by_record_id(incident):
    system, user = summary_prompt.messages(incident)
    assert system["role"] == "system" and "cited_record_ids" in system["content"]
    shown = list(incident.evidence)[:summary_prompt.MAX_EVIDENCE]
    for line in shown:
        assert f"record_id {line.record_id}:" in user["content"]
    assert incident.session_keys[0] in user["content"] and "exception" in user["content"]


def test_the_fallback_is_deterministic_cites_rare_evidence_and_says_why(data_dir):
    for incident in hdfs_incidents(data_dir):
        a = fallback_summary.build(incident, "no --llm-url")
        assert a == fallback_summary.build(incident, "no --llm-url")
        assert a.source == incident_pb2.SUMMARY_SOURCE_FALLBACK and a.fallback_reason == "no --llm-url"
        assert a.title and a.what_happened and a.likely_cause and a.next_steps
        assert a.severity != incident_pb2.SEVERITY_UNSPECIFIED and a.incident_version == incident.version
        citable = summary_prompt.citable_ids(incident)
        assert a.cited_record_ids and set(a.cited_record_ids) <= citable
        rare = {e.record_id for e in incident.evidence if e.normal_session_fraction < 0.5}
        assert set(a.cited_record_ids) <= rare or len(a.cited_record_ids) == 1
