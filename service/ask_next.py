"""What to ask next: the unknown findings that would most change the answer.

For every rule that did not fire, its condition is read three-valued against what is known
(true / false / unknown, where unknown means a finding nobody reported). A rule that is
blocked only by one or two unknown findings is a near miss: answering those findings could
fire it. Each near miss credits its unknown findings with the rule's impact: a tier it would
raise above the current one counts most, then red flags, then support for must-not-miss
conditions, other support, and tests. A score item is worth what the score threshold it would
newly cross is worth (one more Wells point can turn "DVT unlikely" into "likely").

Impact is scaled by how much of the rule this presentation already matches
((1 + satisfied tests) / (1 + all tests)): a rule half met by what the patient has is a better
question than an unrelated one of the same weight, yet a lone red-flag question keeps half
its weight, so screening for red flags never drops out. Findings are ranked by total credit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.engine import EngineResult, Fact, compare, leaf_matches
from service.knowledge import TIER_RANK, Group, Knowledge, Leaf, Rule

if TYPE_CHECKING:
    from service.evaluation import Encounter

MAX_QUESTIONS = 5
MAX_UNKNOWN_PER_RULE = 2
_TRUE = frozenset()  # a satisfied condition: no unknowns needed


class _Plan:
    """One rule, read once: what ask_next needs of it on every request."""

    __slots__ = ("gates", "leaves", "rule", "score")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.leaves = rule.when.positive_leaves()
        # Top-level `all` leaves on input findings: one known to fail rules the rule out at once.
        self.gates = [i for i in rule.when.all if isinstance(i, Leaf) and i.kind == "finding"]
        self.score = rule.then.score


class QuestionRanker:
    """Built once per rule set: what firing each rule would change is precomputed for every
    current tier, so that a request only reads the rules' conditions."""

    def __init__(self, k: Knowledge) -> None:
        self.k = k
        self.impact: dict[str, dict[str, float]] = {
            rule.id: {tier: _impact(k, rule, tier) for tier in TIER_RANK} for rule in k.rules
        }
        self.plans = [_Plan(rule) for rule in k.rules]
        # score id -> the rules that test it (thresholds), for score items' worth
        self.thresholds: dict[str, list[tuple[Rule, list[Leaf]]]] = {}
        for rule in k.rules:
            tests = [leaf for leaf in rule.when.positive_leaves() if leaf.kind == "score"]
            for sid in {leaf.key for leaf in tests}:
                self.thresholds.setdefault(sid, []).append((rule, [t for t in tests if t.key == sid]))

    def rank(self, enc: Encounter, facts: list[Fact], result: EngineResult, tier: str) -> list[dict[str, Any]]:
        k = self.k
        fired = {f.rule_id for f in result.firings}
        derived = {name for f in result.firings for name in f.derived}
        known = {f.key: f for f in facts if f.kind == "finding"}
        patient = Fact("patient", "patient", value=enc.age, choice=enc.sex)
        ctx = (known, patient, derived, result.scores)

        credit: dict[str, float] = {}
        reasons: dict[str, list[str]] = {}
        for plan in self.plans:
            rule = plan.rule
            if rule.id in fired:
                continue
            if any(g.key in known and not leaf_matches(g, known[g.key]) for g in plan.gates):
                continue
            impact = self.impact[rule.id][tier]
            if plan.score:
                impact += self._crossing(plan.score, result.scores, fired, tier)
            if impact <= 0:
                continue
            if any(_leaf(leaf, ctx) is _TRUE for leaf in rule.when.none):
                continue
            needed = _when(rule, ctx)
            if needed is None or not needed or len(needed) > MAX_UNKNOWN_PER_RULE:
                continue
            satisfied = sum(1 for leaf in plan.leaves if _leaf(leaf, ctx) is _TRUE)
            impact *= (1 + satisfied) / (1 + len(plan.leaves))
            for code in needed:
                credit[code] = credit.get(code, 0) + impact / len(needed)
                reasons.setdefault(code, []).append(rule.id)

        ranked = sorted(credit, key=lambda c: (-credit[c], c))[:MAX_QUESTIONS]
        out = []
        for code in ranked:
            f = k.findings[code]
            rules = reasons[code]
            titles = "; ".join(k.rules_by_id[r].title for r in rules[:3])
            out.append({
                "finding": code,
                "display": f.display,
                "question": f.question,
                "type": f.type,
                **({"unit": f.unit} if f.unit else {}),
                **({"choices": list(f.choices)} if f.choices else {}),
                "impact": round(credit[code], 2),
                "why": f"Could change the answer through: {titles}",
                "rules": rules,
            })
        return out

    def _crossing(self, score: tuple[str, float], scores: Any, fired: set[str], tier: str) -> float:
        """Worth of a score item: the impact of unfired threshold rules its points would satisfy."""
        sid, points = score
        value = scores.get(sid, 0) + points
        worth = 0.0
        for threshold, tests in self.thresholds.get(sid, []):
            if threshold.id not in fired and all(compare(value, leaf.op, leaf.value) for leaf in tests):
                worth = max(worth, self.impact[threshold.id][tier])
        return worth


