"""schemathesis against the committed OpenAPI document (openapi/openapi.yaml), in process.

Every operation in the document is fuzzed through the Flask app (WSGI, no server), with positive
and negative data, schemathesis' example, coverage and fuzzing phases, and its default checks:
no 5xx, every status code / content type / header / body as the document says, invalid data
rejected, and so on. Bounded and reproducible: at most MAX_EXAMPLES generated cases per operation,
derandomized, no deadline, no example database.

Generated finding codes are almost never in the vocabulary, so random requests rarely reach an
evaluation: the clinical cases, every rule id and valid CDS Hooks calls are sent as well, through
the same checks, so that the 200 answers are validated against the document too.

Two findings of this suite were fixed and are pinned by the tests at the end:
  * 405 answers carried no `Allow` header (RFC 9110 15.5.6): service/ops/problems.py built a fresh
    problem response for werkzeug's MethodNotAllowed and dropped its headers.
  * The document's `FindingInput.value` string branch had no length bounds, while the service
    refuses a choice code outside 1..64 characters (service/intake/schemas.py, NumberOrChoice).
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks
from schemathesis.core.failures import FailureGroup

from service import create_app

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "openapi" / "openapi.yaml"
MAX_EXAMPLES = 50

schema = schemathesis.openapi.from_path(SPEC)

BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)

# The document describes these request bodies but cannot model everything the service checks:
# finding codes, units, ranges and choices come from the vocabulary (GET /v1/findings) and are
# refused with a documented 422; CDS Hooks bodies are "described, not modelled" (CDS Hooks 2.0
# defines them; service/ehr/cds_hooks.py openapi_paths) and refused with a documented 400 / 412.
# So "schema-valid data must be accepted" (positive_data_acceptance) cannot hold there; the
# answers themselves are still checked against the document by every other check.
VOCABULARY_CHECKED = {
    "POST /v1/evaluations",
    "POST /cds-services/leg-pain-triage",
    "POST /cds-services/leg-pain-triage/feedback",
}

ALLOW_HEADER_BUG = (
    "405 answers have no Allow header (RFC 9110 15.5.6): service/ops/problems.py _http_error maps werkzeug's "
    "MethodNotAllowed to a fresh problem+json Response and drops err.get_headers() (the Allow header)"
)
VALUE_LENGTH_GAP = (
    "openapi.yaml FindingInput.value oneOf string has no minLength/maxLength, but service/intake/schemas.py "
    "NumberOrChoice refuses a choice code outside 1..64 characters (422): the document accepts \"\""
)


class KnownFinding(AssertionError):
    """The failure a strict xfail below expects, and only that one."""


@pytest.fixture(scope="module")
def fuzz_app():
    # Open mode whatever the environment says: no API keys, no CDS Hooks issuers.
    return create_app({"TESTING": True, "API_KEYS": "", "API_KEYS_FILE": "", "HOOKS_TRUSTED_ISSUERS": "",
                       "HOOKS_ENABLED": "true", "HOOKS_FHIR_SERVERS": ""})


def _call(case: Any, app: Any, **kwargs: Any) -> Any:
    response = case.call_and_validate(app=app, **kwargs)
    assert response.status_code < 500, f"{case.operation.label}: {response.status_code} {response.text[:500]}"
    return response


def test_the_document_has_every_operation() -> None:
    """The parametrized tests below cover every operation: none is silently left out."""
    doc = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    documented = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops
                  if m in ("get", "put", "post", "delete", "patch", "head", "options", "trace")}
    loaded = {result.ok().label for result in schema.get_all_operations()}
    assert loaded == documented
    assert len(documented) >= 17


# --- fuzzing: every operation -------------------------------------------------------------------


@schema.parametrize()
@BOUNDED
def test_every_operation_conforms(case, fuzz_app):
    excluded = []
    if case.operation.label in VOCABULARY_CHECKED:
        excluded.append(st_checks.positive_data_acceptance)
    _call(case, fuzz_app, excluded_checks=excluded)


@schema.parametrize()
@BOUNDED
def test_undeclared_method_gets_405_with_allow(case, fuzz_app):
    try:
        case.call_and_validate(app=fuzz_app, checks=[st_checks.unsupported_method])
    except FailureGroup as exc:
        if all("without required `Allow` header" in str(f) for f in exc.exceptions):
            raise KnownFinding(ALLOW_HEADER_BUG) from exc
        raise


@schema.include(path_regex=r"^/(v1/(findings|conditions|tests|rules|sources|red_flags|advice)|healthz/.*|metrics"
                           r"|openapi\.json|cds-services)?$", method="GET").parametrize()
@BOUNDED
def test_schema_valid_requests_are_accepted(case, fuzz_app):
    """positive_data_acceptance alone, on the operations whose document models every input."""
    assert case.operation.label not in VOCABULARY_CHECKED
    _call(case, fuzz_app, checks=[st_checks.positive_data_acceptance, st_checks.not_a_server_error])


# --- real data through the same checks -------------------------------------------------------------


def test_every_clinical_case_answer_conforms(fuzz_app, knowledge):
    op = schema["/v1/evaluations"]["POST"]
    assert knowledge.cases
    for c in knowledge.cases:
        response = _call(op.Case(body=copy.deepcopy(c.request), media_type="application/json"), fuzz_app)
        assert response.status_code == 200, f"{c.id}: {response.status_code} {response.text[:300]}"
    # The FHIR form of the answer is documented too (200 application/fhir+json).
    for c in knowledge.cases[:5]:
        case = op.Case(body=copy.deepcopy(c.request), media_type="application/json",
                       headers={"Accept": "application/fhir+json"})
        response = _call(case, fuzz_app)
        assert response.status_code == 200
        assert response.headers["content-type"][0].startswith("application/fhir+json"), response.headers


def test_every_rule_answer_conforms(fuzz_app, knowledge):
    op = schema["/v1/rules/{rule_id}"]["GET"]
    for rule_id in sorted(r.id for r in knowledge.rules):
        response = _call(op.Case(path_parameters={"rule_id": rule_id}), fuzz_app)
        assert response.status_code == 200, f"{rule_id}: {response.status_code}"
    assert _call(op.Case(path_parameters={"rule_id": "no.such.rule"}), fuzz_app).status_code == 404


def _hook_request(knowledge) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    obs = [{"resourceType": "Observation", "id": f"o{i}", "status": "final", "effectiveDateTime": now,
            "code": {"coding": [{"system": "urn:legpain-cds:finding", "code": code}]}, "valueBoolean": True}
           for i, code in enumerate(("leg_swelling_unilateral", "calf_swelling_3cm", "calf_tenderness",
                                     "major_surgery_12w"))
           if code in knowledge.findings]
    return {
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/p1", "patientId": "pat-1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "pat-1", "gender": "female", "birthDate": "1968-03-01"},
            "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": o} for o in obs]},
            "conditions": None,
        },
    }


def test_valid_cds_hooks_calls_conform(fuzz_app, knowledge):
    call = schema["/cds-services/leg-pain-triage"]["POST"]
    response = _call(call.Case(body=_hook_request(knowledge), media_type="application/json"), fuzz_app)
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert cards, "a swollen tender calf after surgery should give a card"
    empty = {**_hook_request(knowledge), "prefetch": {"patient": None, "observations": None, "conditions": None}}
    assert _call(call.Case(body=empty, media_type="application/json"), fuzz_app).json()["cards"] == []
    feedback = schema["/cds-services/leg-pain-triage/feedback"]["POST"]
    suggestion = cards[0]["suggestions"][0]["uuid"]
    body = {"feedback": [{"card": cards[0]["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion}],
                          "outcomeTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    assert _call(feedback.Case(body=body, media_type="application/json"), fuzz_app).status_code == 200


# --- known findings, pinned ------------------------------------------------------------------------


def test_the_document_bounds_a_choice_value_as_the_service_does(fuzz_app, knowledge):
    choice = next(code for code, f in sorted(knowledge.findings.items()) if f.type == "choice")
    doc = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    branches = doc["components"]["schemas"]["FindingInput"]["properties"]["value"]["oneOf"]
    string = next(b for b in branches if b.get("type") == "string")
    response = fuzz_app.test_client().post("/v1/evaluations", json={"findings": [{"code": choice, "value": ""}]})
    refused = response.status_code == 422
    if refused and string.get("minLength", 0) < 1:
        raise KnownFinding(f"{choice}: value \"\" is schema-valid but answered 422: {response.get_json()}")
