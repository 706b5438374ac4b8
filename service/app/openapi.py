"""The OpenAPI 3 document, generated from the marshmallow schemas (apispec).

openapi/openapi.yaml is this document committed; a test fails when they differ
(`python -m service openapi --write` regenerates it). The example response is a real
evaluation of openapi/example-request.json by the default rule set, so it changes with the
rules, as it should.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service.intake import schemas

OPENAPI_DIR = Path(__file__).resolve().parents[2] / "openapi"
EXAMPLE_REQUEST = OPENAPI_DIR / "example-request.json"
EXAMPLE_EVALUATION_ID = "00000000-0000-4000-8000-000000000000"
VERSION = "0.1.0"


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": "Problem"}}}


def _items(description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": "Items"}}}}


def example_response() -> tuple[dict[str, Any], dict[str, Any]]:
    from service.config import DEFAULT_RULES_DIR
    from service.intake.parse import parse_encounter
    from service.knowledge.loader import load_knowledge
    from service.reasoning.evaluation import Evaluator

    request = json.loads(EXAMPLE_REQUEST.read_text())
    evaluator = Evaluator(load_knowledge(DEFAULT_RULES_DIR))
    answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, request))
    answer["evaluation_id"] = EXAMPLE_EVALUATION_ID
    return request, answer


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="Leg pain when lying down: clinical decision support",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Evaluates a patient's findings for back-of-thigh / leg pain that comes on when "
                "lying down against a versioned rule set and answers a ranked differential, an "
                "urgency tier, recommended tests and the provenance of every conclusion. "
                "Decision support, not a diagnosis."
            ),
        },
    )
    for name, schema in [
        ("EvaluationRequest", schemas.EvaluationRequestSchema),
        ("EvaluationResponse", schemas.EvaluationResponseSchema),
        ("Problem", schemas.ProblemSchema),
        ("Items", schemas.ItemsSchema),
        ("FindingsCatalogue", schemas.FindingsCatalogueSchema),
        ("Health", schemas.HealthSchema),
    ]:
        spec.components.schema(name, schema=schema)

    request_example, response_example = example_response()
    spec.path(path="/v1/evaluations", operations={"post": {
        "operationId": "createEvaluation",
        "summary": "Evaluate one patient's findings",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": "EvaluationRequest", "example": request_example}}},
        "responses": {
            "200": {"description": "The evaluation", "content": {"application/json": {
                "schema": "EvaluationResponse", "example": response_example},
                "application/fhir+json": {"schema": {  # with Accept: application/fhir+json
                    "type": "object", "description": "The evaluation as a FHIR R4 GuidanceResponse"}}}},
            "400": _problem("The body is not valid JSON"),
            "413": _problem("The body is larger than the configured limit"),
            "415": _problem("The body is not application/json"),
            "422": _problem("Schema violation, unknown finding code, or value out of range"),
        },
    }})
    for name, what in [
        ("findings", "The vocabulary of findings: question, type, unit, range, codes"),
        ("conditions", "Conditions the differential can name, with ICD-10-CM / SNOMED CT codes"),
        ("tests", "Tests that can be recommended, with their codes"),
        ("rules", "Every rule with its when / then, version and sources"),
        ("sources", "The source documents and guidelines the rules cite"),
        ("red_flags", "Red flags and the tier each forces"),
        ("advice", "Self-care advice and the highest tier it may be given at"),
        ("question_groups", "Questions the nurse page asks as one: label, items (finding codes), sources"),
    ]:
        responses = _items(what)
        if name == "findings":
            responses["200"]["content"]["application/json"]["schema"] = "FindingsCatalogue"
        spec.path(path=f"/v1/{name}", operations={"get": {
            "operationId": f"list_{name}", "summary": what, "responses": responses}})
    spec.path(path="/v1/rules/{rule_id}", operations={"get": {
        "operationId": "getRule",
        "summary": "One rule",
        "parameters": [{"name": "rule_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The rule", "content": {"application/json": {"schema": {"type": "object"}}}},
            "404": _problem("No such rule"),
        },
    }})
    spec.path(path="/healthz/live", operations={"get": {
        "operationId": "live", "summary": "Liveness",
        "responses": {"200": {"description": "The process answers",
                              "content": {"application/json": {"schema": "Health"}}}}}})
    spec.path(path="/healthz/ready", operations={"get": {
        "operationId": "ready", "summary": "Readiness: rules loaded and a built-in case evaluates correctly",
        "responses": {
            "200": {"description": "Ready", "content": {"application/json": {"schema": "Health"}}},
            "503": {"description": "Not ready, or shutting down (status `draining`)",
                    "content": {"application/json": {"schema": "Health"}}},
        }}})
    spec.path(path="/metrics", operations={"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (text exposition format), summed over workers",
        "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    spec.path(path="/", operations={"get": {
        "operationId": "triagePage", "summary": "The triage nurse page (HTML, served by the service itself)",
        "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}}}})
    from service.ehr.cds_hooks import openapi_paths  # GET /cds-services, POST /cds-services/{id}[/feedback]

    for path, operations in openapi_paths().items():
        spec.path(path=path, operations=operations)
    spec.path(path="/openapi.json", operations={"get": {
        "operationId": "openapi", "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3 document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    out = spec.to_dict()
    # The vocabulary (finding codes and their meaning) is versioned apart from the rules.
    out["info"]["x-vocabulary-version"] = response_example["ruleset"]["vocabulary_version"]
    return out


def committed_spec_json() -> bytes:
    """The committed document as JSON, read once at start. The tests keep it equal to the
    generated one; serving it (rather than generating per worker) keeps the request path free
    of a second rule-set compile and independent of which rule set this instance serves."""
    import orjson
    import yaml

    return orjson.dumps(yaml.safe_load((OPENAPI_DIR / "openapi.yaml").read_text(encoding="utf-8")))


def to_yaml(spec: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
