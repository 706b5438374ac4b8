"""CDS Hooks: discovery, service calls (prefetch, fetch, 412), cards, feedback, the FHIR answer
of the native API and its coded findings. Everything the service emits is validated against the
hand-written schemas in ../shared/cds-hooks (CI clones the repository with shared/ beside it)
and FHIR resources against the fhir.resources R4B models.

Expected outcome of each shared request fixture (without / with FHIR server access):
* synthetic/valid/request-patient-view-leg-pain: 412 / 200 (its prefetch has no
  `observations` key: the fixture was written for other keys);
* synthetic/valid/request-encounter-start-no-prefetch: 412 / 412 (no token: its README says
  a service that needs data answers 412);
* synthetic/valid/request-order-select-venous-duplex and spec 3.0 order-sign: 400, the
  service does not answer those hooks (it is offered for patient-view and encounter-start);
* spec 2.0.1 service-request-patient-view: 412 / 200 (prefetch only `patientToGreet`);
* spec 2.0.1 service-request-with-extension: 400 (upstream defect: no patientId).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.guidanceresponse import GuidanceResponse
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.requestgroup import RequestGroup
from fhir.resources.R4B.servicerequest import ServiceRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from service import create_app
from service.ehr.cds_hooks import EXTRA_KEYS, SERVICE_ID, add_feedback_listener, feedback_counts, prefetch_templates
from service.fhir.mapping import LOCAL_FINDING_SYSTEM, LOINC, SNOMED, UCUM
from service.fhir.out import (
    CARD_TYPES,
    NON_ADHERENCE,
    OVERRIDE_REASONS,
    card_type_of,
    card_uuid,
)
from service.intake.parse import parse_encounter
from tests.conftest import SHARED as SHARED_ROOT

ROOT = Path(__file__).resolve().parent.parent
SHARED = SHARED_ROOT / "cds-hooks"
EXAMPLES = SHARED / "examples"
SERVICE = f"/cds-services/{SERVICE_ID}"
FEEDBACK = f"{SERVICE}/feedback"
EHR = "https://ehr.example.org/fhir/r4"
ALLOWED_SERVERS = f"{EHR}, http://hooks.smarthealthit.org:9080, https://ehr.example.org/fhir"
TOKEN = "opaque-fhir-access-token-7d1c"
PRIORITIES = {"routine", "urgent", "asap", "stat"}


def load(rel: str) -> Any:
    return json.loads((EXAMPLES / rel).read_text(encoding="utf-8"))


def validator(name: str) -> Draft202012Validator:
    # A test that reads ../shared must carry the needs_shared marker (it then skips where the
    # folder is absent); this names the file for one that was left unmarked.
    assert SHARED.is_dir(), f"{SHARED} is missing: mark the test @pytest.mark.needs_shared"
    schema = json.loads((SHARED / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())


def schema_errors(name: str, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(doc)]


def now_z(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_outcome(resp, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert schema_errors("operation-outcome", body) == []
    OperationOutcome.model_validate(body)
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def check_cards(resp) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert schema_errors("service-response", body) == []
    for card in body["cards"]:
        check_card(card)
    return body["cards"]


def check_card(card: dict[str, Any]) -> None:
    uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140
    assert "Decision support, not a diagnosis" in card["detail"]
    tier = card["extension"]["example.legpain-cds.provenance"]["tier"]
    assert card["indicator"] == {"emergency": "critical", "urgent": "warning", "soon": "warning",
                                 "routine": "info"}[tier]
    if card_type_of(card["uuid"]) == "questions":  # leg pain, too little for a tier
        assert card["indicator"] == "info" and "Red-flag questions" in card["detail"]
        return
    assert card_type_of(card["uuid"]) == f"urgency-{tier}"
    assert "rule set" in card["source"]["label"]
    for s in card.get("suggestions", []):
        uuid.UUID(s["uuid"])
        for action in s["actions"]:
            sr = action["resource"]
            ServiceRequest.model_validate(sr)
            assert sr["status"] == "draft" and sr["intent"] == "proposal" and sr["priority"] in PRIORITIES
            assert sr["subject"]["reference"].startswith("Patient/")
    assert [r["code"] for r in card["overrideReasons"]] == [c for c, _ in OVERRIDE_REASONS]


# --- fake FHIR server for the fetch path ----------------------------------------------------


class FakeFhir:
    """Answers the service's reads like an EHR's FHIR server would; records what was asked."""

    def __init__(self, observations: list[dict[str, Any]] | None = None,
                 conditions: list[dict[str, Any]] | None = None, status: int = 200,
                 pages: dict[str, dict[str, Any]] | None = None,
                 medications: list[dict[str, Any]] | None = None,
                 procedures: list[dict[str, Any]] | None = None) -> None:
        self.observations = observations or []
        self.conditions = conditions or []
        self.medications = medications or []
        self.procedures = procedures or []
        self.status = status
        self.pages = pages or {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> tuple[int, bytes]:
        self.calls.append((url, headers["Authorization"]))
        if self.status != 200:
            return self.status, b""
        if url in self.pages:
            return 200, orjson.dumps(self.pages[url])
        path = url.split("?")[0]
        if "/Patient/" in path:
            pid = path.rsplit("/", 1)[1]
            return 200, orjson.dumps({"resourceType": "Patient", "id": pid, "gender": "female",
                                      "birthDate": "1958-03-14"})
        kind = path.rsplit("/", 1)[1]
        params = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
        pid = params["patient"]
        resources = {"Observation": self.observations, "Condition": self.conditions,
                     "MedicationRequest": self.medications, "Procedure": self.procedures}[kind]
        if "category" in params:  # as a server does: only resources of a listed category
            wanted = set(params["category"].split(","))
            resources = [r for r in resources if wanted & {c.get("code") for cc in r.get("category", [])
                                                           for c in cc.get("coding", [])}]
        return 200, orjson.dumps(searchset(*({**r, "subject": {"reference": f"Patient/{pid}"}} for r in resources)))


def searchset(*resources: dict[str, Any], link: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
           "entry": [{"fullUrl": f"{EHR}/{r['resourceType']}/{r.get('id', 'x')}", "resource": r,
                      "search": {"mode": "match"}} for r in resources]}
    if link:
        out["link"] = link
    return out


@pytest.fixture(scope="module")
def fetch_app():
    return create_app({"TESTING": True, "HOOKS_FHIR_SERVERS": ALLOWED_SERVERS})


@pytest.fixture()
def fake_fhir(fetch_app):
    fake = FakeFhir()
    fetch_app.extensions["cds_hooks"].fetcher.transport = fake
    return fake


@pytest.fixture()
def fetch_client(fetch_app, fake_fhir):
    return fetch_app.test_client()


@pytest.fixture()
def service_logs():
    """What the service's loggers write (they do not propagate to the root logger)."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Keep(level=logging.DEBUG)
    logger = logging.getLogger("service")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# --- a realistic DVT record -------------------------------------------------------------------


