"""The console's feedback form: the Feedback each button stands for, forms its pages never send, and the
same-origin check of the POST."""
from __future__ import annotations

import pytest

from logmesh.console import feedback
from logmesh.v1 import feedback_pb2 as fpb

OWN = "http://127.0.0.1:8080"


def form(**kw: str) -> dict[str, str]:
    return {"record_id": "rec-1", "back": "/anomaly/7", "token": "abcdefgh1234", "choice": "false_alarm"} | kw


def test_each_button_is_one_label_scope_and_action():
    line = feedback.build(form(), "ann")
    assert (line.record_id, line.label, line.scope, line.action, line.author) == (
        "rec-1", fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN, "ann")
    blk = feedback.build(form(record_id="", session_key="blk_1"), "ann")
    assert blk.session_key == "blk_1" and blk.scope == fpb.FEEDBACK_SCOPE_SEQUENCE  # a block: its sequence
    true = feedback.build(form(choice="true_alarm"), "ann")
    assert (true.label, true.scope, true.action) == (fpb.FEEDBACK_LABEL_TRUE_ALARM, fpb.FEEDBACK_SCOPE_ITEM,
                                                     fpb.FEEDBACK_ACTION_LEARN)
    tpl = feedback.build(form(record_id="", incident_id="inc-3", choice="suppress_template"), "ann")
    assert (tpl.incident_id, tpl.scope, tpl.action) == ("inc-3", fpb.FEEDBACK_SCOPE_TEMPLATE, fpb.FEEDBACK_ACTION_SUPPRESS)
    # one render's buttons: one key per button, the same key for the same button
    assert true.client_key != line.client_key == feedback.build(form(), "ann").client_key


@pytest.mark.parametrize("bad, reason", [
    ({"choice": "delete"}, "choice must be"), ({"record_id": ""}, "exactly one subject"),
    ({"session_key": "blk_1"}, "exactly one subject"), ({"token": "x"}, "token"),
])
def test_forms_the_pages_never_send_are_refused(bad, reason):
    with pytest.raises(feedback.FormError, match=reason):
        feedback.build(form(**bad), "ann")


@pytest.mark.parametrize("page", ["https://evil.example/", "//evil.example/anomaly/1", "/anomaly/1?x=1", "/stats"])
def test_only_the_consoles_own_pages_are_gone_back_to(page):
    with pytest.raises(feedback.FormError, match="back must be"):
        feedback.back(form(back=page))


@pytest.mark.parametrize("headers, ok", [
    ({}, True), ({"origin": OWN}, True), ({"referer": OWN + "/anomaly/7"}, True),
    ({"origin": "http://evil.example"}, False), ({"origin": "null"}, False),
    ({"referer": "http://evil.example/x"}, False), ({"referer": OWN + ".evil.example/"}, False),
    ({"origin": "http://evil.example", "referer": OWN + "/"}, False),
])
def test_same_origin(headers, ok):
    assert feedback.same_origin(headers, OWN) is ok
