"""Judging blocks with the artifact's block model."""
from __future__ import annotations

import grpc

from logmesh.runtime.grpc_server import item_error
from logmesh.scorer.artifacts import Artifact
from logmesh.scorer.block_model import EVENTS, THRESHOLD
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

MAX_EVENTS = 100_000  # a block with more lines than this is not an HDFS block


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
            elif len(block.events) > MAX_EVENTS:
                problem = f"block {block.block_id} has {len(block.events)} events; the limit is {MAX_EVENTS}"
            else:
                problem = self._unknown_events(block)
            if problem:
                result.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, problem))
            else:
                good.append((block, result))
        if good:
            sessions, closed = [list(b.events) for b, _ in good], [b.closed for b, _ in good]
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
                v.events.extend(block.events)
                v.kind = score_pb2.BLOCK_VERDICT_KIND_FINAL if block.closed else score_pb2.BLOCK_VERDICT_KIND_INTERIM
                if block.HasField("first_time"):
                    v.first_time.CopyFrom(block.first_time)
                if block.HasField("last_time"):
                    v.last_time.CopyFrom(block.last_time)
                v.anomalous_record_ids.extend(block.anomalous_record_ids)
                v.model_version = self.artifact.version
                v.label = block.label
        return results

    def _unknown_events(self, block: spb.BlockSession) -> str | None:
        unknown = list(dict.fromkeys(e for e in block.events if e not in self.events))
        if not unknown:
            return None
        shown = ", ".join(repr(e[:40]) for e in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        return (f"block {block.block_id[:100]} has events model {self.artifact.version} does not know: {shown}; send "
                f"template ids (E1..E30, or 'unknown' for a line no template matches) as `logmesh ingest` assigns them")
