"""Kin of a new BGL template (scorer/bgl_novelty.py): a never-seen template opening with the words of known
templates that all carry one label takes that label before the text judge is asked; mixed or absent kin leave it
to the judge."""
from __future__ import annotations

import pickle

import numpy as np

from logmesh.scorer.bgl import NovelTemplates
from logmesh.scorer.bgl_novelty import NO_KIN, Kin, TemplateJudge, template_head

# shapes as the BGL family masks them; loghub gives each ciod reason a template of its own
LOADING = ["APP FATAL: ciod: Error loading <PATH>: invalid or missing program image, Exec format error",
           "APP FATAL: ciod: Error loading <PATH>: invalid or missing program image, No such file or directory"]
NODE_MAP = ["APP FATAL: ciod: Error creating node map from file <PATH>: Permission denied",
            "APP FATAL: ciod: Error creating node map from file <PATH>: Resource temporarily unavailable"]
READING = ["APP FATAL: ciod: Error reading message prefix after LOAD_MESSAGE on CioStream socket to <IP>: Link"]
NEW_LOADING = "APP FATAL: ciod: Error loading <PATH>: program image too big, <NUM> > <NUM>"


def kin() -> Kin:
    return Kin.fit(LOADING + NODE_MAP + READING, np.asarray([0, 0, 0, 1, 1]))


def test_the_head_is_component_level_and_three_words_placeholders_not_counted():
    assert template_head(NEW_LOADING) == ("APP FATAL", ("ciod", "Error", "loading"))
    assert template_head("APP FATAL: DCR <HEX> : <HEX>") is None  # too few words to be kin of anything
    assert template_head("KERNEL FATAL: ciod: Error loading x") != template_head(NEW_LOADING)  # other component


def test_a_new_reason_of_a_known_kind_takes_the_label_its_kin_agree_on():
    labels = kin().labels([NEW_LOADING, READING[0].replace("LOAD_MESSAGE", "LOGIN_MESSAGE"),
                           "APP FATAL: ciod: Error creating node map from file <PATH>: Bad address",
                           "KERNEL FATAL: Error receiving packet on tree network", "APP FATAL: DCR <HEX> : <HEX>"])
    assert labels.tolist() == [0, 1, NO_KIN, NO_KIN, NO_KIN]  # node map: kin of both labels; the rest: none


def test_kin_decide_before_the_judge_and_the_judge_decides_the_rest():
    judge = TemplateJudge(1.0, 0.0).fit(LOADING + NODE_MAP + READING, np.asarray([0, 0, 0, 1, 1]))  # tau 0: passes all
    novel = NovelTemplates({"E1"}, {"FATAL"}, judge, kin())
    shapes = [NEW_LOADING, READING[0], NODE_MAP[0], NEW_LOADING]
    flags = novel.flags(["E59", "E62", "E46", "E59"], ["FATAL", "FATAL", "FATAL", "INFO"], shapes)
    assert flags.tolist() == [False, True, True, False]  # normal kin veto; alert kin flag; mixed kin: the judge
    strict = NovelTemplates({"E1"}, {"FATAL"}, TemplateJudge(1.0, 1.01).fit(judge_rows()[0], judge_rows()[1]), kin())
    assert strict.flags(["E62", "E46"], ["FATAL", "FATAL"], [READING[0], NODE_MAP[0]]).tolist() == [True, False]


def judge_rows():
    return LOADING + NODE_MAP + READING, np.asarray([0, 0, 0, 1, 1])


def test_fit_learns_kin_from_the_training_templates_and_old_artifacts_keep_working():
    shapes = LOADING + NODE_MAP + ["KERNEL INFO: generating core.<NUM>"]
    novel = NovelTemplates.fit(["E54", "E56", "E52", "E53", "E9"], ["FATAL"] * 4 + ["INFO"], np.asarray([0, 0, 0, 1, 0]),
                               shapes=shapes, judge=(1.0, 0.0))
    assert novel.flags(["E59"], ["FATAL"], [NEW_LOADING]).tolist() == [False]
    again = pickle.loads(pickle.dumps(novel))
    assert again.kin_labels([NEW_LOADING]).tolist() == [0]
    old = NovelTemplates.__new__(NovelTemplates)  # pickled before kin existed: the judge alone decides
    old.__dict__.update(seen={"E54"}, alerting_levels={"FATAL"}, judge=novel.judge)
    assert old.flags(["E59"], ["FATAL"], [NEW_LOADING]).tolist() == [True]


def test_kin_check_leaves_each_training_template_out_and_counts_kin_and_judge_on_the_same_ones():
    from logmesh.scorer.bgl_novelty import kin_check
    text, labels = LOADING + [NEW_LOADING] + NODE_MAP + READING, np.asarray([0, 0, 0, 0, 1, 1])
    k = kin_check(text, labels, 1.0, 0.0)  # tau 0: the judge flags every template, so it is wrong on the normal ones
    # the three Error loading templates have normal kin when left out; node map (one kin each, of the other label)
    # gets it wrong; the reading one has no kin
    assert k == {"templates": 6, "kin_decided": 5, "kin_right": 3, "judge_wrong_there": 4}
