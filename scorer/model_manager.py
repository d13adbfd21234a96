"""Keeps the newest good artifact of a model dir loaded, and swaps to newer ones without a restart.

The artifact's family (meta "family": hdfs or bgl) picks the line and session scorers. A scorer keeps the family
it first loaded: a newer artifact of another family is refused (its clients send lines of the served one)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from logmesh.scorer import artifacts
from logmesh.scorer.block_scorer import BlockScorer
from logmesh.scorer.engine import EmbedShapes, LineScorer, cache_budgets
from logmesh.scorer.warm_up import warm_up
from logmesh.runtime.grpc_server import Limits

log = logging.getLogger("logmesh.scorer.models")


def _bgl():  # type: ignore[no-untyped-def]
    from logmesh.scorer.bgl_serving import BglLineScorer, BglSessionScorer
    return BglLineScorer, BglSessionScorer


#: family -> (line scorer class, session scorer class), as the artifact's meta names its family
SCORERS = {"hdfs": lambda: (LineScorer, BlockScorer), "bgl": _bgl}


class ModelManager:
    """`scorer` is None until an artifact loads; `status` says why when it is."""

    def __init__(self, model_dir: Path, embed: EmbedShapes, limits: Limits,
                 on_change: Callable[[bool], None] = lambda serving: None, cache_bytes: int | None = None) -> None:
        self.model_dir = model_dir
        self._caches = cache_budgets(cache_bytes)  # each loaded LineScorer's shape caches
        self._embed = embed
        self._limits = limits
        self._on_change = on_change
        self.scorer: LineScorer | None = None
        self.block_scorer: BlockScorer | None = None
        self.loaded_at: float | None = None  # wall-clock seconds
        self.status = "not loaded yet"
        self.loads = 0  # artifacts loaded: the first, then each hot swap (/metrics)
        self._failed: set[str] = set()  # versions that failed to load; not retried
        self._stop = threading.Event()

    def refresh(self) -> bool:
        """Loads the newest version if it is new; returns True when the loaded model changed."""
        version = artifacts.newest(self.model_dir)
        current = self.scorer.artifact.version if self.scorer else None
        if version is None:
            if current is None:
                self.status = (f"no model artifact in {self.model_dir}; make one with "
                               f"`logmesh train --data DIR --out {self.model_dir}`")
            return False
        if version == current or version in self._failed:
            return False
        try:
            artifact = artifacts.load(self.model_dir, version)
            family = artifact.meta.get("family", "hdfs")
            serving = self.scorer.family if self.scorer else None
            if serving and family != serving:  # the clients send lines of the family being served
                raise artifacts.ArtifactError(
                    f"artifact {self.model_dir / version} is a {family} model, and this scorer serves {serving} "
                    f"lines: keep other families' artifacts in a folder of their own (logmesh train --out DIR) "
                    f"and serve them with a scorer of their own")
            if family not in SCORERS:
                raise artifacts.ArtifactError(f"artifact {self.model_dir / version} is a {family} model; the "
                                              f"scorer serves {', '.join(SCORERS)} models")
            if family == "hdfs" and artifact.models.get("block") is None:
                raise artifacts.ArtifactError(f"artifact {self.model_dir / version} has no block model; retrain "
                                              f"it with `logmesh train --out {self.model_dir}`")
            line_scorer, session_scorer = SCORERS[family]()
            block_scorer = session_scorer(artifact)
            # its first line and block scored now, while the old model (or NOT_SERVING) still answers: the first
            # calls' lazy work is not a client's, and an artifact that cannot score is refused (scorer/warm_up.py)
            warm_s = warm_up(line_scorer, artifact, block_scorer, self._limits)
        except artifacts.ArtifactError as exc:
            self._failed.add(version)
            kept = f"; still serving {current}" if current else ""
            self.status = f"{exc}{kept}"
            log.error("artifact failed to load", extra={"version": version, "reason": str(exc), "kept": current})
            return False
        self.scorer = line_scorer(artifact, self._embed, self._limits, **self._caches)
        self.block_scorer = block_scorer
        self.loaded_at = time.time()
        self.loads += 1
        self.status = ""
        log.info("model loaded", extra={"version": version, "previous": current, "members": self.scorer.members,
                                        "warm_up_s": round(warm_s, 3)})
        self._on_change(True)
        return True

    def watch(self, interval: float) -> None:
        """Polls the model dir every `interval` seconds in a daemon thread."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # a bad poll must not kill hot reload
                    log.exception("model refresh failed")
        threading.Thread(target=loop, name="model-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
