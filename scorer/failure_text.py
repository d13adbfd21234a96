"""Does a template's text read like a failure? The tie-breaker for events no normal session held.

Why: "no complete normal session held this event" is weak evidence on its own. The normal sessions of
the dev data come from the first hours of HDFS.log, so later normal behaviour holds events they never
did: re-replication ("Transmitted block", "Starting thread to transfer block") when its 18 normal
sessions are held out, or "BLOCK* ask ... to delete" (loghub's E30, in no training session at all).
Inside the data nothing tells those from "Redundant addStoredBlock request" (E27): all are INFO lines
held only by failing sessions. The template's words do. So such an event is failure evidence only when
its text names a fault (an exception, an error, a failed or interrupted step, a timeout, a request that
is redundant or for a block that belongs to no file, an empty packet); otherwise the session holding it
is unfamiliar (scorer/session_model.py caps its score and says why). A template whose text the model
does not know (a line no template matches: "unknown", a Drain3 id) stays novel evidence: the next
failure is the one nobody labelled.

The word list is generic fault vocabulary (Java exception names, syslog severities, HDFS's own
phrasing), not fitted to the labels. Of the 14 events no normal session of the dev data holds it reads
12 as faults and 2 as not (E15 "Changing block file offset", E19 "Reopen Block"; no failing session
holds either without a fault event); the re-replication steps (E6, E16, E18, E25) and E30 read as not.
"""
from __future__ import annotations

import re

from logmesh.ingest.templates import TEMPLATE_TEXT

FAILURE_WORDS = re.compile(
    r"exception|error|fail|fatal|severe|panic|crash|abort|interrupt|timed? ?out|refused|denied|corrupt|invalid"
    r"|illegal|unexpected|unable|cannot|can't|could not|not found|no such|does not belong|not belong|no space"
    r"|out of ?memory|outofmemory|unreachable|unavailable|lost|missing|mismatch|redundant|already exist"
    r"|empty packet|bad |broken|exceeded|overflow|reject|kill",
    re.IGNORECASE)


def reads_like_failure(text: str) -> bool:
    return FAILURE_WORDS.search(text) is not None


def failure_event(event: str) -> bool:
    """True when an event no normal session held is failure evidence: its template reads like a failure,
    or its text is unknown to the model (a new template is novel evidence)."""
    text = TEMPLATE_TEXT.get(event)
    return text is None or reads_like_failure(text)
