"""Analyst labels as training data (`logmesh train --feedback`).

Which feedback trains: action LEARN or SUPPRESS_AND_LEARN, a label, not expired at training time. Each such
label resolves to sessions or templates:
- a block (subject session_key, scope ITEM): that block of the training data takes the analyst's label;
- a sequence (scope SEQUENCE, scope_value = the sequence key): every training session with exactly that
  event sequence takes the label, and the sequence is added if the data lacks it;
- a template (scope TEMPLATE, scope_value = the template id, e.g. "E16"): the template's lines are evidence
  (TRUE_ALARM) or ordinary (FALSE_ALARM, NORMAL) for the line ensemble; sessions keep their labels.
FALSE_ALARM and NORMAL mean normal, TRUE_ALARM anomalous. Where two labels name the same thing the newest
(created_time) wins. Every resolved session label also enters training as `weight` complete copies of its
sequence: an analyst's label speaks for a behaviour that recurs, and one normal session among thousands
does not move the session model (a re-replication it flags stays flagged at weight 1, measured).
What cannot train is counted with its reason, never dropped silently: node scope (HDFS sessions carry no
node), a line or an incident at ITEM scope (give TEMPLATE or SEQUENCE scope), a block the data lacks.

Sequence keys are the feedback service's (`scorer/analyst/feedback_scope.sequence_key`, "seq-" + a hash of the
events), matched against the hash of every training session; a hand-written file may give the events
themselves instead ("E22 E5 E5 ..." or DeepLog's "22 5 5"). A block or a key the training data lacks is looked
up in the vector store when one is given (`StoreLookup`: the streaming job keeps each block's events in its
point's payload).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import numpy as np

from logmesh.scorer import validation as val
from logmesh.v1 import feedback_pb2 as fpb

DEFAULT_WEIGHT = 10
LEARN = {fpb.FEEDBACK_ACTION_LEARN, fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN}
_EVENT = re.compile(r"^(E?\d+|unknown)$")


def sequence_key(events) -> str:
    from logmesh.scorer.analyst.feedback_scope import sequence_key as key
    return key(events)


def parse_sequence_key(text: str) -> tuple[str, ...]:
    """The events of a sequence key; ValueError with the reason when it is not one."""
    tokens = text.replace(",", " ").split()
    bad = [t for t in tokens if not _EVENT.match(t)]
    if not tokens or bad:
        raise ValueError(f"sequence key {text[:80]!r} is not template ids joined by spaces (e.g. 'E22 E5 E5')"
                         + (f": {bad[0]!r}" if bad else ""))
    return tuple(t if t.startswith("E") or t == "unknown" else f"E{t}" for t in tokens)


@dataclasses.dataclass
class Label:
    """One analyst label that trains."""
    feedback_id: str
    anomalous: bool
    scope: str  # "item" | "sequence" | "template"
    key: str  # the block id, the sequence key or the template id
    created: float  # seconds since the epoch (0 when unset)
    events: tuple[str, ...] | None = None  # a sequence given by its events (hand-written files)


@dataclasses.dataclass
class FeedbackSet:
    labels: list[Label]
    ignored: dict[str, list[str]]  # reason -> feedback ids
    source: str = ""
    total: int = 0

    def describe(self) -> dict:
        return {"source": self.source, "read": self.total, "training": len(self.labels),
                "ignored": {reason: {"count": len(ids), "ids": ids[:20]} for reason, ids in self.ignored.items()}}


def select(feedback: list[fpb.Feedback], now: dt.datetime | None = None, source: str = "") -> FeedbackSet:
    now_s = (now or dt.datetime.now(dt.timezone.utc)).timestamp()
    labels, ignored = [], {}

    def skip(reason: str, fb: fpb.Feedback) -> None:
        ignored.setdefault(reason, []).append(fb.feedback_id or "(no id)")

    for fb in feedback:
        if fb.action not in LEARN:
            skip("action is suppress only", fb)
            continue
        if fb.label == fpb.FEEDBACK_LABEL_UNSPECIFIED:
            skip("no label", fb)
            continue
        if fb.HasField("expire_time") and fb.expire_time.ToDatetime(dt.timezone.utc).timestamp() <= now_s:
            skip("expired", fb)
            continue
        anomalous = fb.label == fpb.FEEDBACK_LABEL_TRUE_ALARM
        created = fb.created_time.ToDatetime(dt.timezone.utc).timestamp() if fb.HasField("created_time") else 0.0
        subject = fb.WhichOneof("subject")
        if fb.scope == fpb.FEEDBACK_SCOPE_SEQUENCE:
            value, events = fb.scope_value.strip(), None
            if not value.startswith("seq-"):
                try:
                    events = parse_sequence_key(value)
                except ValueError:
                    skip("sequence scope without a sequence key in scope_value", fb)
                    continue
                value = sequence_key(events)
            labels.append(Label(fb.feedback_id, anomalous, "sequence", value, created, events))
        elif fb.scope == fpb.FEEDBACK_SCOPE_TEMPLATE:
            if not fb.scope_value:
                skip("template scope without a template id in scope_value", fb)
                continue
            labels.append(Label(fb.feedback_id, anomalous, "template", fb.scope_value, created))
        elif fb.scope == fpb.FEEDBACK_SCOPE_ITEM and subject == "session_key" and fb.session_key:
            labels.append(Label(fb.feedback_id, anomalous, "item", fb.session_key, created))
        elif fb.scope == fpb.FEEDBACK_SCOPE_NODE:
            skip("node scope (suppression only: HDFS sessions carry no node to train on)", fb)
        elif fb.scope == fpb.FEEDBACK_SCOPE_ITEM:
            skip(f"a {subject or 'subject-less'} label at item scope (training needs a block, or "
                 "template or sequence scope)", fb)
        else:
            skip("no scope", fb)
    labels.sort(key=lambda l: l.created)
    return FeedbackSet(labels, ignored, source, len(feedback))


@dataclasses.dataclass
class Applied:
    """Training data with the feedback folded in, and what each label did."""
    blocks: val.Blocks
    templates: dict[str, bool]  # template id -> anomalous (line labels)
    sessions: list[tuple[str, tuple[str, ...], bool, bool]]  # (feedback id, events, closed, anomalous): the feedback set
    report: dict
    resolved: dict  # (events, closed) -> (feedback id, anomalous)


class StoreLookup:
    """Events of blocks the training data lacks, from the block points of a vector store (streaming/blocks.py
    writes "events" and "closed" into each block's payload)."""

    def __init__(self, store) -> None:
        self.store = store
        self._by_key: dict[str, tuple[tuple[str, ...], bool]] | None = None

    def block(self, block_id: str) -> tuple[tuple[str, ...], bool] | None:
        p = self.store.retrieve([block_id]).get(block_id)
        if p is None or not p.payload.get("events"):
            return None
        return tuple(p.payload["events"]), bool(p.payload.get("closed", True))

    def sequence(self, key: str) -> tuple[tuple[str, ...], bool] | None:
        if self._by_key is None:  # one pass over the stored blocks, the first time a key needs it
            self._by_key = {}
            for p in self.store.scroll({"kind": "block"}):
                events = tuple(p.payload.get("events") or ())
                if events:
                    k = sequence_key(events)
                    if k not in self._by_key or p.payload.get("closed"):
                        self._by_key[k] = (events, bool(p.payload.get("closed", True)))
        return self._by_key.get(key)


def apply(blocks: val.Blocks, fset: FeedbackSet, weight: int = DEFAULT_WEIGHT, lookup: StoreLookup | None = None,
          resolved: dict | None = None) -> Applied:
    """`blocks` relabelled and extended by the session labels of `fset`; template labels are returned for
    the line ensemble. `blocks` is not changed. `resolved` (an earlier Applied's `resolved`, on the whole data)
    adds those sessions and only relabels the rows `blocks` holds: a validation fold trains on the same
    feedback sessions as the final model."""
    labels = blocks.labels.copy()
    ids = blocks.ids if blocks.ids is not None else np.full(len(blocks), "", object)
    by_sequence = sequence_rows(blocks)
    by_id = {b: i for i, b in enumerate(ids.tolist()) if b}
    final: dict[tuple[tuple[str, ...], bool], tuple[str, bool]] = {}  # (events, closed) -> (feedback id, anomalous)
    templates: dict[str, bool] = {}
    relabelled, unresolved = 0, []
    for lab in fset.labels:  # oldest first: a newer label overrides
        y = int(lab.anomalous)
        if lab.scope == "template":
            templates[lab.key] = lab.anomalous
            continue
        if lab.scope == "item":
            i = by_id.get(lab.key)
            rows = [] if i is None else [i]
            if i is not None:
                events, closed = tuple(blocks.sessions[i]), bool(blocks.closed[i])
            elif resolved is None:
                found = lookup.block(lab.key) if lookup else None
                if found is None:
                    unresolved.append(lab.feedback_id)
                    continue
                events, closed = found
        else:
            rows = by_sequence.get(lab.key, [])
            closed = True
            if lab.events:
                events = lab.events
            elif rows:
                events = tuple(blocks.sessions[rows[0]])
            elif resolved is None:
                found = lookup.sequence(lab.key) if lookup else None
                if found is None:
                    unresolved.append(lab.feedback_id)
                    continue
                events = found[0]
        relabelled += int((labels[rows] != y).sum())
        labels[rows] = y
        if resolved is None:
            final[(events, closed)] = (lab.feedback_id, lab.anomalous)
    if resolved is not None:
        final = resolved
    n = len(final) * weight
    added = [list(e) for (e, _c) in final for _ in range(weight)]
    out = val.Blocks(
        blocks.sessions + added,
        np.concatenate([labels, np.asarray([int(a) for (_f, a) in final.values() for _ in range(weight)], labels.dtype)]),
        np.concatenate([blocks.closed, np.asarray([c for (_e, c) in final for _ in range(weight)], bool)]),
        np.concatenate([blocks.part, np.asarray(["complete"] * n, blocks.part.dtype if n else object)]).astype(str),
        np.concatenate([blocks.source, np.asarray(["feedback"] * n)]).astype(str),
        np.concatenate([blocks.order, np.arange(n)]),
        np.concatenate([ids, np.asarray([""] * n, object)]))
    sessions = [(fid, e, c, a) for (e, c), (fid, a) in final.items()]
    report = {"sessions_labelled": len(final), "training_rows_relabelled": relabelled, "rows_added": n,
              "weight": weight, "templates": {t: ("anomalous" if a else "normal") for t, a in templates.items()},
              "unresolved": unresolved,
              "rule": "FALSE_ALARM and NORMAL: normal, TRUE_ALARM: anomalous; each labelled session (a block, or every "
                      "session with the sequence) takes the label and trains as `weight` more complete copies; "
                      "template scope relabels the template's lines for the line ensemble; newest label wins"}
    if unresolved:
        report["unresolved_note"] = ("the blocks or sequences these labels name are neither in the training data nor "
                                     "in the vector store given (--store-path / --qdrant-url): their events are unknown")
    return Applied(out, templates, sessions, report, final)


def sequence_rows(blocks: val.Blocks) -> dict[str, list[int]]:
    """Sequence key -> the rows of `blocks` with that exact event sequence."""
    rows: dict[str, list[int]] = {}
    memo: dict[tuple[str, ...], str] = {}
    for i, s in enumerate(blocks.sessions):
        t = tuple(s)
        k = memo.get(t)
        if k is None:
            k = memo[t] = sequence_key(t)
        rows.setdefault(k, []).append(i)
    return rows
