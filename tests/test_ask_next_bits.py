"""ask_next's rules compiled into bitsets (service/reasoning/ask_next_bits.py) read every rule
exactly as the tree reading they replaced (tests/reference/ask_next_reference.py `_assess`):
the same one or two findings and the same count of tests that hold, or no near miss, for every
rule of the real rule set in random requests (findings present with values or choices near the
rules' thresholds, denied, answered "unknown", age given or not, facts derived or pending on
random findings, scores). The whole answers are compared in tests/test_ask_next_plan.py; this
checks the reading itself, rule by rule, on many more states."""

from __future__ import annotations

import random
from typing import Any

from service.knowledge.model import Knowledge
from service.reasoning.ask_next_bits import LeafBits
from service.reasoning.engine import Fact
from tests.reference import ask_next_reference as ref


def _random_state(k: Knowledge, rnd: random.Random) -> tuple[dict[str, Fact], frozenset[str], Fact, set[str],
                                                           dict[str, frozenset[str]], dict[str, Any]]:
    codes = sorted(k.findings)
    leaves = [leaf for r in k.rules for leaf in [*r.when.positive_leaves(), *r.when.none]]
    thresholds: dict[str, list[Any]] = {}
    for leaf in leaves:
        if leaf.op is not None:
            thresholds.setdefault(leaf.key, []).append(leaf.value)
    known: dict[str, Fact] = {}
    asked: set[str] = set()
    for code in rnd.sample(codes, rnd.randint(0, 40)):
        f = k.findings[code]
        state = rnd.choice(("present", "present", "denied", "unknown"))
        if state == "unknown":
            asked.add(code)
        elif state == "denied":
            known[code] = Fact("finding", code, False)
        elif f.choices:
            known[code] = Fact("finding", code, True, choice=rnd.choice(list(f.choices)))
        elif code in thresholds:
            known[code] = Fact("finding", code, True, value=rnd.choice(thresholds[code]) + rnd.choice((-1, 0, 1)))
        else:
            known[code] = Fact("finding", code, True)
    age = rnd.choice((None, 15, 16, 17, 18, 25, 44, 45, 50, 51, 65, 80))
    patient = Fact("patient", "patient", value=age, choice=rnd.choice((None, "female", "male")))
    names = sorted({leaf.key for leaf in leaves if leaf.kind == "fact"})
    derived = set(rnd.sample(names, rnd.randint(0, 4)))
    pending = {name: frozenset(rnd.sample(codes, rnd.randint(1, 2)))
               for name in rnd.sample(names, rnd.randint(0, 8)) if name not in derived}
    sids = sorted({leaf.key for leaf in leaves if leaf.kind == "score"})
    scores = {sid: rnd.randint(-1, 4) for sid in sids if rnd.random() < 0.5}
    return known, frozenset(asked), patient, derived, pending, scores


def test_every_rule_reads_as_the_tree_reading(knowledge: Knowledge) -> None:
    bits = LeafBits(knowledge.rules)
    plans = [ref._Plan(rule) for rule in knowledge.rules]
    rnd = random.Random(18)
    near = 0
    for _ in range(300):
        known, asked, patient, derived, pending, scores = _random_state(knowledge, rnd)
        t, f = bits.state(known, asked, patient, derived, scores)
        for name in pending:
            f &= ~bits.facts.get(name, 0)  # pending: its tests are unknown (ask_next's derivers do this)
        ctx = (known, patient, derived, scores, pending, asked)
        for plan, rb in zip(plans, bits.rules, strict=True):
            want = ref._assess(plan, ctx)
            got = rb.assess(t, f, pending)
            assert (got[:2] if got else None) == want, (plan.rule.id, known, asked, patient, derived, pending, scores)
            near += want is not None
    assert near > 300 * 20  # most states hold near misses: the comparison is not vacuous


def test_an_any_group_takes_the_option_needing_fewest_findings_then_the_first_sorted(knowledge: Knowledge) -> None:
    """The leaves of an `any` group are numbered in the order `min` chooses them, so that the
    lowest open bit is the choice: with nothing known, the first code in sorted order."""
    bits = LeafBits(knowledge.rules)
    f0 = bits.facts_all | bits.scores_all
    checked = 0
    for rule, rb in zip(knowledge.rules, bits.rules, strict=True):
        codes = [leaf.key for leaf in rule.when.any if getattr(leaf, "kind", None) == "finding"]
        if len(codes) < 2 or len(codes) != len(rule.when.any) or rule.when.all or rule.when.none:
            continue
        got = rb.assess(0, f0, {})
        assert got is not None and got[0] == frozenset({min(codes)}), rule.id
        checked += 1
    assert checked, "no rule of only an `any` group of findings to check"
