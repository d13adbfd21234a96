"""The demo's BGL report: verdicts against the replay's label column, the lines after the model's training cut
apart from all lines, and the nodes alerted with and without an alert line."""
from __future__ import annotations

import types

from demo.run import report_bgl_lines


def test_the_bgl_report_counts_held_out_lines_apart():
    # id -> (alert, category, node, event seconds); the cut is at 100
    labels = {"a": (True, "KERNDTLB", "n1", 50), "b": (False, "", "n1", 60), "c": (True, "APPSEV", "n2", 150),
              "d": (False, "", "n3", 160), "e": (True, "KERNSOCK", "n4", 170), "f": (False, "", "n5", 180)}
    tally = types.SimpleNamespace(labels=labels, scored_at=dict.fromkeys(labels, 0), flagged={"a", "c", "d"},
                                  alerts={"n1": None, "n2": None, "n3": None})
    out = report_bgl_lines(tally, cut=100)  # type: ignore[arg-type]
    assert (out["held_out_lines"], out["held_out_line_tp"], out["held_out_line_fp"], out["held_out_line_fn"]) == (4, 1, 1, 1)
    assert out["held_out_line_f1"] == 0.5 and out["held_out_line_fpr"] == 0.5
    assert (out["all_lines"], out["all_line_tp"], out["all_line_fp"], out["all_line_fn"]) == (6, 2, 1, 1)
    assert (out["nodes_with_alerts"], out["nodes_alerted_right"], out["nodes_alerted_wrong"]) == (3, 2, 1)


def test_lines_without_a_verdict_are_left_out():
    tally = types.SimpleNamespace(labels={"a": (True, "X", "n", 1)}, scored_at={}, flagged=set(), alerts={})
    assert report_bgl_lines(tally, cut=0) == {}  # type: ignore[arg-type]
