"""Rule-set checks beyond what loading enforces, for `python -m service lint`.

Errors make lint (and the suite) fail; warnings are printed for the clinical reviewer.
Errors:
- a rule that can never fire: contradictory tests on one fact, an empty number range, a
  derived fact nothing (reachable) derives, a score threshold its items can never reach;
- a red flag that adding a finding could take away (its rule, or a rule it depends on through
  derived facts, uses `none` or a score with negative items): the safety property "adding a
  finding never lowers a tier forced by a red flag" must hold by construction;
- a source document that is not in the shared sources folder (../shared/sources; where that
  folder is absent the check is skipped, and a warning says so);
- a clinical case that fails, including one whose answer recommends a test at a priority its
  tier does not reach (stat needs emergency, urgent or asap needs urgent: service/checks/cases.py);
- a finding's codes: SNOMED CT (Verhoeff check digit) for a yes/no or choice finding, LOINC
  (mod-10 check digit) for a measurement, none on a deprecated alias; and where a value set reads
  records onto the finding, its SNOMED CT / LOINC code must be one that value set holds (a code
  the records would never carry is a code that means something else);
- a red flag that no self-check case (`self_check: true`) expects in `red_flags_include`, or an
  emergency rule (`tier: emergency`, or raising an emergency red flag) that no self-check case
  expects in `rules_fired_include`: the start-up self-check must exercise every emergency path
  (service/checks/self_check.py). A self-check case that passes raises / fires what it expects.
Warnings: findings no rule uses, derived facts no rule matches, conditions with no route to a
test, guidelines cited without a citation or address, rules no case fires.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from service.checks.cases import run_cases
from service.knowledge.model import Group, Knowledge, Leaf, Rule
from service.reasoning.evaluation import Evaluator

SHARED_SOURCES = Path(__file__).resolve().parents[3] / "shared" / "sources"


def lint(evaluator: Evaluator, sources_dir: Path | None = SHARED_SOURCES) -> tuple[list[str], list[str]]:
    k = evaluator.knowledge
    errors: list[str] = []
    warnings: list[str] = []

    live = _rules_that_can_fire(k, errors)
    _red_flags_are_monotone(k, errors)
    _sources(k, sources_dir, errors, warnings)

    used_findings = {leaf.key for r in k.rules for leaf in _all_leaves(r) if leaf.kind == "finding"}
    # An atomic finding is used where the rules match the deprecated umbrella it sets.
    used_findings |= {a for c in used_findings if c in k.findings for a in k.findings[c].replaced_by}
    used_facts = {leaf.key for r in k.rules for leaf in r.when.positive_leaves() if leaf.kind == "fact"}
    warnings += [f"finding {c} is used by no rule" for c in k.findings if c not in used_findings]
    warnings += [f"derived fact {n} is matched by no rule" for n in k.derived if n not in used_facts]
    tested = {c for r in k.rules if r.id in live for t in r.then.tests for c in t.for_conditions}
    warnings += [f"condition {c} has no route to a test" for c in k.conditions if c not in tested]

    _self_check_coverage(k, errors)
    _value_sets(k, errors)
    _one_finding_per_coding(k, errors)
    report = run_cases(evaluator)
    for case_id, failures in report.failures.items():
        errors.extend(f"case {case_id}: {f}" for f in failures)
    for rule in k.rules:
        if rule.id not in report.rules_fired:
            warnings.append(f"{rule.file} rule {rule.id} is fired by no clinical case")
    return errors, warnings


def _one_finding_per_coding(k: Knowledge, errors: list[str]) -> None:
    """A coding on two findings makes a record's code ambiguous: the FHIR mapping then reads
    neither (it never guesses), so the fact is silently lost."""
    seen: dict[tuple[str, str], str] = {}
    for finding in k.findings.values():
        for c in finding.codes:
            first = seen.setdefault((c.system, c.code), finding.code)
            if first != finding.code:
                errors.append(f"vocabulary: {c.system}|{c.code} is a code of both {first} and {finding.code}")


def _value_sets(k: Knowledge, errors: list[str]) -> None:
    """Every value set code's syntax and meaning (service/knowledge/valuesets.py)."""
    from service.knowledge import valuesets

    try:
        vsets = valuesets.for_knowledge(k)
    except valuesets.ValueSetError as exc:
        errors.append(f"value sets: {exc}")
        return
    errors.extend(valuesets.lint(vsets, set(k.findings)))
    errors.extend(finding_codes(k, vsets))


