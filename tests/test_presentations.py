"""rules/presentations.yaml: the interview's opening complaints and what ask_next asks first."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import RuleLoadError
from service.intake.parse import parse_encounter
from service.knowledge.presentations import load_presentations
from service.web.interview import PAIN_SITES, complaints, opening_codes


def _ask(evaluator, findings, limit=200):
    body = {"patient": {"age": 50, "sex": "male"}, "findings": findings}
    if limit is not None:
        body["ask_next_limit"] = limit
    return [q for q in evaluator.evaluate(parse_encounter(evaluator.knowledge, body))["ask_next"] if "finding" in q]


def test_every_presentation_is_a_finding_with_sources(knowledge):
    presentations = load_presentations(knowledge)
    assert len(presentations) >= 15
    for p in presentations:
        assert knowledge.findings[p.finding].type == "boolean"
        assert p.sources and all(s in knowledge.sources for s in p.sources)
    # The opening offers the complaints once and the pain sites once.
    codes = opening_codes(knowledge)
    assert len(codes) == len(set(codes))
    assert not {f.code for f, _ in complaints(knowledge)} & set(PAIN_SITES)


def test_never_a_red_flag_that_must_be_asked_for(knowledge):
    """Bladder, saddle, bowel and sexual symptoms, dark urine and pain out of proportion are
    rarely volunteered: the opening must not offer them (they are asked, and counted)."""
    offered = set(opening_codes(knowledge))
    for code in ("urinary_retention", "urinary_incontinence_new", "faecal_incontinence_new", "saddle_anaesthesia",
                 "sexual_dysfunction_new", "dark_urine", "pain_out_of_proportion", "radicular_pain_both_legs",
                 "bilateral_leg_deficit_new"):
        assert code not in offered


def test_back_pain_asks_its_cauda_equina_screen_first(evaluator, knowledge):
    back = next(p for p in load_presentations(knowledge) if p.finding == "back_pain")
    asks = _ask(evaluator, [{"code": "back_pain"}])
    assert [q["finding"] for q in asks[:4]] == list(back.red_flags[:4])
    assert all(q["aim"] == "urgency" and q["tier_steps"] > 0 for q in asks[:4])
    # An answered screen question is not asked again; the next one moves up.
    asks = _ask(evaluator, [{"code": "back_pain"}, {"code": back.red_flags[0], "present": None}])
    assert asks[0]["finding"] == back.red_flags[1]


def test_a_swollen_leg_asks_the_pulmonary_embolism_screen_before_the_cauda_equina_screen(evaluator):
    asks = [q["finding"] for q in _ask(evaluator, [{"code": "leg_swelling_unilateral"}])]
    assert asks.index("breathlessness") < asks.index("urinary_retention")
    # The default answer (seven questions, no limit) puts the presentation's screen first too.
    default = [q["finding"] for q in _ask(evaluator, [{"code": "leg_swelling_unilateral"}], limit=None)]
    assert default[0] == "breathlessness" and "urinary_retention" not in default


def test_a_question_that_could_lower_the_tier_is_asked(evaluator):
    """Both ankles swollen for 6 weeks with no cause known sets 'soon'; a medicine that causes
    ankle swelling would stop that rule, so the interview asks it."""
    asks = _ask(evaluator, [{"code": "bilateral_ankle_swelling"}, {"code": "symptoms_weeks", "value": 6}])
    lowering = [q for q in asks if q["why"].startswith("Could lower the urgency")]
    assert "takes_oedema_causing_medicine" in [q["finding"] for q in lowering]


def test_a_bad_presentations_file_is_refused(knowledge, tmp_path: Path):
    (tmp_path / "presentations.yaml").write_text(
        "presentations:\n"
        "  - finding: no_such_finding\n    red_flags: [fever]\n    sources: [nice-ng158]\n"
        "  - finding: back_pain\n    red_flags: [urinary_retention, not_a_code]\n    sources: []\n",
        encoding="utf-8")
    with pytest.raises(RuleLoadError) as exc:
        load_presentations(knowledge, tmp_path)
    text = str(exc.value)
    assert "no_such_finding" in text and "not_a_code" in text and "sources" in text


def test_a_rule_set_without_the_file_has_no_priors(knowledge, tmp_path: Path):
    assert load_presentations(knowledge, tmp_path) == ()


def test_question_groups_are_checked_findings_each_in_one_group(knowledge):
    from service.knowledge.question_groups import load_question_groups

    groups = load_question_groups(knowledge)
    assert {"cauda_equina", "both_legs_nerves", "acute_limb_ischaemia", "clot_risk", "very_unwell"} <= {
        g.id for g in groups}
    items = [c for g in groups for c in g.items]
    assert len(items) == len(set(items))  # one group per finding
    for g in groups:
        assert len(g.items) >= 2 and g.label and g.sources
        assert all(knowledge.findings[c].type == "boolean" and not knowledge.findings[c].deprecated for c in g.items)
        assert all(s in knowledge.sources for s in g.sources)
    ces = next(g for g in groups if g.id == "cauda_equina")
    # GIRFT 2023 asks bladder, bowel, saddle and sexual change as one screen.
    must = {"urinary_retention", "saddle_anaesthesia", "faecal_incontinence_new", "sexual_dysfunction_new"}
    assert must <= set(ces.items)


def test_a_bad_question_group_stops_the_rule_set(knowledge, tmp_path):
    from service.knowledge.question_groups import load_question_groups

    src = Path(knowledge.rules_dir) / "presentations.yaml"
    bad = src.read_text(encoding="utf-8") + (
        "  - id: twice\n    label: Again?\n    items: [urinary_retention, no_such_code]\n    sources: [nowhere]\n")
    (tmp_path / "presentations.yaml").write_text(bad, encoding="utf-8")
    with pytest.raises(RuleLoadError) as err:
        load_question_groups(knowledge, tmp_path)
    text = str(err.value)
    assert "already in group cauda_equina" in text and "no_such_code" in text and "nowhere" in text


def test_the_page_asks_a_group_where_its_best_item_stands(evaluator, knowledge):
    """ask_next ranks findings; the page asks the cauda equina screen as one question where its
    first item stands, then the next question that is not in it."""
    from service.web.interview import groups_by_item, next_asks

    groups = groups_by_item(knowledge)
    asks = _ask(evaluator, [{"code": "back_pain"}])
    first, second = next_asks(asks, groups, set(), 2)
    assert asks[0]["finding"] == "urinary_retention" and first.key == "cauda_equina"
    assert first.codes == groups["urinary_retention"].items and first.first is asks[0]
    assert second.key not in ("cauda_equina",) and not set(second.codes) & set(first.codes)
    # An item answered is not asked again; the rest of its group still is.
    again = next_asks(asks, groups, {"urinary_retention"}, 1)[0]
    assert again.key == "cauda_equina" and "urinary_retention" not in again.codes