def coding_for(k, finding: str) -> dict[str, str]:
    """The finding's standard coding from the vocabulary if it has one (SNOMED CT or LOINC),
    else the service's local code system."""
    for c in k.findings[finding].codes:
        if c.system in (SNOMED, LOINC):
            return {"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})}
    return {"system": LOCAL_FINDING_SYSTEM, "code": finding, "display": k.findings[finding].display}


def observation(k, rid: str, finding: str, *, when: str | None = None, category: str = "exam",
                **value: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": rid,
        "meta": {"versionId": "1", "lastUpdated": when or now_z(timedelta(hours=1))},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"coding": [coding_for(k, finding)], "text": k.findings[finding].display},
        "subject": {"reference": "Patient/pat-dvt-01", "display": "Test, Patient"},
        "encounter": {"reference": "Encounter/enc-dvt-01"},
        "effectiveDateTime": when or now_z(timedelta(hours=1)),
        "performer": [{"reference": "Practitioner/prac-001"}],
        **value,
    }


def dvt_request(k, *, chest_pain: bool = False) -> dict[str, Any]:
    """58-year-old three weeks after a knee replacement, with a swollen, tender calf, who had a
    DVT years ago: the realistic chart a patient-view call would prefetch."""
    observations = [
        observation(k, "obs-swelling", "leg_swelling_unilateral", valueBoolean=True),
        observation(k, "obs-calf-pain", "calf_pain_unilateral", category="survey", valueBoolean=True),
        observation(k, "obs-calf-3cm", "calf_swelling_3cm", valueBoolean=True,
                    note=[{"text": "Left calf 41 cm, right 37 cm, 10 cm below tibial tuberosity"}]),
        observation(k, "obs-tender", "calf_tenderness",
                    valueCodeableConcept={"coding": [{"system": SNOMED, "code": "373066001", "display": "Yes"}]}),
        observation(k, "obs-pitting", "pitting_oedema_symptomatic_leg",
                    interpretation=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                 "v3-ObservationInterpretation", "code": "POS"}]}]),
        observation(k, "obs-surgery", "major_surgery_12w", category="survey", valueBoolean=True),
        observation(k, "obs-fever", "fever", category="survey", valueBoolean=False),
        observation(k, "obs-chest", "chest_pain", category="survey", valueBoolean=chest_pain),
        observation(k, "obs-breath", "breathlessness", category="survey",
                    valueCodeableConcept={"coding": [{"system": SNOMED, "code": "373067005", "display": "No"}]}),
        # Noise a real chart carries: unrelated codes, a stale record, an erroneous one.
        {"resourceType": "Observation", "id": "obs-bp", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
         "subject": {"reference": "Patient/pat-dvt-01"}, "effectiveDateTime": now_z(timedelta(hours=2)),
         "component": [
             {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
              "valueQuantity": {"value": 142, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
             {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
              "valueQuantity": {"value": 88, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]},
        observation(k, "obs-old-fever", "fever", when="2023-02-01T10:00:00Z", valueBoolean=True),
        {**observation(k, "obs-error", "calf_tenderness", valueBoolean=False), "status": "entered-in-error"},
    ]
    conditions = [
        {"resourceType": "Condition", "id": "cond-old-dvt",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "resolved"}]},
         "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                            "code": "confirmed"}]},
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                   "code": "problem-list-item"}]}],
         "code": {"coding": [coding_for(k, "previous_dvt")], "text": "History of DVT"},
         "subject": {"reference": "Patient/pat-dvt-01"}, "recordedDate": "2016-05-02"},
        {"resourceType": "Condition", "id": "cond-htn",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertensive disorder"}]},
         "subject": {"reference": "Patient/pat-dvt-01"}},
    ]
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": EHR,
        "context": {"userId": "Practitioner/prac-001", "patientId": "pat-dvt-01", "encounterId": "enc-dvt-01"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "pat-dvt-01", "active": True,
                        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
                        "name": [{"family": "Test", "given": ["Patient"]}],
                        "gender": "female", "birthDate": _birth_date(58)},
            "observations": searchset(*observations, link=[{"relation": "self", "url": f"{EHR}/Observation?x"}]),
            "conditions": searchset(*conditions),
        },
    }


def _birth_date(age: int) -> str:
    today = date.today()
    return date(today.year - age, 1, 1).isoformat() if (today.month, today.day) != (1, 1) else \
        date(today.year - age - 1, 6, 1).isoformat()


@pytest.mark.needs_shared
def test_dvt_chart_gives_a_warning_card_with_a_duplex_ultrasound_order(client, knowledge):
    req = dvt_request(knowledge)
    assert schema_errors("service-request", req) == []
    cards = check_cards(client.post(SERVICE, json=req))
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] in ("warning", "critical")
    duplex = knowledge.tests["venous_duplex_us"]
    orders = [a["resource"] for s in card["suggestions"] for a in s["actions"]]
    sr = next(o for o in orders if {"system": "urn:legpain-cds:test", "code": "venous_duplex_us"}.items()
              <= o["code"]["coding"][-1].items())
    for c in duplex.codes:
        assert {"system": c.system, "code": c.code}.items() <= next(
            x for x in sr["code"]["coding"] if x["code"] == c.code).items()
    assert sr["priority"] in ("urgent", "asap", "stat")
    assert sr["subject"] == {"reference": "Patient/pat-dvt-01"}
    assert sr["encounter"] == {"reference": "Encounter/enc-dvt-01"}
    assert any(c["code"] == "dvt" for r in sr["reasonCode"] for c in r["coding"])
    assert "Deep vein thrombosis" in card["detail"] and "Wells" in card["detail"]
    prov = card["extension"]["example.legpain-cds.provenance"]
    assert "dvt.wells.likely" in {r["rule"] for r in prov["rules"]}
    assert prov["ruleset"]["version"] == knowledge.version
    used = {u["finding"]: u for u in prov["findingsUsed"]}
    assert used["previous_dvt"]["present"] is True  # a resolved DVT is still a documented DVT
    assert used["fever"] == {"finding": "fever", "present": False, "resource": "Observation/obs-fever"}
    assert used["calf_tenderness"]["resource"] == "Observation/obs-tender"  # not the entered-in-error one
    assert prov["recordsMatchedNotUsed"] >= 2  # the stale fever and the entered-in-error record


