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

Presentations (rules/presentations.yaml, service/knowledge/presentations.py): when the request holds a
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

Compiled at load (issue 18 part 2): every rule's tests are bits (service/reasoning/
ask_next_bits.py: a request sets the tests that hold and those that fail in two integers, and a
rule is read from its block of them), and every rule is read once per current tier as if the
request held nothing it reads (service/reasoning/ask_next_plan.py), the facts pending when
nothing is known included. A request reads only the rules its findings (answered or unknown),
derived facts, facts pending otherwise, given attributes and scores touch (one touched by a
single finding alone, or by the age alone, from tables read at load as well), recomputes the credit of the findings
whose contributions changed, summed in rule order as before, and picks the best few questions
from the static tables' own ranking and the changed findings instead of sorting every one.
The questions are exactly those of the ranker before (tests/test_ask_next_plan.py).

Issue 18, later: a rule touched by one finding alone, or by the age alone, is taken from that
finding's (or the age's) effects read at load: only the rules whose reading changes something
(most padded denied findings touch rules that read as in the static tables). The other touched
rules, the derivers, and what the derivers find pending are read per request as before, but
what each reading gave is kept as met, keyed by everything it depends on (the rule's T and F
bits, what its facts are pending on, for a score item the score and its thresholds fired), up
to a bound (READ_CACHE, PENDING_CACHE): a reading is a pure function of those, so a kept one
is the same value. The questions' `why` texts are kept the same way.

A patient attribute that was not sent (age, sex) is unknown in the same way, so the rules it
blocks count as near misses on it. When the rule set tests it, it is asked first, outside the
six: rules on age can never fire without it, and a nurse can answer it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.knowledge.model import SEXES, TIER_RANK, Knowledge, Rule
from service.knowledge.presentations import Presentation, load_presentations
from service.reasoning import aliases
from service.reasoning.ask_next_bits import PATIENT_KEYS, LeafBits, RuleBits, Test
from service.reasoning.ask_next_plan import BREADTH, RULE_ID, TOP, Contribution, Read, StaticPlan, combine
from service.reasoning.engine import EngineResult, Fact, normalise_number

TIER_NAMES = {rank: name for name, rank in TIER_RANK.items()}

if TYPE_CHECKING:
    from service.reasoning.encounter import Encounter

# Four urgency slots since rule set 0.3: a sciatica presentation has the cauda equina screen
# (bladder, saddle, both legs) and NICE NG59's cancer, infection and fracture screen to ask,
# and three slots dropped saddle sensation. Three differential slots, as before.
URGENCY_SLOTS = 4
DIFFERENTIAL_SLOTS = 3
# Bounds of what rank() keeps as met (QuestionRanker.read_cache and the others filled in rank):
# an entry is about 0.6 kB, and 12,000 varied encounters (bench/ask_next_ab.py) fill about
# 21,000 entries in all, 12 MB; at the bounds, about 30 MB a process. Past a bound, what is not
# kept is read per request as before.
READ_CACHE = 8_000  # per tier, and for the derivers' readings and the questions' `why`
PENDING_CACHE = 4_000  # what the derivers find pending (each entry holds a dict)
PATIENT_QUESTIONS = {
    "age": ("Age", "How old is the patient, in years?", "number", "a"),
    "sex": ("Sex", "What is the patient's sex?", "choice", None),
}
# The `why` of a question whose "yes" would stop the rule that holds the tier (see _lowering).
LOWERS_LEAD = "Could lower the urgency (the rule that sets it does not apply if present)"

Impact = tuple[float, float]  # (urgency, differential)
# A candidate rule as a request reads it: its bits, id, urgency, differential, reach, score item.
_Row = tuple[RuleBits, str, float, float, int, "tuple[str, float] | None"]
# What reading a rule gives: its contribution, the findings it needs, its T and F bits, and
# whether a finding given or a fact derived already supports it (for urgency).
_Reading = tuple[Contribution, frozenset[str], int, int, bool]
# A rule touched by one finding alone, read at load: its reading, its entry for `near`, and
# whether it reads as in the static tables.
_MISSING: Any = object()  # not in a cache
_Single = tuple["_Reading | None", "tuple[Contribution, frozenset[str], int, int] | None", bool]
_Effect = tuple[int, "tuple[Contribution, frozenset[str], int, int] | None", frozenset[str], frozenset[str],
                "Contribution | None"]
NOTHING: frozenset[str] = frozenset()


