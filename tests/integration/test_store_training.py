"""`logmesh train --from-store` on a real qdrant-edge store holding the real HDFS sessions as block points (the
payload streaming/blocks.py writes: events, closed, label only because a labelled log was replayed), at HDFS_v1's
anomaly prevalence: a model of normal behaviour learnt without labels, measured out of fold beside the supervised
model and the baselines; labels never reach the fit; the scorer does not take the artifact for one it serves.

The block vectors here are normalised event-count vectors, not MiniLM means: the model reads events only."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logmesh.scorer import artifacts
from logmesh.scorer.dataset import read_sessions
from logmesh.scorer.store_training import FAMILY, NormalBehaviour, read_blocks
from logmesh.streaming.vector_store import Point, open_store

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
PREVALENCE = 0.0293


def _points(data_dir: Path, labelled: bool) -> list[Point]:
    normal = read_sessions(data_dir / "sessions_normal.txt")
    failing = read_sessions(data_dir / "sessions_anomalous.txt")
    failing = random.Random(0).sample(failing, round(len(normal) * PREVALENCE / (1 - PREVALENCE)))
    vocab = {e: i for i, e in enumerate(sorted({e for s in normal + failing for e in s}))}
    points = []
    for name, sessions, label in (("n", normal, "normal"), ("a", failing, "anomaly")):
        for i, s in enumerate(sessions):
            v = np.zeros(384, np.float32)
            np.add.at(v, [vocab[e] for e in s], 1.0)
            payload = {"kind": "block", "block_id": f"blk_{name}{i}", "events": s, "closed": True, "verdict": "normal"}
            if labelled:
                payload["label"] = label
            points.append(Point(f"blk_{name}{i}", v / np.linalg.norm(v), payload))
    # an open block (still being written) and a line point: neither trains
    points.append(Point("blk_open", np.ones(384, np.float32), {"kind": "block", "events": ["E5", "E7"], "closed": False}))
    points.append(Point("logmesh.logs/0/1", np.ones(384, np.float32), {"kind": "line", "text": "x"}))
    return points


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for labelled in (True, False):
        path = root / ("labelled" if labelled else "unlabelled")
        with open_store(path=str(path)) as store:
            store.upsert(_points(data_dir, labelled))
        out[labelled] = path
    return out


def _train(store: Path, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([LOGMESH, "train", "--from-store", "--qdrant-path", str(store), "--out", str(out),
                           "--log-level", "warning"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    version = artifacts.newest(out)
    return done, json.loads((out / version / "meta.json").read_text())


def test_a_model_of_normal_behaviour_from_the_store_measured_beside_the_supervised_one(stores, tmp_path):
    done, meta = _train(stores[True], tmp_path / "m")
    assert meta["family"] == FAMILY and meta["data"]["ended_blocks"] == meta["data"]["blocks"] - 1  # the open one
    h = meta["held_out"]
    assert set(h["models"]) == {"from_store (no labels)", "logmesh", "decision_tree", "logistic_regression"}
    assert abs(h["anomaly_share"] - PREVALENCE) < 0.002 and h["distinct_sequences"] < h["blocks"] / 3
    unsupervised = h["models"]["from_store (no labels)"]
    # without a label it still catches most failures (exceptions, missing steps) at a low false-alarm rate
    assert unsupervised["recall"] > 0.9 and unsupervised["fpr"] < 0.01, unsupervised
    assert "from_store (no labels)" in done.stdout and "misses:" in done.stdout and "not served" in done.stdout
    n = meta["normal_behaviour"]
    assert "E7" not in n["normal_events"] and "E5" in n["normal_events"] and n["invariants"]


def test_labels_in_the_store_never_reach_the_fit(stores, tmp_path):
    _, labelled = _train(stores[True], tmp_path / "a")
    _, unlabelled = _train(stores[False], tmp_path / "b")
    assert labelled["normal_behaviour"] == unlabelled["normal_behaviour"]
    assert labelled["data"]["fingerprint"] == unlabelled["data"]["fingerprint"]
    assert "too few labels" in unlabelled["held_out"]["note"]


def test_scroll_reads_every_block_point_of_both_engines(stores, tmp_path, data_dir):
    with open_store(path=str(stores[False])) as store:
        blocks = read_blocks(store)
    with open_store(path=str(tmp_path / "local"), embedded="qdrant-local") as store:
        store.upsert(_points(data_dir, False)[:700] + [Point("l1", np.ones(384, np.float32), {"kind": "line"})])
        local = read_blocks(store)
    assert len(blocks.ids) == len(_points(data_dir, False)) - 1 and len(set(blocks.ids)) == len(blocks.ids)
    assert len(local.ids) == 700 and blocks.vectors.shape == (len(blocks.ids), 384)
    model = NormalBehaviour().fit(blocks.sessions, None, blocks.closed)
    [j] = model.judge([["E22", "E5", "E5", "E5", "E7"]], [True])
    assert j.anomalous and j.kind == "evidence_event" and "E7" in j.reasons[0]


def test_from_store_without_a_store_says_what_to_give(tmp_path):
    done = subprocess.run([LOGMESH, "train", "--from-store", "--qdrant-path", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no vector store at" in done.stderr and "Traceback" not in done.stderr
