# ask_next as it was before issue 18 part 2 (git 6815f90, service/ask_next.py), kept unchanged below
# these comments as the reference for tests/test_ask_next_plan.py: the compiled ranker must give
# exactly these questions, in this order, with every field equal. Test code only: never imported
# by the service.
# ruff: noqa
"""What to ask next: the unknown findings that would most change the answer.

Every rule that did not fire is read three-valued against what is known: true, false, or
unknown, where unknown means a finding nobody reported. A rule blocked only by one or two
unknown findings is a near miss: answering them could fire it. A fact not yet derived, whose
deriving rule is itself a near miss, counts as pending on that rule's unknown findings, so
chains one step deep are followed (the fourth restless-legs criterion is one question away).

Each near miss credits its unknown findings with what firing it would change, in two parts:
- urgency: raising the tier above the current one (10 a step) and a red flag (5);
- differential: support for conditions (must-not-miss counts double), tests, and what the
  facts it derives would change in turn. A score item is worth the threshold rule its points
  would newly cross (one more Wells point turns "DVT unlikely" into "likely").
Credit is scaled by how much of the rule the presentation already matches
((1 + satisfied tests) / (1 + all tests)), so that a half-met rule beats an unrelated one of
the same weight. A finding is worth its strongest consequence plus a tenth of the others
(summing would let ten correlated Wells items drown a decisive question).

The answer keeps the four best questions for urgency (red-flag screening must never drop
out) and the three best for the differential (so that screening never crowds out the
question that tells causes apart), ranked together by total credit.

Presentations (rules/presentations.yaml, service/presentations.py): when the request holds a
complaint the interview's opening offers (back pain, one leg swollen, breathless, ...), its
red-flag screen comes first (questions that could make it an emergency before the others, the
file's order otherwise; several presentations interleaved), then the questions whose "yes"
would stop every rule holding the current tier (their `none` lists: "could lower the urgency"),
then the presentation's differential; each only while ask_next credits it (a rule it could
complete is left; the other options of an `any` group count). Then, as before, urgency (rules
a given finding already supports first, then the screen for causes nothing points to yet) and
the differential. With `ask_next_limit` that is the order; by default the four urgency slots take
the screens' questions, then the rest by credit as before, and the three differential slots the
lowering questions, the presentations' differential, then the rest; listed presentation first.

A patient attribute that was not sent (age, sex) is unknown in the same way, so the rules it
blocks count as near misses on it. When the rule set tests it, it is asked first, outside the
six: rules on age can never fire without it, and a nurse can answer it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.reasoning import aliases
from service.reasoning.engine import EngineResult, Fact, compare, leaf_matches
from service.knowledge.model import SEXES, TIER_RANK, Group, Knowledge, Leaf, Rule
from service.knowledge.presentations import Presentation, load_presentations

TIER_NAMES = {rank: name for name, rank in TIER_RANK.items()}

if TYPE_CHECKING:
    from service.reasoning.encounter import Encounter

# Four urgency slots since rule set 0.3: a sciatica presentation has the cauda equina screen
# (bladder, saddle, both legs) and NICE NG59's cancer, infection and fracture screen to ask,
# and three slots dropped saddle sensation. Three differential slots, as before.
URGENCY_SLOTS = 4
DIFFERENTIAL_SLOTS = 3
# Unknown patient attributes in the three-valued reading, kept apart from finding codes.
PATIENT_KEYS = {"age": "patient:age", "sex": "patient:sex"}
PATIENT_QUESTIONS = {
    "age": ("Age", "How old is the patient, in years?", "number", "a"),
    "sex": ("Sex", "What is the patient's sex?", "choice", None),
}
MAX_UNKNOWN_PER_RULE = 2
# The `why` of a question whose "yes" would stop the rule that holds the tier (see _lowering).
LOWERS_LEAD = "Could lower the urgency (the rule that sets it does not apply if present)"
BREADTH = 0.1
_TRUE: frozenset[str] = frozenset()  # a satisfied condition: no unknowns needed

Impact = tuple[float, float]  # (urgency, differential)


class _Plan:
    """One rule, read once: what ask_next needs of it on every request."""

    __slots__ = ("all_groups", "all_leaves", "gates", "leaves", "rule", "score")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.leaves = rule.when.positive_leaves()
        self.all_leaves = [i for i in rule.when.all if isinstance(i, Leaf)]
        self.all_groups = [i for i in rule.when.all if isinstance(i, Group)]
        # Top-level `all` leaves on input findings: one known to fail rules the rule out at once.
        self.gates = [i for i in self.all_leaves if i.kind == "finding"]
        self.score = rule.then.score


class QuestionRanker:
    """Built once per rule set: what firing each rule would change is precomputed for every
    current tier, so that a request only reads the rules' conditions."""

    def __init__(self, k: Knowledge) -> None:
        self.k = k
        self.impact: dict[str, dict[str, Impact]] = {
            rule.id: {tier: _impact(k, rule, tier) for tier in TIER_RANK} for rule in k.rules
        }
        # The highest tier firing each rule could lead to (its own tier, its red flag's, and what
        # the facts it derives lead to): how much a question could still change the tier.
        self.reach: dict[str, int] = {rule.id: _reach(k, rule) for rule in k.rules}
        self.plans = [_Plan(rule) for rule in k.rules]
        self.umbrellas = aliases.umbrellas(k)  # deprecated bundled findings: asked as their atoms
        # The opening's complaints and what to ask first for each (rules/presentations.yaml).
        self.presentations: tuple[Presentation, ...] = load_presentations(k)
        self.derivers = [p for p in self.plans if p.rule.then.derive]
        # The tier rank each rule sets by itself (its tier or its red flag's), for what holds a tier.
        self.rule_tier: dict[str, int] = {
            rule.id: max([TIER_RANK[rule.then.tier]] if rule.then.tier else []
                         + ([TIER_RANK[k.red_flags[rule.then.red_flag].tier]] if rule.then.red_flag else []), default=0)
            for rule in k.rules
        }
        # Per current tier: only the rules that could add credit, with their impact at hand.
        self.candidates: dict[str, list[tuple[_Plan, float, float]]] = {
            tier: [(p, *self.impact[p.rule.id][tier]) for p in self.plans
                   if sum(self.impact[p.rule.id][tier]) > 0 or p.score]
            for tier in TIER_RANK
        }
        # patient attribute -> the rules that test it (age rules cannot fire without an age)
        self.patient_rules: dict[str, list[str]] = {}
        for rule in k.rules:
            for leaf in [*rule.when.positive_leaves(), *rule.when.none]:
                if leaf.kind == "patient" and rule.id not in self.patient_rules.get(leaf.key, []):
                    self.patient_rules.setdefault(leaf.key, []).append(rule.id)
        # score id -> the rules that test it (thresholds), for score items' worth
        self.thresholds: dict[str, list[tuple[Rule, list[Leaf]]]] = {}
        for rule in k.rules:
            tests = [leaf for leaf in rule.when.positive_leaves() if leaf.kind == "score"]
            for sid in {leaf.key for leaf in tests}:
                self.thresholds.setdefault(sid, []).append((rule, [t for t in tests if t.key == sid]))

    def rank(self, enc: Encounter, facts: list[Fact], result: EngineResult, tier: str) -> list[dict[str, Any]]:
        fired = {f.rule_id for f in result.firings}
        derived = {name for f in result.firings for name in f.derived}
        known = {f.key: f for f in facts if f.kind == "finding"}
        patient = Fact("patient", "patient", value=enc.age, choice=enc.sex)
        pending: dict[str, frozenset[str]] = {}
        ctx = (known, patient, derived, result.scores, pending, enc.unknown)
        for plan in self.derivers:
            if plan.rule.id not in fired:
                needed = self._near_miss(plan, known, ctx)
                for name in plan.rule.then.derive if needed else ():
                    if name not in derived and (name not in pending or len(needed) < len(pending[name])):
                        pending[name] = needed  # type: ignore[assignment]

        gains: dict[str, tuple[list[float], list[float]]] = {}
        reasons: dict[str, list[str]] = {}
        reach: dict[str, int] = {}  # code -> the highest tier rank a rule it could complete leads to
        related: set[str] = set()  # could complete an urgency rule that a finding given already supports
        alt_gains: dict[str, tuple[list[float], list[float]]] = {}
        alt_reasons: dict[str, list[str]] = {}
        alt_reach: dict[str, int] = {}
        for plan, urgency, differential in self.candidates[tier]:
            rule = plan.rule
            if rule.id in fired:
                continue
            assessed = _assess(plan, ctx)  # first: most rules are no near miss, and leave at once
            if assessed is None:
                continue
            top = self.reach[rule.id]
            if plan.score:
                cu, cd, crossed = self._crossing(plan.score, result.scores, fired, tier)
                urgency, differential = urgency + cu, differential + cd
                top = max(top, crossed)
            if urgency + differential <= 0:
                continue
            needed, satisfied = assessed
            scale = (1 + satisfied) / (1 + len(plan.leaves)) / len(needed)
            if urgency > 0 and any(_holds(leaf, known, derived) for leaf in plan.leaves):
                related.update(needed)
            # The other options of its `any` groups (only the first is in `needed`): a
            # presentation's screen may ask them (new urinary or new faecal incontinence).
            for leaf in plan.leaves:
                if (leaf.kind == "finding" and leaf.key not in needed and leaf.key not in known
                        and leaf.key not in enc.unknown):
                    au, ad = alt_gains.setdefault(leaf.key, ([], []))
                    au.append(urgency * scale)
                    ad.append(differential * scale)
                    alt_reasons.setdefault(leaf.key, []).append(rule.id)
                    alt_reach[leaf.key] = max(alt_reach.get(leaf.key, 0), top)
            for code in needed:
                u, d = gains.setdefault(code, ([], []))
                u.append(urgency * scale)
                d.append(differential * scale)
                reasons.setdefault(code, []).append(rule.id)
                reach[code] = max(reach.get(code, 0), top)

        credit = {code: (_worth(u), _worth(d)) for code, (u, d) in gains.items()}
        aliases.ask_atoms(self.umbrellas, credit, reasons, reach, {*known, *enc.unknown})  # never an old code
        findings = [c for c in credit if c in self.k.findings]
        limit = enc.ask_next_limit
        # The presentations the request holds put their lists first: their red-flag screen, then
        # their differential, each question only while a rule it could complete is left.
        screen, between = self._priors(known, enc.unknown)
        for code in screen + between:
            if code not in credit and code in alt_gains:
                u, d = alt_gains[code]
                credit[code] = (_worth(u), _worth(d))
                reasons[code], reach[code] = alt_reasons[code], alt_reach[code]
        # Within the screens, a question that could make it an emergency before one that could
        # make it urgent (stable: the file's order otherwise).
        prior_u = sorted((c for c in screen if c in credit and credit[c][0] > 0), key=lambda c: -reach.get(c, 0))
        prior_d = [c for c in screen + between if c in credit and sum(credit[c]) > 0 and c not in prior_u]
        taken = set(prior_u) | set(prior_d)
        # Then the urgency questions of rules the answers already half-meet, before a screen for
        # causes nothing points to yet; then the questions that could lower the tier.
        urgent = sorted((c for c in findings if credit[c][0] > 0 and c not in taken), key=lambda c: (-credit[c][0], c))
        related_u = [c for c in urgent if c in related]
        other_u = [c for c in urgent if c not in related]
        blockers, holders = self._lowering(result, known, enc.unknown, tier)
        lowering = [c for c in blockers if c not in prior_u and c not in urgent]
        prior_d = [c for c in prior_d if c not in lowering]
        other_d = sorted((c for c in findings if credit[c][1] > 0 and c not in taken and c not in urgent
                          and c not in lowering), key=lambda c: (-credit[c][1], c))
        if limit is None:
            # Beyond the presentations' screens, the four slots go by credit as before issue 16,
            # so that a request holding no presentation gets the same urgency questions.
            by_urgency = (prior_u + urgent)[:URGENCY_SLOTS]
            by_differential = [c for c in lowering + prior_d + other_d if c not in by_urgency][:DIFFERENTIAL_SLOTS]
            group = {c: i for i, c in enumerate(prior_u + lowering + prior_d)}
            chosen = sorted(by_urgency + by_differential,
                            key=lambda c: (group.get(c, len(group)), -sum(credit.get(c, (0.0, 0.0))), c))
        else:
            # An interview asks the urgency questions first: the tier must settle before the
            # differential. The presentation's own questions come before those of the others.
            chosen = (prior_u + lowering + prior_d + related_u + other_u + other_d)[:limit]
            by_urgency = prior_u + related_u + other_u
        for code in lowering:
            reasons.setdefault(code, holders)
            credit.setdefault(code, (0.0, 0.0))
        current = TIER_RANK[tier]
        first = [self._patient_question(attr, credit.get(key, (0.0, 0.0)), reasons.get(key, []),
                                        _tier_change(reach.get(key, 0), current))
                 for attr, key in PATIENT_KEYS.items() if attr in self.missing_patient(enc)]
        return first + [self._question(code, sum(credit[code]), reasons[code],
                                       "urgency" if code in by_urgency else "differential",
                                       _tier_change(reach.get(code, 0), current), code in lowering)
                        for code in chosen]

    def _lowering(self, result: EngineResult, known: dict[str, Fact], asked: frozenset[str],
                  tier: str) -> tuple[list[str], list[str]]:
        """Unanswered findings whose presence would stop every rule that holds the current tier
        (its `none` list): the answers could still lower it, so the interview asks them."""
        holders = [self.k.rules_by_id[f.rule_id] for f in result.firings
                   if self.rule_tier.get(f.rule_id) == TIER_RANK[tier]]
        if not holders or TIER_RANK[tier] == 0:
            return [], []
        blockers = [{leaf.key for leaf in r.when.none if leaf.kind == "finding"
                     and leaf.key not in known and leaf.key not in asked} for r in holders]
        common = set.intersection(*blockers)
        # An old bundled code (vocabulary 0.3.1) is asked as its first unanswered atom, never itself.
        out = set()
        for c in common:
            finding = self.k.findings.get(c)
            if finding is None:
                continue
            if finding.deprecated:
                atoms = [a for a in finding.replaced_by if a not in known and a not in asked]
                out.update(atoms[:1])
            else:
                out.add(c)
        return sorted(out), [r.id for r in holders]

    def _priors(self, known: dict[str, Fact], asked: frozenset[str]) -> tuple[list[str], list[str]]:
        """The unanswered questions of the presentations held, red-flag screens and differentials
        apart; several presentations are interleaved (each one's first question first)."""
        held = [p for p in self.presentations if p.finding in known and known[p.finding].present]
        out: list[list[str]] = []
        for lists in ([p.red_flags for p in held], [p.differential for p in held]):
            merged: list[str] = []
            for i in range(max((len(x) for x in lists), default=0)):
                for x in lists:
                    if i < len(x) and x[i] not in known and x[i] not in asked and x[i] not in merged:
                        merged.append(x[i])
            out.append(merged)
        return out[0], [c for c in out[1] if c not in out[0]]

    def missing_patient(self, enc: Encounter) -> list[str]:
        """The patient attributes the rule set tests that this request did not give."""
        given = {"age": enc.age, "sex": enc.sex}
        return [attr for attr in PATIENT_KEYS if attr in self.patient_rules and given[attr] is None]

    def _patient_question(self, attr: str, credit: Impact, near_misses: list[str],
                          change: dict[str, Any]) -> dict[str, Any]:
        display, question, kind, unit = PATIENT_QUESTIONS[attr]
        rules = near_misses or self.patient_rules[attr]
        titles = "; ".join(self.k.rules_by_id[r].title for r in rules[:3])
        return {
            "patient": attr,
            "display": display,
            "question": question,
            "type": kind,
            **({"unit": unit} if unit else {}),
            **({"choices": list(SEXES)} if attr == "sex" else {}),
            "aim": "urgency" if credit[0] > 0 else "differential",
            "impact": round(sum(credit), 2),
            **change,
            "why": f"Not given, so {len(self.patient_rules[attr])} rule(s) on it could not fire: {titles}",
            "rules": rules,
        }

    def _question(self, code: str, impact: float, rules: list[str], aim: str,
                  change: dict[str, Any], lowers: bool = False) -> dict[str, Any]:
        f = self.k.findings[code]
        titles = "; ".join(self.k.rules_by_id[r].title for r in rules[:3])
        lead = "Could raise the urgency" if aim == "urgency" else "Would help tell the causes apart"
        if lowers and aim != "urgency":
            lead = LOWERS_LEAD
        return {
            "finding": code,
            "display": f.display,
            "question": f.question,
            "type": f.type,
            **({"unit": f.unit} if f.unit else {}),
            **({"choices": list(f.choices)} if f.choices else {}),
            "aim": aim,
            "impact": round(impact, 2),
            **change,
            "why": f"{lead}: {titles}",
            "rules": rules,
        }

    @staticmethod
    def _near_miss(plan: _Plan, known: dict[str, Fact], ctx: Any) -> frozenset[str] | None:
        """The unknown findings (one or two) that would fire this rule, or None."""
        assessed = _assess(plan, ctx)
        return assessed[0] if assessed else None

    def _crossing(self, score: tuple[str, float], scores: Any, fired: set[str], tier: str) -> tuple[float, float, int]:
        """Worth of a score item: the impact of the unfired threshold rules its points would satisfy,
        and the highest tier those rules lead to."""
        sid, points = score
        value = scores.get(sid, 0) + points
        best: Impact = (0.0, 0.0)
        top = 0
        for threshold, tests in self.thresholds.get(sid, []):
            if threshold.id not in fired and all(compare(value, leaf.op, leaf.value) for leaf in tests):
                candidate = self.impact[threshold.id][tier]
                top = max(top, self.reach[threshold.id])
                if sum(candidate) > sum(best):
                    best = candidate
        return best[0], best[1], top


