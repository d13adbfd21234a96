"""The anomaly history on its own (scorer/history.py over scorer/state.py's files): ids in read order, a final
story entered once, a message read twice entered once, and a reload that keeps entries, ids and positions."""
from __future__ import annotations

from logmesh.scorer.history import AnomalyHistory
from logmesh.scorer.state import StateDir
from logmesh.v1 import score_pb2

FINAL, ALERT = score_pb2.BLOCK_VERDICT_KIND_FINAL, score_pb2.BLOCK_VERDICT_KIND_ALERT


def _line(tag: str, offset: int, topic: str = "t.anomalies") -> score_pb2.Anomaly:
    return score_pb2.Anomaly(source=f"{topic}/0/{offset}", line=score_pb2.ScoreResult(
        record_id=tag, verdict=score_pb2.VERDICT_ANOMALY, score=0.9))


def _block(kind: int, events: list[str], offset: int) -> score_pb2.Anomaly:
    return score_pb2.Anomaly(source=f"t.anomalies/0/{offset}", block=score_pb2.BlockVerdict(
        block_id="blk_1", kind=kind, events=events, verdict=score_pb2.VERDICT_ANOMALY))


def _history(state: StateDir) -> AnomalyHistory:
    return AnomalyHistory(store=state.history, positions=state.positions)


def test_ids_in_read_order_a_final_story_once_and_nothing_read_twice(tmp_path):
    state = StateDir(tmp_path)
    history = _history(state)
    entered = history.add([_line("a", 0), _block(ALERT, ["E5"], 1), _block(FINAL, ["E5", "E7"], 2),
                           _block(FINAL, ["E5", "E7"], 4)], {"t.anomalies/0": 6})
    assert [e.id for e in entered] == [1, 2, 3]  # the repeated final story (offset 4) is not entered
    assert all(e.HasField("recorded_time") for e in entered)
    assert history.positions() == {"t.anomalies/0": 6}  # past the commit marker at 5
    assert history.add([_line("a", 0), _line("again", 4)]) == []  # offsets read before
    assert [e.id for e in history.add([_block(FINAL, ["E5", "E7", "E5"], 6)])] == [4]  # a new story
    state.close()


def test_a_reload_keeps_entries_ids_and_positions(tmp_path):
    state = StateDir(tmp_path)
    history = _history(state)
    history.add([_line("a", 0), _line("b", 1), _block(FINAL, ["E5"], 2)])
    history.add([], {"t.anomalies/0": 9})  # read on without entering (an aborted batch, markers)
    before, _ = history.page(100, None)
    state.close()

    state = StateDir(tmp_path)
    history = _history(state)
    after, _ = history.page(100, None)
    assert [e.SerializeToString() for e in after] == [e.SerializeToString() for e in before]
    assert history.positions() == {"t.anomalies/0": 9} and history.last_id == 3
    assert history.add([_block(FINAL, ["E5"], 9)]) == []  # the final story was entered before the restart
    assert [e.id for e in history.add([_line("c", 10)])] == [4]
    state.close()


def test_positions_follow_the_log_when_the_positions_file_lags(tmp_path):
    """A crash between appending entries and saving positions.json: the log's sources say how far it read."""
    state = StateDir(tmp_path)
    history = _history(state)
    history.add([_line("a", 0)])
    (tmp_path / "positions.json").write_text('{"t.anomalies/0": 0}')  # as if the save never happened
    state.close()
    state = StateDir(tmp_path)
    assert _history(state).positions() == {"t.anomalies/0": 1}
    state.close()


def test_watchers_wait_for_entries_after_an_id(tmp_path):
    history = AnomalyHistory()
    history.add([_line(t, n) for n, t in enumerate("abc")])
    entries, last = history.wait_after(1, timeout=0.1)
    assert [e.line.record_id for e in entries] == ["b", "c"] and last == 3
    assert history.wait_after(3, timeout=0.1) == ([], 3)