@pytest.mark.needs_shared
def test_dvt_with_chest_pain_is_critical_with_a_stat_ctpa(client, knowledge):
    card = check_cards(client.post(SERVICE, json=dvt_request(knowledge, chest_pain=True)))[0]
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Leg pain triage EMERGENCY")
    priorities = {a["resource"]["code"]["coding"][-1]["code"]: a["resource"]["priority"]
                  for s in card["suggestions"] for a in s["actions"]}
    assert priorities.get("ctpa") == "stat"


@pytest.mark.needs_shared
def test_every_clinical_case_gives_the_same_tier_and_rules_through_cds_hooks(client, knowledge, evaluator):
    """Each case of rules/cases, sent as FHIR Observations with the local code system, is
    evaluated exactly as the native API evaluates it."""
    checked = 0
    for case in knowledge.cases:
        obs, skip = [], False
        for i, f in enumerate(case.request.get("findings", [])):
            finding = knowledge.findings[f["code"]]
            if finding.type == "boolean":
                value = {"valueBoolean": f.get("present", True)}
            elif not f.get("present", True):
                skip = True  # "not measured" has no FHIR form here
                break
            elif finding.type == "number":
                value = {"valueQuantity": {"value": f["value"], "system": UCUM, "code": finding.unit}}
            else:
                value = {"valueString": f["value"]}
            obs.append(observation(knowledge, f"o{i}", f["code"], **value))
        patient = case.request.get("patient") or {}
        age = patient.get("age")
        if skip or (age is not None and age != int(age)):
            continue
        pat: dict[str, Any] = {"resourceType": "Patient", "id": "pat-dvt-01"}
        if age is not None:
            pat["birthDate"] = _birth_date(int(age))
        if patient.get("sex"):
            pat["gender"] = patient["sex"]
        req = {"hook": "encounter-start", "hookInstance": str(uuid.uuid4()),
               "context": {"userId": "PractitionerRole/triage", "patientId": "pat-dvt-01", "encounterId": "e1"},
               "prefetch": {"patient": pat, "observations": searchset(*obs), "conditions": None}}
        cards = check_cards(client.post(SERVICE, json=req))
        native = evaluator.evaluate(parse_encounter(knowledge, case.request))
        if not native["provenance"]:
            # a leg-pain complaint with too little for a tier: the red-flag questions card
            complaint = any(f.get("present", True) and knowledge.findings[f["code"]].topic == "pain"
                            for f in case.request.get("findings", []))
            assert [card_type_of(c["uuid"]) for c in cards] == (["questions"] if complaint else []), case.id
            continue
        prov = cards[0]["extension"]["example.legpain-cds.provenance"]
        assert prov["tier"] == native["urgency"]["tier"], case.id
        assert [r["rule"] for r in prov["rules"]] == [p["rule"] for p in native["provenance"]], case.id
        checked += 1
    assert checked >= len(knowledge.cases) * 3 // 4, (checked, len(knowledge.cases))


# --- discovery -------------------------------------------------------------------------------


@pytest.mark.needs_shared
def test_discovery(client, knowledge):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    body = resp.get_json()
    assert schema_errors("discovery-response", body) == []
    assert {(s["id"], s["hook"]) for s in body["services"]} == {(SERVICE_ID, "patient-view"),
                                                                 (SERVICE_ID, "encounter-start")}
    for service in body["services"]:
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        resource_of = {"observations": "Observation", "conditions": "Condition", "vital-signs": "Observation",
                       "laboratory": "Observation", "social-history": "Observation",
                       "medications": "MedicationRequest", "procedures": "Procedure"}
        assert set(prefetch) == {"patient", *resource_of}
        for key, want in resource_of.items():
            resource, query = prefetch[key].split("?", 1)
            assert resource == want
            assert len(prefetch[key]) < 2000  # what EHRs and proxies take
            params = dict(p.split("=", 1) for p in query.split("&"))
            # only what the spec's prefetch query restrictions allow: the patient, token
            # searches (code, category, status) and paging
            assert set(params) <= {"patient", "code", "category", "status", "_sort", "_count"}
            assert params["patient"] == "{{context.patientId}}"
        assert prefetch["medications"].endswith("status=active&_count=100")
        assert "category=vital-signs" in prefetch["vital-signs"]
        assert "category=problem-list-item,encounter-diagnosis" in prefetch["conditions"]
        codes = prefetch["observations"].split("code=")[1].split("&")[0].split(",")
        assert f"{LOCAL_FINDING_SYSTEM}|" in codes
        for f in knowledge.findings.values():
            for c in f.codes:  # history findings come from the Condition/Procedure/medicine keys
                assert (f"{c.system}|{c.code}" in codes) is (f.topic != "history"), f.code
        assert len(prefetch["observations"]) < 2000
        assert service["extension"]["example.legpain-cds.ruleset"]["version"] == knowledge.version


@pytest.mark.needs_shared
def test_the_shared_discovery_fixtures_are_checked_by_the_same_validator():
    assert schema_errors("discovery-response", load("synthetic/valid/discovery-response-leg-pain.json")) == []
    for name in ("discovery-response-missing-description", "discovery-response-null-prefetch"):
        assert len(schema_errors("discovery-response", load(f"synthetic/invalid/{name}.json"))) == 1


