"""The new-template judge (scorer/bgl_novelty.py): one row per template, a text model that can veto a never-seen
template's flag, and (C, tau) chosen on a validation slice."""
from __future__ import annotations

import pickle

import numpy as np

from logmesh.scorer.bgl import NovelTemplates
from logmesh.scorer.bgl_novelty import TemplateJudge, judge_text, line_f1, select, template_rows

# training templates at FATAL: status dumps normal, failures alerts (shapes as the family masks them)
NORMAL = ["KERNEL FATAL: floating pt ex mode <NUM> enable......<NUM>", "KERNEL FATAL: debug wait enable..........<NUM>",
          "KERNEL FATAL: machine state register: <HEX>", "KERNEL FATAL: core configuration register: <HEX>",
          "KERNEL FATAL: data address space................<NUM>", "KERNEL FATAL: wait state enable.........<NUM>"]
ALERT = ["KERNEL FATAL: rts panic! - stopping execution", "KERNEL FATAL: Lustre mount FAILED : bglio<NUM> : point",
         "KERNEL FATAL: Error: unable to mount filesystem", "KERNEL FATAL: data TLB error interrupt",
         "KERNEL FATAL: rts: kernel terminated for reason <NUM>", "KERNEL FATAL: link failure on torus network"]


def fitted(tau: float = 0.5) -> TemplateJudge:
    return TemplateJudge(10.0, tau).fit(NORMAL + ALERT, np.asarray([0] * len(NORMAL) + [1] * len(ALERT)))


def test_template_rows_are_one_per_template_at_alerting_levels_labelled_by_most_lines():
    shapes = ["A FATAL: x /home/u/a.out", "A FATAL: x /home/v/b.out", "A FATAL: x /p/w", "B INFO: y", "C FATAL: z"]
    events = ["E1", "E1", "E1", "E2", "unknown"]
    levels = ["FATAL", "FATAL", "FATAL", "INFO", "FATAL"]
    text, labels = template_rows(shapes, events, levels, np.asarray([1, 1, 0, 1, 1]), {"FATAL"})
    assert text == ["A FATAL: x <PATH>"]  # INFO is not an alerting level; "unknown" is not a template
    assert labels.tolist() == [1]         # two of its three lines are alerts
    _, labels = template_rows(shapes, events, levels, np.asarray([1, 0, 0, 0, 0]), {"FATAL"})
    assert labels.tolist() == [0]


def test_paths_do_not_make_a_new_kind_of_line():
    assert judge_text("APP FATAL: ciod: Error loading /home/a/x.rts: bad") == judge_text(
        "APP FATAL: ciod: Error loading /bgl/apps/y: bad")


def test_the_judge_vetoes_a_new_status_dump_and_keeps_a_new_failure():
    judge = fitted()
    dump, failure = "KERNEL FATAL: minus zero enable...............<NUM>", "KERNEL FATAL: rts panic! - mount FAILED on network"
    p = judge.probability([dump, failure])
    assert p[0] < 0.5 < p[1]
    novel = NovelTemplates({"E1", "E2"}, {"FATAL"}, judge)
    flags = novel.flags(["E9", "E8", "E1", "E7"], ["FATAL", "FATAL", "FATAL", "INFO"], [dump, failure, failure, failure])
    assert flags.tolist() == [False, True, False, False]  # seen template and a non-alerting level stay unflagged


def test_without_shapes_or_without_a_judge_every_new_template_at_an_alerting_level_is_flagged():
    dump = "KERNEL FATAL: minus zero enable...............<NUM>"
    assert NovelTemplates({"E1"}, {"FATAL"}, fitted()).flags(["E9"], ["FATAL"]).tolist() == [True]
    old = NovelTemplates.__new__(NovelTemplates)  # an artifact pickled before the judge existed
    old.__dict__.update(seen={"E1"}, alerting_levels={"FATAL"})
    assert old.flags(["E9"], ["FATAL"], [dump]).tolist() == [True]


def test_a_judge_fitted_on_one_class_flags_everything_and_survives_pickling():
    judge = TemplateJudge(1.0, 0.5).fit(NORMAL, np.zeros(len(NORMAL), int))
    assert judge.passes(["KERNEL FATAL: anything"]).tolist() == [True]
    again = pickle.loads(pickle.dumps(fitted(0.3)))
    assert again.tau == 0.3 and again.probability([ALERT[0]])[0] == fitted().probability([ALERT[0]])[0]


def test_select_picks_the_threshold_that_drops_false_flags_and_keeps_true_ones():
    # validation: two new-template lines are alerts (failure text), three are normal dumps; the members flag none
    shapes = ["KERNEL FATAL: rts panic! - mount FAILED on network"] * 2 + ["KERNEL FATAL: debug enable......<NUM>"] * 3
    truth = np.asarray([1, 1, 0, 0, 0, 0])
    novel = np.asarray([True] * 5 + [False])
    voted = np.zeros(6, bool)
    s = select(truth, voted, novel, shapes, lambda c: TemplateJudge(c, 0.0).fit(
        NORMAL + ALERT, np.asarray([0] * len(NORMAL) + [1] * len(ALERT))))
    assert s.validation_f1_without_judge == line_f1(truth, novel) < 1.0
    assert s.validation_f1 == 1.0 and s.tau > 0
    assert s.validation_new_template_lines == 5 and s.validation_alerts == 2


def test_a_known_template_whose_training_lines_were_mostly_alerts_is_flagged_whatever_the_members_say():
    # `rts: kernel terminated` on 10 alert lines among many normal ones: the members outvote it (bench/bgl_inner.py)
    events = ["E324"] * 10 + ["E1"] * 50 + ["E45"] * 3 + ["E9"] * 5
    levels = ["FATAL"] * 10 + ["INFO"] * 50 + ["FATAL"] * 3 + ["INFO"] * 5
    truth = np.asarray([1] * 10 + [0] * 50 + [1, 0, 0] + [1] * 5)
    novel = NovelTemplates.fit(events, levels, truth)
    assert novel.alert_templates == {"E324"}  # E45: mostly normal; E9: INFO is no alerting level
    flags = novel.flags(["E324", "E45", "E9", "E324"], ["FATAL", "FATAL", "INFO", "INFO"])
    assert flags.tolist() == [True, False, False, False]
    assert novel.new_flags(["E324"], ["FATAL"]).tolist() == [False]  # known, so no new-template flag
    old = NovelTemplates.__new__(NovelTemplates)  # an artifact pickled before the rule: nothing remembered
    old.__dict__.update(seen={"E324"}, alerting_levels={"FATAL"})
    assert old.flags(["E324"], ["FATAL"]).tolist() == [False]


def test_select_by_templates_chooses_on_each_template_left_out_and_skips_those_kin_decide():
    from logmesh.scorer.bgl_novelty import select_by_templates
    text = NORMAL + ALERT
    labels = np.asarray([0] * len(NORMAL) + [1] * len(ALERT))
    s = select_by_templates(text, labels)
    assert s.templates == 12 and s.alert_templates == 6 and s.undecided == 12  # no two share three head words
    assert s.f1 > s.f1_flag_all == 2 * 6 / (2 * 6 + 6)
    assert select_by_templates(NORMAL, np.zeros(len(NORMAL), int)) is None
