"""The line labels and the line members' bound use the session model's rule (scorer/failure_text.py)."""
from __future__ import annotations

from logmesh.scorer.ensemble import evidence_labels, no_fault_templates


def test_a_never_in_normal_template_is_an_evidence_line_only_if_it_names_a_fault_or_is_unknown():
    normal = {"E5", "E22", "E21"}
    templates = ["E5", "E21", "E15", "E19", "E16", "E30", "E7", "E27", "unknown", "N3"]
    assert evidence_labels(templates, normal).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_the_members_are_bounded_on_no_fault_templates_unless_an_analyst_said_otherwise():
    ruled_out = no_fault_templates()
    assert {"E15", "E19", "E21", "E5", "E16", "E30"} <= ruled_out
    assert not {"E1", "E4", "E7", "E13", "E20", "E24", "E27", "E28", "E29", "unknown"} & ruled_out
    assert "E19" not in no_fault_templates({"E19"})
