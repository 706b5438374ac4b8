"""What an interview needs of ask_next (issue 16): "unknown" as an answer, a limit, and how
far each question could still raise the tier. Requests that use none of it are unchanged."""

from __future__ import annotations

from service.intake.parse import parse_encounter
from service.knowledge.model import TIER_RANK
from service.knowledge.presentations import load_presentations

SCIATICA = [{"code": "back_pain"}, {"code": "pain_shooting_buttock_to_thigh"}]


def answer(evaluator, body):
    return evaluator.evaluate(parse_encounter(evaluator.knowledge, body))


def findings_asked(ans):
    return [q["finding"] for q in ans["ask_next"] if "finding" in q]


def test_unknown_is_not_asked_again_and_the_next_best_question_moves_up(evaluator):
    before = findings_asked(answer(evaluator, {"patient": {"age": 45}, "findings": SCIATICA}))
    first = before[0]
    after = findings_asked(answer(evaluator, {"patient": {"age": 45},
                                              "findings": [*SCIATICA, {"code": first, "present": None}]}))
    assert first not in after
    assert len(after) == len(before)  # a slot freed is filled: the interview does not stall
    # The other urgency questions are still asked (an unknown answer rules nothing out but its own rules).
    assert {"urinary_retention", "saddle_anaesthesia"} - {first} <= set(after)


def test_unknown_counts_as_neither_present_nor_denied(evaluator):
    """The rules see nothing of an unknown answer: the tier, differential and tests are those of
    the request without it."""
    base = {"patient": {"age": 45}, "findings": SCIATICA}
    with_unknown = {"patient": {"age": 45}, "findings": [*SCIATICA, {"code": "urinary_retention", "present": None}]}
    a, b = answer(evaluator, base), answer(evaluator, with_unknown)
    for key in ("urgency", "red_flags", "differential", "recommended_tests", "tests_not_indicated", "trace"):
        assert a[key] == b[key], key
    present = answer(evaluator, {"patient": {"age": 45}, "findings": [*SCIATICA, {"code": "urinary_retention"}]})
    assert present["urgency"]["tier"] == "emergency" != b["urgency"]["tier"]


def test_unknown_with_a_value_is_refused(client):
    resp = client.post("/v1/evaluations", json={"findings": [{"code": "pain_severity", "present": None, "value": 5}]})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["pointer"] == "/findings/0/value"


def test_unknown_with_an_unknown_code_says_so(client):
    resp = client.post("/v1/evaluations", json={"findings": [{"code": "back_pian", "present": None}]})
    assert resp.status_code == 422
    assert "back_pain" in resp.get_json()["errors"][0]["suggestions"]


def test_the_default_is_four_urgency_and_three_differential_questions(evaluator):
    ans = answer(evaluator, {"patient": {"age": 45}, "findings": SCIATICA})
    aims = [q["aim"] for q in ans["ask_next"]]
    assert aims.count("urgency") <= 4 and aims.count("differential") <= 3 and len(aims) == 7


def test_a_limit_returns_more_urgency_questions_first(evaluator):
    ans = answer(evaluator, {"patient": {"age": 45}, "findings": SCIATICA, "ask_next_limit": 20})
    asked = [q for q in ans["ask_next"] if "finding" in q]
    assert len(asked) == 20
    aims = [q["aim"] for q in asked]
    # Since issue 16 (rules/presentations.yaml): the red-flag screens of the presentations held
    # (back pain, sciatica) first, then their differential, then the screen for causes nothing
    # given points to, urgency first within each.
    held = {"back_pain", "pain_shooting_buttock_to_thigh"}
    own = {c for p in load_presentations(evaluator.knowledge) if p.finding in held
           for c in p.red_flags + p.differential}
    assert aims[0] == "urgency" and asked[0]["finding"] == "urinary_retention"
    first_other = next((i for i, q in enumerate(asked) if q["finding"] not in own), len(asked))
    assert all(q["finding"] in own for q in asked[:first_other])
    for part in ([q for q in asked if q["finding"] in own], asked[first_other:]):
        part_aims = [q["aim"] for q in part]
        assert part_aims == sorted(part_aims, key=lambda a: a != "urgency")  # urgency first, then differential
    # The default answer's urgency questions are among the limit's (each answer's own aims).
    default = answer(evaluator, {"patient": {"age": 45}, "findings": SCIATICA})["ask_next"]
    urgency_default = [q["finding"] for q in default if "finding" in q and q["aim"] == "urgency"]
    assert set(urgency_default) <= {q["finding"] for q in asked}


def test_a_limit_out_of_range_is_refused(client):
    for bad in (0, 401, "5", 2.5):
        resp = client.post("/v1/evaluations", json={"findings": [], "ask_next_limit": bad})
        assert resp.status_code == 422, bad


def test_each_question_says_how_far_it_could_raise_the_tier(evaluator):
    ans = answer(evaluator, {"patient": {"age": 45}, "findings": SCIATICA, "ask_next_limit": 200})
    tier = ans["urgency"]["tier"]
    by_code = {q["finding"]: q for q in ans["ask_next"] if "finding" in q}
    # Urinary retention in sciatica is cauda equina: emergency, three steps above routine.
    assert tier == "routine"
    assert by_code["urinary_retention"]["raises_tier_to"] == "emergency"
    assert by_code["urinary_retention"]["tier_steps"] == 3
    for q in by_code.values():
        if q["raises_tier_to"] is None:
            assert q["tier_steps"] == 0
        else:
            assert q["tier_steps"] == TIER_RANK[q["raises_tier_to"]] - TIER_RANK[tier] > 0
    assert any(q["tier_steps"] == 0 for q in by_code.values())  # some only refine the differential


def test_at_emergency_no_question_can_raise_the_tier(evaluator):
    ans = answer(evaluator, {"patient": {"age": 45}, "ask_next_limit": 200,
                             "findings": [*SCIATICA, {"code": "urinary_retention"}]})
    assert ans["urgency"]["tier"] == "emergency"
    assert all(q["tier_steps"] == 0 and q["raises_tier_to"] is None for q in ans["ask_next"])
