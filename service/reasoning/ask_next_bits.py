"""ask_next's three-valued reading of the rules, compiled at load into bitsets (issue 18 part 2).

ask_next reads a rule against a request as true, false or unknown per test (service/reasoning/
ask_next.py): a rule is a near miss when no test is known to fail and one or two unknown findings
would fire it. Read leaf by leaf that cost about 1 µs a test, and a typical request reads about
140 rules, 800 tests. Here every test (leaf) of every rule has one bit, a rule's leaves in one
block (its positive leaves in `When.positive_leaves` order, then its `none` leaves). A request
sets two integers once (`LeafBits.state`): T, the leaves that hold, and F, those known to fail;
the others are unknown. Reading a rule (`RuleBits.assess`) then takes its block out of T and F
and decides with a few integer operations, going leaf by leaf only over its unknown leaves.

The reading is exactly the tree reading it replaced (tests/reference/ask_next_reference.py is
the oracle, tests/test_ask_next_plan.py the comparison):
- a finding sent: its leaves hold or fail as `leaf_matches` says; answered "unknown" (and not
  known otherwise): every leaf on it fails (no question can complete a rule through it); not
  sent: unknown, needing that finding;
- a patient attribute given: its leaves hold or fail; not given: unknown, needing `patient:<attr>`;
- a derived fact: holds; pending (its deriving rule is itself a near miss): unknown, needing
  what that rule needs; otherwise fails. A score: its leaves compare, or fail if there is none;
- a rule is out when a `none` leaf holds; otherwise its `all` items must all hold or be
  unknown (their needs united) and an `any` group takes its option needing fewest findings
  (ties: the first in sorted order); a near miss needs one or two findings in all.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from service.knowledge.model import Group, Leaf, Rule
from service.reasoning.engine import Fact, compare, leaf_matches, normalise_number

MAX_UNKNOWN_PER_RULE = 2
# Unknown patient attributes in the three-valued reading, kept apart from finding codes.
PATIENT_KEYS = {"age": "patient:age", "sex": "patient:sex"}
NOTHING: frozenset[str] = frozenset()  # a satisfied test needs no finding

Assessed = tuple[frozenset[str], int, int, int]  # needed, satisfied tests, the rule's T and F bits
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


class Test:
    """`compare(value, op, threshold)` (service/reasoning/engine.py) with the threshold normalised
    once at load: `holds(normalise_number(value))` is the same comparison. A threshold that does
    not normalise falls back to `compare` itself (which raises as it always did)."""

    __slots__ = ("fn", "op", "threshold", "value")

    def __init__(self, op: str | None, value: Any) -> None:
        self.op, self.value = op, value
        self.fn = _OPS[op or "=="]
        try:
            self.threshold: Any = normalise_number(value)
        except Exception:  # left to compare at request time, which raises as it always did
            self.threshold = None

    def holds(self, normalised: float | int, raw: Any) -> bool:
        if self.threshold is None:
            return compare(raw, self.op, self.value)
        return self.fn(normalised, self.threshold)


def _min_option(r: frozenset[str]) -> tuple[int, list[str]]:
    return len(r), sorted(r)


class GroupBits:
    """One `all` or `any` group of a rule, over the rule's local leaf bits."""

    __slots__ = ("first", "items", "leaf_m", "mode", "subs")

    def __init__(self, mode: str, items: list[int | GroupBits], first: bool) -> None:
        self.mode = mode
        self.items = tuple(items)  # local leaf bit index or nested group, in the rule's order
        self.leaf_m = sum(1 << i for i in items if isinstance(i, int))  # its own leaves
        self.subs = tuple(i for i in items if isinstance(i, GroupBits))
        # An `any` group of leaves whose needs are known at load (no fact leaf, no nested group)
        # has its leaves numbered in the order `min` would choose them: its lowest unknown bit
        # is its choice.
        self.first = first

    def read(self, rb: RuleBits, lt: int, lf: int, pending: Mapping[str, frozenset[str]]) -> frozenset[str] | None:
        """What the group needs (NOTHING: it holds), or None: it cannot hold."""
        if self.mode == "all":
            if lf & self.leaf_m:
                return None
            out = rb.needs(self.leaf_m & ~lt, pending)
            for sub in self.subs:
                r = sub.read(rb, lt, lf, pending)
                if r is None:
                    return None
                out = out | r
            return out
        if lt & self.leaf_m:
            return NOTHING  # an option holds: nothing is needed
        if self.first:
            open_ = self.leaf_m & ~lf
            return rb.need[(open_ & -open_).bit_length() - 1] if open_ else None
        options = []
        for item in self.items:
            if isinstance(item, int):
                bit = 1 << item
                if lt & bit:
                    options.append(NOTHING)
                elif not lf & bit:
                    options.append(rb.needs(bit, pending))
            else:
                r = item.read(rb, lt, lf, pending)
                if r is not None:
                    options.append(r)
        return min(options, key=_min_option) if options else None


