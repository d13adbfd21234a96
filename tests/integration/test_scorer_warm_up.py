"""A scorer scores one line and one block with a newly loaded artifact before it reports SERVING (scorer/warm_up.py):
its first calls' lazy work is not a client's, an artifact that cannot score is refused, and the warm-up leaves
nothing in the served scorer. Real scorer, real embedder (the session's model), a real trained artifact."""
from __future__ import annotations

import shutil
import threading

import grpc
import pytest

from logmesh.client import ScorerClient
from waiting import wait_for

LINE = ("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 "
        "src: /10.250.19.102:54106 dest: /10.250.19.102:50010")


def _artifact(models):  # type: ignore[no-untyped-def]
    [version] = [p for p in models.iterdir() if p.is_dir()]
    return version


def test_health_stays_not_serving_until_the_new_models_warm_up_is_done(trained_models, embedder_server, tmp_path,
                                                                       monkeypatch):
    from logmesh.scorer import model_manager
    from logmesh.scorer.service import serve
    entered, release = threading.Event(), threading.Event()
    real = model_manager.warm_up

    def held_warm_up(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)  # the test looks at health while the warm-up runs
        return real(*args, **kwargs)
    monkeypatch.setattr(model_manager, "warm_up", held_warm_up)

    models = tmp_path / "models"
    models.mkdir()
    server = serve(0, models, embedder_server.address, reload_interval=0.2)  # no artifact yet: NOT_SERVING
    try:
        with ScorerClient(server.address) as client:
            assert client.health() == "NOT_SERVING"
            version = _artifact(trained_models)
            shutil.copytree(version, models / version.name)  # the watcher loads it, and warms it up first
            wait_for(entered.is_set, 30, "the watcher to load the new artifact and start its warm-up")
            assert client.health() == "NOT_SERVING", "SERVING while the new model was still warming up"
            with pytest.raises(grpc.RpcError) as refused:
                client.score_line(LINE)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            client.wait_until_serving(30)
            assert client.stats().model_version == version.name
            assert client.score_line(LINE).model_version == version.name
    finally:
        release.set()
        server.stop(0)


def test_an_artifact_that_cannot_score_its_warm_up_line_is_refused_with_a_reason(trained_models, embedder_server,
                                                                                 monkeypatch):
    from logmesh.scorer.ensemble import LineEnsemble
    from logmesh.scorer.service import serve

    def broken(self, shapes, embeddings):  # type: ignore[no-untyped-def]
        raise ValueError("X has 12 features, but the model was fitted with 10")  # e.g. another scikit-learn
    monkeypatch.setattr(LineEnsemble, "probabilities", broken)
    server = serve(0, trained_models, embedder_server.address, reload_interval=60)
    try:
        with ScorerClient(server.address) as client:
            assert client.health() == "NOT_SERVING"
            status = client.stats().model_status
            assert "warm-up line" in status and "fitted with 10" in status, status
    finally:
        server.stop(0)


def test_the_warm_up_leaves_nothing_in_the_served_scorer(trained_models):
    from logmesh.runtime.grpc_server import Limits
    from logmesh.scorer.model_manager import ModelManager
    asked: list[list[str]] = []
    manager = ModelManager(trained_models, lambda shapes, timeout: asked.append(shapes), Limits())
    assert manager.refresh() and manager.status == ""
    scorer = manager.scorer
    assert len(scorer._memo) == 0 and len(scorer._anomalous) == 0, "the warm-up line is in the served memo"
    assert asked == [], "the warm-up asked the embedder (its line carries its vector)"
    assert scorer._new_templates.name("dfs.DataNode logmesh warm-up probe <*>").startswith("N1:"), \
        "the warm-up mined a template in the served scorer's live miner"
