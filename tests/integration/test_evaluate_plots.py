"""`logmesh evaluate --plot DIR` on real models and real labelled logs: the confusion matrix, the
precision-recall curve and the score histograms are valid PNG files, two models that judge the log
differently draw different pictures, and BGL evaluations draw one set for lines and one for windows."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bgl_helpers import bgl_data, train_bgl_models
from PIL import Image

from logmesh.scorer import bgl
from logmesh.scorer.evaluate import evaluate
from logmesh.scorer.plots import FILES
from logmesh.scorer.train import train

PNG = b"\x89PNG\r\n\x1a\n"
LOGMESH = str(Path(sys.executable).with_name("logmesh"))


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, data_dir, encoder):
    """One model of the shared data; one of the same data without HDFS_5k.log, the log both judge. The second
    has not seen HDFS_5k's normal block with four re-replications, 203 reads and a file delete, and flags it
    (re-replication with a delete: the pair normal sessions avoid; one of the grouped k-fold's two false
    positives, docs/evaluation.md)."""
    root = tmp_path_factory.mktemp("plots")
    site = root / "site"
    site.mkdir()
    for name in ("anomaly_label.csv", "sessions_anomalous.txt", "sessions_normal.txt", "HDFS_20000.log"):
        shutil.copy(data_dir / name, site / name)
    full = train(data_dir, root / "full", encoder.encode, validation="none")
    partial = train(site, root / "partial", encoder.encode, validation="none")
    return full.parent, partial.parent


def test_evaluate_plot_writes_valid_pngs_that_differ_between_models(two_models, data_dir, encoder, tmp_path):
    results = {}
    for name, models in zip(("full", "partial"), two_models):
        results[name] = evaluate(models, data_dir / "HDFS_5k.log", data_dir / "anomaly_label.csv", embed=encoder.encode,
                                 plot_dir=tmp_path / name)
        assert sorted(Path(p).name for p in results[name]["plots"]) == sorted(FILES)
        for f in FILES:
            data = (tmp_path / name / f).read_bytes()
            assert data.startswith(PNG), f
            with Image.open(tmp_path / name / f) as image:
                image.verify()  # a whole, readable PNG
            with Image.open(tmp_path / name / f) as image:
                assert image.size[0] >= 300 and image.size[1] >= 200
    # the models judge the log differently (the partial one flags the re-replicated block it never saw), and so do their pictures
    assert results["full"]["block"]["confusion"] != results["partial"]["block"]["confusion"]
    for f in FILES:
        assert (tmp_path / "full" / f).read_bytes() != (tmp_path / "partial" / f).read_bytes(), f


def _valid_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG), path
    with Image.open(path) as image:
        image.verify()  # a whole, readable PNG
    with Image.open(path) as image:
        assert image.size[0] >= 300 and image.size[1] >= 200, path


def test_the_cli_names_the_plots(two_models, data_dir, tmp_path):
    done = subprocess.run([LOGMESH, "evaluate", "--model-dir", str(two_models[0]), "--logs", str(data_dir / "HDFS_5k.log"),
                           "--labels", str(data_dir / "anomaly_label.csv"), "--plot", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"plots: .*confusion_matrix\.png", done.stdout) and (tmp_path / "p" / "precision_recall.png").exists()


@pytest.fixture(scope="module")
def bgl_models(tmp_path_factory, encoder) -> Path:
    return train_bgl_models(tmp_path_factory, encoder.encode)


def test_bgl_plots_lines_and_windows(bgl_models, encoder, tmp_path):
    """A real BGL artifact (BGL_2k + BGL_4k) on BGL_6k, a file it never saw: one set of pictures for lines and one
    for windows, drawn from the same verdicts the figures count."""
    result = bgl.evaluate_bgl(bgl_models, bgl_data("BGL_6k.log"), encoder.encode, plot_dir=tmp_path / "b")
    expected = sorted(f"{level}_{f}" for level in ("lines", "windows") for f in FILES)
    assert sorted(Path(p).name for p in result["plots"]) == expected
    for name in expected:
        _valid_png(tmp_path / "b" / name)
    assert "pictured" not in result and json.dumps(result)  # the arrays were drawn, not returned
    # lines and windows are judged apart (a window holds many lines), so their pictures differ
    assert result["line"]["lines"] > result["window"]["windows"] > 0
    for f in FILES:
        assert (tmp_path / "b" / f"lines_{f}").read_bytes() != (tmp_path / "b" / f"windows_{f}").read_bytes(), f


def test_bgl_pictures_count_what_the_figures_count(bgl_models, encoder):
    """The confusion matrices drawn are the evaluation's: logmesh's pictured verdicts give its tp/fp/fn/tn at both
    levels, and its line score (the members' vote share, 1 for a new-template flag) is above 0.5 exactly where a
    line is flagged."""
    from logmesh.scorer import artifacts
    model = artifacts.load(bgl_models, artifacts.newest(bgl_models))
    files = bgl.bgl_files(bgl_data("BGL_6k.log"))
    samples = bgl.read_samples(files, model.models["templates"], bgl.ReadStats())
    part = bgl.make_part(samples, lambda t: np.ones(len(t), bool), model.models["drain"], model.meta["window"])
    vectors = bgl.embed_shapes(encoder.encode, part.shapes)
    judged = bgl.judge(model.models, part, vectors, model.meta["window"], verdicts=True, pictures=True)
    for level, figures in (("lines", judged["line"]), ("windows", judged["window"])):
        truth, models = judged["pictured"][level]
        p = np.asarray(models["logmesh"]["predicted"], bool)
        assert (int((truth & p).sum()), int((~truth & p).sum()), int((truth & ~p).sum()), int((~truth & ~p).sum())) == (
            figures["tp"], figures["fp"], figures["fn"], figures["tn"]), level
        assert ((np.asarray(models["logmesh"]["scores"]) > 0.5) == p).all(), level
        assert set(models) >= {"logmesh", "decision_tree", "logistic_regression"}, level
    assert judged["pictured"]["lines"][1]["logmesh"]["predicted"].tolist() == judged["verdicts"]


def test_the_cli_plots_bgl(bgl_models, tmp_path):
    done = subprocess.run([LOGMESH, "evaluate", "--model-dir", str(bgl_models), "--logs", str(bgl_data("BGL_2k.log")),
                           "--all-lines", "--plot", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"plots: .*lines_confusion_matrix\.png.*windows_score_histogram\.png", done.stdout), done.stdout
    _valid_png(tmp_path / "b" / "windows_precision_recall.png")
