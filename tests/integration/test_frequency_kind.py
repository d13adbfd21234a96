"""The frequency kind on the real model and the real HDFS data (scorer/rate_evidence.py): every block of the shared
data judged by the trained artifact's BlockScorer and by the same artifact saved as one trained before
`NormalProfile.max_count` (saved and loaded back: an old artifact still loads) has the same verdict and score; only
kinds differ, and only where a flagged pattern or missing step holds an event beyond every normal session's count.
Such a block makes a FREQUENCY incident; a block with an exception event keeps EXCEPTION."""
from __future__ import annotations

import copy
import re
from collections import Counter

import pytest

from logmesh.scorer import artifacts, completeness
from logmesh.scorer.analyst import grouping
from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.block_scorer import BlockScorer
from logmesh.scorer.dataset import read_corpus
from logmesh.scorer.history import AnomalyHistory
from logmesh.scorer.stall_times import StallTimes
from logmesh.scorer.train import corpus_blocks, decide_completeness
from logmesh.v1 import incident_pb2, score_pb2, scorer_service_pb2 as spb

K = incident_pb2
ANOMALY = score_pb2.VERDICT_ANOMALY


@pytest.fixture(scope="module")
def real_blocks(data_dir):
    """The shared data's blocks as training reads them (raw-log blocks by id, session-file sessions numbered)."""
    stall = StallTimes(fallback=completeness.QUIET_SECONDS)
    corpus = read_corpus(data_dir, stall_times=stall)
    stall.freeze()
    decide_completeness(corpus, stall=stall)
    blocks = corpus_blocks(corpus)
    ids = blocks.ids if blocks.ids is not None else [""] * len(blocks.sessions)
    return [spb.BlockSession(block_id=block_id or f"session-{i}", events=events, closed=bool(done))
            for i, (block_id, events, done) in enumerate(zip(ids, blocks.sessions, blocks.closed))]


def _verdicts(artifact, blocks) -> list[score_pb2.BlockVerdict]:
    results = BlockScorer(artifact).score(blocks)
    assert not [r.error.message for r in results if r.HasField("error")]
    return [r.verdict for r in results]


def _incident_kind(verdict: score_pb2.BlockVerdict) -> int:
    """The kind of the incident the incident book makes of this verdict alone (in-memory history and store)."""
    history = AnomalyHistory()
    book = IncidentBook(history, MemoryIncidentStore(), normal_fraction=lambda t: 1.0)
    book.start()
    try:
        history.add([score_pb2.Anomaly(block=verdict)])
        assert book.wait_idle(10)
        [incident] = book.page(10, None, include_suppressed=True)[0]
        return incident.kind
    finally:
        book.stop()


def test_frequency_names_real_blocks_and_changes_no_verdict(trained_models, real_blocks, tmp_path):
    served = artifacts.load(trained_models, artifacts.newest(trained_models))
    profile = served.models["block"].profile
    assert profile.max_count, "the trained session model kept no per-event normal maximum"
    before = copy.deepcopy(served.models)
    del before["block"].profile.max_count  # what an artifact trained before it holds
    artifacts.save(tmp_path, served.version, before, served.meta)
    old = artifacts.load(tmp_path, served.version)

    now, then = _verdicts(served, real_blocks), _verdicts(old, real_blocks)
    assert len(now) == len(real_blocks) > 10_000
    # no verdict changes: which blocks are flagged (the alert set), their scores, their kind of verdict
    assert [(v.block_id, v.verdict, v.score, v.kind) for v in now] == [(v.block_id, v.verdict, v.score, v.kind)
                                                                       for v in then]
    changed = Counter((o.evidence_kind, n.evidence_kind) for n, o in zip(now, then) if n.evidence_kind != o.evidence_kind)
    assert changed and set(changed) <= {("failure_pattern", "frequency"), ("missing_step", "frequency")}, changed
    assert "frequency" not in {v.evidence_kind for v in then}  # the old artifact names none

    frequent = [(n, o) for n, o in zip(now, then) if n.evidence_kind == "frequency"]
    for n, o in frequent:
        counts = Counter(n.events)
        beyond = [e for e, c in counts.items() if e in profile.max_count and c > profile.max_count[e]]
        assert n.verdict == ANOMALY and beyond, (n.block_id, dict(counts))
        cited = re.findall(r"(\S+) x(\d+) \(normal sessions at most (\d+)\)", n.reasons[0])
        assert n.reasons[0].startswith("more often than any normal session: ") and cited, n.reasons
        assert all(e in beyond and int(c) == counts[e] and int(most) == profile.max_count[e] for e, c, most in cited)
        assert list(n.reasons[1:]) == list(o.reasons)[:len(n.reasons) - 1]
    assert _incident_kind(frequent[0][0]) == K.INCIDENT_KIND_FREQUENCY

    # a block holding an exception event keeps EXCEPTION, also when an ordinary event in it is beyond normal
    exceptions = [n for n in now if n.verdict == ANOMALY and any(e not in profile.normal_events for e in n.events)
                  and any(c > profile.max_count.get(e, c) for e, c in Counter(n.events).items())]
    assert exceptions, "no real block with an exception event and a count beyond normal"
    assert {n.evidence_kind for n in exceptions} <= {"evidence_event", "new_template"}
    exception = next(n for n in exceptions if n.evidence_kind == "evidence_event")
    assert _incident_kind(exception) == K.INCIDENT_KIND_EXCEPTION
    assert grouping.block_kind(exception) == K.INCIDENT_KIND_EXCEPTION