class RuleBits:
    """One rule's leaves as a block of bits, and how to read it."""

    __slots__ = ("alt", "fact", "fact_m", "groups", "holds_m", "leaves", "mask", "need", "none_m", "off",
                 "pos_m", "size", "top_distinct", "top_m", "top_needs")

    def __init__(self, rule: Rule, off: int) -> None:
        # The positive leaves in `positive_leaves` order (`all` items, then `any` items, depth
        # first), and the groups over their positions there.
        occ: list[Leaf] = []
        Proto = tuple[str, list[Any]]

        def walk(items: tuple[Leaf | Group, ...], mode: str) -> Proto:
            out: list[Any] = []
            for item in items:
                if isinstance(item, Group):
                    out.append(walk(item.items, item.mode))
                else:
                    occ.append(item)
                    out.append(len(occ) - 1)
            return mode, out

        top_proto = walk(rule.when.all, "all")
        any_proto = walk(rule.when.any, "any") if rule.when.any else None
        occ_need = [_static_need(leaf) for leaf in occ]
        # Bits: each group's own leaves together, a static `any` group's in the order `min`
        # would choose them (fewest findings, then sorted), so its choice is its lowest open bit.
        bit_of = [0] * len(occ)
        taken = 0

        def number(proto: Proto) -> GroupBits:
            nonlocal taken
            mode, items = proto
            own = [i for i in items if isinstance(i, int)]
            first = mode == "any" and len(own) == len(items) and all(occ_need[i] is not None for i in own)
            for i in sorted(own, key=lambda i: _min_option(occ_need[i])) if first else own:  # type: ignore[arg-type]
                bit_of[i] = taken
                taken += 1
            built = [bit_of[i] if isinstance(i, int) else number(i) for i in items]
            return GroupBits(mode, built, first)

        top = number(top_proto)
        groups = list(top.subs)
        if any_proto is not None:
            groups.append(number(any_proto))
        self.size = len(occ)  # positive leaves: the scale's denominator
        by_bit: dict[int, Leaf] = {bit_of[p]: leaf for p, leaf in enumerate(occ)}
        leaves = [by_bit[i] for i in range(len(occ))] + list(rule.when.none)  # then the `none` leaves
        self.leaves = tuple(leaves)  # in bit order
        self.off = off
        self.mask = (1 << len(leaves)) - 1
        self.pos_m = (1 << self.size) - 1
        self.none_m = self.mask & ~self.pos_m
        self.top_m = top.leaf_m
        self.groups = tuple(groups)
        need = [_static_need(leaf) for leaf in leaves]
        self.need = tuple(need)  # local bit -> what it needs when unknown (None: a fact, pending)
        self.fact = tuple(leaf.key if leaf.kind == "fact" else "" for leaf in leaves)
        self.fact_m = sum(1 << i for i, leaf in enumerate(leaves) if leaf.kind == "fact")
        # Unknown top-level leaves (no fact among them) -> what they need: the same for every
        # request, so filled as met (by any thread: a dict's get and set are atomic, and two
        # threads filling one entry write the same value).
        self.top_needs: dict[int, frozenset[str]] = {}
        # One top-level leaf per finding or attribute: more than two of them unknown is no near miss.
        seen: set[frozenset[str]] = set()
        self.top_distinct = 0
        for i in range(len(leaves)):
            n = need[i]
            if self.top_m >> i & 1 and n is not None and n not in seen:
                seen.add(n)
                self.top_distinct |= 1 << i
        # Positive finding and fact leaves: one that holds means the request already points here.
        self.holds_m = sum(1 << i for i in range(self.size) if leaves[i].kind in ("finding", "fact"))
        # The positive finding leaves in `positive_leaves` order: the other options a near miss
        # could be completed by.
        self.alt = tuple((1 << bit_of[p], leaf.key) for p, leaf in enumerate(occ) if leaf.kind == "finding")

    def needs(self, unknown: int, pending: Mapping[str, frozenset[str]]) -> frozenset[str]:
        """The findings the unknown leaves in `unknown` (local bits) need, together."""
        out = NOTHING
        need = self.need
        while unknown:
            low = unknown & -unknown
            i = low.bit_length() - 1
            n = need[i]
            out = out | (pending[self.fact[i]] if n is None else n)
            unknown ^= low
        return out

    def assess(self, t: int, f: int, pending: Mapping[str, frozenset[str]]) -> Assessed | None:
        """A near miss: (the one or two findings that would fire the rule, how many of its positive
        tests hold, its T and F bits), or None."""
        lt = (t >> self.off) & self.mask
        if lt & self.none_m:
            return None
        lf = (f >> self.off) & self.mask
        if lf & self.top_m:
            return None
        unknown = self.top_m & ~lt
        if unknown:
            if (unknown & self.top_distinct).bit_count() > MAX_UNKNOWN_PER_RULE:
                return None
            needed = self.top_needs.get(unknown)
            if needed is None:
                needed = self.needs(unknown, pending)
                if not unknown & self.fact_m:
                    self.top_needs[unknown] = needed  # the same for every request
                if len(needed) > MAX_UNKNOWN_PER_RULE:
                    return None
        else:
            needed = NOTHING
        for group in self.groups:
            if group.first:  # the common `any` group, inline
                if lt & group.leaf_m:
                    continue  # an option holds
                open_ = group.leaf_m & ~lf
                if not open_:
                    return None
                needed = needed | self.need[(open_ & -open_).bit_length() - 1]  # type: ignore[operator]
            else:
                r = group.read(self, lt, lf, pending)
                if r is None:
                    return None
                needed = needed | r
            if len(needed) > MAX_UNKNOWN_PER_RULE:
                return None
        if not needed or len(needed) > MAX_UNKNOWN_PER_RULE:
            return None
        return needed, (lt & self.pos_m).bit_count(), lt, lf

    def alternatives(self, lt: int, lf: int, needed: frozenset[str]) -> list[str]:
        """The unknown positive finding leaves not needed (the other options of its `any`
        groups), in leaf order, once per leaf."""
        return [code for bit, code in self.alt if not (lt | lf) & bit and code not in needed]