# --- the shared request fixtures -------------------------------------------------------------


def library_request(name: str, hook: str, *, with_token: bool) -> dict[str, Any]:
    req = {"hook": hook, "hookInstance": str(uuid.uuid4()), **load(f"hooks-library/{name}")}
    if with_token:
        req["fhirServer"] = EHR
        req["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "user/Patient.read user/Observation.read user/Condition.read",
                                    "subject": "legpain-cds"}
    return req


VALID_REQUESTS = [
    # (name, request, status without FHIR access, status with FHIR access)
    ("synthetic patient-view", lambda: load("synthetic/valid/request-patient-view-leg-pain.json"), 412, 200),
    ("synthetic encounter-start, no prefetch", lambda: load("synthetic/valid/request-encounter-start-no-prefetch.json"),
     412, 412),
    ("synthetic order-select", lambda: load("synthetic/valid/request-order-select-venous-duplex.json"), 400, 400),
    ("spec 2.0.1 patient-view", lambda: load("spec-2.0.1/service-request-patient-view.json"), 412, 200),
    ("spec 3.0 order-sign paginated", lambda: load("spec-3.0.0-ballot/service-request-order-sign-paginated-prefetch"
                                                   ".json"), 400, 400),
    ("library patient-view 1", lambda: library_request("patient-view-context-1.json", "patient-view",
                                                       with_token=True), 412, 200),
    ("library patient-view 2", lambda: library_request("patient-view-context-2.json", "patient-view",
                                                       with_token=True), 412, 200),
    ("library encounter-start", lambda: library_request("encounter-start-context.json", "encounter-start",
                                                        with_token=True), 412, 200),
    ("library patient-view, no token", lambda: library_request("patient-view-context-1.json", "patient-view",
                                                               with_token=False), 412, 412),
    ("library encounter-discharge", lambda: library_request("encounter-discharge-context.json",
                                                            "encounter-discharge", with_token=True), 400, 400),
    ("library order-select", lambda: library_request("order-select-context-r4.json", "order-select",
                                                     with_token=True), 400, 400),
    ("library order-sign", lambda: library_request("order-sign-context-r4.json", "order-sign",
                                                   with_token=True), 400, 400),
]


@pytest.mark.needs_shared
@pytest.mark.parametrize(("name", "make", "without", "with_access"), VALID_REQUESTS, ids=[v[0] for v in VALID_REQUESTS])
def test_every_valid_request_fixture(client, fetch_client, fake_fhir, name, make, without, with_access):
    req = make()
    assert schema_errors("service-request", req) == []
    for c, status in ((client, without), (fetch_client, with_access)):
        resp = c.post(SERVICE, json=req)
        if status == 200:
            check_cards(resp)
        else:
            body = check_outcome(resp, status)
            if status == 412:
                assert all(i["code"] == "processing" and i["expression"][0].startswith("prefetch.")
                           for i in body["issue"])
            if status == 400:
                assert body["issue"][0]["code"] == "not-supported"
                assert "patient-view, encounter-start" in body["issue"][0]["details"]["text"]


@pytest.mark.needs_shared
def test_fetching_uses_the_token_and_the_templates(fetch_client, fake_fhir, knowledge):
    fake_fhir.observations = [observation(knowledge, "o1", "calf_tenderness", valueBoolean=True)]
    req = load("spec-2.0.1/service-request-patient-view.json")
    req["fhirAuthorization"]["access_token"] = TOKEN
    cards = check_cards(fetch_client.post(SERVICE, json=req))
    assert cards and cards[0]["extension"]["example.legpain-cds.provenance"]["findingsUsed"][0]["finding"] == \
        "calf_tenderness"
    urls = [u for u, _ in fake_fhir.calls]
    assert urls[0] == "http://hooks.smarthealthit.org:9080/Patient/1288992"
    assert urls[1].startswith("http://hooks.smarthealthit.org:9080/Observation?patient=1288992&code=")
    assert urls[2] == ("http://hooks.smarthealthit.org:9080/Condition?patient=1288992"
                       "&category=problem-list-item,encounter-diagnosis&_count=200")
    assert urls[3:] == [f"http://hooks.smarthealthit.org:9080/{knowledge_template}".replace(
        "{{context.patientId}}", "1288992") for knowledge_template in
        [prefetch_templates(knowledge)[k] for k in EXTRA_KEYS]]
    assert {auth for _, auth in fake_fhir.calls} == {f"Bearer {TOKEN}"}


@pytest.mark.needs_shared
def test_the_defective_spec_example_without_patient_id_is_a_400(client):
    req = load("spec-2.0.1/service-request-with-extension.json")
    assert schema_errors("service-request", req)  # the upstream defect
    body = check_outcome(client.post(SERVICE, json=req), 400)
    assert body["issue"][0]["expression"] == ["context.patientId"]


@pytest.mark.needs_shared
@pytest.mark.parametrize(("name", "where"), [
    ("request-encounter-start-missing-encounterId", "context.encounterId"),
    ("request-fhirAuthorization-without-fhirServer", "fhirServer"),
    ("request-missing-hookInstance", "hookInstance"),
    ("request-prefetch-value-string", "prefetch.user"),
])
def test_every_invalid_request_fixture_is_a_clear_400(client, name, where):
    req = load(f"synthetic/invalid/{name}.json")
    assert len(schema_errors("service-request", req)) == 1
    body = check_outcome(client.post(SERVICE, json=req), 400)
    assert [i["expression"] for i in body["issue"]] == [[where]]
    assert where in body["issue"][0]["details"]["text"]


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", sorted(p.stem for p in (EXAMPLES / "synthetic" / "invalid").glob("response-*.json"))
                         or ["shared-absent"])  # one item that skips with the reason, not an empty set
def test_the_response_validator_rejects_each_invalid_response_fixture(name):
    """Sanity: the validator that checks our cards catches each one-rule-broken response."""
    assert len(schema_errors("service-response", load(f"synthetic/invalid/{name}.json"))) == 1


