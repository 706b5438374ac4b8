"""ask_next keeps what it reads per request as met (the touched rules' and the derivers'
readings, what the derivers find pending, the age's effects, the questions' `why`), bounded by
READ_CACHE and PENDING_CACHE (service/reasoning/ask_next.py). A kept reading must be the value
reading again would give: on every rule-side case (as sent, with the interview's
ask_next_limit, and with a third of its findings answered "unknown"), a ranker whose caches
were filled by every case beforehand, one that keeps nothing (bounds at 0) and the reference
ranker (tests/reference/ask_next_reference.py) ask the same questions."""

from __future__ import annotations

from typing import Any

import pytest

from service.intake.parse import parse_encounter
from service.knowledge.model import Knowledge
from service.reasoning import ask_next
from service.reasoning.ask_next import QuestionRanker
from service.reasoning.evaluation import Evaluator
from tests.reference import ask_next_reference

LIMIT = 200  # as the interview asks (service/web/interview.py)


def bodies(k: Knowledge) -> list[dict[str, Any]]:
    out = []
    for case in k.cases:
        body = dict(case.request)
        findings = [dict(f) for f in body.get("findings") or []]
        out.append(body)
        out.append({**body, "ask_next_limit": LIMIT})
        for i in range(0, len(findings), 3):
            findings[i] = {"code": findings[i]["code"], "present": None}  # asked, not known
        out.append({**body, "findings": findings})
    return out


@pytest.fixture(scope="module")
def rankers(evaluator: Evaluator) -> tuple[Evaluator, Evaluator, Evaluator]:
    k = evaluator.knowledge
    warm, cold, ref = (Evaluator(k, engine=evaluator.engine) for _ in range(3))
    warm.ranker = QuestionRanker(k)
    cold.ranker = QuestionRanker(k)
    ref.ranker = ask_next_reference.QuestionRanker(k)  # type: ignore[assignment]
    for body in bodies(k):
        warm.evaluate(parse_encounter(k, body))
    return warm, cold, ref


def test_kept_readings_give_the_same_questions_as_reading_again(rankers, monkeypatch):
    warm, cold, ref = rankers
    k = warm.knowledge
    filled = sum(len(c) for c in warm.ranker.read_cache.values()) + len(warm.ranker.pending_cache)
    assert filled > 100, "the cases filled nothing: the comparison would not test the caches"
    monkeypatch.setattr(ask_next, "READ_CACHE", 0)
    monkeypatch.setattr(ask_next, "PENDING_CACHE", 0)
    compared = 0
    for body in bodies(k):
        enc = parse_encounter(k, body)
        asked = [e.evaluate(enc)["ask_next"] for e in (warm, cold, ref)]
        assert asked[0] == asked[2], body
        assert asked[1] == asked[2], body
        compared += len(asked[0])
    assert compared > 1000
    # Bounds at 0: the other ranker kept nothing.
    assert not any(cold.ranker.read_cache.values()) and not cold.ranker.pending_cache
    assert not cold.ranker.deriver_cache and not cold.ranker.whys
