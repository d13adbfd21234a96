"""`logmesh train`: fit the line ensemble and the block model on a labelled HDFS folder; save an artifact.

One streaming pass reads every raw log (never a whole file in memory): lines are aggregated into
(masked shape, label) counts, blocks into event sessions (loghub ids, Drain3-mined "D<k>" ids for
lines no loghub template matches). Metrics come from a chronological split per source (first 80%
trains, last 20% tests; random splits leak the future, Le & Zhang ICSE 2022); the shipped models are
then refit on everything.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from logmesh.scorer import artifacts
from logmesh.scorer.block_model import THRESHOLD as BLOCK_THRESHOLD, BlockModel
from logmesh.scorer.dataset import OPEN_TAIL, fingerprint, log_files, scan
from logmesh.scorer.ensemble import LineEnsemble, combine
from logmesh.scorer.metrics import binary_metrics
from logmesh.scorer.templates_drain import DrainTemplates

log = logging.getLogger("logmesh.train")
Embed = Callable[[list[str]], np.ndarray]


def embed_shapes(shapes: list[str], embed: Embed) -> np.ndarray:
    """Embeds each distinct shape once (HDFS has ~30) and spreads the vectors over the lines."""
    distinct = list(dict.fromkeys(shapes))
    table = dict(zip(distinct, embed(distinct)))
    return np.stack([table[s] for s in shapes])


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rows(counts) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct (shape, label) rows and how many lines each stands for."""
    keys = sorted(counts)
    return [k[0] for k in keys], np.asarray([k[1] for k in keys]), np.asarray([counts[k] for k in keys])


def shape_weights(shapes: list[str], counts: np.ndarray) -> np.ndarray:
    """Training weight of each (shape, label) row: its share of its shape's lines. Every shape then
    weighs the same and the members learn P(block anomalous | shape), however rare the shape: a
    line seen twice, both times in failing blocks, is as anomalous as one seen a million times."""
    totals: dict[str, int] = {}
    for s, c in zip(shapes, counts):
        totals[s] = totals.get(s, 0) + int(c)
    return np.asarray([c / totals[s] for s, c in zip(shapes, counts)], np.float64)


def train(data_dir: Path, out_dir: Path, embed: Embed, seed: int = 0, test_share: float = 0.2,
          limit: int | None = None) -> Path:
    started = time.perf_counter()
    drain = DrainTemplates()
    progress = lambda name, n, total: log.info("reading", extra={"file": name, "line": n, "of": total})
    lines, train_blocks, test_blocks = scan(data_dir, drain, test_share, limit, progress=progress)
    drain.freeze()
    read_s = time.perf_counter() - started
    log.info("loaded lines", extra={"lines": lines.lines, "anomalous_lines": lines.anomalous_lines,
                                    "blocks": lines.blocks, "seconds": round(read_s, 1)})

    train_shapes, train_y, train_w = _rows(lines.train)
    test_shapes, test_y, test_w = _rows(lines.test)
    table = dict(zip(*(lambda d: (d, embed(d)))(list(dict.fromkeys(train_shapes + test_shapes)))))
    vec = lambda shapes: np.stack([table[s] for s in shapes]) if shapes else np.zeros((0, 384), np.float32)
    metrics: dict = {"split": {"kind": "chronological", "train_lines": int(train_w.sum()),
                               "test_lines": int(test_w.sum())}, "line": {}}
    if len(set(train_y.tolist())) == 2 and len(test_shapes):
        held_out = LineEnsemble(seed).fit(train_shapes, vec(train_shapes), train_y,
                                         shape_weights(train_shapes, train_w))
        probabilities = held_out.probabilities(test_shapes, vec(test_shapes))
        verdict, _, _ = combine(probabilities)
        metrics["line"]["ensemble"] = binary_metrics(test_y, verdict, test_w)
        for i, name in enumerate(held_out.names):
            metrics["line"][name] = binary_metrics(test_y, probabilities[:, i] >= 0.5, test_w)
        log.info("held-out line metrics", extra={"ensemble": metrics["line"]["ensemble"]})

    held_out_blocks = BlockModel(seed).fit(train_blocks.sessions, train_blocks.labels, train_blocks.closed)
    block_p = held_out_blocks.probabilities(test_blocks.sessions, test_blocks.closed)
    truth = np.asarray(test_blocks.labels)
    metrics["block"] = {**binary_metrics(truth, block_p >= BLOCK_THRESHOLD), "blocks": len(truth),
                        "anomalies": int(truth.sum())}
    origin = np.asarray(test_blocks.origin)
    metrics["block_by_source"] = {
        name: {**binary_metrics(truth[origin == name], block_p[origin == name] >= BLOCK_THRESHOLD),
               "blocks": int((origin == name).sum()), "anomalies": int(truth[origin == name].sum())}
        for name in dict.fromkeys(test_blocks.origin)}
    metrics["split"].update(train_blocks=len(train_blocks.sessions), test_blocks=len(truth),
                            open_at_cut_test_blocks=int((~np.asarray(test_blocks.closed, bool)).sum()))
    log.info("held-out block metrics", extra={"block": metrics["block"]})

    all_shapes, all_y, all_w = _rows(lines.train + lines.test)
    ensemble = LineEnsemble(seed).fit(all_shapes, vec(all_shapes), all_y, shape_weights(all_shapes, all_w))
    block_model = BlockModel(seed).fit(train_blocks.sessions + test_blocks.sessions,
                                       train_blocks.labels + test_blocks.labels,
                                       train_blocks.closed + test_blocks.closed)
    fp = fingerprint(data_dir)
    version = artifacts.new_version(fp)
    meta = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "members": ensemble.names,
        "embedding_model": "all-MiniLM-L6-v2",
        "data": {"dir": str(data_dir), "fingerprint": fp, "lines": lines.lines, "blocks": lines.blocks,
                 "files": {p.name: file_digest(p) for p in log_files(data_dir)},
                 "open_tail_lines": OPEN_TAIL, "limit": limit},
        "drain_templates": drain.templates,
        "metrics": metrics,
        "read_seconds": round(read_s, 2),
        "train_seconds": round(time.perf_counter() - started, 2),
        "line_verdict": "majority of members voting P(block anomalous | line shape) >= 0.5",
    }
    path = artifacts.save(out_dir, version, {"line": ensemble, "block": block_model, "drain": drain}, meta)
    log.info("saved artifact", extra={"path": str(path), "seconds": meta["train_seconds"]})
    return path
