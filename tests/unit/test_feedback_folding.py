"""Which analyst labels train and what they do to the training data (scorer/feedback_training.py), and the
--feedback-file format (scorer/feedback_source.py). No broker, no model: the real topic and the real
retrain are in tests/integration/test_feedback_training.py."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.scorer import feedback_source, feedback_training as fbt
from logmesh.scorer import validation as val
from logmesh.scorer.analyst.feedback_scope import sequence_key as service_key
from logmesh.v1 import feedback_pb2 as fpb

WRITE = "E22 E5 E5 E5 E11 E9 E11 E9 E11 E9 E26 E26 E26".split()
REREP = WRITE + "E25 E18 E5 E16 E6 E26 E26 E21".split()
FAIL = ["E22", "E5", "E5", "E7"]


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt.datetime.fromtimestamp(seconds, dt.timezone.utc))
    return t


def fb(i: int, **kw) -> fpb.Feedback:
    kw.setdefault("label", fpb.FEEDBACK_LABEL_FALSE_ALARM)
    kw.setdefault("scope", fpb.FEEDBACK_SCOPE_ITEM)
    kw.setdefault("action", fpb.FEEDBACK_ACTION_LEARN)
    kw.setdefault("created_time", ts(1_700_000_000 + i))
    return fpb.Feedback(feedback_id=f"fb-{i}", **kw)


def blocks() -> val.Blocks:
    sessions = [WRITE, REREP, FAIL, REREP, WRITE]
    return val.Blocks(sessions, np.asarray([0, 1, 1, 1, 0]), np.ones(5, bool), np.asarray(["complete"] * 5),
                      np.asarray(["HDFS.log"] * 5), np.arange(5), np.asarray(["blk_1", "blk_2", "blk_3", "", ""], object))


def test_only_learnable_unexpired_labels_train_and_the_rest_is_counted_with_its_reason():
    now = dt.datetime.fromtimestamp(1_800_000_000, dt.timezone.utc)
    given = [fb(1, session_key="blk_1"),
             fb(2, session_key="blk_1", action=fpb.FEEDBACK_ACTION_SUPPRESS),
             fb(3, session_key="blk_1", expire_time=ts(1_700_000_100)),  # before `now`
             fb(4, session_key="blk_1", scope=fpb.FEEDBACK_SCOPE_NODE, scope_value="10.0.0.1"),
             fb(5, record_id="logmesh.logs/0/7"),
             fb(6, session_key="blk_1", scope=fpb.FEEDBACK_SCOPE_SEQUENCE, scope_value="not a key!"),
             fb(7, session_key="blk_1", label=fpb.FEEDBACK_LABEL_UNSPECIFIED),
             fb(8, session_key="blk_1", expire_time=ts(1_900_000_000), action=fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN)]
    s = fbt.select(given, now=now)
    assert [l.feedback_id for l in s.labels] == ["fb-1", "fb-8"]
    assert {k: v for k, v in s.ignored.items()} == {
        "action is suppress only": ["fb-2"], "expired": ["fb-3"],
        "node scope (suppression only: HDFS sessions carry no node to train on)": ["fb-4"],
        "a record_id label at item scope (training needs a block, or template or sequence scope)": ["fb-5"],
        "sequence scope without a sequence key in scope_value": ["fb-6"], "no label": ["fb-7"]}
    assert s.describe()["read"] == 8 and s.describe()["training"] == 2


def test_a_false_alarm_on_a_sequence_relabels_every_session_with_it_and_adds_weighted_copies():
    b = blocks()
    s = fbt.select([fb(1, session_key="blk_2", scope=fpb.FEEDBACK_SCOPE_SEQUENCE, scope_value=service_key(REREP))])
    a = fbt.apply(b, s, weight=3)
    assert a.blocks.labels[:5].tolist() == [0, 0, 1, 0, 0]  # both REREP rows, not FAIL
    assert a.blocks.sessions[5:] == [REREP] * 3 and a.blocks.labels[5:].tolist() == [0, 0, 0]
    assert a.report["training_rows_relabelled"] == 2 and a.report["rows_added"] == 3
    assert a.sessions == [("fb-1", tuple(REREP), True, False)]
    assert b.labels.tolist() == [0, 1, 1, 1, 0]  # the input is not changed
    assert list(val.sequence_groups(a.blocks)[5:]) == [val.sequence_groups(a.blocks)[1]] * 3  # grouped with its twins


def test_an_item_label_relabels_that_block_only_and_the_newest_label_wins():
    s = fbt.select([fb(2, session_key="blk_2", label=fpb.FEEDBACK_LABEL_NORMAL),
                    fb(1, session_key="blk_1", label=fpb.FEEDBACK_LABEL_TRUE_ALARM),
                    fb(3, session_key="blk_2", label=fpb.FEEDBACK_LABEL_TRUE_ALARM)])  # newer than fb-2
    a = fbt.apply(blocks(), s, weight=1)
    assert a.blocks.labels[:5].tolist() == [1, 1, 1, 1, 0]
    assert sorted(a.sessions) == [("fb-1", tuple(WRITE), True, True), ("fb-3", tuple(REREP), True, True)]


def test_template_labels_go_to_the_lines_and_unknown_blocks_are_reported_not_dropped():
    s = fbt.select([fb(1, record_id="r1", scope=fpb.FEEDBACK_SCOPE_TEMPLATE, scope_value="E16"),
                    fb(2, session_key="blk_404"),
                    fb(3, session_key="blk_9", scope=fpb.FEEDBACK_SCOPE_SEQUENCE, scope_value=service_key(["E1"]))])
    a = fbt.apply(blocks(), s)
    assert a.templates == {"E16": False} and len(a.blocks) == 5
    assert a.report["unresolved"] == ["fb-2", "fb-3"] and "vector store" in a.report["unresolved_note"]


def test_a_hand_written_sequence_gives_its_events():
    assert fbt.parse_sequence_key("22 5 5 unknown") == ("E22", "E5", "E5", "unknown")
    s = fbt.select([fb(1, session_key="x", scope=fpb.FEEDBACK_SCOPE_SEQUENCE, scope_value="E1 E2")])
    assert s.labels[0].key == service_key(["E1", "E2"]) and s.labels[0].events == ("E1", "E2")
    a = fbt.apply(blocks(), s, weight=2)
    assert a.blocks.sessions[5:] == [["E1", "E2"]] * 2


def test_the_feedback_file_round_trips_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "fb.jsonl"
    feedback_source.write_file(path, [fb(1, session_key="blk_1"), fb(2, session_key="blk_2")])
    read = feedback_source.read_file(path)
    assert [f.feedback_id for f in read.feedback] == ["fb-1", "fb-2"] and read.feedback[0].session_key == "blk_1"
    path.write_text(path.read_text() + '\n# a comment\n{"label": "NOT_A_LABEL"}\n')
    with pytest.raises(feedback_source.FeedbackSourceError, match=r"line 5: not a logmesh.v1.Feedback"):
        feedback_source.read_file(path)
    with pytest.raises(feedback_source.FeedbackSourceError, match="cannot read --feedback-file"):
        feedback_source.read_file(tmp_path / "missing.jsonl")
