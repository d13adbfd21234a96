"""The console's feedback buttons: a plain form POST turned into one SubmitFeedback call, and the same-origin check
that keeps another site from posting them in an analyst's browser.

A form names its button (`choice`), its subject (record_id, session_key or incident_id), the page to go back to,
and a random token drawn when the page was rendered: the client_key is the token and the choice, so a double
submit of one button stores one label, and two buttons of one render stay two labels.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from logmesh.v1 import feedback_pb2 as fpb

#: button -> (label, scope, action); "false_alarm" on a block uses SEQUENCE (every block with its event sequence)
CHOICES = {
    "true_alarm": (fpb.FEEDBACK_LABEL_TRUE_ALARM, fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_ACTION_LEARN),
    "false_alarm": (fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN),
    "suppress_template": (fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_SCOPE_TEMPLATE, fpb.FEEDBACK_ACTION_SUPPRESS),
    "suppress_node": (fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_SCOPE_NODE, fpb.FEEDBACK_ACTION_SUPPRESS),
}
SUBJECTS = ("record_id", "session_key", "incident_id")
#: where a form may send the browser back to: only the console's own anomaly and incident pages
BACK = re.compile(r"^/(anomaly/\d{1,20}|incident/[A-Za-z0-9._-]{1,128})$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class FormError(ValueError):
    """A form the console's own pages never send: a 400 with this reason."""


def same_origin(headers: Any, own: str) -> bool:
    """False when the request names an origin (Origin, else Referer) other than `own` ("http://host:port");
    a request naming none (curl, a script on this machine) is let through: a browser always names one on a
    cross-site POST. "null" (a sandboxed or no-referrer page) is not our origin."""
    origin = headers.get("origin")
    if origin is not None:
        return origin == own
    referer = headers.get("referer")
    return referer is None or referer == own or referer.startswith(own + "/")


def parse(body: bytes) -> dict[str, str]:
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    return {k: v[0] for k, v in fields.items()}


def back(form: dict[str, str]) -> str:
    page = form.get("back", "")
    if not BACK.match(page):
        raise FormError(f"back must be an /anomaly/ID or /incident/ID page of this console, not {page[:80]!r}")
    return page


def build(form: dict[str, str], author: str) -> fpb.Feedback:
    """The Feedback one button stands for."""
    choice = form.get("choice", "")
    if choice not in CHOICES:
        raise FormError(f"choice must be one of {', '.join(CHOICES)}, not {choice[:40]!r}")
    given = [(k, form[k]) for k in SUBJECTS if form.get(k)]
    if len(given) != 1:
        raise FormError("name exactly one subject: record_id, session_key or incident_id")
    token = form.get("token", "")
    if not TOKEN.match(token):
        raise FormError("the form's token is missing or malformed: reload the page and click again")
    label, scope, action = CHOICES[choice]
    if choice == "false_alarm" and given[0][0] == "session_key":
        scope = fpb.FEEDBACK_SCOPE_SEQUENCE
    return fpb.Feedback(label=label, scope=scope, action=action, author=author, client_key=f"console-{token}-{choice}",
                        **{given[0][0]: given[0][1][:256]})
