"""Which sessions of a raw log have ended: decided from the data, not assumed.

A log file is one of two things, and the verdicts differ:
- a **cut** log (the first N lines of HDFS.log, a day's file, a replay that stopped): sessions active
  near its end are cut short, and a write that has not finished yet is not a failure;
- a file of **complete** sessions (every line of a chosen set of blocks, like loghub's HDFS_5k): every
  session has ended, and one whose write never finished has failed.

`--sessions cut` judges a block as ended only if the log went on for `quiet_seconds` of log time
after its last line (HDFS writes a block for up to minutes: 40 s median, 75 s at p99 in
HDFS_20000.log); others are judged as open prefixes. `--sessions complete` judges every block as
ended. `--sessions auto` (the default) compares the blocks that end in the log's last
`quiet_seconds` with those that end before: in a cut log, unfinished writes crowd at the end; in a
file of complete sessions they are no more common there than anywhere else.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

MODES = ("auto", "cut", "complete")
#: Log time a session must have been quiet, while the log went on, to count as ended in a cut log.
QUIET_SECONDS = 600.0
#: auto: a log is cut when the blocks ending in its tail are unfinished this much more often ...
TAIL_RATIO = 2.0
#: ... and at least this share of them are (a log shorter than the quiet period has no body to compare).
TAIL_MIN_SHARE = 0.05
TAIL_MIN_BLOCKS = 5


@dataclasses.dataclass
class Decision:
    mode: str  # what was asked: auto, cut or complete
    rule: str  # what applied: "cut" or "complete"
    closed: list[bool]
    why: str
    tail_blocks: int = 0
    tail_unfinished: int = 0
    body_blocks: int = 0
    body_unfinished: int = 0

    def summary(self) -> dict:
        return {"mode": self.mode, "rule": self.rule, "why": self.why,
                "judged_ended": sum(self.closed), "judged_open": len(self.closed) - sum(self.closed),
                "tail_blocks": self.tail_blocks, "tail_unfinished": self.tail_unfinished,
                "body_blocks": self.body_blocks, "body_unfinished": self.body_unfinished}


def decide(sessions: Sequence[Sequence[str]], last_time: Sequence[float | None], end_time: float | None,
           unfinished: Callable[[Sequence[str]], bool], mode: str = "auto",
           quiet_seconds: float = QUIET_SECONDS, last_line: Sequence[int] | None = None,
           end_line: int = 0, open_tail_lines: int = 2000,
           timeout: Callable[[Sequence[str]], float] | None = None) -> Decision:
    """Ended-or-open for each block of one raw log. `last_time` is each block's last event time in
    seconds (None when its lines carry no time); `end_time` the log's last time. Without times the
    tail is the last `open_tail_lines` lines (`last_line`, `end_line`). `timeout(events)` (learnt
    stall times, scorer/stall_times.py) says how long a block in its state must have been quiet to
    have ended in a cut log; without it every block needs `quiet_seconds`."""
    if mode not in MODES:
        raise ValueError(f"--sessions must be one of {', '.join(MODES)}, not {mode!r}")
    n = len(sessions)
    if mode == "complete":
        return Decision(mode, "complete", [True] * n, "asked for: every session in the file has ended")
    timed = end_time is not None and all(t is not None for t in last_time)
    if timed:
        in_tail = [end_time - t < quiet_seconds for t in last_time]
        if timeout is not None:
            ended = [end_time - t >= timeout(s) for s, t in zip(sessions, last_time)]
            tail_desc = "quiet before the end for longer than normal sessions ever pause in its state (learnt stall times)"
        else:
            ended = [not x for x in in_tail]
            tail_desc = f"quiet for {quiet_seconds:g} s of log time before the end"
    else:
        lines = last_line or [0] * n
        in_tail = [end_line - k < open_tail_lines for k in lines]
        ended = [not x for x in in_tail]
        tail_desc = f"its last line is over {open_tail_lines} lines before the end (the log has no timestamps)"
    if mode == "cut":
        return Decision(mode, "cut", ended, f"asked for: a block has ended when {tail_desc}")
    flags = [unfinished(s) for s in sessions]
    tail_n = sum(in_tail)
    tail_u = sum(f for f, t in zip(flags, in_tail) if t)
    body_n = n - tail_n
    body_u = sum(f for f, t in zip(flags, in_tail) if not t)
    tail_share = tail_u / tail_n if tail_n else 0.0
    body_share = body_u / body_n if body_n else None
    cut = tail_u >= TAIL_MIN_BLOCKS and tail_share >= TAIL_MIN_SHARE and (
        body_share is None or tail_share >= TAIL_RATIO * body_share + 0.01)
    body_text = f"{body_u}/{body_n} before it" if body_n else "no blocks before it"
    evidence = f"unfinished writes: {tail_u}/{tail_n} among the blocks ending in the tail, {body_text}"
    if cut:
        return Decision(mode, "cut", ended,
                        f"a cut log ({evidence}): a block has ended when {tail_desc}",
                        tail_n, tail_u, body_n, body_u)
    return Decision(mode, "complete", [True] * n, f"a file of complete sessions ({evidence})",
                    tail_n, tail_u, body_n, body_u)
