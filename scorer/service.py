"""ScorerService over gRPC: Score, ScoreStream, ScoreBlock(Stream), ListAnomalies, WatchAnomalies, GetStats.

Scoring is pure: Score* compute verdicts and record nothing. The anomaly history ListAnomalies and
WatchAnomalies serve is what the streaming job committed to its anomalies topic, read by the history service
this process hosts (scorer/history_service.py), with similar past cases from the vector store."""
from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import grpc
import numpy as np

from logmesh.runtime.call_events import CallEvents
from logmesh.client import EmbedderClient
from logmesh.runtime.grpc_server import (Limits, Server, ServerSecurity, Undecodable, batch_problem, item_error,
                                 reject_undecodable, status_code, time_left)
from logmesh.runtime.replies import split_replies
from logmesh.scorer.block_scorer import BlockScorer
from logmesh.scorer.engine import ANOMALY, LineScorer
from logmesh.scorer.history import DEFAULT_HISTORY_BYTES, AnomalyHistory
from logmesh.scorer.history_service import AnomalyFeed
from logmesh.scorer.model_manager import ModelManager
from logmesh.scorer.readiness import EmbedderProbe, EmbedderUnreachable
from logmesh.scorer.state import StateDir
from logmesh.scorer import prometheus_metrics as scorer_metrics
from logmesh.scorer.stats import ScorerStats
from logmesh.v1 import common_pb2, score_pb2, scorer_service_pb2 as spb

if TYPE_CHECKING:
    from logmesh.scorer.analyst.feedback import FeedbackBook
    from logmesh.scorer.analyst.incidents import IncidentBook
    from logmesh.scorer.analyst.outputs import IncidentOutputs
    from logmesh.scorer.analyst.summaries import Summarizer
    from logmesh.scorer.similar import SimilarCases

log = logging.getLogger("logmesh.scorer")
SERVICE = spb.DESCRIPTOR.services_by_name["ScorerService"]
MAX_PAGE = 1000
COUNTERS = ("lines_scored", "line_anomalies", "items_rejected", "blocks_scored", "block_anomalies")


