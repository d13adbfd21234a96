"""The console's routes: HTML pages (Jinja2, autoescaped), their JSON twins, the SSE feed and static files.

Every page and endpoint reads the scorer through one ScorerClient (its channel carries the CLI's TLS and
token); the pulse has a client of its own. A scorer that cannot be reached makes a page answer 503 with the
reason, and the feed a `status` event, never a traceback. Responses carry a Content-Security-Policy that
allows only this site's own scripts: even a log line that slipped past escaping could not run one. The feedback
buttons POST to /feedback, which refuses (403) a request that names another origin; the referrer policy is
same-origin so that the browser names this one on the console's own forms (no-referrer would send Origin: null).
"""
from __future__ import annotations

import contextlib
import logging
import secrets
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import grpc
import jinja2
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logmesh.client import IncidentClient, ScorerClient
from logmesh.console import feed, feedback, incident_views, lookup, views
from logmesh.console.pulse import Pulse
from logmesh.security import ChannelSecurity
from logmesh.v1 import feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc, scorer_service_pb2 as spb

log = logging.getLogger("logmesh.console")
HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin")]
#: Entries the feed page lists before the live ones arrive.
FEED_ROWS = 50
INCIDENT_STATES = {"all": 0, "open": 1, "closed": 2}


class SecurityHeaders:
    """Adds the CSP and friends to every HTTP response (pure ASGI: SSE streams pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)
        await self.app(scope, receive, with_headers)


def _environment() -> jinja2.Environment:
    # autoescape everything, not only *.html: every string a template prints is escaped unless marked safe,
    # and no template marks a log string safe
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env


def _int(text: str | None, what: str, default: int = 0) -> int:
    if text in (None, ""):
        return default
    if not text.isdigit():
        raise HTTPException(400, f"{what} must be a whole number >= 0, not {text[:40]!r}")
    return int(text)


def _score(text: str | None) -> float:
    if text in (None, ""):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise HTTPException(400, f"min_score must be a number in [0, 1], not {text[:40]!r}")
    return value


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    return {"min_score": _score(q.get("min_score")), "block_id": q.get("block_id", "")[:200],
            "blocks_only": q.get("blocks_only", "") in ("1", "true", "on")}


def create_app(scorer: str, security: ChannelSecurity | None = None, timeout: float = 10.0,
               stats_interval: float = 5.0, chart_minutes: float = 30.0, max_feeds: int = 16,
               author: str = "console") -> Starlette:
    """The console over the scorer at `scorer` (HOST:PORT or a pool, as the CLI takes it); `author` is who its
    feedback labels are given by (a scorer with tokens records the token's identity instead)."""
    security = security or ChannelSecurity.from_env()
    templates = Jinja2Templates(env=_environment())
    state: dict[str, Any] = {"feeds": 0}

    def client() -> ScorerClient:
        return state["client"]

    async def call(fn: Callable, *args: Any) -> Any:
        """A blocking client call in the thread pool; a scorer that cannot answer is a 503 with the reason."""
        try:
            return await run_in_threadpool(fn, *args)
        except grpc.RpcError as exc:
            raise HTTPException(503 if exc.code() != grpc.StatusCode.INVALID_ARGUMENT else 400,
                                f"the scorer at {scorer} answered {exc.code().name}: {exc.details()}") from None

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        q = request.query_params
        # the feedback buttons' outcome comes back in the query string (rendered escaped, like everything)
        flash = {"feedback": q.get("feedback", "")[:64], "duplicate": q.get("duplicate", "") == "1",
                 "feedback_error": q.get("feedback_error", "")[:500], "form_token": secrets.token_urlsafe(16)}
        return templates.TemplateResponse(request, name, {"scorer": scorer, **flash, **context},
                                          status_code=status_code)

    # --- pages ---

    async def feed_page(request: Request) -> Response:
        f = _filters(request)
        newest = await call(lookup.newest_id, client())
        rows = await call(lookup.recent, client(), FEED_ROWS, f["min_score"], f["block_id"], f["blocks_only"])
        return page(request, "feed.html", rows=[views.summary(e) for e in rows], after_id=newest, filters=f)

    async def anomaly_page(request: Request) -> Response:
        entry = await _entry(request)
        related = []
        if entry["kind"] == "block":
            related = [views.summary(e) for e in await call(lookup.of_block, client(), entry["block_id"])]
        lines = [r for r in related if r["kind"] == "line"]
        flagged = set(entry.get("anomalous_record_ids", []))
        to_read = [r for r in lines if r.get("record_id") in flagged] or lines
        return page(request, "anomaly.html", a=entry, verdicts=[r for r in related if r["kind"] == "block"],
                    to_read=to_read)

    async def stats_page(request: Request) -> Response:
        stats = views.stats(await call(client().stats))
        return page(request, "stats.html", stats=stats, counts=state["pulse"].template_counts(),
                    window_minutes=chart_minutes, feed_status=state["pulse"].feed_status)

    # --- incidents (IncidentService, in the scorer process) ---

    async def incident_call(fn: Callable, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except grpc.RpcError as exc:
            status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}.get(exc.code(), 503)
            detail = (f"the scorer at {scorer} serves no incidents (start it with --incidents-topic)"
                      if exc.code() == grpc.StatusCode.UNIMPLEMENTED else
                      f"the scorer at {scorer} answered {exc.code().name}: {exc.details()}")
            raise HTTPException(status, detail) from None

    def _incident_filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        state_name = q.get("state", "all")
        if state_name not in INCIDENT_STATES:
            raise HTTPException(400, f"state must be one of {', '.join(INCIDENT_STATES)}, not {state_name[:40]!r}")
        return {"state": state_name, "include_suppressed": q.get("include_suppressed", "") in ("1", "true", "on"),
                "page_token": q.get("page_token", "")[:40]}

    async def _incidents(request: Request) -> tuple[dict[str, Any], Any]:
        f = _incident_filters(request)
        reply = await incident_call(state["incidents"].page, FEED_ROWS, f["page_token"], INCIDENT_STATES[f["state"]],
                                    f["include_suppressed"])
        return f, reply

    async def incidents_page(request: Request) -> Response:
        f, reply = await _incidents(request)
        return page(request, "incidents.html", incidents=[incident_views.summary(i) for i in reply.incidents],
                    next_page_token=reply.next_page_token, filters=f)

    async def _incident(request: Request) -> dict[str, Any]:
        found = await incident_call(state["incidents"].get, request.path_params["incident_id"][:128])
        return incident_views.detail(found)

    async def incident_page(request: Request) -> Response:
        return page(request, "incident.html", i=await _incident(request))

    async def api_incidents(request: Request) -> Response:
        _, reply = await _incidents(request)
        return JSONResponse({"incidents": [incident_views.summary(i) for i in reply.incidents],
                             "next_page_token": reply.next_page_token})

    async def api_incident(request: Request) -> Response:
        return JSONResponse(await _incident(request))

    # --- feedback buttons (FeedbackService, in the scorer process) ---

    def submit(fb: Any) -> Any:
        stub = fsgrpc.FeedbackServiceStub(client().channel)
        return stub.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=fb), timeout=timeout)

    async def post_feedback(request: Request) -> Response:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if not feedback.same_origin(request.headers, own):
            log.warning("feedback refused: another origin", extra={"origin": request.headers.get("origin", ""),
                                                                  "referer": request.headers.get("referer", "")})
            raise HTTPException(403, f"a feedback form must be posted from this console ({own}), not from another site")
        try:
            form = feedback.parse(await request.body())
            back, fb = feedback.back(form), feedback.build(form, author)
        except feedback.FormError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            reply = await run_in_threadpool(submit, fb)
        except grpc.RpcError as exc:
            reason = (f"the scorer at {scorer} serves no feedback: start it with --feedback-topic (and --bootstrap)"
                      if exc.code() == grpc.StatusCode.UNIMPLEMENTED else
                      exc.details() if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else
                      f"the scorer at {scorer} answered {exc.code().name}: {exc.details()}")
            return RedirectResponse(f"{back}?{urlencode({'feedback_error': reason[:500]})}", 303)
        log.info("feedback stored", extra={"feedback_id": reply.feedback.feedback_id, "duplicate": reply.duplicate})
        query = {"feedback": reply.feedback.feedback_id} | ({"duplicate": "1"} if reply.duplicate else {})
        return RedirectResponse(f"{back}?{urlencode(query)}", 303)

    # --- JSON and SSE ---

    async def _entry(request: Request) -> dict[str, Any]:
        anomaly_id = _int(request.path_params["anomaly_id"], "the anomaly id")
        found = await call(lookup.find, client(), anomaly_id)
        if found is None:
            raise HTTPException(404, f"the scorer's history holds no anomaly #{anomaly_id} (never recorded, or "
                                     "dropped as the oldest past its --history-mb)")
        return views.detail(found)

    async def api_anomalies(request: Request) -> Response:
        f = _filters(request)
        limit = min(_int(request.query_params.get("limit"), "limit", FEED_ROWS) or FEED_ROWS, 1000)
        rows = await call(lookup.recent, client(), limit, f["min_score"], f["block_id"], f["blocks_only"])
        return JSONResponse({"anomalies": [views.summary(e) for e in rows]})

    async def api_anomaly(request: Request) -> Response:
        return JSONResponse(await _entry(request))

    async def api_stats(request: Request) -> Response:
        return JSONResponse(views.stats(await call(client().stats)))

    async def api_series(request: Request) -> Response:
        return JSONResponse(state["pulse"].series())

    async def api_templates(request: Request) -> Response:
        counts = state["pulse"].template_counts()
        return JSONResponse({k: [{"template": t, "count": n} for t, n in v] for k, v in counts.items()}
                            | {"normal_profile": None, "window_minutes": chart_minutes})

    async def events(request: Request) -> Response:
        f = _filters(request)
        # the browser's Last-Event-ID (a reconnect) wins over the page's after_id (the first connect)
        after = _int(request.headers.get("last-event-id") or request.query_params.get("after_id"), "after_id")
        if state["feeds"] >= max_feeds:
            return PlainTextResponse(f"{max_feeds} live feeds are open (--max-feeds); close one and reload", 503)
        watch = spb.WatchAnomaliesRequest(min_score=f["min_score"], block_id=f["block_id"],
                                          blocks_only=f["blocks_only"], after_id=after)

        async def counted():  # type: ignore[no-untyped-def]
            state["feeds"] += 1
            try:
                async for event in feed.events(client(), watch):
                    yield event
            finally:
                state["feeds"] -= 1
        return EventSourceResponse(counted(), ping=15, headers={"cache-control": "no-store"})

    async def healthz(request: Request) -> Response:
        try:
            status = await run_in_threadpool(client().health)
        except grpc.RpcError as exc:
            return JSONResponse({"scorer": scorer, "status": exc.code().name, "detail": exc.details()}, 503)
        return JSONResponse({"scorer": scorer, "status": status}, 200 if status == "SERVING" else 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith(("/api/", "/events")):
            return JSONResponse({"error": exc.detail}, exc.status_code)
        return page(request, "error.html", exc.status_code, status=exc.status_code, detail=exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        state["client"] = ScorerClient(scorer, timeout=timeout, security=security)
        state["incidents"] = IncidentClient(scorer, timeout=timeout, security=security)
        state["pulse"] = Pulse(ScorerClient(scorer, timeout=timeout, security=security), stats_interval,
                               chart_minutes * 60).start()
        log.info("console ready", extra={"scorer": scorer, "tls": security.tls, "token": bool(security.token)})
        try:
            yield
        finally:
            await run_in_threadpool(state["pulse"].stop)
            state["client"].close()
            state["incidents"].close()

    routes = [
        Route("/", feed_page), Route("/anomaly/{anomaly_id}", anomaly_page), Route("/stats", stats_page),
        Route("/events", events), Route("/healthz", healthz), Route("/feedback", post_feedback, methods=["POST"]),
        Route("/incidents", incidents_page), Route("/incident/{incident_id}", incident_page),
        Route("/api/incidents", api_incidents), Route("/api/incidents/{incident_id}", api_incident),
        Route("/api/anomalies", api_anomalies), Route("/api/anomalies/{anomaly_id}", api_anomaly),
        Route("/api/stats", api_stats), Route("/api/series", api_series), Route("/api/templates", api_templates),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                     exception_handlers={HTTPException: http_error})
