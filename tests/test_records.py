"""Realistic FHIR R4 records (tests/records.py) through the mapping and the CDS Hooks service:
what must be read is read, what must not be is not, and everything emitted is valid FHIR."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient

from service import create_app
from service.fhir.out import card_type_of
from tests.records import KIND, NOW, RECORDS, Record, matches, read_all, score

SERVICE = "/cds-services/leg-pain-triage"


@pytest.fixture(scope="module")
def app():
    return create_app({"TESTING": True})


@pytest.fixture(scope="module")
def knowledge(app):
    return app.extensions["evaluator"].knowledge


def call(app: Any, record: Record, prefetch: dict[str, Any]) -> Any:
    return app.test_client().post(SERVICE, json={
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/prac-1", "patientId": record.pid}, "prefetch": prefetch})


def test_there_are_at_least_30_records_and_every_fact_has_a_kind():
    assert len(RECORDS) >= 30
    assert len({r.pid for r in RECORDS}) == len(RECORDS)
    for r in RECORDS:
        assert r.read or r.not_read, r.name
        assert not set(r.read) & r.not_read, r.name
        for finding in [*r.read, *r.not_read]:
            assert finding in KIND, finding


@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_every_resource_is_valid_fhir(record: Record):
    pf = record.prefetch()
    Patient.model_validate(pf["patient"])
    for key, value in pf.items():
        if key != "patient":
            Bundle.model_validate(value)  # validates each entry's resource by its type


@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_what_must_be_read_is_read_and_nothing_else(knowledge, record: Record):
    got = read_all(knowledge, record)
    for finding, want in record.read.items():
        assert matches(want, got.get(finding)), (finding, want, got.get(finding))
    for finding in record.not_read:
        assert finding not in got, (finding, got[finding])
    assert set(got) <= set(record.read), sorted(set(got) - set(record.read))


def test_the_scores_by_kind_of_fact(knowledge):
    table = score(knowledge)
    assert {"condition", "medicine", "procedure", "vital sign", "laboratory", "smoking status"} <= set(table)
    for kind, row in table.items():
        assert row["read"] == row["expected"], kind
        assert row["false"] == 0, kind


def test_a_mapping_that_ignored_status_would_be_caught(knowledge):
    """The tables can fail: reading a resolved problem as present is a false read."""
    record = next(r for r in RECORDS if r.name == "resolved and entered in error")
    wrong = Record(record.name, record.pid, record.gender, record.born,
                   keys=record.keys, read={**record.read, "known_heart_failure": True})
    assert score(knowledge, [wrong])["condition"]["read"] < score(knowledge, [wrong])["condition"]["expected"]


def test_problems_and_medicines_only_show_as_read_in_the_card(app):
    """The issue's case: a Patient, active problems (diabetes, PAD, a previous DVT) and
    medicines (a statin, an anticoagulant), the other keys empty, plus the complaint."""
    record = RECORDS[0]
    pf = {key: None for key in record.prefetch()}
    full = record.prefetch()
    pf.update(patient=full["patient"], conditions=full["conditions"], medications=full["medications"])
    from tests.records import bundle, complaint

    pf["observations"] = bundle([{"id": "c1", **complaint("pain_calf", "Pain in calf", NOW.isoformat()),
                                  "subject": {"reference": f"Patient/{record.pid}"}}])
    resp = call(app, record, pf)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    [card] = resp.get_json()["cards"]
    detail = card["detail"]
    assert "Type 2 diabetes (Condition\\, recorded 2019\\-03\\-02" in detail
    assert "atorvastatin 80 MG Oral Tablet (active MedicationRequest" in detail
    assert "apixaban 5 MG Oral Tablet (active MedicationRequest" in detail
    assert "DVT right leg (Condition\\, resolved\\, recorded 2018\\-01\\-09" in detail
    assert "PAD (Condition" in detail


def test_a_missing_key_with_an_emergency_in_what_arrived_gives_the_card(app):
    record = next(r for r in RECORDS if r.name == "urinary retention")
    pf = {"patient": record.patient(), "observations": record.prefetch()["observations"]}  # no conditions key
    resp = call(app, record, pf)
    assert resp.status_code == 200
    [card] = resp.get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "**Could not be read**" in card["detail"]
    assert "problems and diagnoses \\(Condition\\)" in card["detail"]
    assert "medicines \\(MedicationRequest\\)" in card["detail"]


def test_a_missing_key_without_a_red_flag_is_still_412(app):
    record = next(r for r in RECORDS if r.name == "arm fracture with calf pain")
    resp = call(app, record, {"patient": record.patient(), "observations": record.prefetch()["observations"]})
    assert resp.status_code == 412
    assert any("'conditions'" in i["details"]["text"] for i in resp.get_json()["issue"])


def test_leg_pain_with_too_little_for_a_tier_gives_the_questions_card(app):
    record = next(r for r in RECORDS if r.name == "arm fracture with calf pain")
    resp = call(app, record, record.prefetch())
    [card] = resp.get_json()["cards"]
    assert card_type_of(card["uuid"]) == "questions"
    assert card["indicator"] == "info"
    assert "Have you coughed up any blood" in card["detail"]
    assert "Forearm" not in card["detail"]  # the arm fracture is not read as a leg injury


def test_markdown_in_what_the_record_calls_a_fact_is_shown_as_text(app):
    record = RECORDS[0]
    pf = record.prefetch()
    pf["conditions"]["entry"][0]["resource"]["code"]["text"] = "[Re-login](https://evil.example) **now**"
    pf["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "id": "c1", "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "urn:legpain-cds:finding", "code": "urinary_retention"}]},
        "effectiveDateTime": NOW.isoformat(), "valueBoolean": True,
        "subject": {"reference": f"Patient/{record.pid}"}}}]}
    detail = call(app, record, pf).get_json()["cards"][0]["detail"]
    assert "\\[Re\\-login\\]\\(https\\:\\/\\/evil\\.example\\) \\*\\*now\\*\\*" in detail
    assert "](https://evil.example)" not in detail