class ScorerServicer:
    def __init__(self, models: ModelManager, limits: Limits, history_bytes: int = DEFAULT_HISTORY_BYTES,
                 state: StateDir | None = None) -> None:
        """With `state`, the history (entries, ids, topic positions) and the counters are reloaded from it and
        kept there (scorer/state.py). `feed` (set by serve()) fills the history from the anomalies topic."""
        self.models = models
        self.limits = limits
        self.state = state
        self.history = AnomalyHistory(history_bytes, store=state.history if state else None,
                                      positions=state.positions if state else None)
        self.feed: AnomalyFeed | None = None
        self.feedback: "FeedbackBook | None" = None  # set by serve() with a feedback topic
        self.incidents: "IncidentBook | None" = None  # set by serve() with an incidents topic
        self.summarizer: "Summarizer | None" = None  # set by serve() with the incidents (GetStats.summaries)
        self.stats = ScorerStats()
        scorer_metrics.track(self)  # /metrics reads self.stats, the model and the history at scrape time
        self.max_watchers = max(1, limits.workers // 2)  # each watcher holds a worker thread
        self.embedder_probe: EmbedderProbe | None = None  # set by serve(); GetStats reports it
        self.call_events: CallEvents | None = None  # the server's refused/cancelled/... counts, set by serve()
        self._watchers = 0
        self._watch_lock = threading.Lock()
        self._saved: tuple[int, ...] = ()
        self._closed = threading.Event()
        self.stopping = threading.Event()  # set when the server stops: watchers end instead of holding its grace
        if state is not None:
            for name, value in state.counters.load().items():
                if name in COUNTERS:
                    setattr(self.stats, name, value)
            self._saved = self._counters()
            threading.Thread(target=self._keep_counters, name="counters", daemon=True).start()

    def _counters(self) -> tuple[int, ...]:
        return tuple(getattr(self.stats, name) for name in COUNTERS)

    def save_counters(self) -> None:
        current = self._counters()
        if self.state is not None and current != self._saved:
            self.state.counters.save(dict(zip(COUNTERS, current)))
            self._saved = current

    def _keep_counters(self, interval: float = 1.0) -> None:
        while not self._closed.wait(interval):
            try:
                self.save_counters()
            except OSError as exc:
                log.warning("counters not saved", extra={"error": str(exc)})

    def close(self) -> None:
        """Saves the counters and releases the state dir (after the server stopped); idempotent."""
        with self._watch_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        if self.incidents is not None:
            self.incidents.stop()  # before the state dir goes: its vector store lives there
        if self.feed is not None:
            self.feed.stop()
            if self.feed.similar is not None:
                self.feed.similar.store.close()
        if self.state is not None:
            self.save_counters()
            self.state.close()

    def _scorer(self, context: grpc.ServicerContext) -> LineScorer:
        scorer = self.models.scorer
        if scorer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"no model is serving: {self.models.status}")
        return scorer  # type: ignore[return-value]

    def _score(self, items: list[spb.ScoreItem], context: grpc.ServicerContext) -> list[spb.ScoreItemResult]:
        started = time.perf_counter()
        remaining = time_left(context)
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before scoring began")
        results = self._scorer(context).score(items, remaining)  # verdicts only: nothing is recorded
        flagged = sum(1 for r in results if r.HasField("result") and r.result.verdict == ANOMALY)
        rejected = sum(1 for r in results if r.HasField("error"))
        self.stats.record(len(results) - rejected, flagged, rejected, time.perf_counter() - started)
        return results

    def Score(self, request: spb.ScoreRequest, context: grpc.ServicerContext) -> spb.ScoreResponse:
        reject_undecodable(request, context)
        [result] = self._score([request.item], context)
        if result.HasField("error"):
            context.abort(status_code(result.error.code), result.error.message)
        return spb.ScoreResponse(result=result.result)

    def ScoreStream(self, requests: Iterator[spb.ScoreStreamRequest],
                    context: grpc.ServicerContext) -> Iterator[spb.ScoreStreamResponse]:
        for request in requests:
            if isinstance(request, Undecodable):
                yield spb.ScoreStreamResponse(error=item_error(grpc.StatusCode.INVALID_ARGUMENT, request.reason))
                continue
            too_big = batch_problem(len(request.items), self.limits)
            if too_big:
                yield spb.ScoreStreamResponse(batch_id=request.batch_id,
                                              error=item_error(grpc.StatusCode.INVALID_ARGUMENT, too_big))
                continue
            yield from split_replies(
                self._score(list(request.items), context),
                lambda chunk: spb.ScoreStreamResponse(batch_id=request.batch_id, results=chunk),
                self.limits.max_message_bytes, _too_large(spb.ScoreItemResult, "record_id"))

    def _blocks(self, context: grpc.ServicerContext) -> BlockScorer:
        scorer = self.models.block_scorer
        if scorer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"no model is serving: {self.models.status}")
        return scorer  # type: ignore[return-value]

    def _score_blocks(self, blocks: list[spb.BlockSession], context: grpc.ServicerContext) -> list[spb.ScoreBlockResult]:
        # pure: FINAL for a closed block, INTERIM otherwise; ALERT is the streaming job's (it keeps alert status)
        results = self._blocks(context).score(blocks)
        judged = [r.verdict for r in results if r.HasField("verdict")]
        flagged = sum(v.verdict == ANOMALY for v in judged)
        kinds = collections.Counter(("anomaly" if v.verdict == ANOMALY else "normal", v.evidence_kind or "none")
                                    for v in judged)
        self.stats.record_blocks(len(judged), flagged, len(results) - len(judged), kinds)
        return results

    def ScoreBlock(self, request: spb.ScoreBlockRequest, context: grpc.ServicerContext) -> spb.ScoreBlockResponse:
        reject_undecodable(request, context)
        [result] = self._score_blocks([request.block], context)
        if result.HasField("error"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.error.message)
        return spb.ScoreBlockResponse(verdict=result.verdict)

    def ScoreBlockStream(self, requests: Iterator[spb.ScoreBlockStreamRequest],
                         context: grpc.ServicerContext) -> Iterator[spb.ScoreBlockStreamResponse]:
        for request in requests:
            if isinstance(request, Undecodable):
                yield spb.ScoreBlockStreamResponse(error=item_error(grpc.StatusCode.INVALID_ARGUMENT, request.reason))
                continue
            too_big = batch_problem(len(request.blocks), self.limits, "blocks")
            if too_big:
                yield spb.ScoreBlockStreamResponse(batch_id=request.batch_id,
                                                   error=item_error(grpc.StatusCode.INVALID_ARGUMENT, too_big))
                continue
            yield from split_replies(
                self._score_blocks(list(request.blocks), context),
                lambda chunk: spb.ScoreBlockStreamResponse(batch_id=request.batch_id, results=chunk),
                self.limits.max_message_bytes, _too_large(spb.ScoreBlockResult, "block_id"))

    def ListAnomalies(self, request: spb.ListAnomaliesRequest,
                      context: grpc.ServicerContext) -> spb.ListAnomaliesResponse:
        reject_undecodable(request, context)
        before = None
        if request.page_token:
            if not request.page_token.isdigit():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"page_token {request.page_token!r} is not one this server issued")
            before = int(request.page_token)
        size = min(request.page_size or 50, MAX_PAGE)
        # at most 4 MiB a page (every entry is at most 128 KiB): a client follows next_page_token for the rest
        entries, next_id = self.history.page(size, before, request.min_score, request.block_id)
        return spb.ListAnomaliesResponse(anomalies=entries, next_page_token=str(next_id) if next_id else "")

    def WatchAnomalies(self, request: spb.WatchAnomaliesRequest,
                       context: grpc.ServicerContext) -> Iterator[spb.WatchAnomaliesResponse]:
        reject_undecodable(request, context)
        last = self.history.last_id  # by default a watcher sees what is recorded from now on
        if request.after_id and request.after_id <= last:
            last = request.after_id  # a watcher resuming: what it has not seen yet, if still held
        elif request.after_id:
            # ids beyond this history's: it restarted without its state (no --state-dir), all it holds is new
            last = 0
        with self._watch_lock:
            if self._watchers >= self.max_watchers:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self._watchers} watchers already connected; the limit is {self.max_watchers}")
            self._watchers += 1
        try:
            context.send_initial_metadata(())  # tells a client the subscription is live before any entry
            while context.is_active() and not self.stopping.is_set():
                entries, last = self.history.wait_after(last, timeout=1.0)
                for entry in entries:
                    if _matches(entry, request):
                        yield spb.WatchAnomaliesResponse(anomaly=entry)
        finally:
            with self._watch_lock:
                self._watchers -= 1

    def GetStats(self, request: spb.GetStatsRequest, context: grpc.ServicerContext) -> spb.GetStatsResponse:
        reject_undecodable(request, context)
        p50, p99 = self.stats.latency_ms()
        reply = spb.GetStatsResponse(
            lines_scored=self.stats.lines_scored, line_anomalies=self.stats.line_anomalies,
            items_rejected=self.stats.items_rejected, latency_p50_ms=p50, latency_p99_ms=p99,
            uptime_seconds=self.stats.uptime(), lines_per_second=self.stats.lines_per_second(),
            model_status=self.models.status, blocks_scored=self.stats.blocks_scored,
            block_anomalies=self.stats.block_anomalies)
        scorer = self.models.scorer
        if scorer is not None:
            reply.model_version = scorer.artifact.version
            reply.model_members.extend(scorer.members)
            reply.model_loaded_time.FromSeconds(int(self.models.loaded_at or 0))
        dead_letters = self.stats.dead_letter_count()
        if dead_letters is not None:
            reply.dead_letters = dead_letters
        if self.embedder_probe is not None:
            reply.embedder_address, reply.embedder_status = self.embedder_probe.address, self.embedder_probe.status
        if self.call_events is not None:
            reply.calls.CopyFrom(common_pb2.CallCounts(**self.call_events.counts()))
        reply.history_status = self.feed.status if self.feed is not None else "off"
        reply.history_entries = len(self.history)
        if self.summarizer is not None:
            reply.summaries.CopyFrom(self.summarizer.counts())
        return reply


