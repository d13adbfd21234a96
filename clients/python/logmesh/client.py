"""Typed Python clients over the generated stubs.

    from logmesh.client import ScorerClient
    with ScorerClient("127.0.0.1:50052") as scorer:
        result = scorer.score_line("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block ...")
        print(result.verdict, result.score)

An address may name a pool of replicas: `127.0.0.1:50052,127.0.0.1:50062` (IP addresses, comma-separated),
a gRPC target such as `dns:///scorer.logmesh.svc:50052` (every address the name resolves to: a Kubernetes
headless Service) or `ipv4:10.0.0.1:50052,10.0.0.2:50052`. Calls are balanced over the replicas that are
connected (round_robin: each call, or each stream, goes to the next one), so N clients (the job's
executors) spread N streams over the pool; a call that fails UNAVAILABLE before the server answered (a
replica going down) is retried, on another replica when there is one.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import time
from typing import Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay,
                      wait_fixed)

from logmesh import vectors
from logmesh.security import ChannelSecurity
from logmesh.v1 import (embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc, log_record_pb2,
                        scorer_service_pb2 as spb, scorer_service_pb2_grpc as sgrpc, score_pb2)

DEFAULT_EMBEDDER = "127.0.0.1:50051"
DEFAULT_SCORER = "127.0.0.1:50052"
_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # a restarted server is found again within seconds (grpc's default backoff grows to 120 s)
            ("grpc.max_reconnect_backoff_ms", 5000)]
# Balancing and retries for every channel (gRPC service config). round_robin keeps a connection to each
# address the target resolves to and picks the next ready one per call; with one address it is what
# pick_first would do. The retry covers calls that failed UNAVAILABLE before any reply came back: a replica
# that went away (its connection reset) or was still starting; every RPC here is safe to repeat (the
# scorer and embedder only compute). A stream that already had replies is not retried by gRPC: the
# job retries its batch (streaming/retry.py).
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{}],  # every method
                      "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                                      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
}
_OPTIONS.append(("grpc.service_config", json.dumps(SERVICE_CONFIG)))
# Targets that already name a resolver (gRPC's naming: https://grpc.github.io/grpc/core/md_doc_naming.html).
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def channel_target(address: str) -> str:
    """The gRPC target for `address`: `host:port` and gRPC targets (`dns:///name:port`, `ipv4:...`) as
    they are; a comma-separated list of IP `addr:port`s as one `ipv4:` (or `ipv6:`) target. A list that
    names hosts is refused with ValueError (use dns:///NAME:PORT for a name that resolves to the replicas)."""
    address = address.strip()
    if not address:
        raise ValueError("empty server address: give HOST:PORT, a list IP:PORT,IP:PORT or dns:///NAME:PORT")
    if "," not in address or address.startswith(_SCHEMES):
        return address
    parts = [p.strip() for p in address.split(",") if p.strip()]
    families = {_ip_family(p, address) for p in parts}
    if len(families) > 1:
        raise ValueError(f"server list {address!r} mixes IPv4 and IPv6 addresses: gRPC balances over one family "
                         "per target; list one family, or use dns:///NAME:PORT")
    return f"{families.pop()}:{','.join(parts)}"


def _ip_family(part: str, address: str) -> str:
    host, sep, port = part.rpartition(":")
    problem = None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        problem = "needs IP:PORT"
    else:
        try:
            ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
            if ip.version == 6 and not host.startswith("["):
                problem = "writes an IPv6 address without [brackets]"
            else:
                return f"ipv{ip.version}"
        except ValueError:
            problem = "is not an IP address"
    raise ValueError(f"{part!r} in server list {address!r} {problem}: a list takes IP:PORT entries "
                     "(e.g. 127.0.0.1:50052,127.0.0.1:50062); for replicas behind a name use dns:///NAME:PORT")


#: Errors after which following the anomaly history retries (the scorer restarting, or busy); others mean
#: the call itself is wrong (bad credentials, a bad filter) and are raised.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.ABORTED}


class _StreamLost(Exception):
    """A followed stream that was live ended or broke with a _RETRYABLE code: subscribe again."""


def _follow(subscribe: Callable[[int, bool], grpc.Call], position: Callable[[object], int], after: int,
            label: str, address: str, on_reconnect: Callable[[str], None], retry_seconds: float) -> Iterator:  # type: ignore[type-arg]
    """The replies of `subscribe(after, wait_for_ready)`, forever: when a live stream ends or breaks with a
    _RETRYABLE code, subscribes again after the last position yielded, `retry_seconds` later (tenacity, without
    end). The first call fails fast and raises (a wrong address is an error, not an outage); later calls wait for
    the server to come back. `on_reconnect` hears the first subscription, each outage once and each return."""
    last, live, down = after, False, False

    def lost(state: RetryCallState) -> None:
        nonlocal down
        if not down:
            on_reconnect(f"lost the scorer at {address} ({state.outcome.exception()}); reconnecting ...")  # type: ignore[union-attr]
            down = True

    for attempt in Retrying(retry=retry_if_exception_type(_StreamLost), wait=wait_fixed(retry_seconds),
                            before_sleep=lost):
        with attempt:  # a caller that stops early (GeneratorExit) is not retried: it passes through
            call = subscribe(last, live)
            try:
                try:
                    call.initial_metadata()  # the scorer sends it once the subscription is live
                    if call.done() and call.code() != grpc.StatusCode.OK:
                        raise call  # type: ignore[misc]  # failed before it was live (the call is its RpcError)
                    if down:
                        on_reconnect(f"reconnected; resuming after {label}{last}")
                        down = False
                    elif not live:
                        on_reconnect(f"subscribed at {address}" + (f" after {label}{last}" if last else ""))
                    live = True
                    for reply in call:
                        last = position(reply)
                        yield reply
                except grpc.RpcError as exc:
                    if not live or exc.code() not in _RETRYABLE:
                        raise
                    raise _StreamLost(f"{exc.code().name}: {exc.details()}") from exc
            finally:
                call.cancel()  # a no-op once it ended; frees the server when our caller stops early
            raise _StreamLost("the scorer ended the stream (stopping)")


class ItemFailed(Exception):
    """One item of a batch came back with a per-item error."""

    def __init__(self, record_id: str, code: int, message: str) -> None:
        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
        super().__init__(f"{record_id or '<item>'}: {name}: {message}")
        self.record_id, self.code, self.message = record_id, code, message


def _chunks(items: Iterable, size: int) -> Iterator[tuple[int, list]]:  # type: ignore[type-arg]
    iterator = iter(items)
    for batch_id in itertools.count():
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield batch_id, chunk


def _results(replies: Iterable) -> Iterator:  # type: ignore[type-arg]
    """Per-item results of a batched stream; a whole-batch error raises ItemFailed."""
    for reply in replies:
        if reply.HasField("error"):
            raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
        yield from reply.results


class _Client:
    service = ""

    def __init__(self, address: str, timeout: float = 30.0, security: ChannelSecurity | None = None) -> None:
        """`security` defaults to the LOGMESH_TLS_* / LOGMESH_TOKEN environment (security.py)."""
        self.address = address
        self.timeout = timeout
        self.security = security or ChannelSecurity.from_env()
        self.channel = self.security.channel(channel_target(address), _OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def health(self, service: str | None = None, timeout: float = 5.0) -> str:
        """"SERVING", "NOT_SERVING", ... for the service (default: this client's)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=self.service if service is None else service),
                                   timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Blocks until the health check says SERVING (for a pool: the replica that answered); raises
        TimeoutError with the last status."""
        deadline = time.monotonic() + timeout

        def check() -> str:
            try:
                return self.health(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        def not_serving(state: RetryCallState) -> None:
            raise TimeoutError(f"{self.service} at {self.address} not SERVING after {timeout:.0f}s "
                               f"(last: {state.outcome.result()})")  # type: ignore[union-attr]
        Retrying(retry=retry_if_result(lambda status: status != "SERVING"), wait=wait_fixed(0.1),
                 stop=stop_after_delay(timeout), retry_error_callback=not_serving)(check)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbedderClient(_Client):
    service = "logmesh.v1.EmbedderService"

    def __init__(self, address: str = DEFAULT_EMBEDDER, timeout: float = 30.0,
                 security: ChannelSecurity | None = None) -> None:
        super().__init__(address, timeout, security)
        self.stub = egrpc.EmbedderServiceStub(self.channel)

    def embed(self, text: str, record_id: str = "") -> np.ndarray:
        reply = self.stub.Embed(epb.EmbedRequest(record_id=record_id, text=text), timeout=self.timeout)
        return vectors.from_message(reply.embedding)

    def embed_each(self, texts: Sequence[str], batch_size: int = 256,
                   timeout: float | None = None) -> tuple[np.ndarray, dict[int, ItemFailed]]:
        """Like embed_many, but a bad item does not fail the rest: (matrix with zero rows where an item
        failed, {position: ItemFailed}). A whole-batch error still raises ItemFailed."""
        batches = [epb.EmbedStreamRequest(batch_id=b, items=[epb.EmbedItem(record_id=str(i), text=t)
                                                             for i, t in enumerate(texts[s:s + batch_size], s)])
                   for b, s in enumerate(range(0, len(texts), batch_size))]
        matrix = np.zeros((len(texts), 384), np.float32)
        failed: dict[int, ItemFailed] = {}
        for reply in self.stub.EmbedStream(iter(batches), timeout=timeout or self.timeout):
            if reply.HasField("error"):
                raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
            for result in reply.results:
                position = int(result.record_id)
                if result.HasField("error"):
                    failed[position] = ItemFailed(result.record_id, result.error.code, result.error.message)
                else:
                    matrix[position] = vectors.from_message(result.embedding)
        return matrix, failed

    def embed_many(self, texts: Sequence[str], batch_size: int = 256, timeout: float | None = None) -> np.ndarray:
        """(len(texts), dim) float32, over one EmbedStream; raises ItemFailed on the first bad item."""
        batches = [epb.EmbedStreamRequest(batch_id=b, items=[epb.EmbedItem(record_id=str(i), text=t)
                                                             for i, t in enumerate(texts[s:s + batch_size], s)])
                   for b, s in enumerate(range(0, len(texts), batch_size))]
        rows: list[np.ndarray] = []
        for reply in self.stub.EmbedStream(iter(batches), timeout=timeout or self.timeout):
            if reply.HasField("error"):
                raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
            for result in reply.results:
                if result.HasField("error"):
                    raise ItemFailed(result.record_id, result.error.code, result.error.message)
                rows.append(vectors.from_message(result.embedding))
        return np.stack(rows) if rows else np.zeros((0, 384), np.float32)


class ScorerClient(_Client):
    service = "logmesh.v1.ScorerService"

    def __init__(self, address: str = DEFAULT_SCORER, timeout: float = 30.0,
                 security: ChannelSecurity | None = None) -> None:
        super().__init__(address, timeout, security)
        self.stub = sgrpc.ScorerServiceStub(self.channel)
        self._blocks: tuple[grpc.Channel, sgrpc.ScorerServiceStub] | None = None

    def _blocks_stub(self) -> sgrpc.ScorerServiceStub:
        """Block streams go over a channel of their own (opened on first use). On one round_robin channel a
        job task's line stream and block stream alternate, so over two replicas one scored every line and
        the other every block (tests/integration/test_cluster.py); apart, each kind is spread by itself."""
        if self._blocks is None:
            channel = self.security.channel(channel_target(self.address), _OPTIONS)
            self._blocks = (channel, sgrpc.ScorerServiceStub(channel))
        return self._blocks[1]

    def close(self) -> None:
        super().close()
        if self._blocks is not None:
            self._blocks[0].close()

    def score_line(self, raw_line: str) -> score_pb2.ScoreResult:
        """Scores one raw loghub HDFS line (the scorer parses it)."""
        return self.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(raw_line=raw_line)), timeout=self.timeout).result

    def score_record(self, record: log_record_pb2.LogRecord) -> score_pb2.ScoreResult:
        return self.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(record=record)), timeout=self.timeout).result

    def score_stream(self, items: Iterable[spb.ScoreItem], batch_size: int = 256,
                     timeout: float | None = None) -> Iterator[spb.ScoreItemResult]:
        """Scores items over one ScoreStream in batches; yields one ScoreItemResult per item, in order.
        A whole-batch error (over the server's limit) is raised as ItemFailed."""
        requests = (spb.ScoreStreamRequest(batch_id=i, items=chunk) for i, chunk in _chunks(items, batch_size))
        yield from _results(self.stub.ScoreStream(requests, timeout=timeout))

    def score_blocks(self, blocks: Iterable[spb.BlockSession], batch_size: int = 256,
                     timeout: float | None = None) -> Iterator[spb.ScoreBlockResult]:
        """Judges blocks over one ScoreBlockStream; one ScoreBlockResult per block, in order."""
        requests = (spb.ScoreBlockStreamRequest(batch_id=i, blocks=chunk) for i, chunk in _chunks(blocks, batch_size))
        yield from _results(self._blocks_stub().ScoreBlockStream(requests, timeout=timeout))

    def score_lines(self, raw_lines: Iterable[str], batch_size: int = 256) -> Iterator[spb.ScoreItemResult]:
        return self.score_stream((spb.ScoreItem(raw_line=line) for line in raw_lines), batch_size)

    def watch(self, min_score: float = 0.0, block_id: str = "", component: str = "", blocks_only: bool = False,
              timeout: float | None = None, after_id: int = 0) -> Iterator[score_pb2.Anomaly]:
        """Anomalies as the scorer records them (with `after_id`, first those recorded after that id); runs
        until cancelled, the server goes away or `timeout` passes."""
        request = spb.WatchAnomaliesRequest(min_score=min_score, block_id=block_id, component=component,
                                            blocks_only=blocks_only, after_id=after_id)
        for reply in self.stub.WatchAnomalies(request, timeout=timeout):
            yield reply.anomaly

    def follow(self, min_score: float = 0.0, block_id: str = "", component: str = "", blocks_only: bool = False,
               after_id: int = 0, on_reconnect: Callable[[str], None] = lambda status: None,
               retry_seconds: float = 1.0) -> Iterator[score_pb2.Anomaly]:
        """Like watch, forever: when the scorer restarts (or the stream breaks) it resubscribes after the last
        id it yielded, so nothing the scorer still holds is lost or repeated (a scorer with a --state-dir keeps
        its ids across a restart). `on_reconnect` hears when the first subscription is live, and what happened
        once per outage and once on return."""
        def subscribe(after: int, wait_for_ready: bool):  # type: ignore[no-untyped-def]
            return self.stub.WatchAnomalies(spb.WatchAnomaliesRequest(
                min_score=min_score, block_id=block_id, component=component, blocks_only=blocks_only,
                after_id=after), wait_for_ready=wait_for_ready)
        for reply in _follow(subscribe, lambda reply: reply.anomaly.id, after_id, "#", self.address, on_reconnect,
                             retry_seconds):
            yield reply.anomaly

    def stats(self) -> spb.GetStatsResponse:
        return self.stub.GetStats(spb.GetStatsRequest(), timeout=self.timeout)

    def anomalies(self, page_size: int = 50, page_token: str = "", min_score: float = 0.0,
                  block_id: str = "") -> spb.ListAnomaliesResponse:
        """One page, newest first; the server may end it early (a page holds at most 4 MiB)."""
        return self.stub.ListAnomalies(spb.ListAnomaliesRequest(page_size=page_size, page_token=page_token,
                                                                min_score=min_score, block_id=block_id),
                                       timeout=self.timeout)

    def list_anomalies(self, limit: int = 50, page_token: str = "", min_score: float = 0.0,
                       block_id: str = "") -> tuple[list[score_pb2.Anomaly], str]:
        """Up to `limit` entries, newest first, following next_page_token over pages the server cut short;
        and the token to continue with ("" when there is nothing older)."""
        out: list[score_pb2.Anomaly] = []
        while len(out) < limit:
            page = self.anomalies(min(limit - len(out), 1000), page_token, min_score, block_id)
            out.extend(page.anomalies)
            page_token = page.next_page_token
            if not page_token:
                break
        return out, page_token



