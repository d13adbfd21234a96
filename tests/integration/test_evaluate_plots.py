"""`logmesh evaluate --plot DIR` on real models and a real labelled log: the confusion matrix, the
precision-recall curve and the score histograms are valid PNG files, and two models that judge the log
differently draw different pictures."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

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


def test_the_cli_names_the_plots_and_refuses_them_for_bgl(two_models, data_dir, tmp_path):
    done = subprocess.run([LOGMESH, "evaluate", "--model-dir", str(two_models[0]), "--logs", str(data_dir / "HDFS_5k.log"),
                           "--labels", str(data_dir / "anomaly_label.csv"), "--plot", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"plots: .*confusion_matrix\.png", done.stdout) and (tmp_path / "p" / "precision_recall.png").exists()
    bgl = Path(data_dir).parent / "bgl" / "BGL_2k.log"
    done = subprocess.run([LOGMESH, "evaluate", "--model-dir", str(two_models[0]), "--logs", str(bgl),
                           "--plot", str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--plot draws HDFS evaluations" in done.stderr and "Traceback" not in done.stderr