def _impact(k: Knowledge, rule: Rule, tier: str, seen: frozenset[str] = frozenset()) -> float:
    """What firing `rule` would change; a derived fact counts what the rules matching it
    would change in turn (chains are followed, cycles cut)."""
    then = rule.then
    current = TIER_RANK[tier]
    raised = [TIER_RANK[then.tier]] if then.tier else []
    if then.red_flag:
        raised.append(TIER_RANK[k.red_flags[then.red_flag].tier])
    impact = 10.0 * max([r - current for r in raised if r > current], default=0)
    impact += 5.0 if then.red_flag else 0.0
    for w in then.support:
        impact += w.weight * (2.0 if k.conditions[w.condition].must_not_miss else 1.0)
    impact += 0.5 * len(then.tests)
    for name in then.derive:
        consumers = [
            r for r in k.rules
            if r.id not in seen and any(leaf.kind == "fact" and leaf.key == name for leaf in r.when.positive_leaves())
        ]
        impact += max((_impact(k, r, tier, seen | {rule.id}) for r in consumers), default=0.0)
    return impact


def _leaf(leaf: Leaf, ctx: Any) -> frozenset[str] | None:
    """frozenset() = true; frozenset({code}) = unknown, needs that finding; None = false."""
    known, patient, derived, scores = ctx
    if leaf.kind == "finding":
        fact = known.get(leaf.key)
        if fact is None:
            return frozenset({leaf.key})
        return _TRUE if leaf_matches(leaf, fact) else None
    if leaf.kind == "patient":
        return _TRUE if leaf_matches(leaf, patient) else None
    if leaf.kind == "fact":
        return _TRUE if leaf.key in derived else None
    value = scores.get(leaf.key)
    if value is None:
        return None
    return _TRUE if compare(value, leaf.op, leaf.value) else None


def _group(mode: str, items: tuple[Leaf | Group, ...], ctx: Any) -> frozenset[str] | None:
    results = [_group(i.mode, i.items, ctx) if isinstance(i, Group) else _leaf(i, ctx) for i in items]
    if mode == "all":
        if any(r is None for r in results):
            return None
        return frozenset().union(*results) if results else _TRUE
    options = [r for r in results if r is not None]
    if not options:
        return None
    return min(options, key=lambda r: (len(r), sorted(r)))


def _when(rule: Rule, ctx: Any) -> frozenset[str] | None:
    parts = []
    if rule.when.all:
        parts.append(_group("all", rule.when.all, ctx))
    if rule.when.any:
        parts.append(_group("any", rule.when.any, ctx))
    if any(p is None for p in parts):
        return None
    return frozenset().union(*parts)
