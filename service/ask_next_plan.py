"""ask_next compiled at load (issue 18 part 2): what the rules a request does not touch give.

A rule whose every test (its `all`, `any` and `none`, nested groups too) is on an input finding
reads the same for every request that sends none of those findings, neither answered nor
"unknown": every test is unknown, so it is a near miss on the same one or two findings with the
same credit whatever else was sent (it cannot have fired, and no derived fact, score or patient
attribute changes it). Most rules are such rules for most requests. Their credits are added up
here once per rule set and current tier, into the three tables ask_next builds (credit, reasons,
reach); a request starts from a copy and recomputes only the findings that a touched rule, or a
rule on patient attributes, derived facts or scores, credits.

Credits are kept as the per-rule contributions in rule order as well, so that a recomputed
finding sums them in the order ask_next always did (floating-point sums depend on the order,
and the ranking sorts on them): the compiled ranker gives exactly the questions of the ranker
it replaced (tests/test_ask_next_plan.py compares them with tests/reference/ask_next_reference.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from service.knowledge import Rule

Impact = tuple[float, float]  # (urgency, differential)


class Contribution(NamedTuple):
    """What one near-miss rule gives one finding: scaled urgency and differential credit."""

    pos: int  # the rule's index in the rule set: contributions are summed in this order
    urgency: float
    differential: float
    rule_id: str
    top: int  # the highest tier rank firing the rule could lead to


def finding_keys(rule: Rule) -> frozenset[str] | None:
    """The input findings a rule tests (positive and `none`), or None when it also tests a
    patient attribute, a derived fact or a score (then it is read on every request)."""
    leaves = [*rule.when.positive_leaves(), *rule.when.none]
    if any(leaf.kind != "finding" for leaf in leaves):
        return None
    return frozenset(leaf.key for leaf in leaves)


def worth(gains: Iterable[float]) -> float:
    """A finding's worth from its contributions (ask_next's `_worth`): the strongest plus a tenth
    of the others, summed in rule order."""
    g = list(gains)
    return max(g) + 0.1 * (sum(g) - max(g)) if g else 0.0


class StaticTier:
    """For one current tier: every finding's credit from the finding-only rules, all untouched."""

    __slots__ = ("alt", "credit", "gains", "reach", "reasons", "rule_alt", "rule_codes")

    def __init__(self) -> None:
        self.gains: dict[str, list[Contribution]] = {}  # finding -> contributions, rule order
        self.alt: dict[str, list[Contribution]] = {}  # the other options of `any` groups, the same
        self.rule_codes: dict[int, tuple[str, ...]] = {}  # rule pos -> the findings it credits
        self.rule_alt: dict[int, tuple[str, ...]] = {}
        self.credit: dict[str, Impact] = {}
        self.reasons: dict[str, list[str]] = {}
        self.reach: dict[str, int] = {}

    def add(self, pos: int, rule_id: str, top: int, urgency: float, differential: float,
            needed: frozenset[str], alternatives: list[str]) -> None:
        c = Contribution(pos, urgency, differential, rule_id, top)
        for code in needed:
            self.gains.setdefault(code, []).append(c)
        for code in alternatives:
            self.alt.setdefault(code, []).append(c)
        self.rule_codes[pos] = tuple(needed)
        self.rule_alt[pos] = tuple(dict.fromkeys(alternatives))

    def seal(self) -> None:
        for code, items in self.gains.items():
            self.credit[code], self.reasons[code], self.reach[code] = combine(items)


def combine(items: list[Contribution]) -> tuple[Impact, list[str], int]:
    """Credit, reasons and reach of one finding from its contributions (in rule order)."""
    return ((worth(c.urgency for c in items), worth(c.differential for c in items)),
            [c.rule_id for c in items], max(0, *(c.top for c in items)))


class StaticPlan:
    """The finding-only rules' credits per tier, and which rules each finding touches.

    `assess(rule_index)` gives a rule's near miss when nothing is known (needed findings,
    satisfied tests) or None; `candidates[tier]` the (rule index, urgency, differential) of the
    rules that could add credit at that tier, in rule order."""

    def __init__(self, rules: tuple[Rule, ...], assess: Callable[[int], tuple[frozenset[str], int] | None],
                 candidates: dict[str, list[tuple[int, float, float, bool]]], reach: dict[str, int],
                 leaves: Callable[[int], list[Any]]) -> None:
        keys = [finding_keys(rule) for rule in rules]
        self.static = frozenset(i for i, k in enumerate(keys) if k is not None)
        # finding -> the finding-only rules that test it: a request sending it touches them.
        self.touching: dict[str, frozenset[int]] = {}
        index: dict[str, set[int]] = {}
        for i, k in enumerate(keys):
            for key in k or ():
                index.setdefault(key, set()).add(i)
        self.touching = {key: frozenset(v) for key, v in index.items()}
        # A finding-only rule's near miss when nothing is known (for the derivers' pending facts).
        self.untouched: dict[int, tuple[frozenset[str], int] | None] = {i: assess(i) for i in self.static}
        self.tiers: dict[str, StaticTier] = {}
        # Per tier, the candidates read on every request (not finding-only, or scoring).
        self.always: dict[str, list[tuple[int, float, float]]] = {}
        for tier, cands in candidates.items():
            table = StaticTier()
            always: list[tuple[int, float, float]] = []
            for i, urgency, differential, scores in cands:
                if i not in self.static or scores:
                    always.append((i, urgency, differential))
                    continue
                assessed = self.untouched[i]
                if assessed is None or urgency + differential <= 0:
                    continue
                needed, satisfied = assessed
                n_leaves = len(leaves(i))
                scale = (1 + satisfied) / (1 + n_leaves) / len(needed)
                alternatives = [leaf.key for leaf in leaves(i) if leaf.kind == "finding" and leaf.key not in needed]
                table.add(i, rules[i].id, reach[rules[i].id], urgency * scale, differential * scale, needed,
                          alternatives)
            table.seal()
            self.tiers[tier] = table
            self.always[tier] = always

    def touched(self, keys: Iterable[str]) -> set[int]:
        """The finding-only rules a request's findings (answered or unknown) touch."""
        out: set[int] = set()
        for key in keys:
            hit = self.touching.get(key)
            if hit:
                out |= hit
        return out
