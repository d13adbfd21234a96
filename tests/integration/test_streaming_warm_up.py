"""The job's warm-up of its Python workers runs one real line through the task's own path (work.warm_work_path)
against the real embedder and scorer: the line is embedded and scored, one block is judged, and nothing else
is recorded; a service that is down makes the warm-up say why instead of failing the job."""
from __future__ import annotations

import time

from logmesh.client import ScorerClient
from logmesh.streaming.work import WorkSettings, warm_up_task, warm_work_path


def test_warm_up_scores_one_line_and_one_block(embedder_server, scorer_server):
    settings = WorkSettings(embedder_server.address, scorer_server.address)
    with ScorerClient(scorer_server.address) as client:
        before = client.stats()
        frame = next(warm_up_task(settings)(iter([])))
        after = client.stats()
    assert list(frame.columns) == ["pid", "work_s", "error"] and len(frame) == 1
    assert frame["error"][0] == "" and frame["work_s"][0] > 0
    # the scorer is pure: its counters are all the throwaway line leaves
    assert after.lines_scored - before.lines_scored == 1
    assert after.blocks_scored - before.blocks_scored == 1


def test_warm_up_with_a_scorer_down_says_why(embedder_server):
    settings = WorkSettings(embedder_server.address, "127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    error = warm_work_path(settings)
    assert error and time.monotonic() - started < 30  # its own short retry budget, not the tasks' 300 s