@pytest.mark.needs_shared
def test_the_valid_response_fixture_and_override_reasons_vocabulary():
    assert schema_errors("service-response", load("synthetic/valid/response-leg-pain-example.json")) == []
    cs = json.loads((SHARED / "vocabulary" / "CodeSystem-non-adherence-reason-codes.json").read_text())
    assert cs["url"] == NON_ADHERENCE

    def walk(concepts):
        for c in concepts:
            yield c["code"], c["display"]
            yield from walk(c.get("concept", []))

    displays = dict(walk(cs["concept"]))
    clinical = json.loads((SHARED / "vocabulary" / "ValueSet-non-adherence-reason-clinical.json").read_text())
    offered = {c["code"] for inc in clinical["compose"]["include"] for c in inc["concept"]}
    for code, display in OVERRIDE_REASONS:
        assert displays[code] == display
        assert code in offered


# --- prefetch values, 412 and fetching -------------------------------------------------------


def base_request(**prefetch: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                           "context": {"userId": "Practitioner/p", "patientId": "pat-dvt-01"}}
    if prefetch:
        req["prefetch"] = prefetch
    return req


def with_token(req: dict[str, Any], server: str = EHR) -> dict[str, Any]:
    return {**req, "fhirServer": server, "fhirAuthorization": {
        "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read",
        "subject": "legpain-cds"}}


@pytest.mark.needs_shared
def test_null_prefetch_values_mean_no_data_and_no_data_means_no_card(client):
    req = base_request(patient=None, observations=None, conditions=None)
    assert schema_errors("service-request", req) == []
    assert check_cards(client.post(SERVICE, json=req)) == []


@pytest.mark.needs_shared
def test_an_empty_bundle_is_no_data(client):
    req = base_request(patient={"resourceType": "Patient", "id": "pat-dvt-01", "gender": "male"},
                       observations=searchset(), conditions=searchset())
    assert check_cards(client.post(SERVICE, json=req)) == []


@pytest.mark.needs_shared
def test_an_operation_outcome_for_our_key_is_412_naming_it(client):
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    body = check_outcome(client.post(SERVICE, json=base_request(patient=None, observations=oo, conditions=None)), 412)
    assert [i["expression"] for i in body["issue"]] == [["prefetch.observations"]]
    assert "OperationOutcome" in body["issue"][0]["details"]["text"]


@pytest.mark.needs_shared
def test_an_operation_outcome_for_our_key_is_not_queried_again(fetch_client, fake_fhir, knowledge):
    """The client's server already refused: asking it again would repeat the failure."""
    fake_fhir.observations = [observation(knowledge, "o1", "calf_tenderness", valueBoolean=True)]
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    req = with_token(base_request(patient=None, observations=oo, conditions=None))
    body = check_outcome(fetch_client.post(SERVICE, json=req), 412)
    assert "OperationOutcome" in body["issue"][0]["details"]["text"]
    assert not any("/Observation?" in url and "code=" in url for url, _ in fake_fhir.calls)


@pytest.mark.needs_shared
def test_keys_we_did_not_ask_for_are_ignored(client, knowledge):
    req = base_request(patient=None, observations=None, conditions=None,
                       medications={"resourceType": "Bundle", "type": "searchset"},
                       vitals=searchset(observation(knowledge, "o1", "calf_tenderness", valueBoolean=True)))
    assert check_cards(client.post(SERVICE, json=req)) == []


@pytest.mark.needs_shared
def test_a_paginated_prefetch_reads_its_first_page_without_access_and_all_with_it(client, fetch_client, fake_fhir,
                                                                                    knowledge):
    page2 = f"{EHR}/Observation?patient=pat-dvt-01&page=2"
    first = searchset(observation(knowledge, "o1", "leg_swelling_unilateral", valueBoolean=True),
                      link=[{"relation": "next", "url": page2}])
    fake_fhir.pages[page2] = searchset(observation(knowledge, "o2", "calf_tenderness", valueBoolean=True))
    req = base_request(patient=None, observations=first, conditions=None)
    cards = check_cards(client.post(SERVICE, json=req))
    used = {u["finding"] for u in cards[0]["extension"]["example.legpain-cds.provenance"]["findingsUsed"]}
    assert used == {"leg_swelling_unilateral"}
    assert "only the first page was read" in cards[0]["detail"]
    cards = check_cards(fetch_client.post(SERVICE, json=with_token(req)))
    used = {u["finding"] for u in cards[0]["extension"]["example.legpain-cds.provenance"]["findingsUsed"]}
    assert used == {"leg_swelling_unilateral", "calf_tenderness"}
    assert [u for u, _ in fake_fhir.calls if "/Observation?" in u and "category" not in u] == [page2]


@pytest.mark.needs_shared
def test_a_next_link_off_the_fhir_server_is_not_followed(fetch_client, fake_fhir, knowledge):
    first = searchset(observation(knowledge, "o1", "calf_tenderness", valueBoolean=True),
                      link=[{"relation": "next", "url": "https://attacker.example/steal"}])
    req = with_token(base_request(patient=None, observations=first, conditions=None))
    cards = check_cards(fetch_client.post(SERVICE, json=req))  # the first page is read
    assert "only the first page was read" in cards[0]["detail"]
    assert not any("attacker" in url for url, _ in fake_fhir.calls)


@pytest.mark.needs_shared
def test_a_failing_fhir_server_is_412_and_the_token_is_never_logged(fetch_client, fake_fhir, service_logs):
    fake_fhir.status = 503
    req = with_token(base_request())
    body = check_outcome(fetch_client.post(SERVICE, json=req), 412)
    assert len(body["issue"]) == 3
    assert all("failed" in i["details"]["text"] for i in body["issue"])
    assert service_logs and not any(TOKEN in line for line in service_logs)
    assert TOKEN not in json.dumps(body)


@pytest.mark.needs_shared
def test_only_allow_listed_fhir_servers_are_read(fetch_client, fake_fhir):
    req = with_token(base_request(), server="https://elsewhere.example/fhir")
    body = check_outcome(fetch_client.post(SERVICE, json=req), 412)
    assert "allowlist" in body["issue"][0]["details"]["text"]
    assert fake_fhir.calls == []


