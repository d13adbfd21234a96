"""A real scorer serving a BGL artifact (trained here on BGL_2k + BGL_4k with the real embedding model): raw BGL
lines (with or without the label column) and BGL LogRecords get the verdicts `logmesh evaluate --format bgl`
gives the same lines, scrambled labels change no verdict, an HDFS record is refused per item with a reason, and
ScoreBlock judges a node's session by its flagged lines."""
from __future__ import annotations

import random
from pathlib import Path

import grpc
import numpy as np
import pytest

from logmesh.ingest.families.bgl import BglFamily
from logmesh.scorer import bgl
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

from bgl_helpers import bgl_data, train_bgl_models

pytestmark = pytest.mark.model
UNSEEN = slice(4600, 5400)  # lines of BGL_6k.log, a sample the model never saw (43 print no message)


@pytest.fixture(scope="module")
def bgl_models(tmp_path_factory, encoder) -> Path:
    return train_bgl_models(tmp_path_factory, encoder.encode)


@pytest.fixture(scope="module")
def bgl_scorer(embedder_server, bgl_models):
    from logmesh.client import ScorerClient
    from logmesh.scorer.service import serve
    server = serve(0, bgl_models, embedder_server.address, reload_interval=60)
    with ScorerClient(server.address) as client:
        client.wait_until_serving(60)
        yield client
    server.stop(1)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> Path:
    lines = bgl_data("BGL_6k.log").read_text().splitlines()[UNSEEN]
    path = tmp_path_factory.mktemp("unseen") / "unseen.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def _verdicts(client, items) -> list[bool]:  # type: ignore[no-untyped-def]
    replies = list(client.score_stream(items))
    assert all(r.HasField("result") for r in replies), [r.error.message for r in replies if r.HasField("error")][:3]
    return [r.result.verdict == score_pb2.VERDICT_ANOMALY for r in replies]


def test_served_verdicts_are_the_evaluated_ones(bgl_scorer, bgl_models, unseen, encoder):
    lines = unseen.read_text().splitlines()
    evaluated = bgl.evaluate_bgl(bgl_models, unseen, encoder.encode, verdicts=True)
    assert evaluated["line"]["lines"] == len(lines) and evaluated["split"] == "files the model never saw"
    # evaluate judges lines in time order (stable); put its verdicts back in file order
    times = [BglFamily().parse(l).record.time for l in lines]
    order = sorted(range(len(lines)), key=lambda i: times[i])
    expected = [False] * len(lines)
    for k, i in enumerate(order):
        expected[i] = evaluated["verdicts"][k]
    assert sum(expected) >= 20  # real alerts among them: the comparison is not all-normal
    assert any(not BglFamily().parse(l).record.message for l in lines)  # a line with no message is judged too
    raw = _verdicts(bgl_scorer, (spb.ScoreItem(raw_line=l) for l in lines))
    assert raw == expected
    family = BglFamily()
    records = _verdicts(bgl_scorer, (spb.ScoreItem(record=family.record(l, "unseen.log", n)) for n, l in
                                     enumerate(lines, 1)))
    assert records == expected


def test_the_label_column_is_never_read(bgl_scorer, unseen):
    lines = unseen.read_text().splitlines()
    rng = random.Random(7)
    tags = ["-", "KERNDTLB", "APPSEV", "KERNSTOR", "MONILL"]
    scrambled = [rng.choice(tags) + " " + l.partition(" ")[2] for l in lines]
    bare = [l.partition(" ")[2] for l in lines]  # a live BGL log has no label column
    truth = _verdicts(bgl_scorer, (spb.ScoreItem(raw_line=l) for l in lines))
    assert _verdicts(bgl_scorer, (spb.ScoreItem(raw_line=l) for l in scrambled)) == truth
    assert _verdicts(bgl_scorer, (spb.ScoreItem(raw_line=l) for l in bare)) == truth
    family = BglFamily()
    labelled = [family.record(l, "u", n, labels=True) for n, l in enumerate(scrambled, 1)]
    assert _verdicts(bgl_scorer, (spb.ScoreItem(record=r) for r in labelled)) == truth


