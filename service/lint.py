"""Rule-set checks beyond what loading enforces. Errors make `python -m service lint` fail;
warnings are printed for the clinical reviewer."""

from __future__ import annotations

from service.cases import run_cases
from service.evaluation import Evaluator
from service.knowledge import Group, Leaf, Rule


def lint(evaluator: Evaluator) -> tuple[list[str], list[str]]:
    k = evaluator.knowledge
    errors: list[str] = []
    warnings: list[str] = []
    derived_by = {name for r in k.rules for name in r.then.derive}
    used_findings: set[str] = set()
    used_facts: set[str] = set()
    for rule in k.rules:
        leaves = rule.when.positive_leaves() + list(rule.when.none)
        used_findings.update(leaf.key for leaf in leaves if leaf.kind == "finding")
        for leaf in rule.when.positive_leaves():
            if leaf.kind == "fact":
                used_facts.add(leaf.key)
                if leaf.key not in derived_by and not _in_any_alternative(rule, leaf):
                    errors.append(f"{rule.file} rule {rule.id}: can never fire, no rule derives {leaf.key!r}")
            if leaf.kind == "score" and not any(r.then.score and r.then.score[0] == leaf.key for r in k.rules):
                errors.append(f"{rule.file} rule {rule.id}: can never fire, no rule adds to score {leaf.key!r}")
    for code in k.findings:
        if code not in used_findings:
            warnings.append(f"finding {code} is used by no rule")
    for name in k.derived:
        if name not in used_facts:
            warnings.append(f"derived fact {name} is matched by no rule")
    tested = {c for r in k.rules for t in r.then.tests for c in t.for_conditions}
    for code in k.conditions:
        if code not in tested:
            warnings.append(f"condition {code} has no route to a test")
    report = run_cases(evaluator)
    for case_id, failures in report.failures.items():
        errors.extend(f"case {case_id}: {f}" for f in failures)
    for rule in k.rules:
        if rule.id not in report.rules_fired:
            warnings.append(f"{rule.file} rule {rule.id} is fired by no clinical case")
    return errors, warnings


def _in_any_alternative(rule: Rule, leaf: Leaf) -> bool:
    """A leaf inside `any` may legitimately never hold while another alternative does."""
    return leaf in Group("any", rule.when.any).leaves()
