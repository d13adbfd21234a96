"""BGL incidents on the real parts: real BGL lines (loghub's BGL_16k, read in place) scored by a real scorer
serving a BGL artifact (trained here on BGL_2k + BGL_4k with the real embedding model), its flagged lines and
its verdict on the node written to a fresh anomalies topic as the streaming job writes them, grouped by the
scorer's incident book (real broker, compacted incidents topic). A node's alerts minutes apart are one incident
(family bgl, the node as its session and its node, every flagged line's id among its anomalies, evidence cited
by record id); another node's alert at another time is another incident."""
from __future__ import annotations

import pytest

from anomaly_topic import ALERT, AnomalyWriter, fed_scorer, fresh_topic
from bgl_helpers import bgl_data, train_bgl_models
from logmesh.client import IncidentClient, ScorerClient
from logmesh.ingest.families.bgl import BglFamily
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb
from test_incidents import fresh_compacted
from waiting import wait_for

pytestmark = pytest.mark.model
NODE = "R30-M0-N9-C:J16-U01"  # BGL_16k's failing node: "data TLB error interrupt" lines, seconds to minutes apart
BURST = 40  # its first 40 labelled lines span 12 minutes, no gap over 145 s (within the 300 s window)


def _lines(node: str, count: int) -> list[str]:
    family = BglFamily()
    lines = [line for line in bgl_data("BGL_16k.log").read_text().splitlines()
             if not line.startswith("-") and line.split()[3] == node]
    return sorted(lines, key=lambda line: family.parse(line).record.time)[:count]


@pytest.fixture(scope="module")
def bgl_models(tmp_path_factory, encoder):
    return train_bgl_models(tmp_path_factory, encoder.encode)


def test_a_bgl_nodes_alerts_are_one_incident(admin, bgl_models, embedder_server, tmp_path) -> None:
    anomalies, incidents = fresh_topic(admin, "t-bgl-incidents"), fresh_compacted(admin)
    server = fed_scorer(bgl_models, embedder_server.address, anomalies, tmp_path / "state",
                        incidents_topic=incidents, incident_window_s=300.0)
    try:
        scorer, client = ScorerClient(server.address), IncidentClient(server.address)
        burst = [scorer.score_line(line) for line in _lines(NODE, BURST)]
        flagged = [r for r in burst if r.verdict == score_pb2.VERDICT_ANOMALY]
        assert len(flagged) >= BURST // 2, f"the BGL model flags {len(flagged)} of {BURST} failing lines"
        assert all(list(r.block_ids) == [NODE] and r.HasField("event_time") for r in flagged)
        times = sorted((r.event_time for r in flagged), key=lambda t: t.ToNanoseconds())
        verdict = scorer.stub.ScoreBlock(spb.ScoreBlockRequest(block=spb.BlockSession(
            block_id=NODE, events=[r.template_id for r in burst], closed=False, first_time=times[0],
            last_time=times[-1], anomalous_record_ids=[r.record_id for r in flagged]))).verdict
        assert verdict.verdict == score_pb2.VERDICT_ANOMALY, verdict
        verdict.kind = ALERT
        # another node's alert, days later (loghub's BGL_16k: an I/O node's "ciod: failed" line)
        other_node = "R76-M0-N4-I:J18-U01"
        [other] = [scorer.score_line(line) for line in _lines(other_node, 1)]
        assert other.verdict == score_pb2.VERDICT_ANOMALY, other
        writer = AnomalyWriter(anomalies)
        writer.write([score_pb2.Anomaly(line=r) for r in flagged[:len(flagged) // 2]])
        writer.write([score_pb2.Anomaly(block=verdict)] + [score_pb2.Anomaly(line=r) for r in flagged[len(flagged) // 2:]])
        writer.write([score_pb2.Anomaly(line=other)])
        total = len(flagged) + 2
        book = server.servicers["IncidentService"].book
        wait_for(lambda: book.wait_idle(1) and book._last_grouped >= total, 60, "the book to group the alerts")
        found, _ = client.list(100, include_suppressed=True)
        by_node = {tuple(i.session_keys): i for i in found}
        assert set(by_node) == {(NODE,), (other_node,)}, [list(i.session_keys) for i in found]
        one = by_node[(NODE,)]
        assert one.family == "bgl" and list(one.nodes) == [NODE] and len(one.anomaly_ids) == len(flagged) + 1
        cited = {e.record_id for e in one.evidence}
        assert cited and cited <= {r.record_id for r in flagged}
        assert sum(e.count_in_incident for e in {e.template_id: e for e in one.evidence}.values()) == len(flagged)
        assert by_node[(other_node,)].family == "bgl" and list(by_node[(other_node,)].nodes) == [other_node]
        scorer.close()
        client.close()
    finally:
        server.stop(1)