def _too_large(result_cls: type, id_field: str):  # type: ignore[no-untyped-def]
    """A per-item error standing in for a result no message can carry."""
    def error(result, size: int):  # type: ignore[no-untyped-def]
        return result_cls(**{id_field: getattr(result, id_field)[:256]}, error=item_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the result is {size} bytes, over the message limit (--max-message-bytes); send a shorter "
            f"{id_field} or fewer block ids / events in one item"))
    return error


def _matches(entry: score_pb2.Anomaly, request: spb.WatchAnomaliesRequest) -> bool:
    if entry.HasField("line"):
        line = entry.line
        return (not request.blocks_only and line.score >= request.min_score
                and (not request.block_id or request.block_id in line.block_ids)
                and (not request.component or request.component == line.component))
    block = entry.block
    return block.score >= request.min_score and (not request.block_id or request.block_id == block.block_id)


def serve(port: int, model_dir: Path, embedder: str, host: str = "127.0.0.1", limits: Limits = Limits(),
          reload_interval: float = 5.0, security: ServerSecurity | None = None,
          kafka_bootstrap: str | None = None, dlq_topic: str | None = None, state_dir: Path | None = None,
          history_bytes: int = DEFAULT_HISTORY_BYTES, cache_bytes: int | None = None,
          anomalies_topic: str | None = None, kafka_options: Mapping[str, str] | None = None,
          qdrant_url: str | None = None, qdrant_api_key: str | None = None,
          feedback_topic: str | None = None, incidents_topic: str | None = None,
          incident_window_s: float = 300.0, incident_outputs: "IncidentOutputs | None" = None,
          incident_book: str | None = None, incident_lease_timeout_s: float = 10.0) -> Server:
    """Starts the scorer; it stays NOT_SERVING (and says why) until an artifact loads. With both
    `kafka_bootstrap` and `dlq_topic`, GetStats also reports the dead-letter topic's message count; with both
    `kafka_bootstrap` and `anomalies_topic` the anomaly history reads that topic (librdkafka `kafka_options`
    for its consumer), with similar past cases from the Qdrant server at `qdrant_url` when given. With `state_dir` the
    history and counters survive a restart (raises StateError when the folder is unusable or another scorer
    holds it). `history_bytes` bounds the history, `cache_bytes` the shape caches. With `kafka_bootstrap` and
    `feedback_topic` it serves FeedbackService too (scorer/analyst/feedback.py): labels kept in that topic,
    suppressions marked on the history's entries as they are served. With the history and `incidents_topic` it
    serves IncidentService (scorer/analyst/incidents.py): the history's alerts grouped into incidents (grouped
    within `incident_window_s` of event time), kept in that compacted topic, each summarised and notified as
    `incident_outputs` says (scorer/analyst/outputs.py; `logmesh serve scorer` always passes one: without
    --llm-url the summaries are the fallback; None: no summaries, no notifications). Replicas that pass one
    `incident_book` name share one book: the one holding its lease owns it, the others follow and serve reads
    (a dead owner's lease passes on after `incident_lease_timeout_s`; scorer/analyst/incident_lease.py)."""
    client = EmbedderClient(embedder, timeout=30.0)
    holder: dict[str, Server] = {}

    def ready() -> None:  # SERVING: a model is loaded and the embedder answers SERVING (scorer/readiness.py);
        if "server" in holder:  # the server-wide status (liveness) follows the model alone
            loaded = models.scorer is not None
            holder["server"].set_serving(loaded and probe.reachable, live=loaded)

    probe = EmbedderProbe(client, ready)

    def embed(shapes: list[str], timeout: float | None) -> np.ndarray:
        try:
            return client.embed_many(shapes, timeout=timeout)  # the caller's deadline bounds the embedder too
        except grpc.RpcError as exc:
            probe.poke()
            raise EmbedderUnreachable(embedder, exc) from exc

    models = ModelManager(model_dir, embed, limits, on_change=lambda ok: ready(),
                          cache_bytes=cache_bytes)
    state = StateDir(state_dir) if state_dir else None
    servicer = ScorerServicer(models, limits, history_bytes, state)
    servicer.embedder_probe = probe
    if kafka_bootstrap and dlq_topic:
        from logmesh.scorer.dead_letters import DeadLetterCount
        servicer.stats.dead_letters = DeadLetterCount(kafka_bootstrap, dlq_topic, kafka_options=kafka_options)
    if kafka_bootstrap and anomalies_topic:
        similar = _similar_cases(qdrant_url, qdrant_api_key, models, embed) if qdrant_url else None
        servicer.feed = AnomalyFeed(servicer.history, kafka_bootstrap, anomalies_topic, kafka_options, similar)
    services: list = [(SERVICE, servicer)]
    if kafka_bootstrap and feedback_topic:
        services.append(_feedback(servicer, kafka_bootstrap, feedback_topic, kafka_options, security))
    if kafka_bootstrap and anomalies_topic and incidents_topic:
        services.append(_incidents(servicer, kafka_bootstrap, incidents_topic, state_dir, models, embed, kafka_options,
                                   qdrant_url, qdrant_api_key, incident_window_s, incident_book,
                                   incident_lease_timeout_s))
    try:
        server = holder["server"] = Server(services, port, host, limits, security)
    except BaseException:
        servicer.close()
        if servicer.feedback is not None:
            servicer.feedback.close()
        raise
    stop = server.stop

    def stop_watchers_first(grace: float = 10.0) -> None:  # watchers end at once instead of holding the grace
        servicer.stopping.set()
        stop(grace)
    server.stop = stop_watchers_first  # type: ignore[method-assign]
    server.on_stop(servicer.close)  # after the last call: the counters' final values, the state dir's lock
    if servicer.feedback is not None:
        server.on_stop(servicer.feedback.close)
        servicer.feedback.start()
    servicer.call_events = server.events
    models.refresh()
    if servicer.feed is not None:
        servicer.feed.start()
    if servicer.incidents is not None and incident_outputs is not None:
        from logmesh.scorer.analyst.outputs import wire
        servicer.summarizer, closers = wire(servicer.incidents, incident_outputs, state_dir)
        for close in closers:
            server.on_stop(close)
    if servicer.incidents is not None:
        servicer.incidents.start()  # with or without outputs: the book groups either way
    if models.scorer is None:
        log.warning("scorer NOT_SERVING", extra={"reason": models.status})
    models.watch(reload_interval)
    server.start()
    server.on_stop(probe.stop)
    probe.start()
    log.info("scorer listening", extra={"address": server.address, "model_dir": str(model_dir),
                                        "embedder": embedder, "model": models.scorer and models.scorer.artifact.version})
    return server


