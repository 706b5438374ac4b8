"""Loading fails closed: every broken rule set is refused with the file and rule named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service import create_app
from service.errors import RuleLoadError
from service.knowledge.loader import load_knowledge, ruleset_sha256
from tests.conftest import MINI_RULES

GOOD_RULE = """
  - id: mini.extra
    version: 1
    title: Extra
    rationale: For a test.
    sources: [src-000]
    evidence: low
    when: {all: [{finding: a}]}
    then: {tier: soon}
"""


@pytest.fixture()
def rules(tmp_path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(MINI_RULES, target)
    return target


def add_rule(rules: Path, text: str) -> None:
    path = rules / "domains" / "mini.yaml"
    path.write_text(path.read_text() + text)


def refused(rules: Path) -> str:
    with pytest.raises(RuleLoadError) as info:
        load_knowledge(rules)
    return str(info.value)


def test_the_fixture_loads(rules):
    k = load_knowledge(rules)
    assert len(k.rules) == 9 and k.readiness_case == "mini-chain-in"


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (GOOD_RULE.replace("finding: a", "finding: nope"), "undeclared finding 'nope'"),
        (GOOD_RULE.replace("sources: [src-000]", "sources: []"), "has no sources"),
        (GOOD_RULE.replace("sources: [src-000]", "sources: [made-up]"), "unknown source 'made-up'"),
        (GOOD_RULE.replace("tier: soon", "tier: whenever"), "tier 'whenever'"),
        (GOOD_RULE.replace("tier: soon", "red_flag: nope"), "undeclared red flag"),
        (GOOD_RULE.replace("tier: soon", "derive: [nope]"), "derives undeclared fact"),
        (GOOD_RULE.replace("{finding: a}", "{fact: nope}"), "undeclared derived fact"),
        (GOOD_RULE.replace("tier: soon", "tests: [{test: test_x, priority: now, for: []}]"), "priority"),
        (GOOD_RULE.replace("tier: soon", "support: [{condition: cond_x, weight: 9}]"), "weight"),
        (GOOD_RULE.replace("evidence: low", "evidence: trust-me"), "evidence"),
        (GOOD_RULE.replace("{finding: a}", "{finding: angle, op: '~', value: 3}"), "op '~'"),
        (GOOD_RULE.replace("{finding: a}", "{finding: onset, is: slow}"), "not among its choices"),
        (GOOD_RULE.replace("version: 1", "version: one"), "'version'"),
    ],
)
def test_a_broken_rule_is_refused_naming_file_and_rule(rules, broken, expected):
    add_rule(rules, broken)
    message = refused(rules)
    assert "domains/mini.yaml rule mini.extra" in message
    assert expected in message


def test_duplicate_rule_id_names_both_places(rules):
    add_rule(rules, GOOD_RULE.replace("mini.extra", "mini.join_ab"))
    message = refused(rules)
    assert "domains/mini.yaml rule mini.join_ab: duplicate rule id" in message


def test_rule_with_only_negative_tests_is_refused(rules):
    # durable-rules hazard H7: a negative-only rule matches the engine's own state and loops.
    add_rule(rules, GOOD_RULE.replace("when: {all: [{finding: a}]}", "when: {none: [{finding: a}]}"))
    assert "at least one positive test" in refused(rules)


def test_negating_a_derived_fact_is_refused(rules):
    # hazard H5: a derived blocker does not cancel a firing, so it may not be written.
    add_rule(rules, GOOD_RULE.replace("when: {all: [{finding: a}]}", "when: {all: [{finding: a}], none: [{fact: ab}]}"))
    assert "may not test derived facts" in refused(rules)


def test_score_points_depending_on_a_score_are_refused(rules):
    add_rule(rules, GOOD_RULE.replace("{finding: a}", "{score: points, op: '>', value: 1}").replace(
        "tier: soon", "score: {id: points, points: 1}"))
    assert "depends on a score" in refused(rules)


def test_yaml_syntax_error_names_file_and_line(rules):
    (rules / "domains" / "mini.yaml").write_text("domain: mini\nrules: [\n")
    message = refused(rules)
    assert "domains/mini.yaml" in message and "line" in message


def test_missing_catalogue_file(rules):
    (rules / "tests.yaml").unlink()
    assert "tests.yaml: file is missing" in refused(rules)


def test_every_problem_is_reported_at_once(rules):
    add_rule(rules, GOOD_RULE.replace("finding: a", "finding: nope"))
    add_rule(rules, GOOD_RULE.replace("mini.extra", "mini.extra2").replace("sources: [src-000]", "sources: []"))
    message = refused(rules)
    assert "mini.extra:" in message and "mini.extra2:" in message


def test_the_app_refuses_to_start_on_a_broken_rule_set(rules):
    add_rule(rules, GOOD_RULE.replace("finding: a", "finding: nope"))
    with pytest.raises(RuleLoadError, match=r"mini\.extra"):
        create_app({"RULES_DIR": str(rules)})


def test_sha256_changes_with_any_rule_edit(rules):
    before = ruleset_sha256(rules)
    add_rule(rules, GOOD_RULE)
    assert ruleset_sha256(rules) != before
    assert load_knowledge(rules).sha256 == ruleset_sha256(rules)


def test_a_test_can_include_only_another_declared_test(rules):
    path = rules / "tests.yaml"
    path.write_text("tests:\n  - {code: test_x, display: Test X, shows: X, includes: [test_nope]}\n")
    assert "test test_x: 'includes' names 'test_nope', not another declared test" in refused(rules)
    path.write_text("tests:\n  - {code: test_x, display: Test X, shows: X, includes: [test_x]}\n")
    assert "'includes' names 'test_x'" in refused(rules)
