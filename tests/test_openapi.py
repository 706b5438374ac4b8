"""openapi/openapi.yaml is generated from the schemas, valid OpenAPI 3, and its example is a
real answer of the service."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from service.app.openapi import OPENAPI_DIR, build_spec, to_yaml
from service.intake.schemas import EvaluationRequestSchema, EvaluationResponseSchema


def test_committed_document_is_the_generated_one():
    committed = (OPENAPI_DIR / "openapi.yaml").read_text(encoding="utf-8")
    assert committed == to_yaml(build_spec()), "run: python -m service openapi --write"


def test_document_is_valid_openapi():
    validate(yaml.safe_load((OPENAPI_DIR / "openapi.yaml").read_text(encoding="utf-8")))


def test_examples_conform_to_the_schemas():
    spec = build_spec()
    op = spec["paths"]["/v1/evaluations"]["post"]
    EvaluationRequestSchema().load(op["requestBody"]["content"]["application/json"]["example"])
    response = op["responses"]["200"]["content"]["application/json"]["example"]
    assert EvaluationResponseSchema().validate(response) == {}
    assert response["provenance"] and response["differential"]


def test_served_document_matches(client):
    assert client.get("/openapi.json").get_json() == build_spec()


def test_every_route_is_documented(app):
    documented = set(build_spec()["paths"])
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        path = rule.rule.replace("<rule_id>", "{rule_id}")
        if "<any(" in path:
            continue  # the catalogue route: one documented path per catalogue
        assert path in documented, path


def test_an_answer_without_age_conforms_with_its_warning_and_age_question(client):
    """The documented response covers the age-missing warning and the `patient` ask-next item."""
    answer = client.post("/v1/evaluations", json={"findings": [{"code": "back_pain"}]}).get_json()
    assert answer["warnings"][0]["code"] == "age-missing" and answer["ask_next"][0]["patient"] == "age"
    assert EvaluationResponseSchema().validate(answer) == {}
    documented = build_spec()["components"]["schemas"]
    assert "warnings" in documented["EvaluationResponse"]["required"]
    assert "patient" in documented["AskNext"]["properties"]
    assert "finding" not in documented["AskNext"].get("required", [])