def _tier_change(reach: int, current: int) -> dict[str, Any]:
    steps = max(0, reach - current)
    return {"raises_tier_to": TIER_NAMES[reach] if steps else None, "tier_steps": steps}


def _reach(k: Knowledge, rule: Rule, seen: frozenset[str] = frozenset()) -> int:
    """The highest tier rank firing `rule` could lead to, following the facts it derives."""
    then = rule.then
    ranks = [TIER_RANK[then.tier]] if then.tier else [0]
    if then.red_flag:
        ranks.append(TIER_RANK[k.red_flags[then.red_flag].tier])
    for name in then.derive:
        for r in k.rules:
            if r.id not in seen and any(leaf.kind == "fact" and leaf.key == name for leaf in r.when.positive_leaves()):
                ranks.append(_reach(k, r, seen | {rule.id}))
    return max(ranks)


def _worth(gains: list[float]) -> float:
    return max(gains) + BREADTH * (sum(gains) - max(gains)) if gains else 0.0


def _impact(k: Knowledge, rule: Rule, tier: str, seen: frozenset[str] = frozenset()) -> Impact:
    """What firing `rule` would change, as (urgency, differential); a derived fact counts what
    the rules matching it would change in turn (chains are followed, cycles cut)."""
    then = rule.then
    current = TIER_RANK[tier]
    raised = [TIER_RANK[then.tier]] if then.tier else []
    if then.red_flag:
        raised.append(TIER_RANK[k.red_flags[then.red_flag].tier])
    urgency = 10.0 * max([r - current for r in raised if r > current], default=0)
    urgency += 5.0 if then.red_flag else 0.0
    differential = sum(w.weight * (2.0 if k.conditions[w.condition].must_not_miss else 1.0) for w in then.support)
    differential += 0.5 * len(then.tests)
    for name in then.derive:
        consumers = [
            r for r in k.rules
            if r.id not in seen and any(leaf.kind == "fact" and leaf.key == name for leaf in r.when.positive_leaves())
        ]
        impacts = [_impact(k, r, tier, seen | {rule.id}) for r in consumers]
        if impacts:
            u, d = max(impacts, key=sum)
            urgency, differential = urgency + u, differential + d
    return urgency, differential