def finding_codes(k: Knowledge, vsets: Any) -> list[str]:
    """The vocabulary's own codes: syntax, kind, and agreement with the value sets."""
    from service.knowledge.valuesets import LOINC, SNOMED, loinc_ok, snomed_ok

    problems: list[str] = []
    snomed_read: dict[str, set[str]] = {}  # finding -> SNOMED CT codes its value sets hold
    loinc_read: dict[str, set[str]] = {}  # finding -> LOINC codes its measurement lists hold
    for vs in vsets.sets.values():
        for finding, how in vs.findings.items():
            if how != "absent" and vs.codes.get("snomed"):
                snomed_read.setdefault(finding, set()).update(vs.codes["snomed"])
            if finding in k.findings and k.findings[finding].deprecated:
                problems.append(f"{vs.path}: reads records onto {finding}, a deprecated alias; name its atomic "
                                f"finding ({', '.join(k.findings[finding].replaced_by)})")
        for m in vs.measurements:
            loinc_read.setdefault(m.finding, set()).add(m.loinc)
    for f in k.findings.values():
        what = f"vocabulary.yaml: finding {f.code}"
        if f.deprecated and f.codes:
            problems.append(f"{what}: a deprecated alias carries no codes (a record cannot say 'X or Y')")
        for c in f.codes:
            if c.system == SNOMED:
                if not snomed_ok(c.code):
                    problems.append(f"{what}: SNOMED CT code {c.code!r} fails its check digit or partition")
                elif f.type == "number":
                    problems.append(f"{what}: a measurement is coded in LOINC, not SNOMED CT ({c.code})")
                elif f.code in snomed_read and c.code not in snomed_read[f.code] and not c.valueset_parent:
                    problems.append(f"{what}: SNOMED CT code {c.code} is in none of the value sets that read "
                                    f"records onto it")
            elif c.system == LOINC:
                if not loinc_ok(c.code):
                    problems.append(f"{what}: LOINC code {c.code!r} fails its check digit")
                elif f.type != "number":
                    problems.append(f"{what}: LOINC codes a measurement; a yes/no finding takes SNOMED CT")
                elif f.code in loinc_read and c.code not in loinc_read[f.code]:
                    problems.append(f"{what}: LOINC code {c.code} is not the one its measurement list reads "
                                    f"({', '.join(sorted(loinc_read[f.code]))})")
            else:
                problems.append(f"{what}: code system {c.system} is neither SNOMED CT nor LOINC")
    return problems


def emergency_rules(k: Knowledge) -> list[Rule]:
    """Rules that set the emergency tier or raise a red flag that forces it."""
    return [r for r in k.rules if r.then.tier == "emergency"
            or (r.then.red_flag is not None and k.red_flags[r.then.red_flag].tier == "emergency")]


def _self_check_coverage(k: Knowledge, errors: list[str]) -> None:
    checked = [c for c in k.cases if c.self_check]
    flags = {f for c in checked for f in c.expect.get("red_flags_include", [])}
    fired = {r for c in checked for r in c.expect.get("rules_fired_include", [])}
    for code in k.red_flags:
        if code not in flags:
            errors.append(f"red flag {code}: no self-check case raises it (mark a case that expects it in "
                          f"red_flags_include with self_check: true)")
    for rule in emergency_rules(k):
        if rule.id not in fired:
            errors.append(f"{rule.file} rule {rule.id} is an emergency rule that no self-check case fires (list it "
                          f"in rules_fired_include of a case with self_check: true)")


def _all_leaves(rule: Rule) -> list[Leaf]:
    return rule.when.positive_leaves() + list(rule.when.none)


# --- rules that can never fire ---------------------------------------------------------------


class _Interval:
    """The values a number can take and still satisfy every test so far."""

    def __init__(self) -> None:
        self.lo, self.lo_open, self.hi, self.hi_open = -math.inf, False, math.inf, False
        self.excluded: set[float] = set()

    def add(self, op: str, v: float) -> None:
        if op in (">", ">="):
            if v > self.lo or (v == self.lo and op == ">"):
                self.lo, self.lo_open = v, op == ">"
        elif op in ("<", "<="):
            if v < self.hi or (v == self.hi and op == "<"):
                self.hi, self.hi_open = v, op == "<"
        elif op == "==":
            self.add(">=", v)
            self.add("<=", v)
        else:
            self.excluded.add(v)

    def empty(self) -> bool:
        if self.lo > self.hi:
            return True
        if self.lo == self.hi:
            return self.lo_open or self.hi_open or self.lo in self.excluded
        return False


def _conjunction_possible(leaves: list[Leaf], k: Knowledge, derivable: set[str], score_range: dict) -> bool:
    """Can one encounter satisfy all these leaves at once?"""
    by_fact: dict[tuple[str, str], list[Leaf]] = {}
    for leaf in leaves:
        by_fact.setdefault((leaf.kind, leaf.key), []).append(leaf)
    for (kind, key), group in by_fact.items():
        if kind == "fact" and key not in derivable:
            return False
        if kind == "finding":
            if len({leaf.present for leaf in group}) > 1:
                return False
            finding = k.findings[key]
            choices = set(finding.choices)
            interval = _Interval()
            if finding.range:
                interval.add(">=", finding.range[0])
                interval.add("<=", finding.range[1])
            for leaf in group:
                if leaf.values:
                    choices &= set(leaf.values)
                if leaf.op is not None:
                    interval.add(leaf.op, float(leaf.value))  # type: ignore[arg-type]
            if finding.type == "choice" and not choices:
                return False
            if finding.type == "number" and interval.empty():
                return False
        if kind == "patient" and key == "age":
            interval = _Interval()
            interval.add(">=", 0)
            interval.add("<=", 120)
            for leaf in group:
                interval.add(leaf.op or "==", float(leaf.value))  # type: ignore[arg-type]
            if interval.empty():
                return False
        if kind == "patient" and key == "sex":
            allowed = None
            for leaf in group:
                allowed = set(leaf.values) if allowed is None else allowed & set(leaf.values)
            if not allowed:
                return False
        if kind == "score":
            lo, hi = score_range.get(key, (0.0, 0.0))
            interval = _Interval()
            interval.add(">=", lo)
            interval.add("<=", hi)
            for leaf in group:
                interval.add(leaf.op or "==", float(leaf.value))  # type: ignore[arg-type]
            if interval.empty():
                return False
    return True


