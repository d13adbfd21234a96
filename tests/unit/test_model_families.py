"""The scorer serves the family its model folder holds: an artifact's meta names it and picks the line and
session scorers. Once serving one family it refuses a newer artifact of another (its clients send lines of the
served one) with a reason, and keeps serving; an unknown family is refused naming the known ones."""
from __future__ import annotations

import numpy as np

from logmesh.runtime.grpc_server import Limits
from logmesh.scorer import artifacts
from logmesh.scorer.model_manager import ModelManager


class _Ensemble:  # what LineScorer reads of a line ensemble when it loads, and its warm-up line's scoring
    names = ["m"]

    def probabilities(self, shapes, embeddings):  # type: ignore[no-untyped-def]
        return np.zeros((len(shapes), 1), np.float32)


def _manager(path) -> ModelManager:  # type: ignore[no-untyped-def]
    return ModelManager(path, embed=lambda shapes, timeout: None, limits=Limits())


def test_a_bgl_artifact_is_served_by_bgl_scorers(tmp_path):
    from logmesh.scorer.bgl_serving import BglLineScorer, BglSessionScorer
    artifacts.save(tmp_path, "20261201T000000Z-0b91b00f", {"family": "bgl", "line": _Ensemble(), "block": None},
                   {"family": "bgl"})
    models = _manager(tmp_path)
    assert models.refresh() is True and models.status == ""
    assert isinstance(models.scorer, BglLineScorer) and isinstance(models.block_scorer, BglSessionScorer)


def test_another_family_is_refused_while_one_is_served(tmp_path):
    artifacts.save(tmp_path, "20261201T000000Z-0b91b00f", {"family": "bgl", "line": _Ensemble(), "block": None},
                   {"family": "bgl"})
    models = _manager(tmp_path)
    assert models.refresh() is True
    artifacts.save(tmp_path, "20261201T000001Z-0b91b00f", {"line": _Ensemble(), "block": object()}, {})
    assert models.refresh() is False and models.scorer.artifact.version == "20261201T000000Z-0b91b00f"
    assert "is a hdfs model" in models.status and "serves bgl lines" in models.status
    assert "still serving 20261201T000000Z-0b91b00f" in models.status


def test_an_unknown_family_is_refused_naming_the_known_ones(tmp_path):
    artifacts.save(tmp_path, "20261201T000000Z-0b91b00f", {"line": None, "block": None}, {"family": "spirit"})
    models = _manager(tmp_path)
    assert models.refresh() is False and models.scorer is None
    assert "spirit model" in models.status and "hdfs, bgl" in models.status