@pytest.mark.needs_shared
@pytest.mark.parametrize(("mutate", "where"), [
    (lambda r: r["prefetch"]["patient"].update(id="someone-else"), "prefetch.patient.id"),
    (lambda r: r["prefetch"]["observations"]["entry"][0]["resource"].update(code="fever"),
     "prefetch.observations.entry[0].resource.code"),
    (lambda r: r["prefetch"]["observations"]["entry"][0]["resource"]["subject"].update(reference="Patient/x"),
     "prefetch.observations.entry[0].resource.subject.reference"),
    (lambda r: r["prefetch"]["observations"]["entry"][0]["resource"].update(effectiveDateTime="last week"),
     "prefetch.observations.entry[0].resource.effectiveDateTime"),
    (lambda r: r["prefetch"].update(patient={"resourceType": "Observation"}), "prefetch.patient"),
    (lambda r: r["prefetch"]["observations"].update(entry="none"), "prefetch.observations.entry"),
])
def test_unreadable_fhir_is_a_400_naming_where(client, knowledge, mutate, where):
    req = dvt_request(knowledge)
    mutate(req)
    body = check_outcome(client.post(SERVICE, json=req), 400)
    assert body["issue"][0]["expression"] == [where]


@pytest.mark.needs_shared
@pytest.mark.parametrize(("kwargs", "status"), [
    ({"data": b"{not json", "content_type": "application/json"}, 400),
    ({"data": b"[]", "content_type": "application/json"}, 400),
    ({"data": b"{}", "content_type": "text/plain"}, 415),
])
def test_bad_bodies_are_operation_outcomes(client, kwargs, status):
    check_outcome(client.post(SERVICE, **kwargs), status)


@pytest.mark.needs_shared
def test_an_oversized_body_is_413(client, app):
    settings = app.extensions["cds_hooks"]
    old, settings.max_body = settings.max_body, 1000
    try:
        body = check_outcome(client.post(SERVICE, data=b"{" + b" " * 2000 + b"}", content_type="application/json"),
                             413)
        assert body["issue"][0]["code"] == "too-long"
    finally:
        settings.max_body = old


def test_unknown_service_is_404(client):
    for path in ("/cds-services/nope", "/cds-services/nope/feedback"):
        resp = client.post(path, json=base_request())
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"


@pytest.mark.needs_shared
def test_the_context_is_checked_for_the_hook(client):
    req = base_request(patient=None, observations=None, conditions=None)
    req["hook"] = "encounter-start"
    body = check_outcome(client.post(SERVICE, json=req), 400)
    assert body["issue"][0]["expression"] == ["context.encounterId"]
    req["context"].update(encounterId="e1", userId="Patient/pat-dvt-01")  # encounter-start: clinicians only
    body = check_outcome(client.post(SERVICE, json=req), 400)
    assert body["issue"][0]["expression"] == ["context.userId"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization",
                         "patient", "observations", "conditions", "resourceType", "entry", "resource", "code",
                         "coding", "system", "valueBoolean", "valueQuantity", "status", "effectiveDateTime",
                         "subject", "birthDate", "gender", "clinicalStatus", "component", "link", "value", "unit"])


def _mutations(base: dict[str, Any]):
    """Replace one value somewhere in a valid request by arbitrary JSON."""
    paths: list[tuple[Any, ...]] = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))

    walk(base, ())

    def apply(path, value, extra_key):
        doc = json.loads(json.dumps(base))
        if not path:
            return value
        node = doc
        for step in path[:-1]:
            node = node[step]
        if isinstance(node, dict) and extra_key is not None:
            node[extra_key] = value
        else:
            node[path[-1]] = value
        return doc

    return st.builds(apply, st.sampled_from(paths[1:]), _json, st.none() | _keys)


@pytest.fixture(scope="module")
def fuzz_base(knowledge):
    req = dvt_request(knowledge)
    req["prefetch"]["observations"]["entry"] = req["prefetch"]["observations"]["entry"][:4]
    return req


@pytest.mark.needs_shared
def test_bad_input_never_gives_a_500(app, fuzz_base):
    client = app.test_client()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(_json, _mutations(fuzz_base)))
    def check(doc):
        resp = client.post(SERVICE, data=orjson.dumps(doc), content_type="application/json")
        assert resp.status_code in (200, 400, 412), resp.get_data(as_text=True)
        if resp.status_code == 200:
            assert schema_errors("service-response", resp.get_json()) == []
        else:
            assert schema_errors("operation-outcome", resp.get_json()) == []
        if resp.status_code != 400:  # what the service accepts, the schema accepts
            assert schema_errors("service-request", doc) == []

    check()


@pytest.mark.needs_shared
def test_bad_feedback_never_gives_a_500(app):
    client = app.test_client()
    base = load("synthetic/valid/feedback-leg-pain-accepted.json")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(_json, _mutations(base)))
    def check(doc):
        resp = client.post(FEEDBACK, data=orjson.dumps(doc), content_type="application/json")
        assert resp.status_code in (200, 400), resp.get_data(as_text=True)
        if resp.status_code == 400:
            assert schema_errors("operation-outcome", resp.get_json()) == []
        else:  # what the service accepts, the schema accepts
            assert schema_errors("feedback-request", doc) == []

    check()


# --- cards -----------------------------------------------------------------------------------


def test_card_uuids_carry_their_type():
    for card_type in CARD_TYPES:
        ids = {card_uuid(card_type) for _ in range(50)}
        assert len(ids) == 50
        for value in ids:
            assert uuid.UUID(value).version == 4
            assert card_type_of(value) == card_type
    # another issuer's uuid passes the checksum and a valid type byte with p ~ 2e-7
    assert {card_type_of(str(uuid.uuid4())) for _ in range(1000)} == {"unknown"}
    assert card_type_of("not-a-uuid") == "unknown"
    assert card_type_of("7f1c2b8e-4d3a-4e9f-a2b1-0c5d6e7f8a90") == "unknown"


def test_the_summary_stays_under_140_characters(client, knowledge):
    from service.fhir.out import summary_for

    answer = {"urgency": {"tier": "emergency"}, "red_flags": [{"display": "x" * 300}], "differential": []}
    text = summary_for(answer)
    assert len(text) < 140 and text.endswith("…")


# --- feedback --------------------------------------------------------------------------------


