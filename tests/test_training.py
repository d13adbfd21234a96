"""Training on the real data: artifact round trip, metric definitions, a known failing line flagged."""
from __future__ import annotations

import json

import numpy as np
import pytest

from logmesh.ingest.masking import line_shape
from logmesh.scorer import artifacts
from logmesh.scorer.ensemble import combine
from logmesh.scorer.metrics import binary_metrics


def test_metrics_on_a_hand_checked_example():
    truth = [1, 1, 1, 0, 0, 0, 0, 0]
    predicted = [1, 1, 0, 1, 0, 0, 0, 0]
    m = binary_metrics(np.array(truth), np.array(predicted))
    # tp=2 fp=1 fn=1 tn=4: precision 2/3, recall 2/3, f1 2/3, fpr 1/5
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(0.2)
    assert binary_metrics(np.array([0, 0]), np.array([0, 0]))["f1"] == 0.0


def test_majority_vote():
    verdict, score, votes = combine(np.array([[0.9, 0.8, 0.6, 0.1, 0.2], [0.9, 0.8, 0.1, 0.1, 0.2]], np.float32))
    assert verdict.tolist() == [True, False] and votes.tolist() == [3, 2]
    assert score[0] == pytest.approx(0.52)


def test_artifact_round_trips_with_metrics_and_fingerprint(trained_models, encoder):
    [version] = artifacts.versions(trained_models)
    artifact = artifacts.load(trained_models, version)
    meta = json.loads((trained_models / version / "meta.json").read_text())
    assert artifact.meta == meta and meta["version"] == version
    assert meta["members"] == ["tfidf_sgd", "random_forest", "mlp", "decision_tree", "embedding_sgd"]
    assert meta["metrics"]["split"]["kind"] == "chronological"
    assert len(meta["data"]["fingerprint"]) == 64 and version.endswith(meta["data"]["fingerprint"][:8])
    shapes = [line_shape("dfs.DataNode$DataXceiver",
                         "writeBlock blk_-3102267849859399193 received exception java.io.IOException: x"),
              line_shape("dfs.DataNode$PacketResponder", "Received block blk_1 of size 67108864 from /10.0.0.1")]
    probabilities = artifact.models["line"].probabilities(shapes, encoder.encode(shapes))
    verdict, _, _ = combine(probabilities)
    assert verdict.tolist() == [True, False]


def test_a_broken_artifact_is_reported_with_what_to_do(tmp_path, trained_models):
    import shutil
    [version] = artifacts.versions(trained_models)
    shutil.copytree(trained_models / version, tmp_path / version)
    (tmp_path / version / "model.joblib").write_bytes(b"\x00junk")
    with pytest.raises(artifacts.ArtifactError, match="logmesh train"):
        artifacts.load(tmp_path, version)


def test_half_written_artifacts_are_invisible(tmp_path):
    (tmp_path / ".staging-abc").mkdir()
    (tmp_path / "20260101T000000Z-deadbeef").mkdir()  # no meta.json yet
    assert artifacts.versions(tmp_path) == [] and artifacts.newest(tmp_path) is None


def test_artifact_carries_drain_state_and_block_order_features(trained_models):
    import pickle
    [version] = artifacts.versions(trained_models)
    artifact = artifacts.load(trained_models, version)
    drain = pickle.loads(pickle.dumps(artifact.models["drain"]))
    assert drain.frozen and drain.event_id("E5", "c", "m") == "E5"
    assert drain.event_id("unknown", "dfs.X", "never seen before 123") in {"unknown", *drain.templates}
    block = artifact.models["block"]
    assert block.vocab and block.bigrams
    meta = artifact.meta
    assert meta["metrics"]["block"]["blocks"] > 0 and "block_by_source" in meta["metrics"]
    assert meta["data"]["files"]["HDFS_20000.log"] and meta["data"]["open_tail_lines"] > 0


def test_streaming_scan_splits_chronologically_and_marks_cut_blocks(data_dir):
    from logmesh.scorer.dataset import scan
    counts, train, test = scan(data_dir)
    assert counts.lines > 20000 and counts.blocks >= 1782
    assert set(train.origin) >= {"HDFS_20000.log", "sessions_normal.txt"}
    cut = [c for c, o in zip(test.closed, test.origin) if o == "HDFS_20000.log"]
    assert cut and not all(cut) and any(cut)  # blocks near the end of the cut log are open prefixes
    assert sum(counts.train.values()) > 3 * sum(counts.test.values())
