"""Closing the client connection after a response, under gunicorn.

gunicorn drops a `Connection` header set by the application (hop-by-hop) and decides
keep-alive itself. An answer that leaves the request body unread (413, a broken chunked body,
an early 4xx) must close the connection, or the unread bytes are parsed as the next request and
the client that reuses the socket sees a reset. While a worker drains on SIGTERM, keep-alive
connections must be told to close too: once the drain delay ends the worker stops and a client
that sends its next request on the kept-alive socket is reset.

The only handle gunicorn gives on its own request object is the `pre_request` hook
(deploy/gunicorn.conf.py calls `bind`), which runs in the thread that then calls the
application, for sync and gthread workers alike. Setting `must_close` on it makes gunicorn
answer `Connection: close` and close the socket after the response. Without gunicorn (tests,
another server) the calls only set the header, which the test client shows.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from flask import Flask, Response, g, request

from service.ops.lifecycle import is_draining

_local = threading.local()


def bind(gunicorn_request: Any) -> None:
    """Remember gunicorn's request object for the thread about to serve it."""
    _local.req = gunicorn_request


def close_after_response() -> None:
    """Ask for `Connection: close` on this request's response."""
    req = getattr(_local, "req", None)
    if req is not None:
        req.must_close = True
    with contextlib.suppress(RuntimeError):  # outside a request context: nothing more to mark
        g.close_connection = True


def _has_body(req: Any) -> bool:
    return bool(req.content_length) or "chunked" in (req.environ.get("HTTP_TRANSFER_ENCODING") or "").lower()


def init_app(app: Flask) -> None:
    @app.after_request
    def _connection(resp: Response) -> Response:
        # An error answered before the whole body was read (auth, media type, limits) leaves bytes
        # that would be parsed as the next request; draining workers are about to stop. Either
        # way, the client must not reuse this connection. A 4xx after the body was read in full
        # (422, a JSON error) keeps it. (The request's own g and request, not their proxies:
        # this runs on every response.)
        attrs = g._get_current_object().__dict__
        unread = _has_body(request._get_current_object()) and not attrs.get("body_consumed")
        if is_draining() or (resp.status_code >= 400 and unread) or attrs.get("close_connection"):
            close_after_response()
            resp.headers["Connection"] = "close"
        return resp
