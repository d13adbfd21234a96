"""The job's warm-up of its Python workers runs one real line through the task's own path (work.warm_work_path)
against the real embedder and scorer: the line is embedded and scored, one block is judged, and nothing else
is recorded; a service that is down makes the warm-up say why instead of failing the job. With the sink's
settings it also makes the worker's transactional producers, which the job's first batch then writes with."""
from __future__ import annotations

import time
import uuid

import pytest

from logmesh.client import ScorerClient
from logmesh.streaming import sink
from logmesh.streaming.work import WARM_UP_COLUMNS, WorkSettings, warm_up_task, warm_work_path


def test_warm_up_scores_one_line_and_one_block(embedder_server, scorer_server):
    settings = WorkSettings(embedder_server.address, scorer_server.address)
    with ScorerClient(scorer_server.address) as client:
        before = client.stats()
        frame = next(warm_up_task(settings)(iter([])))
        after = client.stats()
    assert list(frame.columns) == WARM_UP_COLUMNS and len(frame) == 1
    assert frame["error"][0] == "" and frame["work_s"][0] > 0
    assert frame["producers"][0] == 0  # no sink settings: no producers
    # the scorer is pure: its counters are all the throwaway line leaves
    assert after.lines_scored - before.lines_scored == 1
    assert after.blocks_scored - before.blocks_scored == 1


def test_warm_up_with_a_scorer_down_says_why(embedder_server):
    settings = WorkSettings(embedder_server.address, "127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    error = warm_work_path(settings)
    assert error and time.monotonic() - started < 30  # its own short retry budget, not the tasks' 300 s


@pytest.mark.kafka
def test_warm_up_with_the_sinks_settings_makes_the_workers_producers(embedder_server, scorer_server, admin,
                                                                     monkeypatch):
    """Each write partition's producer of this worker's slot, initialised and kept for its first write."""
    from logmesh.streaming.outputs import WRITER_SLOTS, task_transactional_id
    from logmesh.streaming.sink import WriterSettings
    from kafka_helpers import BOOTSTRAP
    monkeypatch.setattr(sink, "_slot", [3, None])  # this process plays the worker of slot 3
    job = f"wu{uuid.uuid4().hex[:8]}"
    writer = WriterSettings(BOOTSTRAP, f"{job}.scores", f"{job}.anomalies", f"{job}.dlq", f"{job}.ledger", job, {},
                            retry_budget_s=30.0, writer_slots=WRITER_SLOTS)
    try:
        frame = next(warm_up_task(WorkSettings(embedder_server.address, scorer_server.address), writer, 2)(iter([])))
        assert frame["error"][0] == "" and frame["producers"][0] == 2 and frame["producers_s"][0] > 0
        ids = [task_transactional_id(job, p, 3) for p in (0, 1)]
        assert sorted(sink._warm) == sorted(ids) and all(sink._producers[i].transactional_id == i for i in ids)
    finally:
        for producer in sink._producers.values():
            producer.close()
        sink._producers.clear()
        sink._warm.clear()


@pytest.mark.kafka
@pytest.mark.spark
def test_the_jobs_first_batch_writes_with_the_producers_its_warm_up_made(admin, embedder_server, scorer_server,
                                                                        data_dir, tmp_path):
    """The job fences every id (build_sink), then its workers' warm-up makes their producers: the first batch's
    write tasks reuse them (kind "warm") and make no new one (before: one "new" per write task)."""
    from kafka_helpers import BOOTSTRAP, _topics
    from logmesh.ingest.producer import run_ingest
    from logmesh.streaming.job import run
    config = _topics(admin, f"wu{uuid.uuid4().hex[:8]}")
    config.embedder, config.scorer = embedder_server.address, scorer_server.address
    config.qdrant_path, config.checkpoint = str(tmp_path / "qdrant"), str(tmp_path / "checkpoint")
    head = tmp_path / "head.log"
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as src:
        head.write_text("".join(next(src) for _ in range(600)))
    assert run_ingest(head, BOOTSTRAP, config.topic, progress=False).produced == 600
    reports = []
    run(config, on_report=reports.append)
    written = [r for r in reports if r.producers]
    assert sum(r.scored for r in reports) == 600 and written
    first = written[0]
    # every write task of the batch (one per shuffle partition with rows), none with an init_transactions
    assert first.partitions == 2 and first.producers == {"warm": 2}, [r.producers for r in written]
    assert not any("new" in r.producers for r in written), [r.producers for r in written]
