"""The live feed: one WatchAnomalies call per browser connection, as server-sent events.

Each anomaly is an `anomaly` event whose SSE `id:` is its history id, so a browser that reconnects (it does
by itself, `retry` ms after the stream ends) sends Last-Event-ID and the new call resumes with after_id:
nothing the scorer still holds is lost or shown twice. When the scorer goes away the stream sends a
`status` event saying so and ends; the browser's reconnect is the retry.

The gRPC client is blocking, so a thread per connection reads the call and hands entries to the event loop
through a bounded queue (a slow browser holds the call back instead of filling memory); when the browser
leaves, the call is cancelled, which ends the thread.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import AsyncIterator

import grpc
from sse_starlette.sse import ServerSentEvent

from logmesh.client import ScorerClient
from logmesh.console import views
from logmesh.v1 import scorer_service_pb2 as spb

log = logging.getLogger("logmesh.console.feed")

#: Milliseconds the browser waits before reconnecting after the stream ended.
RETRY_MS = 3000
#: Entries read ahead of a browser at most.
QUEUE = 64
_END, _LIVE = object(), object()


def status_event(state: str, detail: str) -> ServerSentEvent:
    return ServerSentEvent(json.dumps({"state": state, "detail": detail}), event="status", retry=RETRY_MS)


async def events(client: ScorerClient, request: spb.WatchAnomaliesRequest) -> AsyncIterator[ServerSentEvent]:
    """The SSE stream of one WatchAnomalies call, until the browser leaves or the call ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(QUEUE)
    stopped = threading.Event()
    call = client.stub.WatchAnomalies(request)

    def pump() -> None:
        outcome: object = _END
        try:
            call.initial_metadata()  # the scorer sends it once the subscription is live
            if not call.done():
                loop.call_soon_threadsafe(queue.put_nowait, _LIVE)
            for reply in call:
                while not room.acquire(timeout=1.0):
                    if stopped.is_set():
                        return
                loop.call_soon_threadsafe(queue.put_nowait, reply.anomaly)
        except grpc.RpcError as exc:
            outcome = exc
        if not stopped.is_set():
            loop.call_soon_threadsafe(queue.put_nowait, outcome)

    threading.Thread(target=pump, name="console-feed", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _LIVE:
                yield status_event("live", f"watching the scorer at {client.address}"
                                   + (f", resuming after #{request.after_id}" if request.after_id else ""))
                continue
            if item is _END:
                yield status_event("lost", "the scorer ended the stream (stopping?); reconnecting")
                return
            if isinstance(item, grpc.RpcError):
                code = item.code()
                log.info("feed ended", extra={"code": code.name, "details": item.details()})
                yield status_event("lost", f"{code.name}: {item.details()}; reconnecting")
                return
            room.release()
            yield ServerSentEvent(json.dumps(views.summary(item)), event="anomaly", id=str(item.id), retry=RETRY_MS)
    finally:
        stopped.set()
        call.cancel()