def _feedback(servicer: ScorerServicer, bootstrap: str, topic: str, kafka_options: Mapping[str, str] | None,
              security: ServerSecurity | None):  # type: ignore[no-untyped-def]
    """The FeedbackBook over `topic` (servicer.feedback; the IncidentBook wires its get and refresh into it)
    and its FeedbackService; the history's served entries are marked by it."""
    from logmesh.scorer.analyst.feedback import FeedbackBook
    from logmesh.scorer.analyst.feedback_service import SERVICE as FEEDBACK_SERVICE, FeedbackServicer
    from logmesh.scorer.analyst.feedback_topic import FeedbackTopic
    book = servicer.feedback = FeedbackBook(FeedbackTopic(bootstrap, topic, kafka_options), servicer.history.find)
    servicer.history.mark = book.suppressing_anomaly
    servicer.history.on_recorded = book.count_recorded
    return FEEDBACK_SERVICE, FeedbackServicer(book, tokens=bool(security and security.tokens))


def _incidents(servicer: ScorerServicer, bootstrap: str, topic: str, state_dir: Path | None, models: ModelManager,
               embed, kafka_options: Mapping[str, str] | None, qdrant_url: str | None, qdrant_api_key: str | None,
               window_s: float, book_name: str | None = None, lease_timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    """The IncidentBook over the history (servicer.incidents), wired to the feedback book when there is one, and
    its IncidentService."""
    from logmesh.scorer.analyst.incident_service import SERVICE as INCIDENT_SERVICE, IncidentServicer
    from logmesh.scorer.analyst.incident_setup import open_book
    feedback = servicer.feedback
    book = servicer.incidents = open_book(
        servicer.history, bootstrap, topic, state_dir, models, _shape_vectors(models, embed), kafka_options,
        qdrant_url, qdrant_api_key, window_s, book=book_name, lease_timeout_s=lease_timeout_s,
        suppression=feedback.suppressing_incident if feedback is not None else None,
        analyst_label=feedback.label_for_incident if feedback is not None else None)
    if feedback is not None:  # replicas of one book: the owner numbers labels, all follow
        feedback.attach(book, replicas=bool(book_name))
    # each watcher holds a worker thread: WatchAnomalies may take half the workers, WatchIncidents a quarter, so
    # unary calls always keep some
    return INCIDENT_SERVICE, IncidentServicer(book, max(1, servicer.limits.workers // 4), servicer.stopping)


def _shape_vectors(models: ModelManager, embed):  # type: ignore[no-untyped-def]
    """Masked shapes -> vectors: the scorer's memo of anomalous shapes, else the embedder (what it cannot
    reach is left out)."""
    def vectors(shapes: list[str]) -> dict[str, np.ndarray]:
        scorer = models.scorer
        known = dict(scorer.anomalous_vectors(shapes)) if scorer is not None else {}
        missing = [s for s in shapes if s not in known]
        if missing:
            try:
                known.update(zip(missing, embed(missing, 10.0)))
            except EmbedderUnreachable:
                pass
        return known
    return vectors


def _similar_cases(url: str, api_key: str | None, models: ModelManager,
                   embed) -> "SimilarCases | None":  # type: ignore[no-untyped-def]
    """Similar past cases from the Qdrant server at `url` (the job's store): a line's vector is the one this
    scorer kept for its anomalous shape, else the embedder's. (The embedded store is the job's own folder:
    one process at a time can open it, so the history takes similar cases only from a server.)"""
    from logmesh.scorer.similar import SimilarCases
    from logmesh.streaming.vector_store import open_store
    try:
        store = open_store(url=url, api_key=api_key, ensure=False, check_compatibility=False, timeout=5)
    except ImportError as exc:
        log.error("--qdrant-url needs qdrant-client (pip install 'logmesh[stream]'); the history goes on without "
                  "similar cases from the store", extra={"error": str(exc)})
        return None

    def line_vectors(shapes: list[str]) -> dict[str, np.ndarray]:
        scorer = models.scorer
        known = dict(scorer.anomalous_vectors(shapes)) if scorer is not None else {}
        missing = [s for s in shapes if s not in known]
        if missing:
            try:
                known.update(zip(missing, embed(missing, 30.0)))
            except EmbedderUnreachable:
                pass  # those lines go without similar cases; the entries are recorded all the same
        return known
    return SimilarCases(store, line_vectors)
