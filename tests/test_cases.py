"""The clinical cases beside the rules, run as tests: each vignette's tier, top-3 conditions,
tests and red flags. Every rule must be fired by at least one case."""

from __future__ import annotations

import pytest

from service.checks.cases import compare, run_cases
from service.checks.lint import lint
from service.config import DEFAULT_RULES_DIR
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge

CASES = load_knowledge(DEFAULT_RULES_DIR).cases


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(evaluator, case):
    answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, case.request))
    assert compare(case.expect, answer) == [], case.summary


def test_there_are_enough_cases_covering_every_tier(knowledge):
    assert len(knowledge.cases) >= 20
    assert {c.expect["tier"] for c in knowledge.cases} == {"emergency", "urgent", "soon", "routine"}


def test_every_rule_is_fired_by_some_case(evaluator):
    report = run_cases(evaluator)
    never = sorted(r.id for r in evaluator.knowledge.rules if r.id not in report.rules_fired)
    assert never == []


def test_every_case_expectation_can_fail(evaluator):
    """Guards against expectations that pass vacuously: a flipped tier is always caught."""
    case = evaluator.knowledge.cases[0]
    answer = evaluator.evaluate(parse_encounter(evaluator.knowledge, case.request))
    wrong = dict(case.expect, tier="routine" if case.expect["tier"] != "routine" else "emergency")
    assert compare(wrong, answer) != []


def test_the_rule_set_lints_clean(evaluator):
    errors, _warnings = lint(evaluator)
    assert errors == []