class _Plan:
    """One rule, read once: what ask_next needs of it on every request."""

    __slots__ = ("bits", "derive", "facts_read", "pos", "rule", "score")

    def __init__(self, rule: Rule, pos: int, bits: RuleBits) -> None:
        self.rule = rule
        self.pos = pos  # index in the rule set: credits are summed in this order
        self.bits = bits  # its leaves as bits (service/reasoning/ask_next_bits.py)
        self.score = rule.then.score
        self.derive = rule.then.derive
        # The derived facts it reads: a deriver reading a pending fact is read again.
        self.facts_read = frozenset(leaf.key for leaf in [*rule.when.positive_leaves(), *rule.when.none]
                                    if leaf.kind == "fact")


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
        self.bits = LeafBits(k.rules)
        self.plans = [_Plan(rule, i, self.bits.rules[i]) for i, rule in enumerate(k.rules)]
        self.pos_of = {rule.id: i for i, rule in enumerate(k.rules)}
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
        self.thresholds: dict[str, list[tuple[Rule, list[Test]]]] = {}
        for rule in k.rules:
            tests = [leaf for leaf in rule.when.positive_leaves() if leaf.kind == "score"]
            for sid in {leaf.key for leaf in tests}:
                self.thresholds.setdefault(sid, []).append(
                    (rule, [Test(t.op, t.value) for t in tests if t.key == sid]))
        # Issue 18 part 2: every rule read once at load as if the request touched nothing of it
        # (no finding it tests sent, no fact it reads derived or pending otherwise, no patient
        # attribute or score it reads given), per tier (service/reasoning/ask_next_plan.py); a
        # request reads only the rules it touches and recomputes the findings whose credit they
        # change. Nothing derived and no score: those leaves fail; the facts the derivers find
        # pending when nothing is known (their one or two findings unknown) are pending in every
        # request that does not touch those derivers, so the static reading holds them.
        f0 = self.bits.facts_all | self.bits.scores_all
        self.untouched: dict[int, frozenset[str] | None] = {}  # deriver -> what it needs, as read so
        self.seen: dict[int, tuple[tuple[str, frozenset[str] | None], ...]] = {}  # ... and the pending it saw
        pending0, f0 = self._pending(0, f0, set(), set(), None)
        reads: dict[str, list[tuple[int, Read | None]]] = {}
        for tier, cands in self.candidates.items():
            reads[tier] = []
            for p, u, d in cands:
                row = (p.bits, p.rule.id, u, d, self.reach[p.rule.id], p.score)
                r = self._read_row(p.pos, row, 0, f0, pending0, {}, set(), tier, {})
                reads[tier].append((p.pos, None if r is None else (
                    r[0], r[1], p.bits.alternatives(r[2], r[3], r[1]), r[4])))
        self.static = StaticPlan(k.rules, pending0, reads)
        # Per tier: candidate rule index -> what reading it needs (its bits, id, urgency,
        # differential, reach and score item), for touched rules.
        self.rows: dict[str, dict[int, _Row]] = {
            tier: {p.pos: (p.bits, p.rule.id, u, d, self.reach[p.rule.id], p.score) for p, u, d in cands}
            for tier, cands in self.candidates.items()}
        self.candidate_pos = {tier: frozenset(rows) for tier, rows in self.rows.items()}
        self.umbrella_codes = frozenset(code for code, _ in self.umbrellas)
        # Each umbrella with (code, *atoms), the findings whose reasons it settles.
        self.umbrella_pairs = tuple((pair, (pair[0], *pair[1])) for pair in self.umbrellas)
        # A patient attribute, score or derived fact -> the rules reading it.
        touching = self.static.touching
        self.touch_patient = {key[8:]: v for key, v in touching.items() if key.startswith("patient:")}
        self.touch_score = {key[6:]: v for key, v in touching.items() if key.startswith("score:")}
        self.touch_fact = {key[5:]: v for key, v in touching.items() if key.startswith("fact:")}

        self.titles = {rule.id: rule.title for rule in k.rules}  # for questions' `why`
        self.whys: dict[tuple[str, ...], str] = {}  # (lead, up to three rules) -> `why`
        # Each finding's question as far as it is the same in every answer (a new dict and
        # list per answer: a client may change its copy).
        self.heads: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
            code: ({"finding": code, "display": f.display, "question": f.question, "type": f.type,
                    **({"unit": f.unit} if f.unit else {})}, tuple(f.choices or ()))
            for code, f in k.findings.items()}
        # Per tier: the static tables' findings with urgency credit by it (highest first, then
        # by code), and the others with differential credit by that: the request's ranking
        # takes the first of them it did not change.
        self.ranked: dict[str, tuple[list[str], list[str]]] = {}
        for tier, table in self.static.tiers.items():
            cr = table.credit
            codes = [c for c in cr if c in k.findings]
            self.ranked[tier] = (sorted((c for c in codes if cr[c][0] > 0), key=lambda c: (-cr[c][0], c)),
                                 sorted((c for c in codes if not cr[c][0] > 0 and cr[c][1] > 0),
                                        key=lambda c: (-cr[c][1], c)))
        # An old bundled code the request leaves as in the static tables (its credit and its
        # first atom's not recomputed, that atom not answered) moves onto the atom as it does
        # when nothing is known: per tier, code -> (atom, its credit, reasons and reach) after
        # aliases.ask_atoms, read at load. Only when no two umbrellas share an atom and no atom
        # is itself an umbrella (then each moves alone, whatever the others do).
        every_atom = [a for _, atoms in self.umbrellas for a in atoms]
        disjoint = len(every_atom) == len(set(every_atom)) and not set(every_atom) & self.umbrella_codes
        self.moved: dict[str, dict[str, tuple[str, Impact, list[str], int]]] = {t: {} for t in TIER_RANK}
        for tier, table in self.static.tiers.items():
            for pair in self.umbrellas if disjoint else ():
                code, atoms = pair
                if code in table.credit and atoms:
                    cr, rs, rh = dict(table.credit), dict(table.reasons), dict(table.reach)
                    aliases.ask_atoms((pair,), cr, rs, rh, set())
                    self.moved[tier][code] = (atoms[0], cr[atoms[0]], rs[atoms[0]], rh[atoms[0]])
        # A rule touched by one finding alone (sent present or denied, or answered "unknown"),
        # and by nothing else, reads the same in every such request: read at load, per tier,
        # keyed (rule index, finding, present: True / False / None for "unknown"). A present
        # finding with leaves on its value or choice is read per request.
        # Each with its entry for `near` and whether it reads as in the static tables (then
        # a request only notes it as a near miss: no credit changes).
        self.single: dict[str, dict[tuple[int, str, bool | None], _Single]] = {t: {} for t in TIER_RANK}
        free = ~(self.bits.facts_all | self.bits.scores_all)
        nobody = Fact("patient", "patient")
        for code, (_, _, _, _, valued) in self.bits.by_code.items():
            for present in (False, None) if valued else (True, False, None):
                sent = {} if present is None else {code: Fact("finding", code, present)}
                t1, f1 = self.bits.state(sent, frozenset() if sent else frozenset({code}), nobody, set(), {})
                f1 = f0 | (f1 & free)  # the static reading's facts and scores
                for i in touching.get(code, ()):
                    for tier, rows in self.rows.items():
                        if i in rows:
                            read = self._read_row(i, rows[i], t1, f1, pending0, {}, set(), tier, {})
                            same = _as_static(read, self.static.tiers[tier].read_of.get(i))
                            self.single[tier][i, code, present] = (read, None if read is None else read[:4], same)

        # The same per finding: (code, present) -> what each rule it alone touches changes, for
        # the rules where that is anything (most read as no near miss, as in the static tables):
        # (rule index, its entry for `near` or None, the findings it adds to `related`, the
        # findings whose credit it changes (none: it reads as in the static tables), and its
        # contribution and the findings it credits when it is a near miss unlike the static one).
        self.effects: dict[str, dict[tuple[str, bool | None], list[_Effect]]] = {t: {} for t in TIER_RANK}
        for tier, entries in self.single.items():
            read_of = self.static.tiers[tier].read_of
            for (i, code, present), hit in sorted(entries.items(), key=lambda e: e[0][0]):
                effect = _effect(i, hit, read_of)
                if effect is not None:
                    self.effects[tier].setdefault((code, present), []).append(effect)
        self.valued_codes = frozenset(code for code, c in self.bits.by_code.items() if c[4])

        # A rule touched by the age alone reads by which of its age tests hold (every one holds
        # or fails when the age is given): each combination read at load, per tier, keyed (rule
        # index, its age leaves' bits that hold, shifted to the rule's block).
        self.age_bits: dict[int, tuple[int, int]] = {}
        self.by_age: dict[str, dict[tuple[int, int], _Single]] = {t: {} for t in TIER_RANK}
        for i in self.touch_patient.get("age", ()):
            rb = self.bits.rules[i]
            local = [b for b, leaf in enumerate(rb.leaves) if leaf.kind == "patient" and leaf.key == "age"]
            mask = sum(1 << b for b in local)
            self.age_bits[i] = (rb.off, mask)
            for n in range(1 << len(local)):
                held = sum(1 << b for j, b in enumerate(local) if n >> j & 1)
                t1, f1 = held << rb.off, f0 | ((mask & ~held) << rb.off)
                for tier, rows in self.rows.items():
                    if i in rows:
                        read = self._read_row(i, rows[i], t1, f1, pending0, {}, set(), tier, {})
                        same = _as_static(read, self.static.tiers[tier].read_of.get(i))
                        self.by_age[tier][i, held] = (read, None if read is None else read[:4], same)
        # Every age leaf's bit: T's age bits say which of the rule set's age tests hold, and so
        # what every rule touched by the age alone changes (self.age_effects, filled as met).
        self.age_mask = sum(mask << off for off, mask in self.age_bits.values())
        self.age_effects: dict[str, dict[int, tuple[list[_Effect], frozenset[int]]]] = {t: {} for t in TIER_RANK}

        # Any other touched rule reads only its own leaves' T and F bits, what its fact leaves
        # are pending on, and for a score item, the score and which of its threshold rules fired
        # (and the tier): what reading it gave is kept, per tier, keyed by those, so that the
        # next request holding the same of it reads it from here (a rule touched by several
        # padded findings, by the sex, by a derived fact). Filled as met, up to READ_CACHE
        # entries per tier (by any thread: a dict's get and set are atomic, and two threads
        # filling one entry write the same value).
        self.cache_of: dict[int, tuple[int, int, tuple[str, ...], str | None, tuple[str, ...]]] = {}
        for p in self.plans:
            sid = p.score[0] if p.score else None
            self.cache_of[p.pos] = (p.bits.off, p.bits.mask, tuple(sorted({n for n in p.bits.fact if n})), sid,
                                    tuple(r.id for r, _ in self.thresholds.get(sid, ())) if sid else ())
        self.read_cache: dict[str, dict[tuple[Any, ...], _Single]] = {t: {} for t in TIER_RANK}
        # The same for the derivers' readings in _pending (what they need, or None).
        self.deriver_cache: dict[tuple[Any, ...], frozenset[str] | None] = {}
        # ... and what they find pending in a request, with the fact bits that clears in F
        # (keyed by what decides it: see rank).
        self.pending_cache: dict[tuple[Any, ...], tuple[dict[str, frozenset[str]], int]] = {}
        self.deriver_pos = frozenset(p.pos for p in self.derivers)
        self.derivable = frozenset(name for p in self.derivers for name in p.derive)
        self.deriver_blocks = tuple((p.pos, p.bits.off, p.bits.mask) for p in self.derivers)

    def rank(self, enc: Encounter, facts: list[Fact], result: EngineResult, tier: str) -> list[dict[str, Any]]:
        fired_ids = {f.rule_id for f in result.firings}
        pos_of = self.pos_of
        fired = {pos_of[r] for r in fired_ids}
        derived = {name for f in result.firings for name in f.derived}
        known = {f.key: f for f in facts if f.kind == "finding"}
        patient = Fact("patient", "patient", value=enc.age, choice=enc.sex)
        scores = result.scores
        bits = self.bits
        # Every leaf of every rule, read once: T holds, F fails, the rest unknown.
        t, f = bits.state(known, enc.unknown, patient, derived, scores)
        static = self.static
        # What the request holds that some rule reads: those rules are read below, the others'
        # credits come from the static tables.
        touching = static.touching
        alone: dict[int, str | None] = {}  # rule -> the one finding touching it (None: several)
        # The rules read one by one below: touched by several findings, by a present finding with
        # tests on its value (its single-finding readings are not tables), and (added below) by
        # anything but findings, or fired. The others, touched by one finding alone, are taken
        # from that finding's effects (self.effects).
        main: set[int] = set()
        valued = self.valued_codes
        for code, fact in known.items():
            rules = touching.get(code, NO_RULES)
            for i in rules:
                if i in alone:
                    alone[i] = None
                    main.add(i)
                else:
                    alone[i] = code
            if fact.present and code in valued:
                main.update(rules)
        for code in enc.unknown:
            for i in touching.get(code, NO_RULES):
                if i in alone:
                    alone[i] = None
                    main.add(i)
                else:
                    alone[i] = code
        # ... and by a patient attribute, score, derived fact or a fact pending otherwise than
        # in the static reading.
        # A rule touched by the age and nothing else is taken from the age's effects (from
        # self.by_age): the age is given in most requests, and only which age tests hold matters.
        aged = self.touch_patient.get("age", NO_RULES) if enc.age is not None else NO_RULES
        others: set[int] = set()
        if enc.sex is not None:
            others |= self.touch_patient.get("sex", NO_RULES)
        touch_score, touch_fact = self.touch_score, self.touch_fact
        for sid in scores:
            others |= touch_score.get(sid, NO_RULES)
        for name in derived:
            others |= touch_fact.get(name, NO_RULES)
        touched = others.union(alone, aged)
        # What the derivers find pending depends only on the touched ones' leaves, which derivers
        # fired and which of their facts were derived: kept as met, with the fact bits it clears.
        key = (self.deriver_pos.intersection(fired), self.derivable.intersection(derived),
               tuple([(pos, (t >> off) & mask, (f >> off) & mask) for pos, off, mask in self.deriver_blocks
                      if pos in touched]))
        hit = self.pending_cache.get(key)
        if hit is None:
            pending, f1 = self._pending(t, f, fired, derived, touched)
            hit = pending, f & ~f1
            if len(self.pending_cache) < PENDING_CACHE:
                self.pending_cache[key] = hit
            f = f1
        else:
            pending = hit[0]
            f &= ~hit[1]
        pending0 = static.pending
        for name in pending.keys() | pending0.keys():
            if pending.get(name) != pending0.get(name):
                others |= touch_fact.get(name, NO_RULES)
        touched |= others

        table = static.tiers[tier]
        rows = self.rows[tier]
        before = table.read_of
        related: set[str] = set()  # could complete an urgency rule that a finding given already supports
        near: dict[int, tuple[Contribution, frozenset[str], int, int]] = {}  # touched near misses
        changed: set[int] = set()  # touched rules whose contribution differs from the static one
        affected: set[str] = set()  # the findings they credit (now or in the static tables)
        gains: dict[str, list[Contribution]] = {}
        memo: dict[tuple[str, float], tuple[float, float, int]] = {}  # score items' crossings
        # The touched candidates: those touched by one finding alone, or by the age alone, from
        # their effects; the others (`main`) one by one, a present finding's with tests on its
        # value from self.single, the rest read here or from self.read_cache.
        single = self.single[tier]
        cache_of, cache = self.cache_of, self.read_cache[tier]
        for i in aged:
            if i in alone:  # touched by the age and a finding
                main.add(i)
        main |= others
        main |= fired
        # The rules touched by one finding alone, from its effects read at load, and those
        # touched by the age alone, from the age's (`gains` is filled out of rule order: sorted
        # where it is summed).
        effects = self.effects[tier]
        lists = [effects.get((code, None if fact is None else fact.present))
                 for code, fact in [*known.items(), *[(c, None) for c in enc.unknown if c not in known]]]
        if aged:
            held = t & self.age_mask
            by_held = self.age_effects[tier].get(held)
            todo, missing = self._aged(tier, held) if by_held is None else by_held
            lists.append(todo)
            main |= missing
        for todo in lists:
            if not todo:
                continue
            for i, entry, rel, was, contribution in todo:
                if i in main:
                    continue
                if entry is not None:
                    near[i] = entry
                if rel:
                    related.update(rel)
                if was:
                    changed.add(i)
                    affected.update(was)
                    if contribution is not None:
                        for code2 in entry[1]:  # type: ignore[index]
                            if code2 in gains:
                                gains[code2].append(contribution)
                            else:
                                gains[code2] = [contribution]
        for i in touched & main & self.candidate_pos[tier]:
            if i in fired:
                read = None
            else:
                hit = None
                if i not in others and i not in aged:  # then touched by findings alone
                    code = alone[i]
                    if code is not None:  # a present finding with tests on its value
                        fact = known.get(code)
                        hit = single.get((i, code, None if fact is None else fact.present))
                if hit is None:
                    off, mask, names, sid, thresholds = cache_of[i]
                    key: tuple[Any, ...] = (i, (t >> off) & mask, (f >> off) & mask)
                    if names:
                        key += tuple([pending.get(n) for n in names])
                    if sid is not None:
                        key += (scores.get(sid), *[r in fired_ids for r in thresholds])
                    hit = cache.get(key)
                    if hit is None:
                        read = self._read_row(i, rows[i], t, f, pending, scores, fired_ids, tier, memo)
                        hit = (read, None if read is None else read[:4], _as_static(read, before.get(i)))
                        if len(cache) < READ_CACHE:
                            cache[key] = hit
                read, entry, same = hit
                if same:  # as in the static tables: a near miss or not, no credit changes
                    if entry is not None:
                        near[i] = entry
                        if read[4]:  # supported
                            related.update(read[1])
                    continue
            old = before.get(i)
            if read is None:
                if old is not None:
                    changed.add(i)
                    affected.update(old[1])
                continue
            c, needed, lt, lf, supported = read
            if supported:
                related.update(needed)
            near[i] = (c, needed, lt, lf)
            if old is not None:
                if old[0] == c and old[1] == needed:
                    continue  # as in the static tables
                affected.update(old[1])
            changed.add(i)
            for code in needed:
                affected.add(code)
                if code in gains:
                    gains[code].append(c)
                else:
                    gains[code] = [c]

        # The static tables, with the findings whose contributions changed recomputed (the
        # unchanged rules' contributions and this request's, in rule order). Their reasons and
        # reach are only wanted for the few questions asked: left in `fresh` until then.
        credit = dict(table.credit)
        reasons = dict(table.reasons)
        reach = dict(table.reach)  # code -> the highest tier rank a rule it could complete leads to
        fresh: dict[str, list[Contribution]] = {}
        static_gains = table.gains
        for code in affected:  # _merged and combine's credit, inline: about fifty findings a request
            items = static_gains.get(code)
            if items:
                items = [c for c in items if c[0] not in changed]  # c[POS]
                new = gains.get(code)
                if new:
                    if items:
                        items += new
                        items.sort()  # by rule index (c[POS])
                    else:
                        items = new
                        if len(items) > 1:
                            items.sort()
            else:
                items = gains.get(code)
                if items and len(items) > 1:
                    items.sort()  # by rule index: `gains` is filled out of order
            if items:
                if len(items) == 1:
                    # worth() of one finite value x is x + 0.1 * 0.0, that is x + 0.0 (-0.0 becomes 0.0)
                    c = items[0]
                    credit[code] = c[1] + 0.0, c[2] + 0.0
                else:
                    us, ds = [c[1] for c in items], [c[2] for c in items]  # c[URGENCY], c[DIFFERENTIAL]
                    mu, md = max(us), max(ds)
                    credit[code] = mu + BREADTH * (sum(us) - mu), md + BREADTH * (sum(ds) - md)  # worth()
                fresh[code] = items
            else:
                del credit[code], reasons[code], reach[code]
        # Old bundled codes are never asked: their credit goes to an atom (service/reasoning/aliases.py).
        dirty = set(affected)  # the findings whose credit may differ from the static tables'
        moved = self.moved[tier]
        unknown = enc.unknown
        left = []  # the umbrellas not moved as at load
        for pair, both in self.umbrella_pairs:
            code = both[0]
            if code in credit:
                dirty.update(both)
                _settle(both, fresh, reasons, reach)
                as_static = moved.get(code)
                if as_static is not None:
                    atom = as_static[0]
                    if (code not in affected and atom not in affected and atom not in known
                            and atom not in unknown):
                        del credit[code], reasons[code], reach[code]
                        _, credit[atom], reasons[atom], reach[atom] = as_static
                        continue
                left.append(pair)
        if left:
            aliases.ask_atoms(tuple(left), credit, reasons, reach, {*known, *unknown})  # never an old code
        findings = self.k.findings
        changed_findings = [c for c in dirty if c in credit and c in findings]
        limit = enc.ask_next_limit
        # The presentations the request holds put their lists first: their red-flag screen, then
        # their differential, each question only while a rule it could complete is left.
        screen, between = self._priors(known, enc.unknown)
        wanted = [code for code in screen + between if code not in credit]
        for code in wanted:  # asked as another option of a rule (not a finding ranked below)
            items = _merged(table.alt.get(code, ()), touched, self._alternatives(code, near))
            if items:
                credit[code], reasons[code], reach[code] = combine(items)
        # Within the screens, a question that could make it an emergency before one that could
        # make it urgent (stable: the file's order otherwise).
        _settle(screen, fresh, reasons, reach)
        prior_u = sorted((c for c in screen if c in credit and credit[c][0] > 0), key=lambda c: -reach.get(c, 0))
        prior_d = [c for c in screen + between if c in credit and sum(credit[c]) > 0 and c not in prior_u]
        taken = set(prior_u) | set(prior_d)
        # Then the urgency questions of rules the answers already half-meet, before a screen for
        # causes nothing points to yet; then the questions that could lower the tier. Only the
        # best few of each list are asked: they are picked from the static tables' own ranking
        # (skipping the findings this request changed) and the changed findings, rather than
        # every finding sorted.
        urgent_new: list[str] = []  # changed findings with urgency credit
        differential_new: list[str] = []  # the others with differential credit
        for c in changed_findings:
            if c not in taken:
                u, d = credit[c]
                if u > 0:
                    urgent_new.append(c)
                elif d > 0:
                    differential_new.append(c)
        skip = dirty | taken
        ranked_u, ranked_d = self.ranked[tier]
        blockers, holders = self._lowering(result, known, enc.unknown, tier)
        lowering = [c for c in blockers if c not in prior_u and not (
            c not in taken and c in findings and c in credit and c not in wanted and credit[c][0] > 0)]
        prior_d = [c for c in prior_d if c not in lowering]
        if lowering:
            differential_new = [c for c in differential_new if c not in lowering]
        skip_d = skip.union(lowering) if lowering else skip
        if limit is None:
            # Beyond the presentations' screens, the four slots go by credit as before issue 16,
            # so that a request holding no presentation gets the same urgency questions.
            urgent = _best(ranked_u, skip, urgent_new, URGENCY_SLOTS - len(prior_u), credit, 0)
            by_urgency = (prior_u + urgent)[:URGENCY_SLOTS]
            other_d = _best(ranked_d, skip_d, differential_new, DIFFERENTIAL_SLOTS + len(by_urgency), credit, 1)
            by_differential = [c for c in lowering + prior_d + other_d if c not in by_urgency][:DIFFERENTIAL_SLOTS]
            group = {c: i for i, c in enumerate(prior_u + lowering + prior_d)}
            chosen = sorted(by_urgency + by_differential,
                            key=lambda c: (group.get(c, len(group)), -sum(credit.get(c, (0.0, 0.0))), c))
        else:
            # An interview asks the urgency questions first: the tier must settle before the
            # differential. The presentation's own questions come before those of the others.
            related_u = _best([c for c in ranked_u if c in related], skip, [c for c in urgent_new if c in related],
                              limit, credit, 0)
            other_u = _best(ranked_u, skip | related, [c for c in urgent_new if c not in related], limit, credit, 0)
            other_d = _best(ranked_d, skip_d, differential_new, limit, credit, 1)
            chosen = (prior_u + lowering + prior_d + related_u + other_u + other_d)[:limit]
            by_urgency = prior_u + related_u + other_u
        _settle(chosen, fresh, reasons, reach)
        for code in lowering:
            reasons.setdefault(code, holders)
            credit.setdefault(code, (0.0, 0.0))
        current = TIER_RANK[tier]
        missing = self.missing_patient(enc)
        _settle([PATIENT_KEYS[attr] for attr in missing], fresh, reasons, reach)
        first = [self._patient_question(attr, credit.get(key, (0.0, 0.0)), reasons.get(key, []),
                                        _tier_change(reach.get(key, 0), current))
                 for attr, key in PATIENT_KEYS.items() if attr in missing]
        urgent_set = set(by_urgency)  # sets: with ask_next_limit, up to hundreds of questions
        lowering_set = set(lowering)
        return first + [self._question(code, sum(credit[code]), reasons[code],
                                       "urgency" if code in urgent_set else "differential",
                                       _TIER_CHANGES[reach.get(code, 0), current], code in lowering_set)
                        for code in chosen]

    def _read_row(self, i: int, row: _Row, t: int, f: int, pending: dict[str, frozenset[str]], scores: Any,
                  fired: set[str], tier: str, memo: dict[tuple[str, float], tuple[float, float, int]]
                  ) -> _Reading | None:
        """What one rule (not fired) gives the findings it needs, or None: its scaled credit, the
        one or two findings, its leaves' T and F bits, and whether a finding given or a fact
        derived already supports it (for urgency)."""
        rb, rule_id, urgency, differential, top, score = row
        assessed = rb.assess(t, f, pending)  # first: most rules are no near miss
        if assessed is None:
            return None
        if score:
            cu, cd, crossed = self._crossing(score, scores, fired, tier, memo)
            urgency, differential = urgency + cu, differential + cd
            top = max(top, crossed)
        if urgency + differential <= 0:
            return None
        needed, satisfied, lt, lf = assessed
        scale = (1 + satisfied) / (1 + rb.size) / len(needed)
        return ((i, urgency * scale, differential * scale, rule_id, top), needed, lt, lf,
                urgency > 0 and bool(lt & rb.holds_m))

    def _pending(self, t: int, f: int, fired: set[int], derived: set[str],
                 touched: set[int] | None) -> tuple[dict[str, frozenset[str]], int]:
        """The facts not derived whose deriving rule is a near miss, each with the findings it
        needs (the fewest, first in rule order on a tie), and F with their leaves no longer
        failing. Each deriver reads the facts pending before it. One not touched that sees the
        same pending facts as in the static reading reads as there; `touched` None: at load,
        reading every deriver and recording what it saw."""
        pending: dict[str, frozenset[str]] = {}
        facts = self.bits.facts
        seen, untouched = self.seen, self.untouched
        loading = touched is None
        for plan in self.derivers:
            pos = plan.pos
            if pos in fired:
                continue
            if loading:
                seen[pos] = tuple((name, pending.get(name)) for name in sorted(plan.facts_read))
                assessed = plan.bits.assess(t, f, pending)
                needed = untouched[pos] = assessed[0] if assessed else None
            elif pos in touched:  # type: ignore[operator]
                needed = self._needs(plan, t, f, pending)
            else:
                needed = untouched[pos]
                for name, was in seen[pos]:
                    if pending.get(name) != was:  # it reads a fact pending otherwise: read it
                        needed = self._needs(plan, t, f, pending)
                        break
            if not needed:
                continue
            for name in plan.derive:
                if name not in derived and (name not in pending or len(needed) < len(pending[name])):
                    if name not in pending:
                        f &= ~facts.get(name, 0)  # pending: its leaves are unknown, not failing
                    pending[name] = needed
        return pending, f

    def _aged(self, tier: str, held: int) -> tuple[list[_Effect], frozenset[int]]:
        """What the rules the age touches change, read alone, when the age leaves in `held` hold
        (and the other age leaves fail), in rule order, and the candidates self.by_age does not
        hold (read one by one); kept per tier as met."""
        by_age, read_of, rows = self.by_age[tier], self.static.tiers[tier].read_of, self.rows[tier]
        out = []
        missing = set()
        for i in sorted(self.age_bits):
            off, mask = self.age_bits[i]
            hit = by_age.get((i, (held >> off) & mask))
            if hit is None:
                if i in rows:
                    missing.add(i)
                continue
            effect = _effect(i, hit, read_of)
            if effect is not None:
                out.append(effect)
        cache = self.age_effects[tier]
        if len(cache) < READ_CACHE:
            cache[held] = out, frozenset(missing)
        return out, frozenset(missing)

    def _needs(self, plan: _Plan, t: int, f: int, pending: dict[str, frozenset[str]]) -> frozenset[str] | None:
        """What a deriver needs as a near miss, or None: read from `deriver_cache` when a request
        before held the same of it (its T and F bits, what its facts are pending on)."""
        rb = plan.bits
        off, mask = rb.off, rb.mask
        key: tuple[Any, ...] = (plan.pos, (t >> off) & mask, (f >> off) & mask)
        names = self.cache_of[plan.pos][2]
        if names:
            key += tuple([pending.get(n) for n in names])
        cache = self.deriver_cache
        hit = cache.get(key, _MISSING)
        if hit is _MISSING:
            assessed = rb.assess(t, f, pending)
            hit = assessed[0] if assessed else None
            if len(cache) < READ_CACHE:
                cache[key] = hit
        return hit  # type: ignore[no-any-return]

    def _alternatives(self, code: str, near: dict[int, tuple[Contribution, frozenset[str], int, int]]
                      ) -> list[Contribution]:
        """The touched near misses' contributions to `code` as one of their other options (an
        unknown positive finding leaf on it, not needed), in rule order, once per leaf."""
        out = []
        for pos, bit in self.bits.options.get(code, ()):
            read = near.get(pos)
            if read is not None:
                c, needed, lt, lf = read
                if not (lt | lf) & bit and code not in needed:
                    out.append(c)
        return out

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
                atom = aliases.first_open(finding.replaced_by, known, asked)
                if atom is not None:
                    out.add(atom)
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
        head, choices = self.heads[code]
        lead = "Could raise the urgency" if aim == "urgency" else "Would help tell the causes apart"
        if lowers and aim != "urgency":
            lead = LOWERS_LEAD
        # The same few rules stand behind many questions: each `why` is made once (kept as met,
        # by any thread: a dict's get and set are atomic).
        key = (lead, *rules[:3])
        why = self.whys.get(key)
        if why is None:
            title = self.titles
            why = f"{lead}: {'; '.join([title[r] for r in rules[:3]])}"
            if len(self.whys) < READ_CACHE:
                self.whys[key] = why
        # finding, display, question, type and unit (the head), choices, aim, impact, the tier
        # change, why, rules, in that order; one dict literal (with ask_next_limit an answer
        # builds a hundred or more). New lists: the static tables' are shared by every request.
        if choices:
            return {**head, "choices": list(choices), "aim": aim, "impact": round(impact, 2), **change,
                    "why": why, "rules": list(rules)}
        return {**head, "aim": aim, "impact": round(impact, 2), **change, "why": why, "rules": list(rules)}

    def _crossing(self, score: tuple[str, float], scores: Any, fired: set[str], tier: str,
                  memo: dict[tuple[str, float], tuple[float, float, int]]) -> tuple[float, float, int]:
        """Worth of a score item: the impact of the unfired threshold rules its points would satisfy,
        and the highest tier those rules lead to (the same for every item of equal points: `memo`,
        one request's)."""
        hit = memo.get(score)
        if hit is not None:
            return hit
        sid, points = score
        value = scores.get(sid, 0) + points
        best: Impact = (0.0, 0.0)
        top = 0
        number = None
        for threshold, tests in self.thresholds.get(sid, []):
            if threshold.id in fired:
                continue
            if number is None:
                number = normalise_number(value)
            if all(t.holds(number, value) for t in tests):
                candidate = self.impact[threshold.id][tier]
                top = max(top, self.reach[threshold.id])
                if sum(candidate) > sum(best):
                    best = candidate
        memo[score] = out = (best[0], best[1], top)
        return out


