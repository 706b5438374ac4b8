"""ask_next ranks unknown findings by how much answering them would change the tier or the
differential, on the real rule set."""

from __future__ import annotations

from service.intake.parse import parse_encounter
from service.knowledge.presentations import load_presentations


def ask(evaluator, body):
    answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, body))
    return answer, [q["finding"] for q in answer["ask_next"] if "finding" in q]


def test_a_wells_item_that_would_make_dvt_likely_is_asked(evaluator):
    body = {"patient": {"age": 60}, "findings": [
        {"code": "leg_swelling_unilateral"}, {"code": "calf_tenderness"},
        {"code": "chest_pain", "present": False}, {"code": "breathlessness", "present": False}]}
    answer, asked = ask(evaluator, body)
    assert answer["scores"][0]["value"] == 1  # Wells 1: unlikely
    wells_questions = [q for q in answer["ask_next"] if any(r.startswith("dvt.wells.") for r in q["rules"])]
    assert wells_questions, asked


def test_known_sciatica_is_screened_for_cauda_equina(evaluator):
    _, asked = ask(evaluator, {"findings": [{"code": "back_pain"}, {"code": "pain_shooting_buttock_to_thigh"}]})
    assert {"urinary_retention", "saddle_anaesthesia"} <= set(asked)


def test_ischaemic_rest_pain_asks_what_separates_it_from_cramp(evaluator):
    _, asked = ask(evaluator, {"patient": {"age": 70}, "findings": [
        {"code": "pain_worse_legs_elevated"}, {"code": "smoker"}]})
    # Since issue 16 'worse with the legs raised' is a presentation: its screen asks first what
    # could make it an emergency (absent pulses: acute ischaemia), then what tells rest pain
    # from cramp.
    assert "relieved_by_dangling" in asked[:3] and asked[0] == "foot_pulses_absent"


def test_only_unknown_findings_are_asked_and_each_says_why(evaluator):
    body = {"findings": [{"code": "back_pain"}, {"code": "urinary_retention", "present": False},
                         {"code": "saddle_anaesthesia", "present": False}]}
    answer, asked = ask(evaluator, body)
    assert not {"back_pain", "urinary_retention", "saddle_anaesthesia"} & set(asked)
    for q in answer["ask_next"]:
        assert q["question"] and q["why"] and q["rules"]
        assert all(r in evaluator.knowledge.rules_by_id for r in q["rules"])
    # No age was sent: it is asked first. Then back pain's own questions (rules/presentations.yaml:
    # its red-flag screen, then its differential, in that order; since issue 16), then the
    # others by impact.
    assert answer["ask_next"][0]["patient"] == "age"
    back = next(p for p in load_presentations(evaluator.knowledge) if p.finding == "back_pain")
    own = list(back.red_flags + back.differential)
    codes = [q["finding"] for q in answer["ask_next"][1:]]
    n = next((i for i, c in enumerate(codes) if c not in own), len(codes))
    assert n >= 1 and codes[:n] == sorted(codes[:n], key=own.index)
    impacts = [q["impact"] for q in answer["ask_next"][1 + n:]]
    assert impacts == sorted(impacts, reverse=True)


def test_the_missing_restless_legs_criterion_is_asked(evaluator):
    """Three IRLSSG criteria known: the fourth (a derived fact, one rule away) is asked, even
    though red-flag screening questions carry more weight at this tier."""
    body = {"patient": {"age": 50}, "findings": [
        {"code": "urge_to_move_legs"}, {"code": "symptoms_begin_at_rest"}, {"code": "relieved_by_movement"}]}
    answer, asked = ask(evaluator, body)
    assert "worse_evening_night" in asked
    q = next(q for q in answer["ask_next"] if q.get("finding") == "worse_evening_night")
    assert q["aim"] == "differential"
    assert any(q["aim"] == "urgency" for q in answer["ask_next"])  # screening is still there


def age_rules(knowledge) -> list[str]:
    return [r.id for r in knowledge.rules
            if any(leaf.kind == "patient" and leaf.key == "age" for leaf in [*r.when.positive_leaves(), *r.when.none])]


def test_without_an_age_the_answer_warns_and_asks_for_it_first(evaluator):
    """Rules on age can never fire without one: the answer says which, and asks for it."""
    expected = age_rules(evaluator.knowledge)
    assert expected  # the real rule set has rules on age
    answer, _ = ask(evaluator, {"findings": [{"code": "back_pain"}, {"code": "pain_walking_eased_sitting"}]})
    [warning] = answer["warnings"]
    assert warning["code"] == "age-missing" and warning["pointer"] == "/patient/age"
    assert sorted(warning["rules"]) == sorted(expected) and f"{len(expected)} rule(s)" in warning["text"]
    first = answer["ask_next"][0]
    assert first["patient"] == "age" and "finding" not in first and first["type"] == "number"
    assert first["question"] and first["rules"] and set(first["rules"]) <= set(expected)


def test_with_an_age_there_is_no_warning_and_no_age_question(evaluator):
    answer, _ = ask(evaluator, {"patient": {"age": 62}, "findings": [{"code": "back_pain"}]})
    assert answer["warnings"] == []
    assert all("patient" not in q for q in answer["ask_next"])
