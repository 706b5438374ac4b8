"""The native JSON API under /v1: evaluations and the catalogues."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from service.errors import NotFound
from service.intake.parse import parse_encounter
from service.knowledge.model import Knowledge
from service.ops.body import read_json_body
from service.ops.metrics import record_evaluation
from service.reasoning.evaluation import Evaluator

bp = Blueprint("api", __name__)
JSON = "application/json"
FHIR_JSON = "application/fhir+json"


def _evaluator() -> Evaluator:
    return current_app.extensions["evaluator"]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=JSON)


@bp.post("/v1/evaluations")
def create_evaluation() -> Response:
    evaluator = _evaluator()
    encounter = parse_encounter(evaluator.knowledge, read_json_body())
    answer = evaluator.evaluate(encounter)
    record_evaluation(answer, knowledge=evaluator.knowledge)  # metrics and the evaluation log line
    if encounter.codings_read:  # say which finding each code of a value set was read as
        answer = {**answer, "codings_read": list(encounter.codings_read)}
    if _wants_fhir():
        from service.fhir.out import guidance_response

        body = guidance_response(answer, evaluator.knowledge)
        return Response(orjson.dumps(body), mimetype=FHIR_JSON)
    return _json(answer)


def _wants_fhir() -> bool:
    """Accept: application/fhir+json (preferred over application/json) -> a FHIR R4
    GuidanceResponse. Errors stay application/problem+json."""
    accept = request.accept_mimetypes
    return accept.quality(FHIR_JSON) > 0 and accept.best_match([JSON, FHIR_JSON]) == FHIR_JSON


def _catalogues(k: Knowledge) -> dict[str, bytes]:
    """Serialised once per app: the catalogues change only with the rule set."""
    cache = current_app.extensions.get("catalogues")
    if cache is None:
        from service.knowledge.catalogue import catalogue_items

        version = {"findings": {"version": k.vocabulary_version}}  # the vocabulary has its own version
        cache = {name: orjson.dumps({**version.get(name, {}), "items": items})
                 for name, items in catalogue_items(k).items()}
        current_app.extensions["catalogues"] = cache
    return cache


@bp.get("/v1/<any(findings, conditions, tests, rules, sources, red_flags, advice, question_groups):name>")
def catalogue(name: str) -> Response:
    return Response(_catalogues(_evaluator().knowledge)[name], mimetype=JSON)


@bp.get("/v1/rules/<rule_id>")
def rule(rule_id: str) -> Response:
    from service.knowledge.catalogue import rule_item

    k = _evaluator().knowledge
    if rule_id not in k.rules_by_id:
        raise NotFound(f"No rule {rule_id!r}. GET /v1/rules lists them.")
    return _json(rule_item(k, k.rules_by_id[rule_id]))


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(current_app.extensions["openapi"], mimetype=JSON)