def _effect(i: int, hit: _Single, read_of: dict[int, tuple[Contribution, frozenset[str]]]) -> _Effect | None:
    """What a rule read at load (`hit`: its reading, its entry for `near`, whether it reads as in
    the static tables) changes in a request, or None when nothing (no near miss, now or in the
    static tables)."""
    read, entry, same = hit
    rel = read[1] if read is not None and read[4] else NOTHING
    if same:
        return None if entry is None else (i, entry, rel, NOTHING, None)
    old = read_of.get(i)
    was = old[1] if old is not None else NOTHING
    return (i, entry, rel, was | read[1], read[0]) if read is not None else (i, None, rel, was, None)


def _merged(static: Any, replaced: set[int], dynamic: list[Contribution] | None) -> list[Contribution]:
    """One finding's contributions: the static ones of the rules not `replaced` and this
    request's, in rule order."""
    items = [c for c in static if c[0] not in replaced]  # c[POS]
    if dynamic:
        if items:
            items += dynamic
            items.sort()  # by rule index: unique in one finding's contributions but for equal ones
        else:
            items = dynamic
    return items


def _as_static(read: _Reading | None, old: tuple[Contribution, frozenset[str]] | None) -> bool:
    """Whether a reading gives what the static tables hold for its rule (both no near miss, or
    the same contribution to the same findings)."""
    if read is None or old is None:
        return read is None and old is None
    return old[0] == read[0] and old[1] == read[1]


