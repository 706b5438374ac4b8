"""One engine state reused by every evaluation (service/reasoning/engine.py) gives exactly the answers of
a fresh durable-rules session per evaluation: the adapter as it was before
(tests/reference/engine_fresh_session.py). Long shuffled sequences of evaluations run through
one state; every answer is compared with the reference's, so anything left behind by one
patient (a fact, a partial match, a pending firing) would show in a later patient's answer.
Failures in the middle of a sequence (a refused value, an exception inside an action) must
leave no trace either."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from service.config import DEFAULT_RULES_DIR
from service.errors import EngineError, ServiceError
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge
from service.knowledge.model import Knowledge
from service.reasoning import engine as engine_mod
from service.reasoning.engine import Engine, EngineResult, Fact
from service.reasoning.evaluation import Evaluator
from tests.reference import engine_fresh_session as reference

# LEGPAIN_REUSE_N raises the count for a longer run by hand (e.g. 100000); the suite stays quick.
N = int(os.environ.get("LEGPAIN_REUSE_N", "1500"))


@pytest.fixture(scope="module")
def real() -> Knowledge:
    return load_knowledge(DEFAULT_RULES_DIR)


def random_body(k: Knowledge, rng: random.Random) -> dict[str, Any]:
    """A valid request: any findings of the vocabulary, present or denied, values anywhere in
    their ranges (edges and thresholds included), with or without age and sex."""
    thresholds = sorted({leaf.value for r in k.rules for leaf in r.when.positive_leaves()
                         if isinstance(leaf.value, int | float)})
    findings = rng.sample(sorted(k.findings.values(), key=lambda f: f.code), rng.randint(0, min(40, len(k.findings))))
    items: list[dict[str, Any]] = []
    for f in findings:
        if f.type == "boolean":
            items.append({"code": f.code, "present": rng.random() < 0.6})
        elif f.type == "choice":
            items.append({"code": f.code, "value": rng.choice(f.choices)})
        else:
            lo, hi = f.range  # type: ignore[misc]
            near = [t for t in thresholds if lo <= t <= hi]
            pick = rng.random()
            if near and pick < 0.5:
                value = rng.choice(near) + rng.choice((-0.01, 0, 0.01))
                value = min(hi, max(lo, value))
            else:
                value = rng.uniform(lo, hi) if pick < 0.9 else rng.choice((lo, hi))
            items.append({"code": f.code, "value": round(value, 2)})
    patient: dict[str, Any] = {}
    if rng.random() < 0.85:
        patient["age"] = rng.choice((rng.randint(16, 100), round(rng.uniform(16, 100), 2), 50, 40, 65))
    if rng.random() < 0.7:
        patient["sex"] = rng.choice(["female", "male", "other", "unknown"])
    return {"patient": patient, "findings": items}


def bodies(k: Knowledge, n: int, seed: int, case_copies: int = 3) -> list[dict[str, Any]]:
    """The clinical cases (each `case_copies` times) and random encounters up to `n` in all,
    shuffled together."""
    rng = random.Random(seed)
    out = [dict(case.request) for case in k.cases for _ in range(case_copies)]
    out += [random_body(k, rng) for _ in range(max(0, n - len(out)))]
    rng.shuffle(out)
    return out


def comparable(result: EngineResult) -> tuple[Any, ...]:
    return (
        [(f.seq, f.rule_id, f.round, [tuple(vars(m).values()) for m in f.matched], f.derived) for f in result.firings],
        dict(result.scores),
        result.rounds,
    )


def without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "evaluation_id"}


def encounters(k: Knowledge, n: int, seed: int, case_copies: int = 3) -> list[Any]:
    out = []
    for body in bodies(k, n, seed, case_copies):
        try:
            out.append(parse_encounter(k, body))
        except ServiceError:  # a case built to be refused; not an evaluation
            continue
    return out


def test_a_reused_state_gives_every_fresh_session_answer_on_the_real_rules(real):
    engine, ref = Engine(real), reference.Engine(real)
    differences = []
    for n, enc in enumerate(encounters(real, N, seed=18)):
        facts = enc.facts()
        got, want = comparable(engine.evaluate(facts)), comparable(ref.evaluate(facts))
        if got != want:
            differences.append(n)
    assert differences == []
    assert engine.live_sessions == 1


def test_whole_answers_match_the_fresh_session_answers(real):
    """The full answer, ask_next included, for every clinical case and random encounters."""
    ours, theirs = Evaluator(real), Evaluator(real, engine=reference.Engine(real))  # type: ignore[arg-type]
    for enc in encounters(real, len(real.cases) + 100, seed=1818, case_copies=1):
        assert without_id(ours.evaluate(enc)) == without_id(theirs.evaluate(enc))


def test_failures_in_a_sequence_leave_nothing_behind(real, monkeypatch):
    """Refused values and failing actions at random points: the state is deleted and made
    again, and every later answer is still the fresh-session answer."""
    engine, ref = Engine(real), reference.Engine(real)
    failures = 0
    original = engine_mod._none_blocks

    def boom(rule, session):
        raise ValueError("inside an action")

    for n, enc in enumerate(encounters(real, 600, seed=77)):
        facts = enc.facts()
        if n % 23 == 5:  # a number the engine cannot read: refused before anything is asserted
            with pytest.raises(EngineError):
                engine.evaluate([*facts, Fact("finding", "zz-too-big", value=1e20)])
            failures += 1
        elif n % 31 == 9:  # an action fails halfway through the run
            monkeypatch.setattr(engine_mod, "_none_blocks", boom)
            try:
                engine.evaluate(facts)
            except EngineError:
                failures += 1
            monkeypatch.setattr(engine_mod, "_none_blocks", original)
        assert comparable(engine.evaluate(facts)) == comparable(ref.evaluate(facts)), n
    assert failures > 20


def test_the_mini_rules_chain_and_score_the_same_through_one_state(mini_knowledge):
    engine, ref = Engine(mini_knowledge), reference.Engine(mini_knowledge)
    rng = random.Random(3)
    codes = ["a", "b", "c", "blocker", "unused"]
    for _ in range(3000):
        facts = [Fact("finding", c, present=rng.random() < 0.8) for c in rng.sample(codes, rng.randint(0, 5))]
        if rng.random() < 0.5:
            facts.append(Fact("finding", "angle", value=rng.choice([10, 59.99, 60, 80])))
        if rng.random() < 0.3:
            facts.append(Fact("finding", "ratio", value=rng.choice([0.00005, 0.5, 2])))
        if rng.random() < 0.3:
            facts.append(Fact("finding", "onset", choice=rng.choice(["sudden", "gradual"])))
        rng.shuffle(facts)
        assert comparable(engine.evaluate(facts)) == comparable(ref.evaluate(facts)), facts


def test_a_retracted_fact_can_be_asserted_again_by_the_next_evaluation(mini_knowledge):
    """H3 across evaluations: the same fact in two evaluations in a row is not 'already
    observed' (it was retracted), so the second evaluation fires like the first."""
    engine = Engine(mini_knowledge)
    first = engine.evaluate([Fact("finding", "a"), Fact("finding", "b")])
    second = engine.evaluate([Fact("finding", "a"), Fact("finding", "b")])
    assert comparable(first) == comparable(second)
    assert [f.rule_id for f in second.firings][:1] == ["mini.join_ab"]


def test_only_facts_a_positive_leaf_can_match_are_asserted(mini_knowledge):
    engine = Engine(mini_knowledge)
    assert engine.relevant(Fact("finding", "a"))
    assert not engine.relevant(Fact("finding", "unused"))  # no rule reads it
    assert not engine.relevant(Fact("finding", "angle", value=80))  # the only test is "< 60"
    assert engine.relevant(Fact("finding", "angle", value=59.99))
    # `none` still sees the whole input: a blocker no positive leaf reads still blocks
    assert not engine.relevant(Fact("finding", "blocker"))
    assert "mini.a_not_blocker" not in [
        f.rule_id for f in engine.evaluate([Fact("finding", "a"), Fact("finding", "blocker")]).firings
    ]
