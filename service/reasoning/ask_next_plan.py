"""ask_next compiled at load (issue 18 part 2): what the rules a request does not touch give.

A rule reads the same for every request that holds nothing it reads: no finding it tests sent
(answered or "unknown"), no fact it reads derived or pending otherwise than when nothing is
known, no patient attribute it reads given, no score it reads or adds to. Every test is then
unknown or false, so it is a near miss on the same one or two findings with the same credit
whatever else was sent (and it cannot have fired). Such rules are read once per rule set and
current tier, into the three tables ask_next builds (credit, reasons, reach); a request starts
from a copy, reads only the rules it touches (`StaticPlan.touching`: each dependency's rules),
and recomputes the findings whose contributions changed.

Credits are kept as the per-rule contributions in rule order as well, so that a recomputed
finding sums them in the order ask_next always did (floating-point sums depend on the order,
and the ranking sorts on them): the compiled ranker gives exactly the questions of the ranker
it replaced (tests/test_ask_next_plan.py compares them with tests/reference/ask_next_reference.py).
"""

from __future__ import annotations

from service.knowledge.model import Rule

Impact = tuple[float, float]  # (urgency, differential)
BREADTH = 0.1  # a finding's other consequences count a tenth of its strongest


# What one near-miss rule gives one finding: (its index in the rule set: contributions are
# summed in this order, scaled urgency credit, scaled differential credit, the rule's id, the
# highest tier rank firing it could lead to). A plain tuple: a request makes about a hundred.
Contribution = tuple[int, float, float, str, int]
POS, URGENCY, DIFFERENTIAL, RULE_ID, TOP = range(5)


def dependencies(rule: Rule) -> frozenset[str]:
    """What a rule reads of a request: its findings (positive and `none`) by code, derived facts
    as `fact:<name>`, patient attributes as `patient:<attr>` and scores as `score:<id>` (its
    score leaves and the score its item adds to)."""
    out: set[str] = set()
    for leaf in [*rule.when.positive_leaves(), *rule.when.none]:
        out.add(leaf.key if leaf.kind == "finding" else f"{leaf.kind}:{leaf.key}")
    if rule.then.score:
        out.add(f"score:{rule.then.score[0]}")
    return frozenset(out)


def worth(gains: list[float]) -> float:
    """A finding's worth from its contributions: the strongest plus a tenth of the others, summed
    in rule order (summing would let ten correlated Wells items drown a decisive question)."""
    if not gains:
        return 0.0
    strongest = max(gains)
    return strongest + BREADTH * (sum(gains) - strongest)


class StaticTier:
    """For one current tier: every finding's credit from every rule, none of them touched."""

    __slots__ = ("alt", "credit", "gains", "reach", "read_of", "reasons")

    def __init__(self) -> None:
        self.gains: dict[str, list[Contribution]] = {}  # finding -> contributions, rule order
        self.alt: dict[str, list[Contribution]] = {}  # the other options of `any` groups, the same
        self.read_of: dict[int, tuple[Contribution, frozenset[str]]] = {}  # rule pos -> what it gives
        self.credit: dict[str, Impact] = {}
        self.reasons: dict[str, list[str]] = {}
        self.reach: dict[str, int] = {}

    def add(self, c: Contribution, needed: frozenset[str], alternatives: list[str]) -> None:
        for code in needed:
            self.gains.setdefault(code, []).append(c)
        for code in alternatives:
            self.alt.setdefault(code, []).append(c)
        self.read_of[c[POS]] = (c, needed)

    def seal(self) -> None:
        for code, items in self.gains.items():
            self.credit[code], self.reasons[code], self.reach[code] = combine(items)


def combine(items: list[Contribution]) -> tuple[Impact, list[str], int]:
    """Credit, reasons and reach of one finding from its contributions (in rule order)."""
    if len(items) == 1:  # the most common case, without the list comprehensions
        c = items[0]
        return (worth([c[URGENCY]]), worth([c[DIFFERENTIAL]])), [c[RULE_ID]], max(0, c[TOP])
    return ((worth([c[URGENCY] for c in items]), worth([c[DIFFERENTIAL] for c in items])),
            [c[RULE_ID] for c in items], max(0, *[c[TOP] for c in items]))


Read = tuple[Contribution, frozenset[str], list[str], bool]  # contribution, needed, alternatives, related


class StaticPlan:
    """Every rule's credits per tier as read when the request touches nothing of it, and which
    rules each dependency touches.

    `pending` is what the derivers find pending when nothing is known (fact -> the findings it
    needs): the static reading holds it, so a request touches the rules reading a fact only
    when it is derived or pending otherwise. `reads[tier]` the (rule index, what reading it
    gives or None) of the tier's candidates."""

    def __init__(self, rules: tuple[Rule, ...], pending: dict[str, frozenset[str]],
                 reads: dict[str, list[tuple[int, Read | None]]]) -> None:
        index: dict[str, set[int]] = {}
        for i, keys in enumerate(dependencies(rule) for rule in rules):
            for key in keys:
                index.setdefault(key, set()).add(i)
        # dependency -> the rules that read it: a request holding it touches them.
        self.touching: dict[str, frozenset[int]] = {key: frozenset(v) for key, v in index.items()}
        self.pending = pending
        self.tiers: dict[str, StaticTier] = {}
        for tier, rows in reads.items():
            table = StaticTier()
            for _, read in rows:
                if read is not None:
                    c, needed, alternatives, _related = read
                    table.add(c, needed, alternatives)
            table.seal()
            self.tiers[tier] = table
