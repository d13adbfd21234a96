"""`logmesh evaluate` on real HDFS_v1 slices: hand-checked metrics, the --json shape, a known failing block."""
from __future__ import annotations

import argparse
import json

import pytest

from logmesh.scorer import evaluate as ev

ANOMALOUS = "blk_-3102267849859399193"  # labelled Anomaly; writeBlock exceptions in HDFS_20000.log
NORMAL = "blk_-1608999687919862906"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, data_dir):
    """The HDFS_20000.log lines of three real blocks, with a labels file that (deliberately) calls one
    healthy block Anomaly, so the expected confusion matrix is known by hand."""
    from logmesh.ingest.hdfs import block_ids
    lines = [l for l in open(data_dir / "HDFS_20000.log", encoding="utf-8") if set(block_ids(l)) & {ANOMALOUS, NORMAL}]
    other = next(b for l in open(data_dir / "HDFS_20000.log", encoding="utf-8") for b in block_ids(l)
                 if b not in (ANOMALOUS, NORMAL))
    lines += [l for l in open(data_dir / "HDFS_20000.log", encoding="utf-8") if other in block_ids(l)]
    d = tmp_path_factory.mktemp("crafted")
    (d / "slice.log").write_text("".join(lines))
    (d / "labels.csv").write_text(f"BlockId,Label\n{ANOMALOUS},Anomaly\n{NORMAL},Normal\n{other},Anomaly\n")
    return d


def test_metrics_match_a_hand_computed_confusion_matrix(trained_models, crafted, encoder):
    r = ev.evaluate(trained_models, crafted / "slice.log", crafted / "labels.csv", sessions="complete",
                    embed=encoder.encode)
    b = r["block"]
    # truth: anomalous=1, normal=0, other=1 (mislabelled healthy block); the model flags only the real one
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 0, 1, 1)
    assert b["precision"] == 1.0 and b["recall"] == 0.5 and b["f1"] == pytest.approx(2 / 3) and b["fpr"] == 0.0
    assert b["blocks"] == 3 and b["anomalies"] == 2 and b["confusion"]["matrix"] == [[1, 0], [1, 1]]
    assert r["sessions"]["rule"] == "complete" and r["sessions"]["judged_open"] == 0
    assert set(r["baselines"]) == {"decision_tree", "logistic_regression"}
    assert r["verdict_kinds"] == {"evidence_event": 1} and r["line_points_at_evidence"] == {"flagged_evidence_line": 1}
    assert set(r["lines_lifted"]) == {"tfidf_sgd", "random_forest", "mlp", "decision_tree", "embedding_sgd", "ensemble"}
    assert r["lines_lifted"]["ensemble"]["tp"] == 1  # its writeBlock exception line is flagged
    assert r["overlaps_training_data"] is False


def test_json_output_shape_and_overlap_note(trained_models, data_dir, encoder, monkeypatch, capsys):
    monkeypatch.setattr(ev, "_encoder_embed", lambda: encoder.encode)
    args = ev.add_evaluate_args(argparse.ArgumentParser()).parse_args(
        ["--model-dir", str(trained_models), "--logs", str(data_dir / "HDFS_20000.log"),
         "--labels", str(data_dir / "anomaly_label.csv"), "--json"])
    assert ev.run_evaluate(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"precision", "recall", "f1", "fpr", "blocks", "anomalies"} <= set(out["block"])
    assert out["block"]["blocks"] == 1782 and out["block"]["anomalies"] == 43
    assert out["overlaps_training_data"] is True and "HDFS_20000.log" in out["overlap_files"] and out["warning"]
    # the first 20,000 lines span three minutes: a cut log, its unfinished writes judged as open prefixes
    assert out["sessions"]["rule"] == "cut" and out["sessions"]["judged_open"] > 1700
    assert 0 <= out["block"]["fpr"] < 0.01 and out["block"]["fpr_ci95"][1] < 0.01


def test_known_anomalous_block_is_flagged_and_table_prints(trained_models, crafted, encoder, monkeypatch, capsys):
    monkeypatch.setattr(ev, "_encoder_embed", lambda: encoder.encode)
    (crafted / "one.csv").write_text(f"BlockId,Label\n{ANOMALOUS},Anomaly\n")
    r = ev.evaluate(trained_models, crafted / "slice.log", crafted / "one.csv", sessions="complete")
    assert r["block"]["tp"] == 1 and r["block"]["blocks"] == 1
    args = ev.add_evaluate_args(argparse.ArgumentParser()).parse_args(
        ["--model-dir", str(trained_models), "--logs", str(crafted / "slice.log"), "--labels", str(crafted / "one.csv")])
    assert ev.run_evaluate(args) == 0
    table = capsys.readouterr().out
    assert "logmesh" in table and "baseline: decision_tree" in table and "lines: ensemble" in table
    assert "sessions: " in table and "f1@2.93%" in table


def test_missing_model_dir_is_an_error_with_what_to_do(tmp_path, crafted, capsys):
    args = ev.add_evaluate_args(argparse.ArgumentParser()).parse_args(
        ["--model-dir", str(tmp_path), "--logs", str(crafted / "slice.log"), "--labels", str(crafted / "labels.csv")])
    assert ev.run_evaluate(args) == 2 and "logmesh train" in capsys.readouterr().err
