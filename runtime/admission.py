"""Who gets served when: capacity kept apart for health, short calls and streams, fair turns per connection,
and an idle timeout for streams, so that no load the server can queue is refused and no client starves another.

grpcio's sync server runs every call on a thread of its pool for the call's whole life, so a pool of N
threads is frozen by N streams that send nothing, health checks included; and its own limits refuse rather
than queue (HTTP/2 REFUSED_STREAM over grpc.max_concurrent_streams, RESOURCE_EXHAUSTED over
maximum_concurrent_rpcs). Here instead:

- health checks run on a pool of their own (grpcio's per-method `experimental_thread_pool`);
- unary calls run on a pool sized to --max-concurrent-rpcs and take one of `workers` work slots for their
  work; streaming calls run on another pool sized to --max-open-streams and take a slot (from a second set of
  `workers`) only while they work on a message, never while they wait for the client;
- waiting callers are granted slots round-robin per connection (`FairGate`): a connection with 64 calls in
  flight and one with 1 alternate, instead of the second waiting behind all 64;
- a client stream that sends nothing for --stream-idle-timeout is ended with DEADLINE_EXCEEDED saying so;
- past --max-concurrent-rpcs unary calls, or --max-open-streams streams, a call gets RESOURCE_EXHAUSTED at
  once (threads are the bound; these limits sit far above what a client uses).

Every refusal, cancellation, passed deadline, idle end and oversized message is counted and logged
(call_events.py).
"""
from __future__ import annotations

import collections
import contextvars
import functools
import queue
import threading
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc

from logmesh.runtime.call_events import CallEvents

