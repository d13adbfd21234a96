"""A block's story as the block operator keeps it in Spark's state, and the alert rule.

Each open block is one list in its bucket's state (block_sessions._load): its events, first and last
event time, its last line on the closing clock, when it was finalized as cut, and (added here) its
running vector sum (float32 bytes, base64), line count, anomalous record ids, alert status and label.
Spark checkpoints the state with each micro-batch, so a replayed batch starts again from the state of
the batch before it and recomputes the same story: nothing is counted twice, and the hot path reads
nothing back from the vector store (it only writes the block's point: mean vector and payload).

The alert rule (the stream's, not the scorer's: ScoreBlock is pure): a block's first anomalous verdict
is written once as ALERT, and its verdict when it closes (quiet) anomalous as FINAL. A closed block
that had alerted leaves its id in the bucket's `alerted` map for a while (ALERTED_RETENTION_MS of stream
clock), so lines of it that come later (a story reopened, e.g. after the job was stopped) do not alert
again.
"""
from __future__ import annotations

import base64
import json

import numpy as np

EVENTS, FIRST, LAST, SEEN, CUT, VSUM, LINES, ANOMALOUS, ALERTED, LABEL = range(10)
_TAIL = [None, 0, [], False, 0]  # VSUM .. LABEL of a block written before they were kept
ALERTED_RETENTION_MS = 3_600_000


def new_entry(alerted: bool = False) -> list:
    return [[], "", "", 0, None, None, 0, [], alerted, 0]


def pad(entry: list) -> list:
    """An entry from older state (events, first, last, seen[, cut]) with the fields it lacks."""
    if len(entry) == 4:
        entry = [*entry, None]
    if len(entry) < 10:
        entry = [*entry, *[list(v) if isinstance(v, list) else v for v in _TAIL[len(entry) - 5:]]]
    return entry


def add_lines(entry: list, vectors: list[np.ndarray], anomalous_ids: list[str], label: int = 0) -> None:
    """Adds a call's scored lines of the block (their vectors) to its running sum and count."""
    if vectors:
        total = np.sum(np.stack(vectors).astype(np.float32), axis=0)
        if entry[VSUM]:
            total = total + np.frombuffer(base64.b64decode(entry[VSUM]), np.float32)
        entry[VSUM] = base64.b64encode(total.astype(np.float32).tobytes()).decode()
        entry[LINES] += len(vectors)
    entry[ANOMALOUS].extend(anomalous_ids)
    if label:
        entry[LABEL] = int(label)


def mean_vector(entry: list) -> np.ndarray | None:
    """The mean of the block's line vectors, None when none of its lines was scored."""
    if not entry[VSUM] or not entry[LINES]:
        return None
    return (np.frombuffer(base64.b64decode(entry[VSUM]), np.float32) / entry[LINES]).astype(np.float32)


def prune_alerted(alerted: dict[str, int], clock_ms: int) -> None:
    for block_id in [b for b, at in alerted.items() if clock_ms - at > ALERTED_RETENTION_MS]:
        del alerted[block_id]


def decide(block_id: str, entry: list, anomalous: bool, closed: bool, alerted: dict[str, int],
           clock_ms: int) -> tuple[bool, bool]:
    """The alert rule for one verdict: (write ALERT, write FINAL). ALERT on the block's first anomalous
    verdict (its status kept in `entry`); FINAL when it closes anomalous. A closed block that alerted is
    remembered in `alerted` (see ALERTED_RETENTION_MS)."""
    alert = anomalous and not entry[ALERTED]
    if alert:
        entry[ALERTED] = True
    if closed and entry[ALERTED]:
        alerted[block_id] = clock_ms
    return alert, anomalous and closed


def judge(summaries: list[tuple], entries: dict[str, list], quiet_s: dict[str, float], alerted: dict[str, int],
          clock_ms: int, settings) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Scores the changed and ended blocks (`summaries`: block id, events, closed, first, last, ended) and
    applies the alert rule to their entries; returns a WORK row per block (work.WORK_SCHEMA)."""
    import os

    from logmesh.streaming import work
    from logmesh.v1 import score_pb2, scorer_service_pb2 as spb
    if not summaries:
        return []
    requests = [spb.BlockSession(block_id=b, events=list(events), closed=bool(closed),
                                 anomalous_record_ids=entries[b][ANOMALOUS], first_time=work.timestamp(first),
                                 last_time=work.timestamp(last), label=entries[b][LABEL],
                                 quiet_seconds=quiet_s.get(b, 0.0))
                for b, events, closed, first, last, _ in summaries]
    verdicts = work.score_blocks(requests, settings, f"{len(requests)} blocks")
    pid = os.getpid()
    rows = []
    for (block_id, events, closed, first, last, ended), verdict in zip(summaries, verdicts):
        entry = entries[block_id]
        anomalous = verdict.verdict == score_pb2.VERDICT_ANOMALY
        alert, final = decide(block_id, entry, anomalous, bool(closed), alerted, clock_ms)
        verdict.kind = score_pb2.BLOCK_VERDICT_KIND_FINAL if closed else score_pb2.BLOCK_VERDICT_KIND_INTERIM
        vector = mean_vector(entry)
        payload = {"kind": "block", "block_id": block_id, "events": list(events), "closed": bool(closed),
                   "ended": ended, "first_time": first, "last_time": last, "lines": entry[LINES],
                   "anomalous_record_ids": list(entry[ANOMALOUS]), "alerted": bool(entry[ALERTED]),
                   "verdict": "anomaly" if anomalous else "normal", "score": float(verdict.score),
                   "is_anomaly": anomalous, "model_version": verdict.model_version}
        if entry[LABEL]:
            payload["label"] = work.label_name(entry[LABEL])
        has_point = vector is not None  # a block whose lines all failed to decode or score has no vector
        rows.append((work.BLOCK, None, None, None, None, verdict.SerializeToString(), block_id, None, anomalous,
                     alert, final, block_id if has_point else None,
                     vector.tobytes() if has_point else None, json.dumps(payload) if has_point else None,
                     ended, pid))
    return rows