def _holds(leaf: Leaf, known: dict[str, Fact], derived: set[str]) -> bool:
    """A finding given (and matching) or a fact derived: the presentation already points here."""
    if leaf.kind == "finding":
        fact = known.get(leaf.key)
        return fact is not None and leaf_matches(leaf, fact)
    return leaf.kind == "fact" and leaf.key in derived


def _leaf(leaf: Leaf, ctx: Any) -> frozenset[str] | None:
    """frozenset() = true; frozenset({code, ...}) = unknown, needs those findings; None = false."""
    known, patient, derived, scores, pending, asked_unknown = ctx
    if leaf.kind == "finding":
        fact = known.get(leaf.key)
        if fact is None:
            if leaf.key in asked_unknown:
                # Asked, and nobody knows: no question can complete a rule through it, so the
                # interview moves on (read as false for ranking only; the rules never see it).
                return None
            return frozenset({leaf.key})
        return _TRUE if leaf_matches(leaf, fact) else None
    if leaf.kind == "patient":
        if (patient.value if leaf.key == "age" else patient.choice) is None:
            return frozenset({PATIENT_KEYS[leaf.key]})  # not given: unknown, like an unreported finding
        return _TRUE if leaf_matches(leaf, patient) else None
    if leaf.kind == "fact":
        return _TRUE if leaf.key in derived else pending.get(leaf.key)
    value = scores.get(leaf.key)
    if value is None:
        return None
    return _TRUE if compare(value, leaf.op, leaf.value) else None