def _best(ranked: list[str], skip: set[str], new: list[str], n: int, credit: dict[str, Impact],
          part: int) -> list[str]:
    """The first `n` by credit (`part`: 0 urgency, 1 differential), highest first, then by code,
    of the static tables' findings in `ranked` (already in that order) not in `skip` and of the
    findings `new` (this request's credits): the same as sorting all of them and taking n."""
    if n <= 0:
        return []
    out = []
    for c in ranked:
        if c not in skip:
            out.append(c)
            if len(out) == n:
                break
    if not new:
        return out
    # sorted()[:n] is what heapq.nsmallest is documented to equal, and faster at these sizes
    # (tens of findings).
    return sorted(out + new, key=lambda c: (-credit[c][part], c))[:n]


def _settle(codes: list[str] | tuple[str, ...], fresh: dict[str, list[Contribution]], reasons: dict[str, list[str]],
            reach: dict[str, int]) -> None:
    """The reasons and reach of `codes` whose credit this request recomputed."""
    for code in codes:
        items = fresh.pop(code, None)
        if items is not None:
            reasons[code] = [c[RULE_ID] for c in items]
            reach[code] = max(0, *[c[TOP] for c in items])


def _tier_change(reach: int, current: int) -> dict[str, Any]:
    """How far answering could raise the tier (copied into the question, never kept)."""
    return _TIER_CHANGES[reach, current]


def _make_tier_change(reach: int, current: int) -> dict[str, Any]:
    steps = max(0, reach - current)
    return {"raises_tier_to": TIER_NAMES[reach] if steps else None, "tier_steps": steps}


NO_RULES: frozenset[int] = frozenset()
_TIER_CHANGES = {(r, c): _make_tier_change(r, c) for r in TIER_NAMES for c in TIER_NAMES}


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
