"""Reading request bodies: the size limit holds for chunked bodies too, and broken chunked
framing is the client's error (400), never a 500.

Werkzeug enforces `max_content_length` on a body without Content-Length (gunicorn sets
`wsgi.input_terminated` for chunked bodies) by *stopping* at the limit: `get_data()` returns the
first N bytes and raises nothing, so an oversized chunked body was cut and evaluated. Here the
body is read from the server's stream up to one byte past the limit, which tells "exactly at
the limit" from "over it".
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import BadRequest, UnsupportedMediaType
from service.ops.connection import close_after_response

try:  # gunicorn's parse errors for a broken chunked body, raised while the app reads it
    from gunicorn.http.errors import NoMoreData, ParseException

    _FRAMING_ERRORS: tuple[type[BaseException], ...] = (ParseException, NoMoreData)
except ImportError:  # pragma: no cover - gunicorn is a dependency; other servers raise their own
    _FRAMING_ERRORS = ()

_READ_SIZE = 64 * 1024


def read_body(limit: int | None = None) -> bytes:
    """The whole request body, at most `limit` bytes (default: the request's
    max_content_length). Over the limit -> 413; broken chunked framing -> 400. Either way the
    rest of the body is left unread, so the connection is closed after the answer."""
    limit = request.max_content_length if limit is None else limit
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        close_after_response()
        raise RequestEntityTooLarge()
    environ = request.environ
    if length is None and not environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not frame the body: nothing safe to read
    stream = environ["wsgi.input"]
    want = length if length is not None else None
    cap = None if limit is None else limit + 1  # one byte past the limit proves it is exceeded
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            size = _READ_SIZE
            if want is not None:
                size = min(size, want - total)
            if cap is not None:
                size = min(size, cap - total)
            if size <= 0:
                break
            chunk = stream.read(size)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    except _FRAMING_ERRORS as exc:
        close_after_response()
        # gunicorn raises these while reading: a bad chunk size or terminator, or a body that
        # ended before its length or its last chunk.
        raise BadRequest(f"The request body is cut short or its chunked transfer coding is malformed "
                         f"({exc.__class__.__name__}).") from None
    if limit is not None and total > limit:
        close_after_response()
        raise RequestEntityTooLarge()
    g.body_consumed = True  # all of it: an error answer may keep the connection alive
    return b"".join(parts)


def read_json_body() -> Any:
    """The body as JSON, for the native API and CDS Hooks alike: 415 unless a JSON media type,
    400 for JSON that does not parse."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {mimetype or 'no Content-Type'})."
        )
    raw = read_body()  # 413 past the limit (chunked bodies too); 400 for broken chunked framing
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message gives line/column/char position only, never the content.
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
