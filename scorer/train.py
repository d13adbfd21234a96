"""`logmesh train`: fit the line ensemble and the block model on a labelled HDFS folder; save an artifact.

Metrics come from a chronological split (first 80% of lines train, last 20% test; random splits leak
the future, Le & Zhang ICSE 2022); the shipped model is then refit on all lines.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from logmesh.scorer import artifacts
from logmesh.scorer.block_model import THRESHOLD as BLOCK_THRESHOLD, BlockModel
from logmesh.scorer.dataset import fingerprint, load_blocks, load_lines
from logmesh.scorer.ensemble import LineEnsemble, combine
from logmesh.scorer.metrics import binary_metrics

log = logging.getLogger("logmesh.train")
Embed = Callable[[list[str]], np.ndarray]


def embed_shapes(shapes: list[str], embed: Embed) -> np.ndarray:
    """Embeds each distinct shape once (HDFS has ~30) and spreads the vectors over the lines."""
    distinct = list(dict.fromkeys(shapes))
    table = dict(zip(distinct, embed(distinct)))
    return np.stack([table[s] for s in shapes])


def train(data_dir: Path, out_dir: Path, embed: Embed, seed: int = 0, test_share: float = 0.2,
          limit: int | None = None) -> Path:
    started = time.perf_counter()
    lines = load_lines(data_dir, limit)
    labels = np.asarray(lines.labels)
    log.info("loaded lines", extra={"lines": len(lines), "anomalous_lines": int(labels.sum()),
                                    "blocks": len(set(lines.blocks))})
    vectors = embed_shapes(lines.shapes, embed)
    cut = int(len(lines) * (1 - test_share))
    held_out = LineEnsemble(seed).fit(lines.shapes[:cut], vectors[:cut], labels[:cut])
    probabilities = held_out.probabilities(lines.shapes[cut:], vectors[cut:])
    verdict, _, _ = combine(probabilities)
    metrics = {
        "split": {"kind": "chronological", "train_lines": cut, "test_lines": len(lines) - cut},
        "line": {"ensemble": binary_metrics(labels[cut:], verdict)},
    }
    for i, name in enumerate(held_out.names):
        metrics["line"][name] = binary_metrics(labels[cut:], probabilities[:, i] >= 0.5)
    log.info("held-out line metrics", extra={"ensemble": metrics["line"]["ensemble"]})

    train_blocks, test_blocks = load_blocks(data_dir)
    held_out_blocks = BlockModel(seed).fit(train_blocks.sessions, train_blocks.labels)
    block_p = held_out_blocks.probabilities(test_blocks.sessions, [True] * len(test_blocks.sessions))
    metrics["block"] = binary_metrics(np.asarray(test_blocks.labels), block_p >= BLOCK_THRESHOLD)
    metrics["block"]["blocks"] = len(test_blocks.sessions)
    metrics["split"]["train_blocks"] = len(train_blocks.sessions)
    log.info("held-out block metrics", extra={"block": metrics["block"]})

    ensemble = LineEnsemble(seed).fit(lines.shapes, vectors, labels)
    block_model = BlockModel(seed).fit(train_blocks.sessions + test_blocks.sessions,
                                       train_blocks.labels + test_blocks.labels)
    fp = fingerprint(data_dir)
    version = artifacts.new_version(fp)
    meta = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "members": ensemble.names,
        "embedding_model": "all-MiniLM-L6-v2",
        "data": {"dir": str(data_dir), "fingerprint": fp, "lines": len(lines),
                 "blocks": len(set(lines.blocks))},
        "metrics": metrics,
        "train_seconds": round(time.perf_counter() - started, 2),
        "line_verdict": "majority of members voting P(block anomalous | line shape) >= 0.5",
    }
    path = artifacts.save(out_dir, version, {"line": ensemble, "block": block_model}, meta)
    log.info("saved artifact", extra={"path": str(path), "seconds": meta["train_seconds"]})
    return path
