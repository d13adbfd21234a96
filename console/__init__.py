"""The analyst console: a small ASGI app (Starlette, served by uvicorn) over the scorer's gRPC APIs.

It talks to the scorer only through logmesh.client.ScorerClient (the CLI's TLS and token settings) and shows
the anomaly history: a live feed (server-sent events fed by WatchAnomalies, resumed with after_id from the
browser's Last-Event-ID), a page per anomaly, a chart of anomalies per minute and lines per second, and the
templates among recent anomalies. Every log string reaches the page escaped: Jinja2 autoescapes the server's
HTML, the browser's script writes only textContent, and a Content-Security-Policy refuses inline scripts.
`logmesh serve console` (cli/console.py) runs it.
"""
from logmesh.console.app import create_app

__all__ = ["create_app"]
