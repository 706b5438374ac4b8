"""rules/presentations.yaml: the interview's opening complaints and what ask_next asks first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.config import DEFAULT_RULES_DIR
from service.errors import RuleLoadError
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge
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


def _rules_with(tmp_path: Path, presentations: str | None) -> Path:
    """A copy of the real rule set whose presentations.yaml is `presentations` (None: no file)."""
    target = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, target)
    if presentations is None:
        (target / "presentations.yaml").unlink()
    else:
        (target / "presentations.yaml").write_text(presentations, encoding="utf-8")
    return target


def test_the_file_is_read_once_into_the_knowledge(tmp_path: Path):
    """ask_next, the page and GET /v1/question_groups read the presentations and the groups the
    loader checked (Knowledge), never presentations.yaml again: with the file gone after the load,
    each still has them."""
    from service.knowledge.catalogue import catalogue_items
    from service.reasoning.evaluation import Evaluator
    from service.web.interview import complaints, groups_by_item
    from service.web.ui import groups_for_page

    rules = _rules_with(tmp_path, (DEFAULT_RULES_DIR / "presentations.yaml").read_text(encoding="utf-8"))
    k = load_knowledge(rules)
    (rules / "presentations.yaml").unlink()
    assert load_presentations(k) is k.presentations and len(k.presentations) >= 15
    back = next(p for p in k.presentations if p.finding == "back_pain")
    asks = _ask(Evaluator(k), [{"code": "back_pain"}])
    assert [q["finding"] for q in asks[:4]] == list(back.red_flags[:4])
    assert complaints(k) and groups_by_item(k)["urinary_retention"].id == "cauda_equina"
    assert [g["id"] for g in groups_for_page(k)] == [g.id for g in k.question_groups]
    assert [g["id"] for g in catalogue_items(k)["question_groups"]] == [g.id for g in k.question_groups]


def test_a_bad_presentations_file_stops_the_load(tmp_path: Path):
    rules = _rules_with(tmp_path, (
        "presentations:\n"
        "  - finding: no_such_finding\n    red_flags: [fever]\n    sources: [nice-ng158]\n"
        "  - finding: back_pain\n    red_flags: [urinary_retention, not_a_code]\n    sources: []\n"))
    with pytest.raises(RuleLoadError) as exc:
        load_knowledge(rules)
    assert [str(p) for p in exc.value.problems] == [
        "presentations.yaml: presentations[0]: 'no_such_finding' is not a yes/no finding of the vocabulary",
        "presentations.yaml: presentations[1] (back_pain): 'not_a_code' is not a finding of the vocabulary",
        "presentations.yaml: presentations[1] (back_pain): give the sources of its red-flag screen",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("presentations: [\n", "presentations.yaml: not valid YAML: "),
    ("presentations: []\npresentations: []\n", "presentations.yaml: not valid YAML: "),
    ("question_groups: []\n", "presentations.yaml: expected a mapping with a 'presentations' list"),
    ("presentations: []\nquestion_groups: {}\n", "presentations.yaml: question_groups must be a list"),
    ("presentations:\n  - {finding: back_pain, 1: one, two: 2}\n", "presentations.yaml: malformed content (TypeError)"),
], ids=["broken YAML", "a key twice", "no presentations list", "groups not a list", "keys of two types"])
def test_a_damaged_presentations_file_stops_the_start(tmp_path: Path, text: str, message: str):
    """Fail closed: the service does not start on a presentations.yaml it cannot read."""
    from service import create_app

    with pytest.raises(RuleLoadError) as exc:
        create_app({"TESTING": True, "RULES_DIR": str(_rules_with(tmp_path, text))})
    assert [str(p)[:len(message)] for p in exc.value.problems] == [message]


def test_a_rule_set_without_the_file_has_no_priors(tmp_path: Path):
    k = load_knowledge(_rules_with(tmp_path, None))
    assert k.presentations == () and k.question_groups == ()


def test_question_groups_are_checked_findings_each_in_one_group(knowledge):
    groups = knowledge.question_groups
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
    src = Path(knowledge.rules_dir) / "presentations.yaml"
    bad = src.read_text(encoding="utf-8") + (
        "  - id: twice\n    label: Again?\n    items: [urinary_retention, no_such_code]\n    sources: [nowhere]\n")
    with pytest.raises(RuleLoadError) as err:
        load_knowledge(_rules_with(tmp_path, bad))
    n = len(knowledge.question_groups)  # the group appended is the file's last
    assert [str(p) for p in err.value.problems] == [
        f"presentations.yaml: question_groups[{n}] (twice): urinary_retention is already in group cauda_equina",
        f"presentations.yaml: question_groups[{n}] (twice): 'no_such_code' is not a current yes/no finding of the "
        "vocabulary",
        f"presentations.yaml: question_groups[{n}] (twice): source 'nowhere' is not in sources.yaml",
    ]


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