@pytest.fixture()
def counts_reset():
    from service.ehr.cds_hooks import FEEDBACK

    FEEDBACK.reset()
    yield
    FEEDBACK.reset()


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", [
    "spec-2.0.1/feedback-accepted.json", "spec-2.0.1/feedback-overridden.json",
    "spec-2.0.1/feedback-overridden-with-reason.json", "synthetic/valid/feedback-leg-pain-accepted.json",
])
def test_every_valid_feedback_fixture_is_accepted(client, counts_reset, name):
    doc = load(name)
    assert schema_errors("feedback-request", doc) == []
    resp = client.post(FEEDBACK, json=doc)
    assert resp.status_code == 200
    assert resp.get_json()["received"] == len(doc["feedback"])


@pytest.mark.needs_shared
@pytest.mark.parametrize(("name", "where"), [
    ("feedback-accepted-without-acceptedSuggestions", "feedback[0].acceptedSuggestions"),
    ("feedback-overrideReason-empty", "feedback[0].overrideReason"),
])
def test_every_invalid_feedback_fixture_is_a_clear_400(client, counts_reset, name, where):
    doc = load(f"synthetic/invalid/{name}.json")
    assert len(schema_errors("feedback-request", doc)) == 1
    body = check_outcome(client.post(FEEDBACK, json=doc), 400)
    assert [i["expression"] for i in body["issue"]] == [[where]]
    assert feedback_counts()["accepted"] == {} and feedback_counts()["overridden"] == {}


@pytest.mark.needs_shared
@pytest.mark.parametrize("doc", [
    {}, {"feedback": {}}, {"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2025-01-01T00:00:00Z"}]},
    {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
    {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2025-13-01T00:00:00Z"}]},
    {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "2025-01-01T00:00:00Z",
                   "overrideReason": {"reason": {"code": "c"}}}]},
    {"feedback": [], "other": 1},
])
def test_malformed_feedback_is_400(client, counts_reset, doc):
    assert schema_errors("feedback-request", doc)
    check_outcome(client.post(FEEDBACK, json=doc), 400)


@pytest.mark.needs_shared
def test_feedback_is_counted_per_card_type_with_reasons_and_repeats_once(client, knowledge, counts_reset):
    card = check_cards(client.post(SERVICE, json=dvt_request(knowledge)))[0]
    card_type = card_type_of(card["uuid"])
    suggestion = card["suggestions"][0]["uuid"]
    seen: list[tuple] = []
    add_feedback_listener(lambda *args: seen.append(args))
    reason = card["overrideReasons"][0]
    batch = {"feedback": [
        {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion}],
         "outcomeTimestamp": now_z()},
        {"card": card["uuid"], "outcome": "overridden", "overrideReason": {
            "reason": reason, "userComment": "Duplex done at the outside hospital for Mrs Test yesterday"},
         "outcomeTimestamp": now_z()},
        {"card": card["uuid"], "outcome": "overridden",
         "overrideReason": {"reason": {"system": "https://example.com/reasons", "code": "d7ecf885"}},
         "outcomeTimestamp": "2020-12-11T00:00:00Z"},
        {"card": card["uuid"], "outcome": "overridden", "overrideReason": {"userComment": "no"},
         "outcomeTimestamp": "2020-12-11T00:00:01Z"},
        {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2020-12-11T00:00:02Z"},
    ]}
    assert schema_errors("feedback-request", batch) == []
    first = client.post(FEEDBACK, json=batch).get_json()
    assert (first["received"], first["counted"], first["repeats"]) == (5, 5, 0)
    expected = {
        "accepted": {card_type: 1},
        "accepted_suggestions": {card_type: 1},
        "overridden": {card_type: {reason["code"]: 1, "other": 1, "none": 1}, "unknown": {"none": 1}},
        "duplicates": 0,
    }
    assert feedback_counts() == expected
    again = client.post(FEEDBACK, json=batch).get_json()
    assert (again["counted"], again["repeats"]) == (0, 5)
    assert feedback_counts() == {**expected, "duplicates": 5}
    assert "Mrs Test" not in repr(feedback_counts())
    assert (card_type, "accepted", "", 1) in seen and len(seen) == 5


# --- native API: FHIR answer and coded findings ----------------------------------------------


NATIVE = {"patient": {"age": 58, "sex": "female"}, "encounter_id": "enc-42",
          "findings": [{"code": "major_surgery_12w"}, {"code": "leg_swelling_unilateral"},
                       {"code": "calf_swelling_3cm"}, {"code": "calf_tenderness"}, {"code": "fever", "present": False}]}


def test_the_native_api_answers_a_guidance_response_for_fhir_clients(client, knowledge):
    resp = client.post("/v1/evaluations", json=NATIVE, headers={"Accept": "application/fhir+json"})
    assert resp.status_code == 200 and resp.mimetype == "application/fhir+json"
    body = resp.get_json()
    GuidanceResponse.model_validate(body)
    assert body["status"] == "success" and body["requestIdentifier"] == {"value": "enc-42"}
    contained = {r["id"]: r for r in body["contained"]}
    assert body["result"]["reference"] == "#recommended-tests"
    group = contained["recommended-tests"]
    RequestGroup.model_validate(group)
    Parameters.model_validate(contained[body["outputParameters"]["reference"][1:]])
    refs = [a["resource"]["reference"][1:] for a in group["action"]]
    assert refs and all(r in contained for r in refs)
    for ref in refs:
        sr = contained[ref]
        ServiceRequest.model_validate(sr)
        assert sr["priority"] in PRIORITIES
    codes = {c["code"] for r in refs for c in contained[r]["code"]["coding"]}
    assert "venous_duplex_us" in codes and "93971" in codes
    params = {p["name"]: p for p in contained["output"]["parameter"]}
    assert params["urgency"]["valueCode"] in ("urgent", "emergency")
    assert "not a diagnosis" in body["note"][0]["text"]
    for req in body.get("dataRequirement", []):
        assert req["type"] == "Observation" and req["codeFilter"][0]["code"]


