"""FHIR R4 -> findings: the mapping rules of service/fhir/mapping.py, one by one.

Standard codings are read from the loaded vocabulary at test time (the clinical data engineer
adds codes; existing local codes are never renamed), everything else uses the local code
system urn:legpain-cds:finding."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from service.fhir.mapping import (
    LOCAL_CHOICE_SYSTEM,
    LOCAL_FINDING_SYSTEM,
    SNOMED,
    UCUM,
    FhirInputError,
    coding_index,
    convert,
    findings_for_coding,
    map_prefetch,
    parse_fhir_datetime,
    prefetch_code_filter,
    ucum_unit,
)
from service.knowledge.model import Coding

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
TODAY = "2025-01-10T09:00:00Z"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def local(code):
    return {"coding": [{"system": LOCAL_FINDING_SYSTEM, "code": code}]}


def obs(code, rid="o1", when=TODAY, status="final", concept=None, **value):
    r = {"resourceType": "Observation", "id": rid, "status": status,
         "code": concept or local(code), "subject": {"reference": "Patient/p1"}}
    if when is not None:
        r["effectiveDateTime"] = when
    r.update(value)
    return r


def cond(code, rid="c1", clinical="active", verification=None, concept=None, **extra):
    r = {"resourceType": "Condition", "id": rid, "code": concept or local(code), "subject": {"reference": "Patient/p1"}}
    if clinical:
        r["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification:
        r["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
    r.update(extra)
    return r


def bundle(*resources):
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def run(k, *resources, patient=None, max_age=7, patient_id="p1"):
    return map_prefetch(k, patient=patient, records=[("prefetch.observations", bundle(*resources))],
                        patient_id=patient_id, now=NOW, max_observation_age_days=max_age)


def findings(k, *resources, **kw):
    return run(k, *resources, **kw).encounter.findings


@pytest.fixture(scope="module")
def snomed_boolean(knowledge):
    """A yes/no finding the vocabulary codes in SNOMED CT (read at test time)."""
    for f in knowledge.findings.values():
        for c in f.codes:
            if f.type == "boolean" and c.system == SNOMED:
                return f.code, c
    pytest.skip("no SNOMED-coded yes/no finding in the vocabulary")


# --- Patient -------------------------------------------------------------------------------


@pytest.mark.parametrize(("birth", "age"), [
    ("1958-03-14", 66), ("1958-01-10", 67), ("1958-01-11", 66), ("1958", 67), ("1958-12", 66),
])
def test_age_in_completed_years_from_birth_date(knowledge, birth, age):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": birth}
    enc = run(knowledge, patient=patient).encounter
    assert (enc.age, enc.sex) == (age, "female")


@pytest.mark.parametrize("gender", ["male", "female", "other", "unknown"])
def test_sex_from_gender(knowledge, gender):
    assert run(knowledge, patient={"resourceType": "Patient", "gender": gender}).encounter.sex == gender


def test_patient_in_a_bundle_and_an_impossible_age(knowledge):
    pat = {"resourceType": "Bundle", "type": "searchset",
           "entry": [{"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "2030-01-01"}}]}
    mapped = run(knowledge, patient=pat)
    assert mapped.encounter.age is None
    assert "outside 0..120" in mapped.ignored[0]["reason"]


@pytest.mark.parametrize(("patient", "where"), [
    ({"resourceType": "Patient", "id": "someone-else"}, "prefetch.patient.id"),
    ({"resourceType": "Patient", "gender": "F"}, "prefetch.patient.gender"),
    ({"resourceType": "Patient", "birthDate": "14/03/1958"}, "prefetch.patient.birthDate"),
    ({"resourceType": "Observation"}, "prefetch.patient"),
])
def test_bad_patient_is_an_input_error_naming_where(knowledge, patient, where):
    with pytest.raises(FhirInputError) as exc:
        run(knowledge, patient=patient)
    assert exc.value.path == where


# --- Observation: yes/no findings -----------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ({"valueBoolean": True}, True),
    ({"valueBoolean": False}, False),
    ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "373066001"}]}}, True),
    ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "373067005"}]}}, False),
    ({"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA33-6"}]}}, True),
    ({"valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA32-8"}]}}, False),
    ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "2667000"}]}}, False),
    ({"interpretation": [{"coding": [{"system": INTERP, "code": "POS"}]}]}, True),
    ({"interpretation": [{"coding": [{"system": INTERP, "code": "NEG"}]}]}, False),
    ({}, True),  # the finding observed, with no value: present
])
def test_yes_no_findings(knowledge, value, expected):
    assert findings(knowledge, obs("calf_tenderness", **value)) == {"calf_tenderness": {"present": expected}}


@pytest.mark.parametrize("value", [
    {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "261665006"}]}},  # unknown
    {"interpretation": [{"coding": [{"system": INTERP, "code": "IND"}]}]},
    {"dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                      "code": "asked-unknown"}]}},
    {"valueString": "yes"},
])
def test_unreadable_answers_are_unknown_and_reported(knowledge, value):
    mapped = run(knowledge, obs("calf_tenderness", **value))
    assert mapped.encounter.findings == {}
    assert mapped.ignored and mapped.ignored[0]["finding"] == "calf_tenderness"


def test_standard_codings_from_the_vocabulary(knowledge, snomed_boolean):
    code, coding = snomed_boolean
    concept = {"coding": [{"system": coding.system, "code": coding.code}]}
    assert findings(knowledge, obs(None, concept=concept, valueBoolean=False)) == {code: {"present": False}}


def test_a_finding_given_as_the_value_of_a_symptom_observation(knowledge, snomed_boolean):
    code, coding = snomed_boolean
    symptom = obs(None, concept={"coding": [{"system": "http://loinc.org", "code": "75325-1"}]},
                  valueCodeableConcept={"coding": [{"system": coding.system, "code": coding.code}]})
    assert findings(knowledge, symptom) == {code: {"present": True}}


def test_components_are_read(knowledge):
    panel = obs(None, concept={"coding": [{"system": "http://loinc.org", "code": "panel"}]}, component=[
        {"code": local("calf_tenderness"), "valueBoolean": True},
        {"code": local("slr_angle"), "valueQuantity": {"value": 40, "system": UCUM, "code": "deg"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "other"}]}, "valueBoolean": True},
    ])
    assert findings(knowledge, panel) == {"calf_tenderness": {"present": True}, "slr_angle": {"present": True,
                                                                                              "value": 40.0}}


@pytest.mark.parametrize(("status", "used"), [
    ("final", True), ("amended", True), ("corrected", True), ("preliminary", True),
    ("registered", False), ("cancelled", False), ("entered-in-error", False), ("unknown", False),
])
def test_only_resulted_observations_count(knowledge, status, used):
    assert bool(findings(knowledge, obs("calf_tenderness", status=status))) is used


@pytest.mark.parametrize(("extra", "used"), [
    ({"effectiveDateTime": "2025-01-03T12:00:00Z"}, True),   # 7 days
    ({"effectiveDateTime": "2025-01-02"}, False),            # 8 days
    ({"effectiveDateTime": "2025-01-03"}, True),             # a date stands for its whole day
    ({"effectivePeriod": {"start": "2024-12-01", "end": "2025-01-09"}}, True),
    ({"effectiveInstant": "2025-01-10T10:00:00.000+01:00"}, True),
    ({"issued": "2025-01-09T08:00:00Z"}, True),
    ({"effectiveDateTime": "2025-01-20"}, False),             # in the future
    ({}, False),                                              # undated
])
def test_stale_undated_and_future_observations_are_not_used(knowledge, extra, used):
    mapped = run(knowledge, obs("calf_tenderness", when=None, **extra))
    assert bool(mapped.encounter.findings) is used
    if not used:
        assert mapped.ignored


def test_the_freshness_window_is_configurable(knowledge):
    old = obs("calf_tenderness", when="2024-12-01")
    assert not findings(knowledge, old, max_age=7)
    assert findings(knowledge, old, max_age=60)


# --- Observation: measurements and units -----------------------------------------------------


@pytest.mark.parametrize(("code", "quantity", "expected"), [
    ("slr_angle", {"value": 45, "system": UCUM, "code": "deg"}, 45.0),
    ("slr_angle", {"value": 0.5, "system": UCUM, "code": "rad", "unit": "radian"}, 28.64789),
    ("slr_angle", {"value": 30, "unit": "degrees"}, 30.0),
    ("slr_angle", {"value": 30, "unit": "°"}, 30.0),
    ("symptoms_weeks", {"value": 14, "system": UCUM, "code": "d"}, 2.0),
    ("symptoms_weeks", {"value": 3, "system": UCUM, "code": "mo"}, 13.044643),
    ("symptoms_weeks", {"value": 1, "system": UCUM, "code": "a"}, 52.178571),
    ("symptoms_weeks", {"value": 3, "unit": "weeks"}, 3.0),
    ("abi_value", {"value": 0.72, "system": UCUM, "code": "1"}, 0.72),
    ("abi_value", {"value": 0.72, "system": UCUM, "code": "{ratio}"}, 0.72),
    ("abi_value", {"value": 72, "system": UCUM, "code": "%"}, 0.72),
    ("abi_value", {"value": 0.9}, 0.9),
])
def test_quantities_are_converted_to_the_findings_unit(knowledge, code, quantity, expected):
    got = findings(knowledge, obs(code, valueQuantity=quantity))[code]
    assert got["present"] is True
    assert got["value"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("code", "value", "reason"), [
    ("slr_angle", {"valueQuantity": {"value": 45, "system": UCUM, "code": "kg"}}, "cannot be converted"),
    ("slr_angle", {"valueQuantity": {"value": 45, "system": UCUM, "code": "furlong"}}, "cannot be converted"),
    ("slr_angle", {"valueQuantity": {"value": 45}}, "no unit"),
    ("slr_angle", {"valueQuantity": {"value": 120, "system": UCUM, "code": "deg"}}, "outside"),
    ("slr_angle", {"valueQuantity": {"value": 30, "comparator": "<", "system": UCUM, "code": "deg"}}, "comparator"),
    ("slr_angle", {"valueInteger": 45}, "no unit"),
    ("slr_angle", {"valueBoolean": True}, "needs valueQuantity"),
])
def test_unusable_measurements_are_unknown_and_say_why(knowledge, code, value, reason):
    mapped = run(knowledge, obs(code, **value))
    assert mapped.encounter.findings == {}
    assert reason in mapped.ignored[0]["reason"]


def test_value_integer_for_a_ratio(knowledge):
    assert findings(knowledge, obs("abi_value", valueInteger=1)) == {"abi_value": {"present": True, "value": 1.0}}


# --- Observation: choices --------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ({"valueString": "mild"}, "mild"),
    ({"valueCodeableConcept": {"coding": [{"system": LOCAL_CHOICE_SYSTEM, "code": "extensive"}]}}, "extensive"),
    ({"valueString": "huge"}, None),
    ({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "1"}]}}, None),
])
def test_choice_findings(knowledge, value, expected):
    got = findings(knowledge, obs("thigh_bruising", **value))
    assert got == ({"thigh_bruising": {"present": True, "choice": expected}} if expected else {})


# --- Condition -------------------------------------------------------------------------------


@pytest.mark.parametrize(("clinical", "verification", "expected"), [
    ("active", None, True),
    ("recurrence", "confirmed", True),
    ("relapse", "provisional", True),
    (None, None, True),
    ("active", "refuted", False),
    (None, "refuted", False),
    ("resolved", None, None),
    ("inactive", None, None),
    ("remission", None, None),
    ("active", "entered-in-error", None),
])
def test_condition_status(knowledge, clinical, verification, expected):
    got = findings(knowledge, cond("active_cancer", clinical=clinical, verification=verification))
    assert got == ({"active_cancer": {"present": expected}} if expected is not None else {})


def test_a_resolved_condition_still_documents_a_history_finding(knowledge):
    assert findings(knowledge, cond("previous_dvt", clinical="resolved")) == {"previous_dvt": {"present": True}}


def test_an_abated_condition_without_status_is_not_current(knowledge):
    assert findings(knowledge, cond("active_cancer", clinical=None, abatementDateTime="2024-01-01")) == {}


@pytest.mark.parametrize("finding", ["foot_ulcer", "iv_drug_use", "known_liver_disease"])
def test_a_coded_current_state_finding_is_read_only_from_a_current_condition(knowledge, finding):
    """Vocabulary 0.3.2 codes these with SNOMED CT (Ulcer of lower extremity, Injecting drug
    user, Disease of liver). Each means 'now' (an ulcer that is not healing, injects now or
    recently, has liver disease), so a resolved or inactive problem-list entry must not set it;
    only previous_dvt-like history findings read any documented episode."""
    sct = next(c for c in knowledge.findings[finding].codes if c.system == SNOMED)
    concept = {"coding": [{"system": SNOMED, "code": sct.code}]}
    assert findings(knowledge, cond(finding, concept=concept)) == {finding: {"present": True}}
    for clinical in ("resolved", "inactive"):
        assert findings(knowledge, cond(finding, clinical=clinical, concept=concept)) == {}


@pytest.mark.parametrize("finding", ["foot_drop", "saddle_anaesthesia", "urinary_incontinence_new", "leg_numbness_new"])
def test_an_old_problem_list_entry_does_not_raise_a_red_flag_of_this_episode(knowledge, finding):
    """A foot drop or a continence problem on the problem list since years is not a new deficit:
    read as present it would raise an urgent or emergency flag by itself. A Condition of such a
    finding counts only when it began within the freshness window (7 days here), or is undated;
    the old one is ignored with a reason the card shows, and the finding stays unknown (asked)."""
    sct = next(c for c in knowledge.findings[finding].codes if c.system == SNOMED)
    concept = {"coding": [{"system": SNOMED, "code": sct.code}]}
    old = run(knowledge, cond(finding, concept=concept, onsetDateTime="2019-03-02", recordedDate="2025-01-09"))
    assert old.encounter.findings == {}
    assert "ask whether it is new" in old.ignored[0]["reason"]
    assert old.ignored[0]["finding"] == finding
    present = {finding: {"present": True}}
    assert findings(knowledge, cond(finding, concept=concept, onsetDateTime="2025-01-08")) == present
    assert findings(knowledge, cond(finding, concept=concept, recordedDate="2025-01-06")) == present
    assert findings(knowledge, cond(finding, concept=concept)) == present  # undated
    # An old refuted entry does not deny a symptom of today either.
    assert findings(knowledge, cond(finding, concept=concept, verification="refuted", onsetDateTime="2019-03-02")) == {}


def test_an_old_entry_still_documents_history_and_chronic_findings(knowledge):
    """Only findings of this episode are windowed: a chronic disease or a past clot recorded
    years ago still counts."""
    for finding in ("previous_dvt", "diabetes", "active_cancer", "foot_ulcer"):
        assert findings(knowledge, cond(finding, onsetDateTime="2019-03-02")) == {finding: {"present": True}}


def test_a_condition_cannot_give_a_measurement(knowledge):
    mapped = run(knowledge, cond("slr_angle"))
    assert mapped.encounter.findings == {}
    assert "yes or no" in mapped.ignored[0]["reason"]


# --- several records, order, identity ------------------------------------------------------


def test_the_latest_record_wins_and_order_does_not_matter(knowledge):
    records = [
        obs("calf_tenderness", rid="a", when="2025-01-08", valueBoolean=True),
        obs("calf_tenderness", rid="b", when="2025-01-09", valueBoolean=False),
        obs("slr_angle", rid="c", when="2025-01-05", valueQuantity={"value": 80, "system": UCUM, "code": "deg"}),
        obs("slr_angle", rid="d", when="2025-01-09T10:00:00Z", valueQuantity={"value": 35, "system": UCUM,
                                                                             "code": "deg"}),
        cond("active_cancer", rid="e", recordedDate="2024-06-01"),
        cond("active_cancer", rid="f", verification="refuted", recordedDate="2024-12-01"),
    ]
    expected = {"calf_tenderness": {"present": False}, "slr_angle": {"present": True, "value": 35.0},
                "active_cancer": {"present": False}}
    rng = random.Random(4)
    for _ in range(10):
        rng.shuffle(records)
        mapped = run(knowledge, *records)
        assert mapped.encounter.findings == expected
        assert {u["resource"] for u in mapped.used} == {"Observation/b", "Observation/d", "Condition/f"}


def test_on_a_tie_present_beats_absent(knowledge):
    both = [obs("calf_tenderness", rid="a", valueBoolean=False), obs("calf_tenderness", rid="b", valueBoolean=True)]
    assert findings(knowledge, *both) == findings(knowledge, *reversed(both)) == {"calf_tenderness": {"present": True}}


@pytest.mark.parametrize("ref", ["Patient/p1", "https://ehr.example/fhir/Patient/p1", "Patient/p1/_history/3"])
def test_subject_of_the_same_patient(knowledge, ref):
    assert findings(knowledge, obs("calf_tenderness", subject={"reference": ref}))


def test_data_about_another_patient_is_refused(knowledge):
    with pytest.raises(FhirInputError) as exc:
        run(knowledge, obs("calf_tenderness", subject={"reference": "Patient/p2"}))
    assert exc.value.path == "prefetch.observations.entry[0].resource.subject.reference"


@pytest.mark.parametrize(("resource", "where"), [
    (obs(None, concept="fever"), "entry[0].resource.code"),
    (obs("calf_tenderness", valueBoolean="yes"), "entry[0].resource.valueBoolean"),
    (obs("calf_tenderness", valueBoolean=True, valueString="x"), "entry[0].resource"),
    (obs("slr_angle", valueQuantity={"value": "45", "code": "deg"}), "entry[0].resource.valueQuantity.value"),
    (obs("calf_tenderness", when="yesterday"), "entry[0].resource.effectiveDateTime"),
    (obs("calf_tenderness", when="2025-02-30"), "entry[0].resource.effectiveDateTime"),
    (obs(None, concept={"coding": "x"}), "entry[0].resource.code.coding"),
])
def test_malformed_fhir_is_an_input_error_naming_where(knowledge, resource, where):
    with pytest.raises(FhirInputError) as exc:
        run(knowledge, resource)
    assert exc.value.path.endswith(where)


def test_bundle_entries_that_are_not_ours_are_skipped(knowledge):
    value = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": "https://x/1"},
        {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
        {"resource": {"resourceType": "MedicationRequest", "id": "m"}},
        {"resource": obs("calf_tenderness")},
    ]}
    mapped = map_prefetch(knowledge, patient=None, records=[("prefetch.observations", value)], patient_id="p1", now=NOW)
    assert mapped.encounter.findings == {"calf_tenderness": {"present": True}}


def test_a_single_resource_and_null_values(knowledge):
    mapped = map_prefetch(knowledge, patient=None, records=[("a", obs("calf_tenderness")), ("b", None)],
                          patient_id="p1", now=NOW)
    assert mapped.encounter.findings == {"calf_tenderness": {"present": True}}


# --- the coding index ------------------------------------------------------------------------


def test_every_vocabulary_coding_maps_back_to_its_finding(knowledge):
    for f in knowledge.findings.values():
        assert findings_for_coding(knowledge, LOCAL_FINDING_SYSTEM, f.code) == (f.code,)
        for c in f.codes:
            assert f.code in findings_for_coding(knowledge, c.system, c.code)
    assert findings_for_coding(knowledge, SNOMED, "no-such-code") == ()
    assert findings_for_coding(knowledge, LOCAL_FINDING_SYSTEM, "no_such_finding") == ()


def test_the_prefetch_code_filter_lists_every_observation_coding_and_the_local_system(knowledge):
    value = prefetch_code_filter(knowledge)
    for (system, code), found in coding_index(knowledge).items():
        observed = any(knowledge.findings[f].topic != "history" for f in found)
        assert (f"{system}|{code}" in value.split(",")) is observed  # history: Condition etc.
    assert value.endswith(f"{LOCAL_FINDING_SYSTEM}|")


def test_an_ambiguous_coding_is_not_guessed(knowledge):
    shared = Coding("http://example.org/shared", "42")
    changed = dict(knowledge.findings)
    for code in ("calf_tenderness", "calf_swelling_3cm"):
        changed[code] = dataclasses.replace(changed[code], codes=(*changed[code].codes, shared))
    k2 = dataclasses.replace(knowledge, findings=changed)
    assert findings_for_coding(k2, shared.system, shared.code) == ("calf_swelling_3cm", "calf_tenderness")
    mapped = run(k2, obs(None, concept={"coding": [{"system": shared.system, "code": shared.code}]}))
    assert mapped.encounter.findings == {}
    assert "several findings" in mapped.ignored[0]["reason"]


# --- units and dates -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "src", "dst", "expected"), [
    (38, "Cel", "[degF]", 100.4), (100.4, "[degF]", "Cel", 38.0), (0, "Cel", "K", 273.15),
    (1, "h", "min", 60.0), (10, "mm", "cm", 1.0), (2, "[lb_av]", "kg", 0.907185),
    (250, "ng/mL", "ug/L", 250.0), (25, "ug/dL", "ug/L", 250.0), (0.25, "mg/L", "ug/L", 250.0),
    (1, "deg", "wk", None), (1, "deg", "nonsense", None),
])
def test_convert(value, src, dst, expected):
    assert convert(value, src, dst) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(("system", "code", "unit", "expected"), [
    (UCUM, "deg", "degrees", "deg"), (None, None, "degrees", "deg"), (UCUM, "{score}", None, "1"),
    (None, None, "µg/L", "ug/L"), (None, None, "ng/mL", "ng/mL"),
    ("http://other", "X", "weeks", "wk"), (None, None, None, None),
])
def test_ucum_unit(system, code, unit, expected):
    assert ucum_unit(system, code, unit) == expected


def test_parse_fhir_datetime():
    assert parse_fhir_datetime("2025-01-10T10:00:00+02:00", "x", latest=True) == datetime(2025, 1, 10, 8, tzinfo=UTC)
    assert parse_fhir_datetime("2024-02", "x", latest=True) == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert parse_fhir_datetime("2024", "x", latest=False) == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_fhir_datetime("2024-03-01", "x", latest=False).date() == date(2024, 3, 1)
    assert parse_fhir_datetime("2024-03-01T10:00Z", "x", latest=False) - timedelta(hours=10) == \
        datetime(2024, 3, 1, tzinfo=UTC)
    for bad in ("2024-13", "2024-02-30", "24-01-01", 20240101, None):
        with pytest.raises(FhirInputError):
            parse_fhir_datetime(bad, "x", latest=True)


def test_asked_unknown_is_passed_on_as_unknown_for_ask_next(knowledge):
    """Issue 16: an observation recorded as asked-unknown is still reported as ignored, and the
    finding is passed on as asked but unknown, so that ask_next does not ask it again."""
    absent = {"dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                               "code": "asked-unknown"}]}}
    mapped = run(knowledge, obs("calf_tenderness", **absent))
    assert mapped.encounter.findings == {} and mapped.encounter.unknown == {"calf_tenderness"}
    declined = {"dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                 "code": "asked-declined"}]}}
    assert run(knowledge, obs("calf_tenderness", **declined)).encounter.unknown == frozenset()
