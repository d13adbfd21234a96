"""BGL's frequency kind on the real model and real BGL lines (scorer/rate_evidence.py, scorer/bgl_serving.py): a BGL
artifact trained here (BGL_2k + BGL_4k, the real embedding model) and the same artifact saved as one trained before
`window_normal` (saved and loaded back: an old artifact still loads) judge every line of BGL_16k and its sessions (its
100-line windows in time order and its nodes' sessions) alike: the same flagged lines, the same session verdicts,
scores and flagged record ids. Only kinds differ, and only anomalous_lines -> frequency, where a template occurs
more often in 100 lines of the session than in any normal training window and improbably at the normal rate; some
flagged sessions beyond that most are not named so. Such a session alone makes a FREQUENCY incident (UNSPECIFIED
with the old artifact)."""
from __future__ import annotations

import copy
import re
from collections import defaultdict

import pytest

from bgl_helpers import bgl_data, train_bgl_models
from logmesh.ingest.families.bgl import BglFamily
from logmesh.runtime.grpc_server import Limits
from logmesh.scorer import artifacts
from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.bgl_serving import BglLineScorer, BglSessionScorer
from logmesh.scorer.history import AnomalyHistory
from logmesh.scorer.rate_evidence import FAMILY_P, MIN_LINES, spreads, tail, window_counts
from logmesh.v1 import incident_pb2, score_pb2, scorer_service_pb2 as spb

pytestmark = pytest.mark.model
K = incident_pb2
ANOMALY = score_pb2.VERDICT_ANOMALY
CITED = re.compile(r"(\S+) x(\d+) \(normal windows at most (\d+),")


@pytest.fixture(scope="module")
def both(tmp_path_factory, encoder):
    """(the trained artifact, the same one as saved before window_normal existed)."""
    models = train_bgl_models(tmp_path_factory, encoder.encode)
    served = artifacts.load(models, artifacts.newest(models))
    before = copy.deepcopy(served.models)
    del before["window_normal"]
    old_dir = tmp_path_factory.mktemp("bgl-old")
    artifacts.save(old_dir, served.version, before, served.meta)
    return served, artifacts.load(old_dir, served.version)


def _lines(artifact, lines: list[str], embed) -> list[score_pb2.ScoreResult]:  # type: ignore[no-untyped-def]
    scorer = BglLineScorer(artifact, embed, Limits())
    items = [spb.ScoreItem(record=BglFamily().record(line, "BGL_16k.log", n)) for n, line in enumerate(lines, 1)]
    out = []
    for i in range(0, len(items), 500):
        replies = scorer.score(items[i:i + 500])
        assert not [r.error.message for r in replies if r.HasField("error")]
        out += [r.result for r in replies]
    return out


def _sessions(lines: list[str], results: list[score_pb2.ScoreResult]) -> list[spb.BlockSession]:
    """BGL_16k's 100-line windows in time order, and each node's lines in time order, as the stream sends them."""
    family = BglFamily()
    order = sorted(range(len(lines)), key=lambda i: family.parse(lines[i]).record.time or 0.0)
    groups = [(f"BGL_16k.log#window-{k // 100}", order[k:k + 100]) for k in range(0, len(order), 100)]
    by_node: dict[str, list[int]] = defaultdict(list)
    for i in order:
        by_node[results[i].block_ids[0]].append(i)
    groups += list(by_node.items())
    return [spb.BlockSession(block_id=key, events=[results[i].template_id for i in members],
                             anomalous_record_ids=[results[i].record_id for i in members
                                                   if results[i].verdict == ANOMALY]) for key, members in groups]


def _incident_kind(anomalies: list[score_pb2.Anomaly]) -> int:
    """The kind of the one incident the incident book makes of these alerts (in-memory history and store)."""
    history = AnomalyHistory()
    book = IncidentBook(history, MemoryIncidentStore(), normal_fraction=lambda t: 1.0)
    book.start()
    try:
        history.add(anomalies)
        assert book.wait_idle(10)
        [incident] = book.page(10, None, include_suppressed=True)[0]
        return incident.kind
    finally:
        book.stop()