class IncidentClient(_Client):
    """IncidentService, served by the scorer: incidents grouped from its anomaly history."""
    service = "logmesh.v1.IncidentService"

    def __init__(self, address: str = DEFAULT_SCORER, timeout: float = 30.0,
                 security: ChannelSecurity | None = None) -> None:
        from logmesh.v1 import incident_service_pb2_grpc as igrpc
        super().__init__(address, timeout, security)
        self.stub = igrpc.IncidentServiceStub(self.channel)

    def page(self, page_size: int = 50, page_token: str = "", state: int = 0, include_suppressed: bool = False):  # type: ignore[no-untyped-def]
        """One ListIncidents page, most recently changed first."""
        from logmesh.v1 import incident_service_pb2 as ipb
        return self.stub.ListIncidents(ipb.ListIncidentsRequest(page_size=page_size, page_token=page_token, state=state,
                                                                include_suppressed=include_suppressed),
                                       timeout=self.timeout)

    def list(self, limit: int = 50, page_token: str = "", state: int = 0, include_suppressed: bool = False):  # type: ignore[no-untyped-def]
        """Up to `limit` incidents over pages the server cut short, and the token to continue with ("" at the end)."""
        out: list = []
        while len(out) < limit:
            page = self.page(min(limit - len(out), 500), page_token, state, include_suppressed)
            out.extend(page.incidents)
            page_token = page.next_page_token
            if not page_token:
                break
        return out, page_token

    def get(self, incident_id: str):  # type: ignore[no-untyped-def]
        from logmesh.v1 import incident_service_pb2 as ipb
        return self.stub.GetIncident(ipb.GetIncidentRequest(incident_id=incident_id), timeout=self.timeout).incident

    def watch(self, after_update_id: int = 0, timeout: float | None = None) -> Iterator:  # type: ignore[type-arg]
        """Incident changes as they happen (with `after_update_id`, first every change after it, oldest first),
        until cancelled, the server goes away or `timeout` passes."""
        from logmesh.v1 import incident_service_pb2 as ipb
        stream = self.stub.WatchIncidents(ipb.WatchIncidentsRequest(after_update_id=after_update_id), timeout=timeout)
        try:
            for reply in stream:
                yield reply.incident
        finally:
            stream.cancel()

    def follow(self, after_update_id: int = 0, on_reconnect: Callable[[str], None] = lambda status: None,
               retry_seconds: float = 1.0) -> Iterator:  # type: ignore[type-arg]
        """Like watch, forever: after the scorer restarts it resubscribes after the last update id yielded (the
        incidents topic keeps them), so no change is lost or repeated."""
        from logmesh.v1 import incident_service_pb2 as ipb
        def subscribe(after: int, wait_for_ready: bool):  # type: ignore[no-untyped-def]
            return self.stub.WatchIncidents(ipb.WatchIncidentsRequest(after_update_id=after),
                                            wait_for_ready=wait_for_ready)
        for reply in _follow(subscribe, lambda reply: reply.incident.update_id, after_update_id, "update ",
                             self.address, on_reconnect, retry_seconds):
            yield reply.incident
