"""Health probes. Live: the process answers. Ready: the rule set is loaded and a built-in
clinical case still evaluates to its expected answer."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app

from service.checks.cases import check_case
from service.ops.lifecycle import is_draining

bp = Blueprint("health", __name__)


@bp.get("/healthz/live")
def live() -> Response:
    return Response(b'{"status":"ok"}', mimetype="application/json")


@bp.get("/healthz/ready")
def ready() -> Response:
    evaluator = current_app.extensions["evaluator"]
    k = evaluator.knowledge
    info = {"name": k.name, "version": k.version, "sha256": k.sha256}
    if is_draining():  # shutting down: stop new traffic first (service/ops/lifecycle.py)
        body = {"status": "draining", "ruleset": info, "detail": "shutting down"}
        return Response(orjson.dumps(body), status=503, mimetype="application/json")
    case = next((c for c in k.cases if c.id == k.readiness_case), None)
    if case is None:
        body = {"status": "not-ready", "ruleset": info, "detail": "no readiness case in the rule set"}
        return Response(orjson.dumps(body), status=503, mimetype="application/json")
    try:
        failures = check_case(evaluator, case)
    except Exception as exc:
        failures = [f"evaluation failed ({exc.__class__.__name__})"]
    if failures:
        body = {"status": "not-ready", "ruleset": info, "detail": f"readiness case {case.id} failed"}
        return Response(orjson.dumps(body), status=503, mimetype="application/json")
    return Response(orjson.dumps({"status": "ready", "ruleset": info}), mimetype="application/json")
