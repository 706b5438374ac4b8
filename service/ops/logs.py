"""Structured logs: one JSON object per line, never patient data.

What is logged, and only this:
- one `request` line per HTTP request: request id, method (closed set), route *template* (never
  the raw path or query string), status, duration, rule set version, and the urgency tier when
  the request evaluated something;
- one `evaluation` line per evaluation (see `service.ops.metrics.record_evaluation`): evaluation id,
  tier, red flag codes, top-3 condition codes, number of rules fired. Codes come from the loaded
  rule set, never from the request;
- gunicorn's own messages (start-up, workers, signals), reformatted as JSON by `GunicornLogger`.

Never logged: bodies, finding values, ages, encounter ids, query strings, header values other than
a validated `X-Request-ID`, and exception messages (they can quote input): an exception is
logged as its type and stack frames only.

The request id is taken from `X-Request-ID` when it is 1-128 characters of `[A-Za-z0-9._:+=/-]`
starting with a letter or digit; otherwise a fresh one is generated. Either way it is echoed in
the response's `X-Request-ID` header and is on every log line written while serving the request.

This module must not import prometheus_client: gunicorn imports it (logger class) before the
multiprocess directory is known to be set.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import sys
import time
import traceback
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request

try:  # gunicorn is a runtime dependency, but keep `service.ops.logs` importable without it
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # pragma: no cover
    _GunicornLogger = object  # type: ignore[assignment,misc]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
LOGGER = "service"  # every application logger lives under it
request_log = logging.getLogger("service.request")
evaluation_log = logging.getLogger("service.evaluation")

# A record attribute holding the structured fields of one line (pass as extra={FIELDS: {...}}).
FIELDS = "cds_fields"
_CONVERTER = re.compile(r"<[^<>]*:([^<>:]+)>")


# --- formatting ----------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, pid, msg, request_id, plus structured fields.

    Exceptions are rendered as their type and frames (file, line, function), without the
    message, which can quote request values.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or current_request_id()
        if rid:
            out["request_id"] = rid
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            out["exc_type"] = exc_type.__name__
            out["stack"] = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]
            if _message_is_safe(exc):
                out["exc_message"] = str(exc)
        return orjson.dumps(out, default=str).decode()


def _message_is_safe(exc: BaseException | None) -> bool:
    # Rule-set load failures name files and rules of the rule set, never request data.
    from service.errors import RuleLoadError

    return isinstance(exc, RuleLoadError)


def configure_logging(level: str | int = "info", stream: Any = None) -> None:
    """Give the `service` loggers one JSON handler (stdout) and the level. Idempotent: a second
    call (another app in the same process) sets the level and adds no second handler."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(_level(level))
    if any(getattr(h, "_cds_json", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._cds_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    return logging.getLevelNamesMapping().get(str(level).upper(), logging.INFO)


class GunicornLogger(_GunicornLogger):  # type: ignore[misc,valid-type]
    """gunicorn's logger with its error log (start-up, workers, signals) written as JSON lines.

    Its optional text access log (`CDS_ACCESS_LOG`) is left as configured: the JSON request
    line written by the service supersedes it, and the container turns it off."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
            if not any(isinstance(f, WithholdRequestData) for f in handler.filters):
                handler.addFilter(WithholdRequestData())


class WithholdRequestData(logging.Filter):
    """gunicorn quotes parts of a malformed request in its warnings ("Invalid request from
    ip=...: Invalid header name '...'") and the URI with its query string when an application
    error escapes ("Error handling request GET /path?query"). Keep the kind of error, withhold
    what the client sent."""

    _QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Invalid request from ip="):
            record.msg = self._QUOTED.sub("'<withheld>'", msg)[:300]
            record.args = ()
        elif msg.startswith("Error handling request"):
            record.msg, record.args = "Error handling request", ()
        return True


# --- request id and the per-request line ---------------------------------------------------


def request_id_from(value: str | None) -> str:
    """The client's request id if it is safe to log and echo, else a fresh one."""
    if value and REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    if has_request_context():
        return g.get("request_id")
    return None


def route_template(rule: str | None) -> str:
    """`/v1/<any(findings, ...):name>` -> `/v1/<name>`; no matching rule -> `<unmatched>`."""
    if rule is None:
        return UNMATCHED_ROUTE
    template = _TEMPLATES.get(rule)
    if template is None:
        # Only the app's own route rules reach here (never a raw path), so this stays small.
        template = _TEMPLATES[rule] = _CONVERTER.sub(r"<\1>", rule)
    return template


_TEMPLATES: dict[str, str] = {}  # route rule -> template: the regex once per route, not twice a request


def current_route() -> str:
    return request_labels(request._get_current_object())[0]


def current_method() -> str:
    return request_labels(request._get_current_object())[1]


def request_started() -> float:
    return g.get("cds_started") or time.perf_counter()


def request_labels(req: Any) -> tuple[str, str]:
    """(route template, method) of the request: worked out once, for the request line and the
    request metrics both. `req` is the request object itself, not the `request` proxy (the
    hooks run on every response, and each proxy look-up costs), and the pair is kept on it
    rather than on `g`, which requests share while an app context stays pushed."""
    labels = req.__dict__.get("cds_labels")
    if labels is None:
        rule = req.url_rule
        method = req.method
        labels = req.cds_labels = (route_template(rule.rule if rule is not None else None),
                                   method if method in METHODS else "OTHER")
    return labels


def set_tier(tier: str) -> None:
    """Called when the request evaluated something: the tier goes on the request line."""
    if has_request_context():
        g.cds_tier = tier


def init_app(app: Flask) -> None:
    configure_logging(app.config.get("LOG_LEVEL", "info"))
    extensions = app.extensions  # this app's, which is current_app in its own requests

    @app.before_request
    def _start() -> None:
        state = g._get_current_object()
        state.cds_started = time.perf_counter()
        # request.headers.get(REQUEST_ID_HEADER) reads this same environ key
        state.request_id = request_id_from(request.environ.get(_REQUEST_ID_ENVIRON))

    @app.after_request
    def _finish(response: Response) -> Response:
        state = g._get_current_object()
        attrs = state.__dict__
        rid = attrs.get("request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = rid
        if request_log.isEnabledFor(logging.INFO):
            route, method = request_labels(request._get_current_object())
            started = attrs.get("cds_started") or time.perf_counter()
            evaluator = extensions.get("evaluator")
            fields: dict[str, Any] = {
                "event": "request",
                "method": method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "ruleset_version": evaluator.knowledge.version if evaluator is not None else None,
            }
            tier = attrs.get("cds_tier")
            if tier:
                fields["tier"] = tier
            _emit(request_log, "request", fields, rid)
        return response


_REQUEST_ID_ENVIRON = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


def _emit(logger: logging.Logger, msg: str, fields: dict[str, Any], request_id: str | None = None) -> None:
    """`logger.info(msg, extra=...)` for the two per-request lines, without `Logger.findCaller`
    walking the stack for a file and line no field of these lines shows. Same record otherwise
    (level, name, message, the fields), through the same handlers and filters."""
    extra: dict[str, Any] = {FIELDS: fields}
    if request_id is not None:
        extra["request_id"] = request_id
    # What Logger._log itself passes when it is told not to look for the caller (logging._srcfile None).
    logger.handle(logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, (), None,
                                    func="(unknown function)", extra=extra))


def log_evaluation(fields: dict[str, Any]) -> None:
    if evaluation_log.isEnabledFor(logging.INFO):
        _emit(evaluation_log, "evaluation", {"event": "evaluation", **fields})
