"""What a submitted Feedback must be before it is looked at further: a subject, a known label, scope and action,
an expiry in the future, a comment of at most 4 KiB. Each problem is one sentence that says what to send instead
(SubmitFeedback answers it as INVALID_ARGUMENT)."""
from __future__ import annotations

import time

from logmesh.v1 import feedback_pb2 as fpb

MAX_COMMENT_BYTES = 4096
MAX_ID_BYTES = 1024  # a subject id, a client key or an author: longer is no id of ours
LABELS = {v.number for v in fpb.FeedbackLabel.DESCRIPTOR.values if v.number}
SCOPES = {v.number for v in fpb.FeedbackScope.DESCRIPTOR.values if v.number}
ACTIONS = {v.number for v in fpb.FeedbackAction.DESCRIPTOR.values if v.number}


def _names(enum, known: set[int]) -> str:  # type: ignore[no-untyped-def]
    return ", ".join(enum.Name(n) for n in sorted(known))


def problem(fb: fpb.Feedback, now: float | None = None) -> str | None:
    """Why `fb` cannot be stored as given, or None."""
    subject = fb.WhichOneof("subject")
    if subject is None:
        return "feedback names no subject: set record_id, session_key or incident_id"
    value = getattr(fb, subject)
    if not value:
        return f"{subject} is empty: give the id of the line, block or incident the label is for"
    if len(value.encode()) > MAX_ID_BYTES:
        return f"{subject} is {len(value.encode())} bytes; no id is longer than {MAX_ID_BYTES}"
    if fb.label not in LABELS:
        return (f"label {fb.label} is {'unset' if not fb.label else 'unknown'}: "
                f"give one of {_names(fpb.FeedbackLabel, LABELS)}")
    if fb.scope not in SCOPES:
        return (f"scope {fb.scope} is {'unset' if not fb.scope else 'unknown'}: "
                f"give one of {_names(fpb.FeedbackScope, SCOPES)}")
    if fb.action not in ACTIONS:
        return (f"action {fb.action} is {'unset' if not fb.action else 'unknown'}: "
                f"give one of {_names(fpb.FeedbackAction, ACTIONS)}")
    if fb.HasField("expire_time"):
        if not -62135596800 <= fb.expire_time.seconds <= 253402300799 or not 0 <= fb.expire_time.nanos < 10**9:
            return "expire_time is no valid timestamp (years 1..9999): give an ISO time like 2026-12-08T00:00:00Z"
        now = time.time() if now is None else now
        expires = fb.expire_time.seconds + fb.expire_time.nanos / 1e9
        if expires <= now:
            return (f"expire_time {fb.expire_time.ToJsonString()} is not in the future (now "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}): give a later time, or none")
    size = len(fb.comment.encode())
    if size > MAX_COMMENT_BYTES:
        return f"comment is {size} bytes; at most {MAX_COMMENT_BYTES} (4 KiB) are kept: shorten it"
    for name in ("client_key", "author"):
        if len(getattr(fb, name).encode()) > MAX_ID_BYTES:
            return f"{name} is over {MAX_ID_BYTES} bytes: shorten it"
    return None
