"""Reading the scorer's anomaly history through its documented RPCs (blocking calls; the app runs them in
its thread pool).

ScorerService has no "get one entry" RPC, and ListAnomalies' page token is opaque, so one entry is found by
what WatchAnomalies promises: with after_id = N - 1 it first sends the oldest entry after N - 1 that the
history still holds, which is N itself unless N is gone. after_id 0 means "only new ones", so entry 1 is
found by paging ListAnomalies to its oldest page instead.
"""
from __future__ import annotations

import grpc

from logmesh.client import ScorerClient
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

#: How long a lookup waits for WatchAnomalies' first reply (it is sent at once when the entry is held).
FIND_SECONDS = 5.0


def newest_id(client: ScorerClient) -> int:
    """The history's newest id (0 when it is empty)."""
    page = client.anomalies(page_size=1)
    return page.anomalies[0].id if page.anomalies else 0


def find(client: ScorerClient, anomaly_id: int) -> score_pb2.Anomaly | None:
    """Entry `anomaly_id`, or None when the history does not hold it (never recorded, or dropped as oldest)."""
    if anomaly_id < 1 or anomaly_id > newest_id(client):
        return None
    if anomaly_id == 1:
        return _oldest_if_first(client)
    call = client.stub.WatchAnomalies(spb.WatchAnomaliesRequest(after_id=anomaly_id - 1), timeout=FIND_SECONDS)
    try:
        for reply in call:
            return reply.anomaly if reply.anomaly.id == anomaly_id else None
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        call.cancel()
    return None


def _oldest_if_first(client: ScorerClient) -> score_pb2.Anomaly | None:
    token, last = "", None
    while True:
        page = client.anomalies(page_size=1000, page_token=token)
        if page.anomalies:
            last = page.anomalies[-1]
        token = page.next_page_token
        if not token:
            return last if last is not None and last.id == 1 else None


def of_block(client: ScorerClient, block_id: str, limit: int = 200) -> list[score_pb2.Anomaly]:
    """The newest `limit` entries naming `block_id` (its verdicts and its flagged lines), oldest first."""
    entries, _ = client.list_anomalies(limit=limit, block_id=block_id)
    return entries[::-1]


def recent(client: ScorerClient, limit: int, min_score: float = 0.0, block_id: str = "",
           blocks_only: bool = False) -> list[score_pb2.Anomaly]:
    """The newest `limit` entries that pass the filters, newest first (blocks_only, which ListAnomalies lacks,
    is applied over at most 20 pages here)."""
    if not blocks_only:
        return client.list_anomalies(limit=limit, min_score=min_score, block_id=block_id)[0]
    out: list[score_pb2.Anomaly] = []
    token = ""
    for _ in range(20):
        page = client.anomalies(page_size=1000, page_token=token, min_score=min_score, block_id=block_id)
        out.extend(e for e in page.anomalies if e.HasField("block"))
        token = page.next_page_token
        if len(out) >= limit or not token:
            break
    return out[:limit]