def test_a_guidance_response_with_nothing_to_recommend_is_valid(client):
    resp = client.post("/v1/evaluations", json={"findings": []}, headers={"Accept": "application/fhir+json"})
    body = resp.get_json()
    GuidanceResponse.model_validate(body)
    group = next(r for r in body["contained"] if r["resourceType"] == "RequestGroup")
    RequestGroup.model_validate(group)
    assert "action" not in group


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/json, application/fhir+json;q=0.5"])
def test_json_stays_the_default(client, accept):
    headers = {"Accept": accept} if accept else {}
    resp = client.post("/v1/evaluations", json=NATIVE, headers=headers)
    assert resp.mimetype == "application/json" and "urgency" in resp.get_json()


def test_errors_stay_problem_json_for_fhir_clients(client):
    resp = client.post("/v1/evaluations", json={"findings": [{"code": "nope"}]},
                       headers={"Accept": "application/fhir+json"})
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"


def test_coded_findings_are_the_same_findings(knowledge):
    for f in knowledge.findings.values():
        value = {"number": {"value": (f.range or (0, 1))[0]}, "choice": {"value": f.choices[0] if f.choices else ""},
                 "boolean": {}}[f.type]
        local = parse_encounter(knowledge, {"findings": [{"code": f.code, **value}]})
        coded = [{"system": LOCAL_FINDING_SYSTEM, "code": f.code}] + [
            {"system": c.system, "code": c.code} for c in f.codes]
        for coding in coded:
            if coding["system"] != LOCAL_FINDING_SYSTEM and len(
                    {x.code for x in knowledge.findings.values() for y in x.codes
                     if (y.system, y.code) == (coding["system"], coding["code"])}) > 1:
                continue  # an ambiguous coding is refused (below)
            assert parse_encounter(knowledge, {"findings": [{**coding, **value}]}) == local


def test_coded_findings_over_http(client, knowledge, snomed_coding):
    code, coding = snomed_coding
    local = client.post("/v1/evaluations", json={**NATIVE, "findings": [*NATIVE["findings"][:4], {"code": code}]})
    coded = client.post("/v1/evaluations", json={**NATIVE, "findings": [
        *NATIVE["findings"][:4], {"system": coding.system, "code": coding.code}]})
    strip = lambda b: {k: v for k, v in b.items() if k not in ("evaluation_id", "codings_read")}  # noqa: E731
    assert coded.status_code == 200 and strip(coded.get_json()) == strip(local.get_json())
    assert coded.get_json()["codings_read"] == [{"pointer": "/findings/4", "system": coding.system,
                                                 "code": coding.code, "finding": code,
                                                 "display": knowledge.findings[code].display}]
    assert "codings_read" not in local.get_json()


@pytest.fixture(scope="module")
def snomed_coding(knowledge):
    for f in knowledge.findings.values():
        for c in f.codes:
            if f.type == "boolean" and c.system == SNOMED:
                return f.code, c
    pytest.skip("no SNOMED-coded yes/no finding in the vocabulary")


@pytest.mark.parametrize(("findings", "pointer", "reason"), [
    ([{"system": SNOMED, "code": "999999999"}], "/findings/0/code", "unknown-code"),
    ([{"system": "http://example.org/other", "code": "fever"}], "/findings/0/code", "unknown-code"),
    ([{"system": LOCAL_FINDING_SYSTEM, "code": "calf_tendernes"}], "/findings/0/code", "unknown-code"),
    ([{"code": "calf_tenderness"}, {"system": LOCAL_FINDING_SYSTEM, "code": "calf_tenderness"}], "/findings/1/code",
     "duplicate"),
])
def test_unknown_or_repeated_codings_are_422(client, findings, pointer, reason):
    resp = client.post("/v1/evaluations", json={"findings": findings})
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    errors = resp.get_json()["errors"]
    assert [(e["pointer"], e["reason"]) for e in errors] == [(pointer, reason)]
    if findings[0]["code"] == "calf_tendernes":
        assert errors[0]["suggestions"][0] == "calf_tenderness"


def test_an_ambiguous_coding_is_422(knowledge):
    import dataclasses

    from service.errors import ValidationFailed
    from service.knowledge.model import Coding

    shared = Coding("http://example.org/shared", "42")
    changed = dict(knowledge.findings)
    for code in ("calf_tenderness", "calf_swelling_3cm"):
        changed[code] = dataclasses.replace(changed[code], codes=(*changed[code].codes, shared))
    k2 = dataclasses.replace(knowledge, findings=changed)
    with pytest.raises(ValidationFailed) as exc:
        parse_encounter(k2, {"findings": [{"system": shared.system, "code": shared.code}]})
    assert exc.value.errors[0]["reason"] == "ambiguous-code"


# --- CORS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_app():
    return create_app({"TESTING": True, "HOOKS_CORS_ORIGINS": "https://ehr.example.org, https://sandbox.cds-hooks.org"})


def test_cors_for_configured_ehr_origins(cors_app):
    c = cors_app.test_client()
    pre = c.options(SERVICE, headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    get = c.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert get.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert "Origin" in get.headers["Vary"]
    other = c.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    native = c.get("/v1/findings", headers={"Origin": "https://ehr.example.org"})
    assert "Access-Control-Allow-Origin" not in native.headers  # CORS is for the CDS Hooks endpoints only


def test_open_mode_warns_at_start(service_logs):
    create_app({"TESTING": True})
    assert any("OPEN" in line and "CDS_HOOKS_TRUSTED_ISSUERS" in line for line in service_logs)


@pytest.mark.needs_shared
def test_feedback_reaches_the_prometheus_counter(client, knowledge, counts_reset):
    card = check_cards(client.post(SERVICE, json=dvt_request(knowledge)))[0]
    card_type = card_type_of(card["uuid"])

    def scraped() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        for line in text.splitlines():
            if line.startswith("legpain_cds_cds_hooks_feedback_total{") and f'card_type="{card_type}"' in line \
                    and 'outcome="accepted"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = scraped()
    item = {"card": card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}], "outcomeTimestamp": now_z()}
    assert client.post(FEEDBACK, json={"feedback": [item]}).status_code == 200
    assert scraped() == before + 1
    client.post(FEEDBACK, json={"feedback": [item]})  # a repeat is not counted again
    assert scraped() == before + 1