def _options(items: tuple[Leaf | Group, ...], mode: str) -> list[list[Leaf]]:
    """Disjunctive normal form of all/any over leaves: each option is a list of leaves that
    must hold together (groups nest one level, so this stays small)."""
    if mode == "all":
        options: list[list[Leaf]] = [[]]
        for item in items:
            sub = _options(item.items, item.mode) if isinstance(item, Group) else [[item]]
            options = [a + b for a in options for b in sub]
        return options
    out: list[list[Leaf]] = []
    for item in items:
        out.extend(_options(item.items, item.mode) if isinstance(item, Group) else [[item]])
    return out


def _can_fire(rule: Rule, k: Knowledge, derivable: set[str], score_range: dict) -> bool:
    base = _options(rule.when.all, "all")
    alternatives = _options(rule.when.any, "any") if rule.when.any else [[]]
    for a in base:
        for b in alternatives:
            if _conjunction_possible(a + b, k, derivable, score_range):
                return True
    return False


def _rules_that_can_fire(k: Knowledge, errors: list[str]) -> set[str]:
    # Scores can reach anything between the sum of their negative and positive items.
    score_range: dict[str, tuple[float, float]] = {}
    for r in k.rules:
        if r.then.score:
            sid, points = r.then.score
            lo, hi = score_range.get(sid, (0.0, 0.0))
            score_range[sid] = (lo + min(points, 0), hi + max(points, 0))
    derivable: set[str] = set()
    live: set[str] = set()
    changed = True
    while changed:  # fixpoint: a rule is live once the facts it needs are derivable
        changed = False
        for r in k.rules:
            if r.id not in live and _can_fire(r, k, derivable, score_range):
                live.add(r.id)
                derivable.update(r.then.derive)
                changed = True
    for r in k.rules:
        if r.id not in live:
            errors.append(f"{r.file} rule {r.id}: can never fire (contradictory tests, an empty range, "
                          f"a derived fact nothing derives, or a score it cannot reach)")
    return live


# --- safety: red flags cannot be taken away by adding a finding ------------------------------


def _red_flags_are_monotone(k: Knowledge, errors: list[str]) -> None:
    derivers: dict[str, list[Rule]] = {}
    for r in k.rules:
        for name in r.then.derive:
            derivers.setdefault(name, []).append(r)
    negative_scores = {r.then.score[0] for r in k.rules if r.then.score and r.then.score[1] < 0}

    def reasons(rule: Rule, seen: frozenset[str]) -> list[str]:
        out = []
        if rule.when.none:
            out.append(f"{rule.id} has an exclusion (none)")
        for leaf in rule.when.positive_leaves():
            if leaf.kind == "score" and leaf.key in negative_scores:
                out.append(f"{rule.id} tests score {leaf.key}, which has negative items")
            if leaf.kind == "fact":
                for d in derivers.get(leaf.key, []):
                    if d.id not in seen:
                        out.extend(reasons(d, seen | {rule.id}))
        return out

    for r in k.rules:
        if r.then.red_flag:
            why = reasons(r, frozenset())
            if why:
                errors.append(f"{r.file} rule {r.id}: red flag {r.then.red_flag} could be taken away by adding "
                              f"a finding ({'; '.join(sorted(set(why)))})")


# --- sources ---------------------------------------------------------------------------------


def _sources(k: Knowledge, sources_dir: Path | None, errors: list[str], warnings: list[str]) -> None:
    in_folder = sources_dir is not None and sources_dir.is_dir()
    documents = [s for s in k.sources.values() if s.kind == "document"]
    if documents and not in_folder:
        # Said out loud: a clone without ../shared must not look as if the documents were checked.
        warnings.append(f"skipped the source-document check: {sources_dir} is missing (the team's shared folder, "
                        f"../shared, is not beside this clone), so the {len(documents)} cited source documents "
                        "were not checked")
    for s in documents:
        if in_folder and not (sources_dir / (s.file or "")).is_file():  # type: ignore[operator]
            errors.append(f"source {s.id}: document {s.file} is not in {sources_dir}")
    for s in k.sources.values():
        if s.kind == "guideline" and not (s.citation or s.url):
            warnings.append(f"source {s.id}: guideline has neither a citation nor a url")
    cited = {sid for r in k.rules for sid in r.sources}
    for sid in k.sources:
        if sid not in cited and not any(sid in f.sources for f in k.red_flags.values()) \
                and not any(sid in a.sources for a in k.advice.values()):
            warnings.append(f"source {sid} is cited by nothing")
