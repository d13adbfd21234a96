"""BGL train and evaluate on a small real slice (BGL_2k + BGL_4k) with the real embedding model: the split is
chronological, metrics match a hand-made confusion matrix, --json has the documented shape, and scrambling the
label column changes no verdict (a detector never reads it)."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from logmesh.scorer import bgl

pytestmark = pytest.mark.model
REPO = Path(__file__).resolve().parents[2]
BGL = Path(os.environ.get("LOGMESH_BGL_DATA", REPO.parent / "shared" / "data" / "bgl"))
TLB = "RAS KERNEL FATAL data TLB error interrupt"
PARITY = "RAS KERNEL INFO instruction cache parity error corrected"


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory) -> Path:
    if not (BGL / "BGL_4k.log").exists():
        pytest.fail(f"real BGL data not found at {BGL}; set LOGMESH_BGL_DATA to a folder with loghub's BGL samples")
    d = tmp_path_factory.mktemp("bgl")
    for name in ("BGL_2k.log", "BGL_4k.log", "BGL_templates.csv"):
        (d / name).symlink_to(BGL / name)  # read in place
    return d


@pytest.fixture(scope="module")
def model_dir(slice_dir, tmp_path_factory, encoder) -> Path:
    out = tmp_path_factory.mktemp("models")
    bgl.train_bgl(slice_dir, out, encoder.encode, seed=0, window=100)
    return out


def _meta(model_dir: Path) -> dict:
    return json.loads(next(model_dir.glob("*/meta.json")).read_text())


def test_the_split_is_chronological_and_loses_no_line(model_dir, slice_dir):
    m = _meta(model_dir)
    s = m["split"]
    assert s["train_lines"] + s["test_lines"] == m["data"]["lines"] == 6000
    assert s["train_alerts"] + s["test_alerts"] == m["data"]["alert_lines"] == 143 + 294
    samples = bgl.read_samples(bgl.bgl_files(slice_dir), None)
    times = [t for x in samples for t in x.times]
    assert sum(t <= s["train_until"] for t in times) == s["train_lines"]  # every training line precedes every judged one
    assert m["family"] == "bgl" and set(m["held_out"]) >= {"line", "window", "baselines"}


def _crafted(slice_dir: Path, tmp_path: Path) -> Path:
    """Real TLB alert and parity lines, times rewritten to increase; the second parity line deliberately labelled
    APPSEV, so the expected confusion is known by hand."""
    lines = (slice_dir / "BGL_4k.log").read_text().splitlines()
    tlb = [l for l in lines if l.endswith(TLB) and l.startswith("KERNDTLB")][:3]
    par = [l for l in lines if l.endswith(PARITY) and l.startswith("- ")][:5]
    order = [par[0], "APPSEV " + par[1].partition(" ")[2], tlb[0], tlb[1], par[2], tlb[2], par[3], par[4]]
    out = []
    for i, l in enumerate(order):
        f = l.split(" ")
        f[1] = str(1_130_000_000 + i)
        out.append(" ".join(f))
    path = tmp_path / "crafted.log"
    path.write_text("\n".join(out) + "\n")
    return path


def test_metrics_match_a_hand_computed_confusion(model_dir, slice_dir, tmp_path, encoder):
    r = bgl.evaluate_bgl(model_dir, _crafted(slice_dir, tmp_path), encoder.encode, window=2, verdicts=True)
    assert r["verdicts"] == [False, False, True, True, False, True, False, False]
    line = r["line"]
    assert (line["tp"], line["fp"], line["fn"], line["tn"]) == (3, 0, 1, 4)
    assert line["precision"] == 1.0 and line["recall"] == 0.75 and line["f1"] == pytest.approx(6 / 7)
    w = r["window"]  # windows [N, mislabelled], [A, A], [N, A], [N, N]
    assert (w["tp"], w["fp"], w["fn"], w["tn"], w["windows"], w["size"]) == (2, 0, 1, 1, 4, 2)
    assert r["split"] == "files the model never saw"


def test_scrambling_the_label_column_changes_no_verdict(model_dir, slice_dir, tmp_path, encoder):
    lines = (slice_dir / "BGL_2k.log").read_text().splitlines()
    tags = [l.partition(" ")[0] for l in lines]
    random.Random(1).shuffle(tags)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "b" / "x.log").write_text("\n".join(t + " " + l.partition(" ")[2] for t, l in zip(tags, lines)) + "\n")
    a = bgl.evaluate_bgl(model_dir, tmp_path / "a", encoder.encode, verdicts=True)
    b = bgl.evaluate_bgl(model_dir, tmp_path / "b", encoder.encode, verdicts=True)
    assert a["verdicts"] == b["verdicts"] and sum(a["verdicts"]) > 0
    assert a["line"]["tp"] != b["line"]["tp"]  # the truth did change


def test_evaluate_json_shape_and_held_out_default(model_dir, slice_dir, capsys, monkeypatch, encoder):
    import argparse
    from logmesh.scorer import evaluate as ev
    monkeypatch.setattr(bgl, "_default_embed", lambda: encoder.encode)
    p = ev.add_evaluate_args(argparse.ArgumentParser())
    args = p.parse_args(["--model-dir", str(model_dir), "--logs", str(slice_dir), "--format", "bgl", "--json"])
    assert ev.run_evaluate(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["line"]) >= {"precision", "recall", "f1", "fpr", "lines", "anomalies"}
    assert set(r["window"]) >= {"precision", "recall", "f1", "fpr", "windows", "anomalies", "size"}
    assert r["window"]["size"] == 100 and set(r["baselines"]) == {"decision_tree", "logistic_regression"}
    assert r["line"]["lines"] == _meta(model_dir)["split"]["test_lines"]  # the training lines were skipped
    assert r["line"] == _meta(model_dir)["held_out"]["line"]
    assert all({"line_recall", "window_recall_logmesh", "window_recall_decision_tree"} <= set(v)
               for v in r["leave_one_category_out"].values())