def test_bgl_frequency_names_real_sessions_and_changes_no_verdict(both, encoder):
    served, old = both
    normal, window = served.models["window_normal"], served.meta["window"]
    assert normal["windows"] and window == 100, "the trained BGL artifact kept nothing of its normal windows"
    window_max, spread = normal["max"], spreads(normal)
    memo: dict[str, object] = {}

    def embed(shapes, timeout=None):  # type: ignore[no-untyped-def]
        new = [s for s in shapes if s not in memo]
        if new:
            memo.update(zip(new, encoder.encode(new)))
        return [memo[s] for s in shapes]

    lines = bgl_data("BGL_16k.log").read_text().splitlines()
    now_lines, then_lines = _lines(served, lines, embed), _lines(old, lines, embed)
    strip = lambda r: (r.record_id, r.verdict, r.score, r.template_id, r.new_template, r.reason)  # noqa: E731
    assert [strip(r) for r in now_lines] == [strip(r) for r in then_lines]  # the same flagged lines
    assert sum(r.verdict == ANOMALY for r in now_lines) >= 100

    sessions = _sessions(lines, now_lines)
    now = [r.verdict for r in BglSessionScorer(served).score(sessions)]
    then = [r.verdict for r in BglSessionScorer(old).score(sessions)]
    same = lambda v: (v.block_id, v.verdict, v.score, list(v.anomalous_record_ids), v.kind)  # noqa: E731
    assert [same(v) for v in now] == [same(v) for v in then]  # the same flagged windows and nodes, the same scores
    assert {v.evidence_kind for v in then} == {"anomalous_lines", "none"}  # the old artifact names none
    changed = {(o.evidence_kind, n.evidence_kind) for n, o in zip(now, then) if n.evidence_kind != o.evidence_kind}
    assert changed == {("anomalous_lines", "frequency")}, changed
    frequent = [(s, n, o) for s, n, o in zip(sessions, now, then) if n.evidence_kind == "frequency"]
    assert any("#window-" in s.block_id for s, _, _ in frequent), "no real window is a burst"
    for s, n, o in frequent:
        counts = window_counts(s.events, window)
        cited = CITED.findall(n.reasons[0])
        assert n.verdict == ANOMALY and cited and n.reasons[0].startswith(
            "more often than any normal window of 100 lines, and improbably at the normal rate: "), n.reasons
        assert all(int(c) == counts[e] > int(most) == window_max[e] and int(c) >= MIN_LINES for e, c, most in cited)
        assert all(tail(int(c), normal["lines"][e], normal["windows"], spread[e]) < FAMILY_P / len(normal["lines"])
                   for e, c, _ in cited)
        assert list(n.reasons[1:]) == list(o.reasons)

    # above the normal most is not enough: real flagged sessions hold a count beyond it that the normal rate explains
    beyond_most = [n for s, n in zip(sessions, now) if n.verdict == ANOMALY and any(
        c > window_max[e] for e, c in window_counts(s.events, window).items() if e in window_max)]
    assert len(frequent) < len(beyond_most), (len(frequent), len(beyond_most))

    # a burst alone shows FREQUENCY (UNSPECIFIED before). On BGL_16k only windows are bursts, and a window is no
    # node, so its flagged lines (keyed by node) make incidents of their own: that a line's kind outranks a burst's
    # in one incident is tests/unit/test_bgl_frequency_kind_rule.py's (grouping.stronger)
    s, n, o = frequent[0]
    for v in (n, o):
        v.kind = score_pb2.BLOCK_VERDICT_KIND_ALERT  # as the stream writes a session's first anomalous verdict
    assert _incident_kind([score_pb2.Anomaly(block=n)]) == K.INCIDENT_KIND_FREQUENCY
    assert _incident_kind([score_pb2.Anomaly(block=o)]) == K.INCIDENT_KIND_UNSPECIFIED
