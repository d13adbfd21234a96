"""The scorer serves HDFS artifacts only (so far): a BGL artifact that lands in its model folder is refused
with a reason, and the HDFS model it serves keeps serving."""
from __future__ import annotations

from logmesh.runtime.grpc_server import Limits
from logmesh.scorer import artifacts
from logmesh.scorer.model_manager import ModelManager


def test_a_bgl_artifact_is_refused_with_a_reason(tmp_path):
    artifacts.save(tmp_path, "20261201T000000Z-0b91b00f", {"family": "bgl", "line": None, "block": None},
                   {"family": "bgl"})
    models = ModelManager(tmp_path, embed=lambda shapes, timeout: None, limits=Limits())
    assert models.refresh() is False and models.scorer is None
    assert "is a bgl model" in models.status and "folder of their own" in models.status
