"""Scope resolution: what a label's scope reaches, as the one value (Feedback.scope_value) that suppression
matching and training compare.

- TEMPLATE: the line's template id. A block or an incident resolves only when its flagged lines (a block: the
  flagged lines the anomaly history holds that name it; an incident: its evidence lines) share one template;
  with several, the analyst labels the one line meant (--record-id), since a template reaches far.
- NODE: the node a line comes from: for HDFS the DataNode address the line names with the data-transfer port
  (`10.251.43.21:50010` -> `10.251.43.21`), else the only address it names; for BGL (and other families keyed
  by node) the line's session key when it is no HDFS block id. A block or an incident resolves when its lines
  name one node (an incident: Incident.nodes).
- SEQUENCE: a key of a block's exact event sequence (`sequence_key`, from its newest verdict with events, a
  FINAL one first); a line resolves through the block it names, an incident through its one session.
- ITEM: "" (the subject itself).

Problems are `ScopeError`s whose text says what to send instead (INVALID_ARGUMENT).
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, Sequence

from logmesh.v1 import feedback_pb2 as fpb, incident_pb2, score_pb2

_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?::(\d+))?")
DATANODE_PORT = "50010"  # HDFS DataNode data transfer: the address a DataNode line names for itself
FINAL = score_pb2.BLOCK_VERDICT_KIND_FINAL


class ScopeError(ValueError):
    """A scope the subject cannot resolve, or a subject that does not exist."""


def sequence_key(events: Iterable[str]) -> str:
    """`seq-` + the first 16 hex digits of blake2b-64 over the event ids joined by newlines: one key per exact
    sequence (the training side computes it the same way)."""
    return "seq-" + hashlib.blake2b("\n".join(events).encode(), digest_size=8).hexdigest()


def line_node(line: score_pb2.ScoreResult) -> str:
    """The node a line comes from ("" when it names none, or several without a DataNode port among them)."""
    keys = [k for k in line.block_ids if k and not k.startswith("blk_")]
    if keys:
        return keys[0]  # a family keyed by node (BGL): the session key is the node
    found = _ADDRESS.findall(line.message)
    for address, port in found:
        if port == DATANODE_PORT:
            return address
    addresses = {a for a, _ in found}
    return addresses.pop() if len(addresses) == 1 else ""


def _one(values: Sequence[str], what: str, subject: str, hint: str) -> str:
    distinct = sorted({v for v in values if v})
    if len(distinct) == 1:
        return distinct[0]
    if not distinct:
        raise ScopeError(f"{subject} has no {what} to resolve the scope to; {hint}")
    shown = ", ".join(distinct[:8]) + (", ..." if len(distinct) > 8 else "")
    raise ScopeError(f"{subject} spans {len(distinct)} {what}s ({shown}); {hint}")


def _block_sequence(entries: Sequence[score_pb2.Anomaly], block_id: str) -> str:
    verdicts = [e.block for e in entries if e.HasField("block") and e.block.block_id == block_id and e.block.events]
    if not verdicts:
        raise ScopeError(f"block {block_id} has no verdict with events in the anomaly history; SEQUENCE needs "
                         "one: label its lines, or use ITEM scope")
    final = [v for v in verdicts if v.kind == FINAL]
    return sequence_key((final or verdicts)[0].events)


def resolve(fb: fpb.Feedback, find: Callable[..., list[score_pb2.Anomaly]],
            incident: incident_pb2.Incident | None) -> str:
    """The scope_value of `fb`, whose subject exists: `find(record_id=...)` / `find(block_id=...)` are the
    history's held entries (AnomalyHistory.find), `incident` the subject incident when it is one."""
    scope, subject = fb.scope, fb.WhichOneof("subject")
    if scope == fpb.FEEDBACK_SCOPE_ITEM:
        return ""
    if subject == "record_id":
        lines = [e.line for e in find(record_id=fb.record_id) if e.HasField("line")]
        line = lines[0]
        name = f"line {fb.record_id}"
        if scope == fpb.FEEDBACK_SCOPE_TEMPLATE:
            if not line.template_id:
                raise ScopeError(f"{name} has no template id; use ITEM or NODE scope")
            return line.template_id
        if scope == fpb.FEEDBACK_SCOPE_NODE:
            node = line_node(line)
            if not node:
                raise ScopeError(f"{name} names no single node (no DataNode address, no node session key); use "
                                 "ITEM or TEMPLATE scope")
            return node
        blocks = [b for b in line.block_ids if any(e.HasField("block") for e in find(block_id=b))]
        if not blocks:
            raise ScopeError(f"{name} names no block the anomaly history holds a verdict of; SEQUENCE needs one: "
                             "label the block (--block) once its verdict is recorded, or use another scope")
        return _block_sequence(find(block_id=blocks[0]), blocks[0])
    if subject == "session_key":
        entries = find(block_id=fb.session_key)
        lines = [e.line for e in entries if e.HasField("line")]
        name = f"block {fb.session_key}"
        hint = "label one of its lines (--record-id) instead"
        if scope == fpb.FEEDBACK_SCOPE_TEMPLATE:
            return _one([line.template_id for line in lines], "template", f"{name}'s flagged lines", hint)
        if scope == fpb.FEEDBACK_SCOPE_NODE:
            return _one([line_node(line) for line in lines], "node", f"{name}'s flagged lines", hint)
        return _block_sequence(entries, fb.session_key)
    assert incident is not None
    name = f"incident {fb.incident_id}"
    if scope == fpb.FEEDBACK_SCOPE_TEMPLATE:
        return _one([e.template_id for e in incident.evidence], "template", f"{name}'s evidence",
                    "label one of its evidence lines (--record-id) instead")
    if scope == fpb.FEEDBACK_SCOPE_NODE:
        return _one(list(incident.nodes), "node", name, "label one of its lines (--record-id) instead")
    block = _one(list(incident.session_keys), "session", name, "label one of its blocks (--block) instead")
    return _block_sequence(find(block_id=block), block)
