"""Clinical cases: vignettes beside the rules, each with the answer a clinician expects.

`check_case` returns the ways an answer misses its expectation (empty when it passes);
`run_cases` runs them all for `python -m service cases`, the test suite and readiness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.errors import ServiceError
from service.intake.parse import parse_encounter
from service.knowledge.model import TIER_RANK, Case
from service.reasoning.evaluation import Evaluator


def evaluate_case(evaluator: Evaluator, case: Case) -> dict[str, Any]:
    """The answer to a case's request; a case whose request is invalid raises ServiceError."""
    return evaluator.evaluate(parse_encounter(evaluator.knowledge, case.request))


def check_case(evaluator: Evaluator, case: Case) -> list[str]:
    try:
        answer = evaluate_case(evaluator, case)
    except ServiceError as exc:
        return [f"the case's request is not valid: {exc.detail} {[e.get('pointer') for e in exc.errors]}"]
    return compare(case.expect, answer)


# The tier a test's FHIR priority implies (issue 12): a stat test is an emergency's, an urgent
# or asap one belongs to the same day. An answer whose tier is lower sends mixed signals.
PRIORITY_TIER = {"stat": "emergency", "asap": "urgent", "urgent": "urgent", "routine": "routine"}


def compare(expect: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    failures: list[str] = []
    tier = answer["urgency"]["tier"]
    if tier != expect["tier"]:
        failures.append(f"tier {tier}, expected {expect['tier']}")
    for t in answer["recommended_tests"]:
        implied = PRIORITY_TIER[t["priority"]]
        if TIER_RANK[implied] > TIER_RANK[tier]:
            failures.append(f"test {t['test']} at priority {t['priority']} implies {implied}, but the tier is {tier}")
    ranked = [d["condition"] for d in answer["differential"]]
    for cond in expect.get("top3", []):
        if cond not in ranked[:3]:
            failures.append(f"{cond} not in top 3 {ranked[:3]}")
    for cond in expect.get("absent", []):
        if cond in ranked:
            failures.append(f"{cond} listed but expected absent")
    tests = {t["test"] for t in answer["recommended_tests"]}
    for t in expect.get("tests_include", []):
        if t not in tests:
            failures.append(f"test {t} not recommended")
    for t in expect.get("tests_exclude", []):
        if t in tests:
            failures.append(f"test {t} recommended but must not be")
    not_indicated = {t["test"] for t in answer["tests_not_indicated"]}
    for t in expect.get("not_indicated_include", []):
        if t not in not_indicated:
            failures.append(f"test {t} not marked as not indicated")
    for t in expect.get("not_indicated_exclude", []):
        if t in not_indicated:
            failures.append(f"test {t} marked as not indicated but must not be")
    flags = {f["code"] for f in answer["red_flags"]}
    for f in expect.get("red_flags_include", []):
        if f not in flags:
            failures.append(f"red flag {f} not raised")
    fired = {p["rule"] for p in answer["provenance"]}
    for r in expect.get("rules_fired_include", []):
        if r not in fired:
            failures.append(f"rule {r} did not fire")
    if "deprecated_codes_used" in expect:
        sent = sorted(d["code"] for d in answer["deprecated_codes_used"])
        if sent != sorted(expect["deprecated_codes_used"]):
            failures.append(f"deprecated codes used {sent}, expected {sorted(expect['deprecated_codes_used'])}")
    advice = {a["code"] for a in answer["advice"]}
    for a in expect.get("advice_include", []):
        if a not in advice:
            failures.append(f"advice {a} not given")
    for a in expect.get("advice_exclude", []):
        if a in advice:
            failures.append(f"advice {a} given but must not be")
    return failures


@dataclass
class CaseReport:
    total: int = 0
    passed: int = 0
    tiers_exact: int = 0
    top3_hits: int = 0
    top3_expected: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)
    rules_fired: set[str] = field(default_factory=set)

    def summary(self, rule_count: int) -> str:
        covered = len(self.rules_fired)
        return (
            f"cases: {self.passed}/{self.total} passed; tiers exact {self.tiers_exact}/{self.total}; "
            f"top-3 hits {self.top3_hits}/{self.top3_expected}; "
            f"rules covered {covered}/{rule_count}"
        )


def run_cases(evaluator: Evaluator) -> CaseReport:
    report = CaseReport()
    for case in evaluator.knowledge.cases:
        report.total += 1
        try:
            answer = evaluate_case(evaluator, case)
        except ServiceError as exc:
            report.failures[case.id] = [f"the case's request is not valid: {exc.detail}"]
            continue
        report.rules_fired.update(p["rule"] for p in answer["provenance"])
        failures = compare(case.expect, answer)
        if answer["urgency"]["tier"] == case.expect["tier"]:
            report.tiers_exact += 1
        ranked = [d["condition"] for d in answer["differential"]][:3]
        report.top3_expected += len(case.expect.get("top3", []))
        report.top3_hits += sum(1 for c in case.expect.get("top3", []) if c in ranked)
        if failures:
            report.failures[case.id] = failures
        else:
            report.passed += 1
    return report
