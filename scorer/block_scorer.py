"""Judging blocks with the artifact's block model.

A block the live stream closed after `quiet_seconds` without a line is judged as ended only when that is at
least the session model's learnt stall time for the block's state (scorer/stall_times.py: how long normal
blocks ever paused there); quieter ones are judged as cut prefixes, like the open blocks at the end of a cut
log (scorer/completeness.py), so a write still in flight is no missing step. States the model learnt no
stall time for keep the stream's decision. The verdict's kind stays FINAL: the stream closed the block."""
from __future__ import annotations

import math

import grpc

from logmesh.runtime.grpc_server import item_error
from logmesh.scorer.artifacts import Artifact
from logmesh.scorer.block_model import EVENTS, THRESHOLD
from logmesh.scorer.stall_times import state
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

MAX_EVENTS = 100_000  # a block with more lines than this is not an HDFS block


def copy_session(v: score_pb2.BlockVerdict, block: spb.BlockSession, model_version: str) -> None:
    """What every family's session verdict carries over from the session it judged."""
    v.events.extend(block.events)
    v.kind = score_pb2.BLOCK_VERDICT_KIND_FINAL if block.closed else score_pb2.BLOCK_VERDICT_KIND_INTERIM
    if block.HasField("first_time"):
        v.first_time.CopyFrom(block.first_time)
    if block.HasField("last_time"):
        v.last_time.CopyFrom(block.last_time)
    v.anomalous_record_ids.extend(block.anomalous_record_ids)
    v.model_version = model_version
    v.label = block.label


class BlockScorer:
    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.models["block"]
        # what the model can read: loghub's ids and "unknown", and the Drain ids mined when it was trained
        drain = artifact.models.get("drain")
        self.events = (set(EVENTS) | set(getattr(self.model, "vocab", None) or ())
                       | set(getattr(self.model, "evidence_events", ())) | set(drain.templates if drain else ()))

    def score(self, blocks: list[spb.BlockSession]) -> list[spb.ScoreBlockResult]:
        results = [spb.ScoreBlockResult(block_id=b.block_id) for b in blocks]
        good = []
        for block, result in zip(blocks, results):
            problem = None
            if not block.block_id:
                problem = "block_id is empty"
            elif not block.events:
                problem = f"block {block.block_id} has no events"
            elif not math.isfinite(block.quiet_seconds) or block.quiet_seconds < 0:
                problem = f"block {block.block_id} has quiet_seconds {block.quiet_seconds}; send seconds >= 0 (0: unknown)"
            elif len(block.events) > MAX_EVENTS:
                problem = f"block {block.block_id} has {len(block.events)} events; the limit is {MAX_EVENTS}"
            else:
                problem = self._unknown_events(block)
            if problem:
                result.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, problem))
            else:
                good.append((block, result))
        if good:
            sessions = [list(b.events) for b, _ in good]
            cut = [self._cut_short(b) for b, _ in good]
            closed = [b.closed and c is None for (b, _), c in zip(good, cut)]
            threshold = getattr(self.model, "threshold", THRESHOLD)
            if hasattr(self.model, "judge"):  # the session model says why (scorer/session_model.py)
                judged = self.model.judge(sessions, closed)
            else:  # artifacts from before it
                judged = [None] * len(good)
                p = self.model.probabilities(sessions, closed)
            for k, ((block, result), judgement) in enumerate(zip(good, judged)):
                score = judgement.score if judgement is not None else float(p[k])
                v = result.verdict
                v.block_id = block.block_id
                v.verdict = score_pb2.VERDICT_ANOMALY if score >= threshold else score_pb2.VERDICT_NORMAL
                v.score = float(score)
                if judgement is not None:
                    v.reasons.extend(judgement.reasons[:5])
                    v.evidence_kind = judgement.kind
                if cut[k] is not None:
                    v.reasons.append(cut[k])
                copy_session(v, block, self.artifact.version)
        return results

    def _cut_short(self, block: spb.BlockSession) -> str | None:
        """Why a closed block is judged as a cut prefix (quiet for less than its state's learnt stall time), or None."""
        stall = getattr(self.model, "stall_times", None)
        if not block.closed or block.quiet_seconds <= 0 or stall is None or not stall.timeouts:
            return None
        learnt = stall.timeouts.get(state(block.events))
        if learnt is None or block.quiet_seconds >= learnt:
            return None
        return (f"judged as a cut prefix: quiet for {block.quiet_seconds:g} s, normal blocks in its state pause "
                f"up to {learnt:g} s")

    def _unknown_events(self, block: spb.BlockSession) -> str | None:
        unknown = list(dict.fromkeys(e for e in block.events if e not in self.events))
        if not unknown:
            return None
        shown = ", ".join(repr(e[:40]) for e in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        return (f"block {block.block_id[:100]} has events model {self.artifact.version} does not know: {shown}; send "
                f"template ids (E1..E30, or 'unknown' for a line no template matches) as `logmesh ingest` assigns them")
