"""`python -m service lint`: rules that can never fire, red flags that a finding could take
away, missing source documents. Each check is shown failing on a rule written to trip it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.checks.lint import lint
from service.knowledge.loader import load_knowledge
from service.reasoning.evaluation import Evaluator
from tests.conftest import MINI_RULES, mini_rules_with

RULE = """
  - id: mini.probe
    version: 1
    title: Probe
    rationale: A rule written to trip one lint check.
    sources: [src-000]
    evidence: low
    when: {when}
    then: {then}
"""


def lint_with(tmp_path: Path, when: str, then: str = "{tier: soon}", sources_dir: Path | None = None):
    target = mini_rules_with(tmp_path / "rules", RULE.replace("{when}", when).replace("{then}", then))
    return lint(Evaluator(load_knowledge(target)), sources_dir=sources_dir)


def test_the_mini_rule_set_lints_clean():
    errors, _ = lint(Evaluator(load_knowledge(MINI_RULES)), sources_dir=None)
    assert errors == []


@pytest.mark.parametrize(
    "when",
    [
        "{all: [{finding: a}, {finding: a, present: false}]}",  # present and denied
        "{all: [{finding: angle, op: '<', value: 20}, {finding: angle, op: '>', value: 40}]}",  # empty range
        "{all: [{finding: angle, op: '>', value: 95}]}",  # outside the finding's valid range
        "{all: [{finding: onset, is: sudden}, {finding: onset, is: gradual}]}",  # two choices at once
        "{all: [{patient: age, op: '<', value: 10}, {patient: age, op: '>', value: 80}]}",
        "{all: [{score: points, op: '>=', value: 5}]}",  # items add up to 2 at most
        "{any: [{all: [{finding: a}, {finding: a, present: false}]}, {finding: angle, op: '>', value: 200}]}",
    ],
)
def test_a_rule_that_can_never_fire_is_an_error(tmp_path, when):
    errors, _ = lint_with(tmp_path, when)
    assert any("mini.probe: can never fire" in e for e in errors), errors


def test_a_rule_whose_only_path_is_impossible_makes_its_dependants_dead_too(tmp_path):
    errors, _ = lint_with(
        tmp_path,
        "{all: [{finding: a}, {finding: a, present: false}]}",
        "{derive: [abc]}",
    )
    assert any("mini.probe: can never fire" in e for e in errors)
    # mini.abc_flag is still reachable through mini.chain_abc, so it is not reported
    assert not any("mini.abc_flag" in e for e in errors)


def test_a_rule_that_can_fire_is_not_reported(tmp_path):
    when = "{all: [{finding: angle, op: '>', value: 20}, {finding: angle, op: '<', value: 40}]}"
    errors, _ = lint_with(tmp_path, when)
    assert not any("mini.probe" in e for e in errors)


@pytest.mark.parametrize(
    ("when", "why"),
    [
        ("{all: [{finding: a}], none: [{finding: c}]}", "has an exclusion"),
        ("{all: [{fact: ab}]}", None),  # ab comes from a monotone rule: fine
        ("{all: [{score: points, op: '>=', value: 1}]}", None),  # points has no negative item
    ],
)
def test_red_flags_must_not_be_removable_by_adding_a_finding(tmp_path, when, why):
    errors, _ = lint_with(tmp_path, when, "{red_flag: flag_x}")
    flagged = [e for e in errors if "mini.probe: red flag flag_x could be taken away" in e]
    if why is None:
        assert flagged == []
    else:
        assert flagged and why in flagged[0]


def test_a_red_flag_through_a_derived_fact_with_an_exclusion_is_caught(tmp_path):
    target = tmp_path / "rules"
    shutil.copytree(MINI_RULES, target)
    path = target / "domains" / "mini.yaml"
    text = path.read_text().replace(
        "when: {all: [{finding: a}, {finding: b}]}\n    then: {derive: [ab], score: {id: points, points: 1}}",
        "when: {all: [{finding: a}, {finding: b}], none: [{finding: blocker}]}\n"
        "    then: {derive: [ab], score: {id: points, points: 1}}",
    )
    assert text != path.read_text()
    path.write_text(text)
    errors, _ = lint(Evaluator(load_knowledge(target)), sources_dir=None)
    assert any("mini.abc_flag: red flag flag_x could be taken away" in e and "mini.join_ab has an exclusion" in e
               for e in errors), errors


def test_a_source_document_missing_from_the_shared_folder_is_an_error(tmp_path):
    empty = tmp_path / "sources"
    empty.mkdir()
    errors, _ = lint_with(tmp_path, "{all: [{finding: a}]}", sources_dir=empty)
    assert any("source src-000: document 000_2eb120cd97d1c60a.txt is not in" in e for e in errors)


def test_a_case_with_an_invalid_request_is_a_lint_error_not_a_crash(tmp_path):
    target = tmp_path / "rules"
    shutil.copytree(MINI_RULES, target)
    path = target / "cases" / "mini.yaml"
    path.write_text(path.read_text().replace("{code: c}", "{code: not_a_finding}"))
    errors, _ = lint(Evaluator(load_knowledge(target)), sources_dir=None)
    assert any("case mini-chain-in: the case's request is not valid" in e for e in errors), errors


def test_lint_says_when_it_skips_the_source_document_check(tmp_path):
    absent = tmp_path / "no-shared" / "sources"
    errors, warnings = lint_with(tmp_path / "a", "{all: [{finding: a}]}", sources_dir=absent)
    skipped = [w for w in warnings if w.startswith("skipped the source-document check")]
    assert len(skipped) == 1 and str(absent) in skipped[0] and "../shared" in skipped[0]
    assert not any("is not in" in e for e in errors)

    present = tmp_path / "sources"
    present.mkdir()
    (present / "000_2eb120cd97d1c60a.txt").write_text("the source document")
    errors, warnings = lint_with(tmp_path / "b", "{all: [{finding: a}]}", sources_dir=present)
    assert not any(w.startswith("skipped the source-document check") for w in warnings)
    assert not any("source src-000" in e for e in errors)


def test_a_code_on_two_findings_is_an_error(knowledge):
    import dataclasses

    from service.checks.lint import _one_finding_per_coding

    shared = knowledge.findings["active_cancer"].codes[0]
    changed = dict(knowledge.findings)
    changed["cancer_history"] = dataclasses.replace(changed["cancer_history"], codes=(shared,))
    errors: list[str] = []
    _one_finding_per_coding(dataclasses.replace(knowledge, findings=changed), errors)
    assert errors == [f"vocabulary: {shared.system}|{shared.code} is a code of both active_cancer and cancer_history"]
    errors = []
    _one_finding_per_coding(knowledge, errors)
    assert errors == []