def _assess(plan: _Plan, ctx: Any) -> tuple[frozenset[str], int] | None:
    """A near miss: (the one or two unknown findings that would fire the rule, how many of its
    tests already hold), or None. One pass, leaving at the first test known to fail, or as soon
    as more than two findings would be needed: most rules leave at their first test."""
    known = ctx[0]
    for g in plan.gates:  # cheapest: a known input finding that fails
        fact = known.get(g.key)
        if fact is not None and not leaf_matches(g, fact):
            return None
    rule = plan.rule
    for leaf in rule.when.none:
        if _leaf(leaf, ctx) is _TRUE:
            return None
    needed: set[str] = set()
    satisfied = 0
    for leaf in plan.all_leaves:
        r = _leaf(leaf, ctx)
        if r is None:
            return None
        if r:
            needed |= r
            if len(needed) > MAX_UNKNOWN_PER_RULE:
                return None
        else:
            satisfied += 1
    nested = list(plan.all_groups)
    if rule.when.any:
        nested.append(Group("any", rule.when.any))
    for group in nested:
        r = _group(group.mode, group.items, ctx)
        if r is None:
            return None
        needed |= r
        satisfied += sum(1 for leaf in group.leaves() if _leaf(leaf, ctx) is _TRUE)
    if not needed or len(needed) > MAX_UNKNOWN_PER_RULE:
        return None
    return frozenset(needed), satisfied


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
