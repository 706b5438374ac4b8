"""Validation scoring per case folder (service/checks/case_scores.py) and the blind case library."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from service.__main__ import main
from service.checks.case_scores import BLIND_DIR, ScoredCase, load_blind_cases, rule_side_cases, score_folder
from service.errors import ServiceError

RULES = Path(__file__).resolve().parent.parent / "rules"


def test_the_blind_library_is_large_mixed_and_every_case_is_evaluable(evaluator):
    cases = load_blind_cases(RULES)
    assert len(cases) >= 150
    tiers = [c.expect["tier"] for c in cases]
    for tier, low in (("emergency", 0.10), ("urgent", 0.15), ("soon", 0.20), ("routine", 0.25)):
        assert tiers.count(tier) / len(cases) >= low, tier
    score = score_folder(evaluator, BLIND_DIR, cases)
    assert score.invalid == {}  # every finding code and value is in the vocabulary


def test_no_blind_emergency_is_answered_below_emergency(evaluator):
    score = score_folder(evaluator, BLIND_DIR, load_blind_cases(RULES))
    assert score.under_emergency == []


def test_every_blind_case_is_reviewed_and_justified():
    for path in sorted((RULES / BLIND_DIR).glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]:
            assert case.get("justification"), case["id"]
            assert case.get("review", {}).get("verdict") in ("agree", "changed"), case["id"]


def _answer(tier: str, conditions: list[str], tests: list[str], flags: list[str]) -> dict:
    return {
        "urgency": {"tier": tier},
        "differential": [{"condition": c} for c in conditions],
        "recommended_tests": [{"test": t} for t in tests],
        "red_flags": [{"code": f} for f in flags],
    }


def test_scoring_counts_exact_under_over_and_tests():
    from service.checks.case_scores import FolderScore, _score_one

    s = FolderScore("x")
    expect = {"tier": "emergency", "top3": ["dvt"], "tests_include": ["d_dimer"], "tests_exclude": ["ctpa"],
              "red_flags_expected": True}
    _score_one(s, ScoredCase("a", "f", {}, expect), _answer("urgent", ["a", "b", "c", "dvt"], ["ctpa"], []), {})
    _score_one(s, ScoredCase("b", "f", {}, {"tier": "routine"}), _answer("soon", [], [], []), {})
    _score_one(s, ScoredCase("c", "f", {}, {"tier": "soon", "top3": ["dvt"]}), _answer("soon", ["dvt"], [], []), {})
    s.total = 3
    assert (s.exact, s.within_one) == (1, 3)
    assert s.under_emergency == ["a"] and len(s.under) == 1 and len(s.over) == 1
    assert (s.top3_hits, s.top3_expected, s.anywhere_hits) == (1, 2, 2)
    assert (s.tests_required_given, s.tests_required) == (0, 1)
    assert s.forbidden_given == ["a: ctpa"] and s.red_flag_misses == ["a"]
    assert s.lines()[1].startswith("  tier exact 1/3 (33%)")


def test_a_test_that_includes_another_answers_for_it(evaluator):
    from service.checks.case_scores import FolderScore, _score_one

    tests = evaluator.knowledge.tests
    assert "mri_lumbar_spine" in tests["mri_whole_spine"].includes
    s = FolderScore("x")
    required = {"tier": "urgent", "tests_include": ["mri_lumbar_spine"]}
    _score_one(s, ScoredCase("a", "f", {}, required), _answer("urgent", [], ["mri_whole_spine"], []), tests)
    forbidden = {"tier": "urgent", "tests_exclude": ["mri_lumbar_spine"]}
    _score_one(s, ScoredCase("b", "f", {}, forbidden), _answer("urgent", [], ["mri_whole_spine"], []), tests)
    # inclusion does not run backwards: a lumbar MRI is not a whole-spine MRI
    whole = {"tier": "urgent", "tests_include": ["mri_whole_spine"]}
    _score_one(s, ScoredCase("c", "f", {}, whole), _answer("urgent", [], ["mri_lumbar_spine"], []), tests)
    assert (s.tests_required_given, s.tests_required) == (1, 2)
    assert s.forbidden_given == ["b: mri_lumbar_spine"]


def test_a_malformed_blind_file_names_itself(tmp_path):
    folder = tmp_path / BLIND_DIR
    folder.mkdir(parents=True)
    (folder / "x.yaml").write_text("cases:\n  - {id: a, expect: {tier: soon}}\n  - {id: a, expect: {tier: soon}}\n")
    with pytest.raises(ServiceError, match=r"cases/blind/x.yaml: case id a is used twice"):
        load_blind_cases(tmp_path)
    (folder / "x.yaml").write_text("cases:\n  - {id: a, expect: {tier: later}}\n")
    with pytest.raises(ServiceError, match=r"needs an id and expect\.tier"):
        load_blind_cases(tmp_path)


def test_the_cases_command_fails_on_an_under_triaged_blind_emergency(tmp_path, capsys):
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules, ignore=shutil.ignore_patterns("blind"))
    (rules / BLIND_DIR).mkdir()
    (rules / BLIND_DIR / "t.yaml").write_text(yaml.safe_dump({"cases": [
        {"id": "benign-called-emergency", "patient": {"age": 30}, "findings": [{"code": "calf_cramps_at_night"}],
         "expect": {"tier": "emergency"}}]}))
    assert main(["--rules", str(rules), "cases"]) == 1
    assert "FAIL cases/blind/benign-called-emergency: an emergency answered below emergency" in capsys.readouterr().out
    (rules / BLIND_DIR / "t.yaml").write_text(yaml.safe_dump({"cases": [
        {"id": "cramp", "patient": {"age": 30}, "findings": [{"code": "calf_cramps_at_night"}],
         "expect": {"tier": "urgent"}}]}))
    assert main(["--rules", str(rules), "cases"]) == 0
    assert main(["--rules", str(rules), "cases", "--min-blind-exact", "0.9"]) == 1


def test_rule_side_cases_score_perfectly(evaluator):
    score = score_folder(evaluator, "cases/", rule_side_cases(evaluator))
    assert score.exact == score.total and not score.invalid


def test_a_test_priority_above_the_tier_fails_the_case():
    from service.checks.cases import compare

    answer = {"urgency": {"tier": "soon"}, "differential": [], "tests_not_indicated": [], "red_flags": [],
              "advice": [], "provenance": [], "recommended_tests": [{"test": "ctpa", "priority": "stat"}]}
    assert compare({"tier": "soon"}, answer) == ["test ctpa at priority stat implies emergency, but the tier is soon"]
    answer["recommended_tests"][0]["priority"] = "routine"
    assert compare({"tier": "soon"}, answer) == []


def test_a_repeated_key_in_a_blind_case_is_refused(tmp_path):
    folder = tmp_path / BLIND_DIR
    folder.mkdir(parents=True)
    (folder / "x.yaml").write_text("cases:\n  - id: a\n    expect: {tier: soon, tier: emergency}\n")
    with pytest.raises(ServiceError, match=r"(?s)cases/blind/x.yaml: not valid YAML.*duplicate key 'tier'"):
        load_blind_cases(tmp_path)
