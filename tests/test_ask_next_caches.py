"""ask_next keeps what it reads per request as met (the touched rules' and the derivers'
readings, what the derivers find pending, the age's effects, the questions' `why`), bounded by
READ_CACHE and PENDING_CACHE (service/reasoning/ask_next.py). A kept reading must be the value
reading again would give: on every rule-side case (as sent, with the interview's
ask_next_limit, and with a third of its findings answered "unknown"), a ranker whose caches
were filled by every case beforehand, one that keeps nothing (bounds at 0) and the reference
ranker (tests/reference/ask_next_reference.py) ask the same questions."""

from __future__ import annotations

import gc
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


def test_the_caches_entries_are_left_alone_by_the_cyclic_collector(rankers):
    """A worker's caches hold tens of thousands of entries, kept for its life: entries holding
    frozensets (always tracked) would be walked by every full collection (issue 18: 12-73 ms
    pauses). Their keys and read_cache's values are plain values the collector stops tracking
    once it has seen them; pending_cache's values (dicts of frozensets) and deriver_cache's are
    one object per distinct content."""
    warm = rankers[0].ranker
    # A collection untracks a tuple only once the tuples inside it are untracked, one level per
    # pass in the order it meets them (Python 3.13 met the keys before their inner tuples):
    # a worker's repeated collections get there; here, one pass per level of nesting.
    for _ in range(4):
        gc.collect()
    # (deriver_cache's keys, made while the derivers are read, hold a pending fact's frozenset
    # the first time it is met, before it is numbered: a few dozen.)
    for cache in [*warm.read_cache.values(), warm.pending_cache]:
        assert cache
        assert not [key for key in cache if gc.is_tracked(key)]
    hits = [hit for c in warm.read_cache.values() for hit in c.values()]
    assert any(hit[0] is not None for hit in hits), "no near miss kept: nothing tested"
    assert not [hit for hit in hits if gc.is_tracked(hit)]
    pending = list(warm.pending_cache.values())
    assert pending
    assert len({id(hit) for hit in pending}) == len({(tuple(hit[0].items()), hit[1]) for hit in pending})
    sets = [s for hit in pending for s in hit[0].values()]
    sets += [s for s in warm.deriver_cache.values() if s is not None]
    assert len({id(s) for s in sets}) == len(set(sets))
