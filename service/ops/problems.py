"""The one error path: every failure leaves as RFC 7807 application/problem+json."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from service.errors import (
    PROBLEM_BASE,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
)
from service.ops.metrics import record_validation_errors

log = logging.getLogger("service.errors")
PROBLEM_JSON = "application/problem+json"


def problem_response(err: ServiceError) -> Response:
    return Response(orjson.dumps(err.to_problem()), status=err.status, mimetype=PROBLEM_JSON)


def register(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError) -> Response:
        if err.status >= 500:
            log.error("request failed: %s", err.__class__.__name__)
        elif err.status == 422:
            record_validation_errors(err.errors)  # counted by reason; never the values
        return problem_response(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        mapped: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}
        cls = mapped.get(err.code or 500)
        if cls is not None:
            detail = {
                404: "No such resource. See /openapi.json for the endpoints.",
                405: "This method is not allowed here.",
                413: f"The body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes.",
            }[err.code or 500]
            resp = problem_response(cls(detail))
            if err.code == 405:  # RFC 9110: a 405 says which methods the resource allows
                allow = dict(err.get_headers()).get("Allow")
                if allow:
                    resp.headers["Allow"] = allow
            return resp
        body = {
            "type": PROBLEM_BASE + "http-error",
            "title": err.name,
            "status": err.code or 500,
            "detail": err.description or err.name,
        }
        return Response(orjson.dumps(body), status=err.code or 500, mimetype=PROBLEM_JSON)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        # Only the type: messages and tracebacks can carry request values (patient data).
        log.error("unhandled error: %s", err.__class__.__name__)
        return problem_response(ServiceError("The service could not complete this request."))