def test_a_result_names_the_event_and_why(bgl_scorer, unseen):
    lines = unseen.read_text().splitlines()
    alert = next(l for l in lines if l.startswith("KERNDTLB"))
    r = bgl_scorer.score_line(alert)
    assert r.verdict == score_pb2.VERDICT_ANOMALY and r.reason and r.template_id.startswith(("E", "D"))
    assert r.block_ids == [alert.split(" ")[3]] and r.component == "KERNEL"
    normal = next(l for l in lines if l.endswith("instruction cache parity error corrected"))
    assert bgl_scorer.score_line(normal).verdict == score_pb2.VERDICT_NORMAL


def test_an_hdfs_record_is_refused_per_item(bgl_scorer, unseen):
    from logmesh.ingest.hdfs import parse_line
    hdfs = parse_line("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
                      "blk_38865049064139660 terminating", "HDFS.log", 1)
    good = BglFamily().record(unseen.read_text().splitlines()[0], "u", 1)
    replies = list(bgl_scorer.score_stream([spb.ScoreItem(record=hdfs), spb.ScoreItem(record=good)]))
    assert replies[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "is a hdfs line" in replies[0].error.message and "bgl model" in replies[0].error.message
    assert replies[1].HasField("result")
    with pytest.raises(grpc.RpcError) as info:
        bgl_scorer.score_record(hdfs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:  # a raw HDFS line too: not judged as BGL text
        bgl_scorer.score_line("081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
                              "blk_38865049064139660 terminating")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is a hdfs line" in info.value.details()
    assert bgl_scorer.score_line("not a log line at all").HasField("scored_time")  # unknown text is still judged


def test_a_session_is_judged_by_its_flagged_lines(bgl_scorer):
    node = "R02-M1-N0-C:J12-U11"
    quiet = spb.BlockSession(block_id=node, events=["E1", "E2"], closed=True)
    loud = spb.BlockSession(block_id=node, events=["E1", "E2", "E3", "E4"], anomalous_record_ids=["u:3"])
    results = list(bgl_scorer.score_blocks([quiet, loud, spb.BlockSession(block_id=node)]))
    v0, v1 = results[0].verdict, results[1].verdict
    assert v0.verdict == score_pb2.VERDICT_NORMAL and v0.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL
    assert v1.verdict == score_pb2.VERDICT_ANOMALY and v1.score == pytest.approx(0.25)
    assert v1.evidence_kind == "anomalous_lines" and list(v1.anomalous_record_ids) == ["u:3"]
    assert v1.kind == score_pb2.BLOCK_VERDICT_KIND_INTERIM
    assert results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert np.isclose(v0.score, 0.0)


def test_an_hdfs_scorer_refuses_bgl_lines_by_name(scorer, unseen):
    line = unseen.read_text().splitlines()[0]
    for call in (lambda: scorer.score_line(line), lambda: scorer.score_record(BglFamily().record(line, "u", 1))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is a bgl line" in info.value.details() and "hdfs model" in info.value.details()


def _logmesh(*argv: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path as P
    return subprocess.run([str(P(sys.executable).with_name("logmesh")), *argv], capture_output=True, text=True,
                          timeout=120)


def test_the_score_command_takes_bgl_lines_and_says_when_the_scorer_serves_another_family(bgl_scorer, scorer, unseen):
    lines = unseen.read_text().splitlines()
    alert = next(l for l in lines if l.startswith("KERNDTLB"))
    normal = next(l for l in lines if l.endswith("instruction cache parity error corrected"))
    out = _logmesh("score", "--scorer", bgl_scorer.address, alert, normal)  # detected as BGL
    assert out.returncode == 0, out.stderr
    verdicts = [l.split()[0] for l in out.stdout.splitlines()]
    assert verdicts == ["ANOMALY", "NORMAL"]
    out = _logmesh("score", "--format", "bgl", "--scorer", scorer.address, normal)  # an HDFS scorer
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "is a bgl line" in out.stderr and "hdfs model" in out.stderr
