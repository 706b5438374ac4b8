"""The native HTTP API: answers, catalogues, health, and one problem+json shape for every
error. Runs on the mini rule set so that it tests the API, not the clinical content."""

from __future__ import annotations

import json
import random

import pytest

from service.intake.schemas import EvaluationResponseSchema, ProblemSchema

CHAIN = {"patient": {"age": 55, "sex": "female"},
         "findings": [{"code": "a"}, {"code": "b"}, {"code": "c"}, {"code": "angle", "value": 40, "unit": "deg"}],
         "encounter_id": "enc-42"}


def problem(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert ProblemSchema().validate(body) == {}
    assert body["status"] == status
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def test_evaluation_answers_every_contracted_key(mini_client):
    resp = mini_client.post("/v1/evaluations", json=CHAIN)
    assert resp.status_code == 200
    body = resp.get_json()
    assert EvaluationResponseSchema().validate(body) == {}
    assert body["encounter_id"] == "enc-42"
    assert body["urgency"]["tier"] == "emergency"
    assert body["urgency"]["reasons"][0] == {
        "tier": "emergency", "rule": "mini.abc_flag", "text": "Flag X", "red_flag": "flag_x"}
    assert [d["condition"] for d in body["differential"]] == ["cond_x", "cond_y"]
    assert body["recommended_tests"][0]["test"] == "test_x"
    assert body["recommended_tests"][0]["priority"] == "stat"
    assert "not a diagnosis" in body["disclaimer"]
    assert body["ruleset"]["name"] == "mini" and len(body["ruleset"]["sha256"]) == 64


def test_every_conclusion_is_traceable_to_fired_rules_and_sources(mini_client):
    body = mini_client.post("/v1/evaluations", json=CHAIN).get_json()
    fired = {p["rule"] for p in body["provenance"]}
    assert fired == {t["rule"] for t in body["trace"]}
    for p in body["provenance"]:
        assert p["sources"] and all(s["title"] for s in p["sources"])
    cited = [r["rule"] for r in body["urgency"]["reasons"]]
    cited += [r for d in body["differential"] for r in d["rules"]]
    cited += [r for t in body["recommended_tests"] for r in t["rules"]]
    cited += [r for f in body["red_flags"] for r in f["rules"]]
    assert set(cited) <= fired


def test_advice_is_withheld_above_its_tier(mini_client):
    low = mini_client.post("/v1/evaluations", json={"findings": [{"code": "a"}]}).get_json()
    assert [a["code"] for a in low["advice"]] == ["rest"]
    high = mini_client.post("/v1/evaluations", json=CHAIN).get_json()
    assert high["urgency"]["tier"] == "emergency" and high["advice"] == []


def test_same_input_same_output_whatever_the_order(mini_client):
    first = mini_client.post("/v1/evaluations", json=CHAIN).get_json()
    rng = random.Random(7)
    for _ in range(5):
        shuffled = dict(CHAIN, findings=rng.sample(CHAIN["findings"], len(CHAIN["findings"])))
        again = mini_client.post("/v1/evaluations", json=shuffled).get_json()
        assert again["evaluation_id"] != first["evaluation_id"]
        again["evaluation_id"] = first["evaluation_id"]
        assert again == first


def test_ask_next_names_unknown_findings_that_would_change_the_answer(mini_client):
    body = mini_client.post("/v1/evaluations", json={"findings": [{"code": "a"}, {"code": "b"}]}).get_json()
    findings = [q for q in body["ask_next"] if "finding" in q]  # after the patient's missing age
    asked = [q["finding"] for q in findings]
    assert asked[0] == "c"  # c would chain to flag X: an emergency
    assert findings[0]["question"] and "mini.chain_abc" in findings[0]["rules"]
    assert not set(asked) & {"a", "b"}


def test_malformed_json_is_400(mini_client):
    problem(mini_client.post("/v1/evaluations", data=b'{"findings": [', content_type="application/json"), 400)


def test_wrong_content_type_is_415(mini_client):
    problem(mini_client.post("/v1/evaluations", data=json.dumps(CHAIN), content_type="text/plain"), 415)


def test_body_over_the_limit_is_413(mini_app):
    client = mini_app.test_client()
    big = json.dumps({"findings": [{"code": "a"}], "encounter_id": "x" * (mini_app.config["MAX_CONTENT_LENGTH"] + 10)})
    problem(client.post("/v1/evaluations", data=big, content_type="application/json"), 413)


@pytest.mark.parametrize(
    ("body", "pointer", "reason"),
    [
        ({"findings": [{"code": "aa"}]}, "/findings/0/code", "unknown-code"),
        ({"findings": [{"code": "angle", "value": 400}]}, "/findings/0/value", "out-of-range"),
        ({"findings": [{"code": "angle", "value": 40, "unit": "kg"}]}, "/findings/0/unit", "unit"),
        ({"findings": [{"code": "angle", "value": 40, "unit": "rad"}]}, "/findings/0/value", "out-of-range"),
        ({"findings": [{"code": "angle"}]}, "/findings/0/value", "missing-value"),
        ({"findings": [{"code": "onset", "value": "slow"}]}, "/findings/0/value", "invalid-choice"),
        ({"findings": [{"code": "a", "value": 3}]}, "/findings/0/value", "unexpected-value"),
        ({"findings": [{"code": "a", "present": "yes"}]}, "/findings/0/present", "schema"),
        ({"findings": [{"code": "a"}, {"code": "a"}]}, "/findings/1/code", "schema"),
        ({"findings": [{"code": "a", "colour": "red"}]}, "/findings/0/colour", "schema"),
        ({"patient": {"age": 300}, "findings": []}, "/patient/age", "schema"),
        ({"patient": {"sex": "f"}, "findings": []}, "/patient/sex", "schema"),
        ({}, "/findings", "schema"),
        ({"findings": [{"code": "a"}] * 401}, "/findings", "too-many"),
        ([], "", "type"),
    ],
)
def test_invalid_requests_are_422_pointing_at_the_field(mini_client, body, pointer, reason):
    resp = mini_client.post("/v1/evaluations", data=json.dumps(body), content_type="application/json")
    errors = problem(resp, 422)["errors"]
    assert any(e["pointer"] == pointer and e["reason"] == reason for e in errors), errors


def test_unknown_codes_are_all_listed_with_suggestions(mini_client):
    body = {"findings": [{"code": "blockr"}, {"code": "a"}, {"code": "angel", "value": 3}]}
    errors = problem(mini_client.post("/v1/evaluations", json=body), 422)["errors"]
    by_pointer = {e["pointer"]: e for e in errors}
    assert by_pointer["/findings/0/code"]["suggestions"][0] == "blocker"
    assert by_pointer["/findings/2/code"]["suggestions"][0] == "angle"


def test_unknown_route_and_method_are_problems(mini_client):
    problem(mini_client.get("/v2/nothing"), 404)
    problem(mini_client.get("/v1/evaluations"), 405)
    problem(mini_client.get("/v1/rules/no.such.rule"), 404)


def test_an_unexpected_failure_is_a_bare_500(mini_app, monkeypatch):
    evaluator = mini_app.extensions["evaluator"]

    def broken(encounter):
        raise RuntimeError("SECRET internals")

    monkeypatch.setattr(evaluator, "evaluate", broken)
    body = problem(mini_app.test_client().post("/v1/evaluations", json=CHAIN), 500)
    assert "SECRET" not in json.dumps(body)


@pytest.mark.parametrize("name", ["findings", "conditions", "tests", "rules", "sources", "red_flags", "advice"])
def test_catalogues(mini_client, mini_knowledge, name):
    resp = mini_client.get(f"/v1/{name}")
    assert resp.status_code == 200
    items = resp.get_json()["items"]
    assert len(items) == len(getattr(mini_knowledge, name if name != "red_flags" else "red_flags"))


def test_question_groups_list_the_pages_grouped_questions(client, knowledge):
    """GET /v1/question_groups: what the nurse page asks as one question, so that an EHR building
    its own interview from ask_next can ask the same cluster (the cauda equina screen...). Every
    item is a yes/no finding of GET /v1/findings, in one group only, and every source is cited."""
    groups = client.get("/v1/question_groups").get_json()["items"]
    findings = {f["code"]: f for f in client.get("/v1/findings").get_json()["items"]}
    sources = {s["id"] for s in client.get("/v1/sources").get_json()["items"]}
    assert len(groups) >= 10
    items = [i for g in groups for i in g["items"]]
    assert len(items) == len(set(items))
    for g in groups:
        assert g["label"] and g["items"] and set(g["sources"]) <= sources
        assert all(findings[i]["type"] == "boolean" and not findings[i].get("deprecated") for i in g["items"])
    ces = next(g for g in groups if "saddle_anaesthesia" in g["items"])
    assert {"urinary_retention", "urinary_incontinence_new"} <= set(ces["items"])


def test_no_question_groups_without_presentations(mini_client):
    assert mini_client.get("/v1/question_groups").get_json() == {"items": []}


def test_one_rule_reads_like_its_yaml(mini_client):
    rule = mini_client.get("/v1/rules/mini.a_not_blocker").get_json()
    assert rule["when"] == {"all": [{"finding": "a"}], "none": [{"finding": "blocker"}]}
    assert rule["then"] == {"support": [{"condition": "cond_y", "weight": 2}], "advice": ["rest"]}
    assert rule["sources"] == ["src-000"] and rule["file"] == "domains/mini.yaml"


def test_health(mini_client):
    assert mini_client.get("/healthz/live").get_json() == {"status": "ok"}
    ready = mini_client.get("/healthz/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


def test_not_ready_when_the_builtin_case_stops_evaluating_correctly(mini_app, monkeypatch):
    evaluator = mini_app.extensions["evaluator"]
    real = evaluator.evaluate

    def wrong(encounter):
        answer = real(encounter)
        answer["urgency"]["tier"] = "routine"
        return answer

    monkeypatch.setattr(evaluator, "evaluate", wrong)
    resp = mini_app.test_client().get("/healthz/ready")
    assert resp.status_code == 503 and resp.get_json()["status"] == "not-ready"


NOT_INDICATED_RULES = """
  - id: mini.x_not_indicated
    version: 1
    title: A says test X is not indicated
    rationale: For the not-indicated override test.
    sources: [src-000]
    evidence: low
    when: {all: [{finding: a}]}
    then: {not_indicated: [{test: test_x, reason: Not for a simple A.}]}
  - id: mini.b_routine_x
    version: 1
    title: B asks for test X, routinely
    rationale: For the not-indicated override test.
    sources: [src-000]
    evidence: low
    when: {all: [{finding: b}]}
    then: {tests: [{test: test_x, priority: routine, for: [cond_y]}]}
"""


@pytest.fixture(scope="module")
def not_indicated_client(tmp_path_factory):
    from service import create_app
    from tests.conftest import mini_rules_with

    target = mini_rules_with(tmp_path_factory.mktemp("ni") / "rules", NOT_INDICATED_RULES)
    return create_app({"RULES_DIR": str(target)}).test_client()


@pytest.mark.parametrize(
    ("codes", "recommended", "not_indicated"),
    [
        (["a"], [], ["test_x"]),  # only the caution
        (["a", "b"], [], ["test_x"]),  # a routine request gives way to the caution
        (["a", "b", "c"], [("test_x", "stat")], []),  # a stat request (flag X) always stands
        (["b"], [("test_x", "routine")], []),
    ],
)
def test_not_indicated_never_overrides_an_urgent_test(not_indicated_client, codes, recommended, not_indicated):
    body = not_indicated_client.post("/v1/evaluations", json={"findings": [{"code": c} for c in codes]}).get_json()
    assert [(t["test"], t["priority"]) for t in body["recommended_tests"]] == recommended
    assert [t["test"] for t in body["tests_not_indicated"]] == not_indicated
    if not_indicated:
        assert body["tests_not_indicated"][0]["reason"] == "Not for a simple A."


@pytest.mark.parametrize("depth", [100, 2000])
def test_deeply_nested_json_is_refused_cleanly(mini_client, depth):
    """orjson refuses nesting past 1024 levels (400); below that the schema refuses the shape
    (422). Never a 500, never a recursion error."""
    body = '{"findings": [], "encounter_id": ' + "[" * depth + "]" * depth + "}"
    resp = mini_client.post("/v1/evaluations", data=body, content_type="application/json")
    assert resp.status_code == (400 if depth > 1024 else 422)
    assert resp.mimetype == "application/problem+json"


# --- messages for the commonest client mistakes (real rule set) --------------------------------


def finding_in(knowledge, unit: str) -> str:
    code = next((c for c, f in sorted(knowledge.findings.items()) if f.type == "number" and f.unit == unit), None)
    assert code, f"the vocabulary has a measurement in {unit!r}"
    return code


def only_error(resp) -> dict:
    [error] = problem(resp, 422)["errors"]
    return error


def test_an_age_sent_as_a_string_is_refused_not_coerced(client):
    error = only_error(client.post("/v1/evaluations", json={"patient": {"age": "58"}, "findings": []}))
    assert error["pointer"] == "/patient/age" and "JSON number" in error["detail"]
    assert client.post("/v1/evaluations", json={"patient": {"age": 58}, "findings": []}).status_code == 200


def test_a_finding_sent_as_a_plain_string_is_shown_the_expected_shape(client):
    error = only_error(client.post("/v1/evaluations", json={"findings": ["fever"]}))
    assert error["pointer"] == "/findings/0" and '{"code": "fever"}' in error["detail"]


@pytest.mark.parametrize("value", [True, "yes", 1])
def test_a_yes_no_finding_given_a_value_is_told_to_use_present(client, value):
    error = only_error(client.post("/v1/evaluations", json={"findings": [{"code": "fever", "value": value}]}))
    assert error["pointer"] == "/findings/0/value" and error["reason"] == "unexpected-value"
    assert "use present" in error["detail"] and '"present": false' in error["detail"]


def test_a_measurement_in_an_equivalent_ucum_unit_is_the_same_measurement(client, knowledge):
    code = finding_in(knowledge, "ug/L")
    lo, hi = knowledge.findings[code].range
    value = round((lo + hi) / 4, 1)

    def answer(unit: str) -> dict:
        resp = client.post("/v1/evaluations", json={"patient": {"age": 60},
                                                    "findings": [{"code": code, "value": value, "unit": unit}]})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = resp.get_json()
        body.pop("evaluation_id")
        return body

    assert answer("ng/mL") == answer("ug/L")  # 1 ng/mL == 1 ug/L
    # mg/L is a thousand times more: converted, and then out of range in the declared unit.
    error = only_error(client.post("/v1/evaluations", json={"findings": [{"code": code, "value": hi, "unit": "mg/L"}]}))
    assert error["reason"] == "out-of-range" and f"got {hi * 1000:g} ug/L" in error["detail"]
    error = only_error(client.post("/v1/evaluations", json={"findings": [{"code": code, "value": 5, "unit": "kg"}]}))
    assert error["pointer"] == "/findings/0/unit" and "not a UCUM unit of the same kind" in error["detail"]


def test_the_range_of_a_unitless_measurement_reads_without_the_unit_1(client, knowledge):
    code = finding_in(knowledge, "1")
    lo, hi = knowledge.findings[code].range
    error = only_error(client.post("/v1/evaluations", json={"findings": [{"code": code, "value": hi + 10}]}))
    assert error["detail"] == f"{code} must be between {lo:g} and {hi:g}; got {hi + 10:g}."


def test_every_finding_of_the_vocabulary_fits_in_one_request_and_one_ask_next(knowledge):
    from service.intake.schemas import MAX_ASK_NEXT, MAX_FINDINGS

    assert len(knowledge.findings) <= MAX_FINDINGS
    assert len(knowledge.findings) <= MAX_ASK_NEXT
