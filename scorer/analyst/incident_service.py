"""IncidentService over gRPC, a thin servicer over the incident book (scorer/analyst/incidents.py), served in the
scorer process beside ScorerService (same server: health, reflection, admission, security)."""
from __future__ import annotations

import threading
from typing import Iterator

import grpc

from logmesh.runtime.grpc_server import reject_undecodable
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.v1 import incident_service_pb2 as ipb

SERVICE = ipb.DESCRIPTOR.services_by_name["IncidentService"]
MAX_PAGE = 500


class IncidentServicer:
    def __init__(self, book: IncidentBook, max_watchers: int = 4, stopping: threading.Event | None = None) -> None:
        self.book = book
        self.max_watchers = max(1, max_watchers)
        self.stopping = stopping or threading.Event()  # set when the server stops: watchers end at once
        self._watchers = 0
        self._lock = threading.Lock()

    def _loaded(self, context: grpc.ServicerContext) -> None:
        if not self.book.ready.is_set():
            problem = getattr(self.book.store, "problem", "")
            context.abort(grpc.StatusCode.UNAVAILABLE, "the incident book is still reading its incidents back from "
                                                       "Kafka" + (f" ({problem})" if problem else "") + "; retry in a moment")

    def ListIncidents(self, request: ipb.ListIncidentsRequest, context: grpc.ServicerContext) -> ipb.ListIncidentsResponse:
        reject_undecodable(request, context)
        before = None
        if request.page_token:
            if not request.page_token.isdigit() or int(request.page_token) == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"page_token {request.page_token[:64]!r} is not one this server issued; pass the "
                              "next_page_token of a previous ListIncidents reply, or none for the first page")
            before = int(request.page_token)
        self._loaded(context)
        size = min(request.page_size or 50, MAX_PAGE)
        found, next_update = self.book.page(size, before, request.state, request.include_suppressed)
        return ipb.ListIncidentsResponse(incidents=found, next_page_token=str(next_update) if next_update else "")

    def GetIncident(self, request: ipb.GetIncidentRequest, context: grpc.ServicerContext) -> ipb.GetIncidentResponse:
        reject_undecodable(request, context)
        if not request.incident_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "incident_id is empty; give an id such as inc-000001 "
                                                            "(ListIncidents lists them)")
        self._loaded(context)
        incident = self.book.get(request.incident_id)
        if incident is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no incident {request.incident_id[:128]!r} (ListIncidents "
                                                     "lists the ones this scorer holds)")
        return ipb.GetIncidentResponse(incident=incident)

    def WatchIncidents(self, request: ipb.WatchIncidentsRequest,
                       context: grpc.ServicerContext) -> Iterator[ipb.WatchIncidentsResponse]:
        reject_undecodable(request, context)
        self._loaded(context)
        last = self.book.last_update_id  # by default: changes from now on
        if request.after_update_id and request.after_update_id <= last:
            last = request.after_update_id  # resuming: every change after it, oldest first
        elif request.after_update_id:
            last = 0  # beyond this book's feed (its topic was recreated): everything it holds is new to the watcher
        with self._lock:
            if self._watchers >= self.max_watchers:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self._watchers} incident watchers already connected; the limit is {self.max_watchers}")
            self._watchers += 1
        try:
            context.send_initial_metadata(())  # the subscription is live before any change
            while context.is_active() and not self.stopping.is_set():
                changes, last = self.book.changes_after(last, timeout=1.0)
                for incident in changes:
                    yield ipb.WatchIncidentsResponse(incident=incident)
        finally:
            with self._lock:
                self._watchers -= 1