def _static_need(leaf: Leaf) -> frozenset[str] | None:
    if leaf.kind == "finding":
        return frozenset({leaf.key})
    if leaf.kind == "patient":
        return frozenset({PATIENT_KEYS[leaf.key]})
    return None  # a fact (pending: what its rule needs) or a score (never unknown)


class _Code:
    """The bits of every leaf on one finding code."""

    __slots__ = ("denied_f", "denied_t", "every", "present_f", "present_t", "valued")

    def __init__(self) -> None:
        self.present_t = self.present_f = self.denied_t = self.denied_f = self.every = 0
        # Leaves on its value or choice, read per request: (bit, choices, test on the value).
        self.valued: list[tuple[int, tuple[str, ...], Test | None]] = []


class LeafBits:
    """Every rule's leaves as bits, and what each kind of request content sets."""

    def __init__(self, rules: tuple[Rule, ...] | list[Rule]) -> None:
        self.rules: list[RuleBits] = []
        off = 0
        for rule in rules:
            rb = RuleBits(rule, off)
            self.rules.append(rb)
            off += rb.mask.bit_length()
        self.codes: dict[str, _Code] = {}
        self.patient: dict[str, list[tuple[int, Leaf, Test]]] = {}
        self.facts: dict[str, int] = {}
        self.scores: dict[str, list[tuple[int, Test]]] = {}
        self.facts_all = self.scores_all = 0
        # finding -> (rule index, local bit) of every positive leaf on it, in rule and leaf order:
        # where it is one of a near miss's other options.
        self.options: dict[str, list[tuple[int, int]]] = {}
        for pos, rb in enumerate(self.rules):
            for bit, code in rb.alt:
                self.options.setdefault(code, []).append((pos, bit))
        for rb in self.rules:
            for i, leaf in enumerate(rb.leaves):
                bit = 1 << (rb.off + i)
                if leaf.kind == "finding":
                    c = self.codes.setdefault(leaf.key, _Code())
                    c.every |= bit
                    if not leaf.present:
                        c.denied_t |= bit  # "absent": holds when denied, fails when present
                        c.present_f |= bit
                    else:
                        c.denied_f |= bit
                        if leaf.values or leaf.op is not None:
                            c.valued.append((bit, leaf.values, None if leaf.values else Test(leaf.op, leaf.value)))
                        else:
                            c.present_t |= bit
                elif leaf.kind == "patient":
                    self.patient.setdefault(leaf.key, []).append((bit, leaf, Test(leaf.op, leaf.value)))
                elif leaf.kind == "fact":
                    self.facts[leaf.key] = self.facts.get(leaf.key, 0) | bit
                    self.facts_all |= bit
                else:
                    self.scores.setdefault(leaf.key, []).append((bit, Test(leaf.op, leaf.value)))
                    self.scores_all |= bit
        # The same as tuples, for the request's loop: (present_t, present_f, denied_t, denied_f, valued).
        self.by_code = {code: (c.present_t, c.present_f, c.denied_t, c.denied_f, tuple(c.valued))
                        for code, c in self.codes.items()}

    def state(self, known: Mapping[str, Fact], asked: frozenset[str], patient: Fact, derived: set[str],
              scores: Mapping[str, Any]) -> tuple[int, int]:
        """(T, F) for a request: the leaves that hold and those that fail. A fact not derived
        fails until it is found pending (the caller clears its bits in F then)."""
        t = 0
        f = self.facts_all | self.scores_all
        codes = self.by_code
        for code, fact in known.items():
            c = codes.get(code)
            if c is None:
                continue
            present_t, present_f, denied_t, denied_f, valued = c
            if fact.present:
                t |= present_t
                f |= present_f
                if valued:
                    # leaf_matches on a present finding's value or choice, the value normalised once
                    value = fact.value
                    number = None
                    for bit, choices, test in valued:
                        if choices:
                            holds = fact.choice in choices
                        elif value is None:
                            holds = False
                        else:
                            if number is None:
                                number = normalise_number(value)
                            holds = test.holds(number, value)  # type: ignore[union-attr]
                        if holds:
                            t |= bit
                        else:
                            f |= bit
            else:
                t |= denied_t
                f |= denied_f
        for code in asked:
            if code not in known and code in self.codes:
                f |= self.codes[code].every
        if patient.value is not None:
            age = normalise_number(patient.value)
            for bit, _, test in self.patient.get("age", ()):
                if test.holds(age, patient.value):
                    t |= bit
                else:
                    f |= bit
        if patient.choice is not None:
            for bit, leaf, _ in self.patient.get("sex", ()):
                if leaf_matches(leaf, patient):
                    t |= bit
                else:
                    f |= bit
        for name in derived:
            bits = self.facts.get(name, 0)
            t |= bits
            f &= ~bits
        for sid, value in scores.items():
            if value is None:
                continue  # read as no score: its leaves fail
            tests = self.scores.get(sid)
            number = normalise_number(value) if tests else None
            for bit, test in tests or ():
                if test.holds(number, value):  # type: ignore[arg-type]
                    t |= bit
                    f &= ~bit
        return t, f
