"""ask_next reads a rule touched by the age alone from a table built at load (keyed by which of
its age tests hold) instead of reading it per request. Around every age the rule set tests (each
threshold, one either side, fractions), every rule-side case gets the same answer as from the
reference ranker (tests/reference/ask_next_reference.py), and as from the compiled ranker with
that table emptied (every such rule read per request)."""

from __future__ import annotations

from typing import Any

import pytest

from service.intake.parse import parse_encounter
from service.reasoning.ask_next import QuestionRanker
from service.reasoning.evaluation import Evaluator
from tests.reference import ask_next_reference


def _ages(evaluator: Evaluator) -> list[float]:
    """Each age threshold of the rule set, one either side and a fraction above."""
    ranker = evaluator.ranker
    values: set[float] = set()
    for i in ranker.age_bits:
        for leaf in ranker.bits.rules[i].leaves:
            if leaf.kind == "patient" and leaf.key == "age" and isinstance(leaf.value, int | float):
                values.update({leaf.value - 1, leaf.value, leaf.value + 0.5, leaf.value + 1})
    return sorted(v for v in values if 0 <= v <= 130)


@pytest.fixture(scope="module")
def three(evaluator: Evaluator) -> tuple[Evaluator, Evaluator, Evaluator]:
    k = evaluator.knowledge
    ref = Evaluator(k, engine=evaluator.engine)
    ref.ranker = ask_next_reference.QuestionRanker(k)  # type: ignore[assignment]
    untabled = Evaluator(k, engine=evaluator.engine)
    untabled.ranker = QuestionRanker(k)
    untabled.ranker.by_age = {tier: {} for tier in untabled.ranker.by_age}
    return evaluator, ref, untabled


def test_the_table_covers_the_age_rules(evaluator: Evaluator):
    ranker = evaluator.ranker
    assert ranker.age_bits, "no rule tests the age: the table has nothing to hold"
    assert all(ranker.by_age.values())
    assert len(_ages(evaluator)) >= 4


def test_cases_at_every_age_threshold_get_the_reference_questions(three):
    new, ref, untabled = three
    k = new.knowledge
    ages = _ages(new)
    compared = 0
    for case in k.cases:
        for age in ages:
            body: dict[str, Any] = dict(case.request)
            body["patient"] = {**(body.get("patient") or {}), "age": age}
            enc = parse_encounter(k, body)
            answers = [e.evaluate(enc) for e in (new, ref, untabled)]
            for a in answers:
                a.pop("evaluation_id", None)
            assert answers[0] == answers[1], (case.id, age)
            assert answers[0] == answers[2], (case.id, age)
            compared += 1
    assert compared >= len(k.cases) * 4
