"""FeedbackService over gRPC (SubmitFeedback, ListFeedback): a thin servicer over the FeedbackBook, served in
the scorer process beside ScorerService (same server: health, reflection, limits, security).

Author: with tokens (--token-file / LOGMESH_TOKENS) the caller's token identity, `token:` + the first 12 hex
digits of the token's SHA-256 (the token itself is never stored); else the client certificate's identity
under mutual TLS; else the author the caller names; else "anonymous"."""
from __future__ import annotations

import hashlib

import grpc

from logmesh.runtime.grpc_server import reject_undecodable
from logmesh.scorer.analyst.feedback import FeedbackBook, FeedbackRejected, FeedbackUnavailable
from logmesh.v1 import feedback_service_pb2 as fspb

SERVICE = fspb.DESCRIPTOR.services_by_name["FeedbackService"]
MAX_PAGE = 500


def token_identity(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class FeedbackServicer:
    def __init__(self, book: FeedbackBook, tokens: bool = False) -> None:
        """`tokens`: the server requires bearer tokens, so the caller's token names the author."""
        self.book, self.tokens = book, tokens

    def _author(self, named: str, context: grpc.ServicerContext) -> str:
        if self.tokens:
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    text = value if isinstance(value, str) else value.decode()
                    return token_identity(text.partition(" ")[2].strip())
        identities = context.peer_identities()
        if identities:
            return "cert:" + identities[0].decode("utf-8", "replace")
        return named.strip() or "anonymous"

    def SubmitFeedback(self, request: fspb.SubmitFeedbackRequest,
                       context: grpc.ServicerContext) -> fspb.SubmitFeedbackResponse:
        reject_undecodable(request, context)
        if not request.HasField("feedback"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request carries no feedback: set feedback")
        try:
            stored, duplicate = self.book.submit(request.feedback, self._author(request.feedback.author, context))
        except FeedbackRejected as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FeedbackUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return fspb.SubmitFeedbackResponse(feedback=stored, duplicate=duplicate)

    def ListFeedback(self, request: fspb.ListFeedbackRequest,
                     context: grpc.ServicerContext) -> fspb.ListFeedbackResponse:
        reject_undecodable(request, context)
        if request.page_token and not request.page_token.isdigit():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"page_token {request.page_token[:64]!r} is not one this server issued")
        if not self.book.wait_loaded(0):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"feedback is not loaded from its topic yet ({self.book.status}); retry shortly")
        listing = self.book.list(min(request.page_size or 50, MAX_PAGE),
                                 int(request.page_token) if request.page_token else None, request.include_expired)
        return fspb.ListFeedbackResponse(feedback=listing.labels,
                                         next_page_token=str(listing.next_index) if listing.next_index else "")
