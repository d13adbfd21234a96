"""Scores one line and one block with a just-loaded artifact before the scorer may report SERVING.

A fresh scorer's first ScoreStream paid for lazy work the streaming job's first micro-batch then waited on
(docs/benchmarks.md, cold start): scikit-learn's first predict of each member (its validation, the forest's
joblib machinery), the masks' and template matchers' first use, the session model's first judgement. Doing it
here, while health still says NOT_SERVING, moves that out of the first batch, and an artifact that cannot score a
line is refused like one that does not load.

Pure: the line goes through a scorer instance of its own (same artifact, same classes), so the served scorer's
shape memo and its live template miner never see it, and the block scorer keeps nothing."""
from __future__ import annotations

import time

import numpy as np

from logmesh import vectors
from logmesh.runtime.grpc_server import Limits
from logmesh.scorer.artifacts import Artifact, ArtifactError
from logmesh.scorer.engine import EMBEDDING_DIM
from logmesh.v1 import scorer_service_pb2 as spb

#: a real line of each family (the first line of loghub's HDFS and BGL logs)
LINES = {
    "hdfs": ("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 "
             "src: /10.250.19.102:54106 dest: /10.250.19.102:50010"),
    "bgl": ("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL "
            "INFO instruction cache parity error corrected"),
}
WARM_UP_ID = "logmesh-scorer-warm-up"


def _no_embedder(shapes: list[str], timeout: float | None) -> np.ndarray:
    raise AssertionError("the warm-up line carries its vector; the embedder is not asked")


def warm_up(line_scorer_class: type, artifact: Artifact, block_scorer, limits: Limits) -> float:  # type: ignore[no-untyped-def]
    """Seconds the warm-up took. Raises ArtifactError when the artifact cannot score its family's line or a block."""
    started = time.perf_counter()
    family = getattr(line_scorer_class, "family", "hdfs")
    line = LINES.get(family)
    if line is None:
        return 0.0
    try:
        _score_one(line_scorer_class, artifact, block_scorer, limits, family)
    except ArtifactError:
        raise
    except Exception as exc:  # a member that cannot predict (e.g. pickled by another scikit-learn): a bad artifact
        raise ArtifactError(f"artifact {artifact.version} failed scoring its warm-up line at start-up "
                            f"({type(exc).__name__}: {exc}); retrain it with this version of logmesh") from exc
    return time.perf_counter() - started


def _score_one(line_scorer_class: type, artifact: Artifact, block_scorer, limits: Limits,  # type: ignore[no-untyped-def]
               family: str) -> None:
    line = LINES[family]
    scratch = line_scorer_class(artifact, _no_embedder, limits, memo_bytes=1 << 16, anomalous_bytes=1 << 16)
    vector = np.full(EMBEDDING_DIM, 1.0 / np.sqrt(EMBEDDING_DIM), dtype=np.float32)
    item = spb.ScoreItem(raw_line=line, embedding=vectors.to_message(WARM_UP_ID, "warm-up", vector))
    [result] = scratch.score([item])
    if result.HasField("error"):
        raise ArtifactError(f"artifact {artifact.version} could not score a {family} line at start-up: "
                            f"{result.error.message}")
    event = result.result.template_id or "unknown"
    blocks = [spb.BlockSession(block_id=WARM_UP_ID, events=[event], closed=closed, quiet_seconds=0.0,
                               anomalous_record_ids=[])
              for closed in (False, True)]
    for judged in block_scorer.score(blocks):
        if judged.HasField("error"):
            raise ArtifactError(f"artifact {artifact.version} could not judge a {family} session at start-up: "
                                f"{judged.error.message}")
