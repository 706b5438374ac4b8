"""`python -m service` commands, run as a user would run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import MINI_RULES, ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_evaluate_prints_the_answer(tmp_path):
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"findings": [{"code": "a"}, {"code": "b"}, {"code": "c"}]}))
    proc = cli("--rules", str(MINI_RULES), "evaluate", str(request))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["urgency"]["tier"] == "emergency"


def test_evaluate_reports_invalid_input_as_a_problem(tmp_path):
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"findings": [{"code": "zzz"}]}))
    proc = cli("--rules", str(MINI_RULES), "evaluate", str(request))
    assert proc.returncode == 1
    assert json.loads(proc.stderr)["status"] == 422


def test_cases_and_lint_pass_on_a_good_rule_set():
    proc = cli("--rules", str(MINI_RULES), "cases")
    assert proc.returncode == 0, proc.stdout
    assert "cases: 1/1 passed" in proc.stdout
    assert cli("--rules", str(MINI_RULES), "lint").returncode == 0


def test_cases_fail_when_an_expectation_is_not_met(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "cases" / "mini.yaml"
    path.write_text(path.read_text().replace("tier: emergency", "tier: routine"))
    proc = cli("--rules", str(rules), "cases")
    assert proc.returncode == 1
    assert "FAIL mini-chain-in: tier emergency, expected routine" in proc.stdout


def test_lint_and_serve_refuse_a_broken_rule_set(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "domains" / "mini.yaml"
    path.write_text(path.read_text().replace("title: A and B derive ab", "title: A and B derive ab\n    colour: red"))
    for args in (("lint",), ("serve", "--bind", "127.0.0.1:1")):
        proc = cli("--rules", str(rules), *args)
        assert proc.returncode == 3
        assert "domains/mini.yaml rule mini.join_ab: unknown key 'colour'" in proc.stderr