HEALTH_PREFIX = "/grpc.health.v1.Health/"
HEALTH_THREADS = 4
SPARE_THREADS = 8  # beyond the limits, so a call over them still gets a thread to be refused on
_CODE_KINDS = {grpc.StatusCode.RESOURCE_EXHAUSTED: "refused", grpc.StatusCode.UNAUTHENTICATED: "refused",
               grpc.StatusCode.PERMISSION_DENIED: "refused", grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded"}


class FairGate:
    """`slots` callers hold a slot at once; the others wait in one queue per peer (connection), and a freed
    slot goes to the next peer in turn, so one peer's backlog cannot keep another peer waiting."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: collections.OrderedDict[str, collections.deque[threading.Event]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, peer: str, still_wanted: Callable[[], bool]) -> bool:
        """Waits for a slot; False (and no slot) once `still_wanted()` says the caller has gone."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiting.setdefault(peer, collections.deque()).append(turn)
        while not turn.wait(0.5):
            if not still_wanted():
                with self._lock:
                    if not turn.is_set():
                        line = self._waiting[peer]
                        line.remove(turn)
                        if not line:
                            del self._waiting[peer]
                        return False
                self.release()  # granted just as the caller left: pass it on
                return False
        return True

    def release(self) -> None:
        with self._lock:
            if not self._waiting:
                self._free += 1
                return
            peer, line = next(iter(self._waiting.items()))
            turn = line.popleft()
            if line:
                self._waiting.move_to_end(peer)  # this peer's next caller waits for every other peer's turn
            else:
                del self._waiting[peer]
            turn.set()


class _Bounded:
    """A count with a ceiling: how many calls of a kind are in the server."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.value = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.value >= self.limit:
                return False
            self.value += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.value -= 1


class _Call:
    """The call a handler thread is serving (a context variable: grpcio runs each call in its own context)."""

    def __init__(self, method: str, context: grpc.ServicerContext, events: CallEvents) -> None:
        self.method, self.context, self.events = method, context, events
        self.peer = context.peer()

    def note(self, kind: str, detail: str) -> None:
        self.events.record(kind, self.method, self.peer, detail)


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("logmesh_call", default=None)


def note(kind: str, detail: str) -> None:
    """Counts and logs `kind` (call_events.KINDS) for the call this thread serves, if any: for limits a
    handler enforces itself (a batch over --max-batch answered with a per-batch error)."""
    call = _current.get()
    if call is not None:
        call.note(kind, detail)


class Admission(grpc.ServerInterceptor):
    def __init__(self, workers: int, max_calls: int, max_streams: int, stream_idle_timeout: float,
                 events: CallEvents) -> None:
        self.events = events
        self.idle_timeout = stream_idle_timeout
        self._unary_slots, self._stream_slots = FairGate(workers), FairGate(workers)
        self._calls, self._streams = _Bounded(max_calls), _Bounded(max_streams)
        self.call_pool = futures.ThreadPoolExecutor(max_calls + SPARE_THREADS, thread_name_prefix="call")
        self._stream_pool = futures.ThreadPoolExecutor(max_streams + SPARE_THREADS, thread_name_prefix="stream")
        self._health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="health")

    def unary_calls_in_server(self) -> int:
        """How many unary calls are in the server now, working or waiting their turn."""
        return self._calls.value

    def streams_in_server(self) -> int:
        """How many streams hold a slot now (a cancelled stream keeps it until its handler returns)."""
        return self._streams.value

    def shutdown(self) -> None:
        for pool in (self.call_pool, self._stream_pool, self._health_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if method.startswith(HEALTH_PREFIX):  # Check, and Watch (non-blocking: it holds no thread)
            return _rebuild(handler, lambda behaviour: _on_pool(behaviour, self._health_pool))
        if handler.request_streaming or handler.response_streaming:
            return _rebuild(handler, lambda behaviour: _on_pool(self._streaming(behaviour, method, handler),
                                                                self._stream_pool))
        return _rebuild(handler, lambda behaviour: self._unary(behaviour, method))

    def _unary(self, behaviour: Callable, method: str) -> Callable:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(method, context, self.events)
            if not self._calls.enter():
                _refuse(call, f"{self._calls.limit} calls are in this server already (--max-concurrent-rpcs); "
                              "retry with backoff")
            try:
                with _watched(call):
                    if not self._unary_slots.acquire(call.peer, context.is_active):
                        context.abort(grpc.StatusCode.CANCELLED, "the caller left while the call waited its turn")
                    try:
                        return behaviour(request, context)
                    finally:
                        self._unary_slots.release()
            finally:
                self._calls.leave()
        return run

    def _streaming(self, behaviour: Callable, method: str, handler: grpc.RpcMethodHandler) -> Callable:
        def opened(context: grpc.ServicerContext) -> _Call:
            call = _Call(method, context, self.events)
            if not self._streams.enter():
                _refuse(call, f"{self._streams.limit} streams are open on this server already (--max-open-streams); "
                              "retry with backoff, or end idle streams")
            return call

        def paced(requests: Any, call: _Call) -> Any:
            return _Paced(requests, call, self._stream_slots, self.idle_timeout) if handler.request_streaming \
                else requests

        if not handler.response_streaming:  # client streaming, one response
            def run_unary(requests: Any, context: grpc.ServicerContext) -> Any:
                call = opened(context)
                stream = paced(requests, call)
                try:
                    with _watched(call):
                        return behaviour(stream, context)
                finally:
                    if isinstance(stream, _Paced):
                        stream.close()
                    self._streams.leave()
            return run_unary

        def run(request_or_requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = opened(context)
            stream = paced(request_or_requests, call)
            try:
                with _watched(call):
                    for response in behaviour(stream, context):
                        if isinstance(stream, _Paced):
                            stream.done()  # the message is answered: its work slot goes back before the send
                        yield response
            finally:
                if isinstance(stream, _Paced):
                    stream.close()
                self._streams.leave()
        return run


class _watched:
    """Counts a call that ends before its handler does (the client cancelled, or its deadline passed) and a
    handler that ends the call with a refusal or DEADLINE_EXCEEDED; makes the call current for `note`."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.finished = False

    def __enter__(self) -> "_watched":
        self._token = _current.set(self.call)
        self.call.context.add_callback(self._ended)
        return self

    def _ended(self) -> None:
        if not self.finished:
            passed = self.call.context.time_remaining() is not None and self.call.context.time_remaining() <= 0
            self.call.note("deadline_exceeded" if passed else "cancelled", "the call ended before the server answered")

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        self.finished = True
        _current.reset(self._token)
        code = self.call.context.code() if kind is not None else None
        if code in _CODE_KINDS and not getattr(exc, "logmesh_noted", False):
            self.call.note(_CODE_KINDS[code], _text(self.call.context.details()))


class _Paced:
    """A client stream's request iterator that (1) takes a work slot for each message it hands the handler,
    given back when the handler answers or asks for the next message, and (2) ends the call with
    DEADLINE_EXCEEDED when the client sends nothing for `idle_timeout` seconds.

    grpcio's request iterator blocks without a timeout, so a reader thread feeds it through a one-slot queue
    (reading ahead at most one message: flow control still holds the client back)."""

    _END = object()

    def __init__(self, requests: Iterator[Any], call: _Call, slots: FairGate, idle_timeout: float) -> None:
        self._requests, self._call, self._slots, self._idle = requests, call, slots, idle_timeout
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._holding = False
        self._reader: threading.Thread | None = None
        self._closed = threading.Event()

    def _read(self) -> None:
        try:
            for request in self._requests:
                if not self._put(("message", request)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # the call was cancelled: hand the handler grpcio's error
            self._put(("error", exc))

    def _put(self, item: tuple[str, Any]) -> bool:
        """Hands `item` to the handler; False once the handler is gone (then nobody takes it)."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "_Paced":
        return self

    def __next__(self) -> Any:
        self.done()
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name="stream-reader", daemon=True)
            self._reader.start()
        try:
            kind, value = self._queue.get(timeout=self._idle)
        except queue.Empty:
            detail = (f"the client sent nothing for {self._idle:g} s (--stream-idle-timeout), so the server ended "
                      "the stream to free its slot; open a new stream when there is data to send")
            self._call.note("idle_streams_ended", detail)
            abort_noted(self._call.context, grpc.StatusCode.DEADLINE_EXCEEDED, detail)
        if kind == "end":
            self._queue.put(("end", None))  # a handler that asks again sees the end again
            raise StopIteration
        if kind == "error":
            raise value
        if not self._slots.acquire(self._call.peer, self._call.context.is_active):
            self._call.context.abort(grpc.StatusCode.CANCELLED, "the caller left while the stream waited its turn")
        self._holding = True
        return value

    def done(self) -> None:
        if self._holding:
            self._holding = False
            self._slots.release()

    def close(self) -> None:
        self.done()
        self._closed.set()  # the reader stops at its next message, or when grpcio ends its iterator


class _Noted(Exception):
    logmesh_noted = True


def abort_noted(context: grpc.ServicerContext, code: grpc.StatusCode, detail: str) -> None:
    """context.abort, for an end already counted with `note` (so it is not counted again)."""
    try:
        context.abort(code, detail)
    except Exception as exc:
        raise _Noted(str(exc)) from None


def _refuse(call: _Call, detail: str) -> None:
    call.note("refused", detail)
    abort_noted(call.context, grpc.StatusCode.RESOURCE_EXHAUSTED, detail)


def _text(details: Any) -> str:
    return details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details or "")


def _on_pool(behaviour: Callable, pool: futures.ThreadPoolExecutor) -> Callable:
    """`behaviour` run on `pool` instead of the server's (grpcio reads `experimental_thread_pool` off it)."""
    @functools.wraps(behaviour)
    def run(*args: Any) -> Any:
        return behaviour(*args)
    run.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return run


def _rebuild(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    kind, behaviour = next((k, getattr(handler, k)) for k in ("unary_unary", "unary_stream", "stream_unary",
                                                               "stream_stream") if getattr(handler, k))
    make = {"unary_unary": grpc.unary_unary_rpc_method_handler, "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler}[kind]
    return make(wrap(behaviour), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
