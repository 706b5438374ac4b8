"""A damaged rule set must not load, and one that loads but has lost its meaning must not start
(issue 14, point 2).

Before: a zero-byte domains/cauda_equina.yaml loaded, readiness said 200, and urinary retention
with saddle anaesthesia answered `routine` with no red flag; 8 of the 9 domain files could be
emptied that way. A duplicate YAML key (`priority: stat` then `priority: routine`) loaded and
made an MRI routine. Now: empty files, duplicate keys and red flags no rule raises are load
errors naming the file, and cases marked `self_check: true` run at every start.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import create_app
from service.checks.lint import lint
from service.checks.self_check import SelfCheckError, run_self_check
from service.config import DEFAULT_RULES_DIR
from service.errors import RuleLoadError
from service.knowledge.loader import load_knowledge
from service.reasoning.evaluation import Evaluator
from tests.conftest import MINI_RULES
from tests.ops_support import GUNICORN, ROOT, free_port, gunicorn_env, port_answers, stop

DOMAINS = sorted(p.name for p in (DEFAULT_RULES_DIR / "domains").glob("*.yaml"))


@pytest.fixture()
def real_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, target)
    return target


def load_problems(rules: Path) -> str:
    with pytest.raises(RuleLoadError) as info:
        load_knowledge(rules)
    return info.value.detail


# --- empty files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOMAINS)
def test_an_emptied_domain_file_is_a_load_error_naming_it(real_rules, name):
    (real_rules / "domains" / name).write_bytes(b"")
    detail = load_problems(real_rules)
    assert f"domains/{name}: file is empty" in detail


@pytest.mark.parametrize("content", ["   \n\n", "# cauda equina rules\n# (content lost)\n", "---\n"])
def test_whitespace_or_comments_only_is_empty_too(real_rules, content):
    (real_rules / "domains" / "cauda_equina.yaml").write_text(content)
    detail = load_problems(real_rules)
    assert "domains/cauda_equina.yaml: file is empty" in detail
    # and the red flags only those rules raised are named as well
    # (urinary retention is also raised by the 0.3.1 bladder rules in nerves_spine_031.yaml)
    assert "red_flags.yaml: red flag bilateral_leg_deficit is raised by no rule" in detail


@pytest.mark.parametrize("name", ["advice.yaml", "red_flags.yaml", "cases/venous.yaml"])
def test_an_emptied_catalogue_or_case_file_is_a_load_error(real_rules, name):
    (real_rules / name).write_bytes(b"")
    assert f"{name}: file is empty" in load_problems(real_rules)


def test_a_domain_file_with_no_rules_is_a_load_error(real_rules):
    (real_rules / "domains" / "cauda_equina.yaml").write_text("domain: cauda_equina\ncovers: nothing left\nrules: []\n")
    assert "domains/cauda_equina.yaml: 'rules' is empty" in load_problems(real_rules)


# --- duplicate keys ------------------------------------------------------------------------


def test_a_duplicate_key_is_a_load_error_naming_file_and_line(real_rules):
    path = real_rules / "domains" / "cauda_equina.yaml"
    text = path.read_text()
    stat = "{test: mri_lumbar_spine, priority: stat, for: [cauda_equina]}"
    assert stat in text
    duplicated = "{test: mri_lumbar_spine, priority: stat, priority: routine, for: [cauda_equina]}"
    path.write_text(text.replace(stat, duplicated, 1))
    line = text[:text.index(stat)].count("\n") + 1
    detail = load_problems(real_rules)
    assert f"domains/cauda_equina.yaml: not valid YAML at line {line}" in detail
    assert "duplicate key 'priority'" in detail


@pytest.mark.parametrize("name", ["red_flags.yaml", "cases/general.yaml", "vocabulary.yaml"])
def test_a_duplicate_block_key_anywhere_is_refused(real_rules, name):
    path = real_rules / name
    first_key = next(line for line in path.read_text().splitlines() if line and line[0].isalpha())
    path.write_text(path.read_text() + "\n" + first_key + ("\n" if first_key.endswith(":") else "") + "\n")
    detail = load_problems(real_rules)
    assert f"{name}: not valid YAML" in detail and "duplicate key" in detail


# --- red flags nobody raises ---------------------------------------------------------------


def test_a_declared_red_flag_that_no_rule_raises_is_a_load_error(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    with open(rules / "red_flags.yaml", "a") as fh:
        fh.write("  - {code: flag_orphan, display: Orphan, tier: urgent, sources: [gl-test]}\n")
    assert "red_flags.yaml: red flag flag_orphan is raised by no rule" in load_problems(rules)


def test_self_check_must_be_a_boolean(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "cases" / "mini.yaml"
    path.write_text(path.read_text().replace("self_check: true", "self_check: 'yes'"))
    assert "case mini-chain-in: 'self_check' must be true or false" in load_problems(rules)


# --- the start-up self-check ---------------------------------------------------------------


@pytest.fixture()
def softened_rules(tmp_path: Path) -> Path:
    """The mini rule set with flag X's rule quietly narrowed: it still loads (the flag is still
    raised by a rule), but the self-check case A+B+C no longer reaches emergency."""
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "domains" / "mini.yaml"
    text = path.read_text()
    narrowed = text.replace("when: {all: [{fact: abc}]}", "when: {all: [{fact: abc}, {finding: unused}]}", 1)
    assert narrowed != text
    path.write_text(narrowed)
    load_knowledge(rules)  # loads cleanly: only the self-check can tell
    return rules


def test_the_self_check_passes_on_the_shipped_rule_set(evaluator):
    assert run_self_check(evaluator) >= len(evaluator.knowledge.red_flags) // 2


def test_create_app_refuses_a_rule_set_that_fails_its_self_check(softened_rules):
    with pytest.raises(SelfCheckError) as info:
        create_app({"TESTING": True, "RULES_DIR": str(softened_rules)})
    detail = info.value.detail
    assert "cases/mini.yaml: self-check case mini-chain-in: tier" in detail and "expected emergency" in detail
    assert "red flag flag_x not raised" in detail and "rule mini.abc_flag did not fire" in detail


def test_the_cli_refuses_to_evaluate_or_serve_with_a_failing_self_check(softened_rules, tmp_path):
    request = tmp_path / "req.json"
    request.write_text('{"findings": [{"code": "a"}]}')
    for command in (["evaluate", str(request)], ["serve", "--bind", f"127.0.0.1:{free_port()}"]):
        proc = subprocess.run([sys.executable, "-m", "service", "--rules", str(softened_rules), *command], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env=gunicorn_env(free_port()))
        assert proc.returncode == 3, (command, proc.stdout, proc.stderr)
        assert "self-check" in proc.stderr and "mini-chain-in" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_gunicorn_refuses_to_start_with_a_failing_self_check(softened_rules, tmp_path):
    port = free_port()
    with open(tmp_path / "out", "w+b") as out:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=gunicorn_env(port, CDS_RULES_DIR=str(softened_rules)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        answered = False
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                answered = answered or port_answers(port)
                time.sleep(0.05)
            assert proc.poll() is not None, "gunicorn started with a rule set that fails its self-check"
        finally:
            stop(proc)
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    assert proc.returncode != 0 and not answered
    assert "mini-chain-in" in output and "expected emergency" in output, output[-2000:]


def test_the_zero_byte_cauda_equina_file_of_the_issue_cannot_start(real_rules):
    (real_rules / "domains" / "cauda_equina.yaml").write_bytes(b"")
    with pytest.raises(RuleLoadError, match=r"cauda_equina\.yaml"):
        create_app({"TESTING": True, "RULES_DIR": str(real_rules)})


# --- lint: every red flag and emergency rule has a self-check case -------------------------


def test_lint_requires_a_self_check_case_per_red_flag_and_emergency_rule(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "cases" / "mini.yaml"
    path.write_text(path.read_text().replace("self_check: true", "self_check: false"))
    errors, _ = lint(Evaluator(load_knowledge(rules)))
    assert any("red flag flag_x: no self-check case raises it" in e for e in errors), errors
    assert any("rule mini.abc_flag is an emergency rule that no self-check case fires" in e for e in errors), errors


def test_lint_counts_only_what_the_self_check_case_expects(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    path = rules / "cases" / "mini.yaml"
    path.write_text(path.read_text().replace(",\n             rules_fired_include: [mini.abc_flag]", ""))
    errors, _ = lint(Evaluator(load_knowledge(rules)))
    assert [e for e in errors if "self-check" in e] == [
        "domains/mini.yaml rule mini.abc_flag is an emergency rule that no self-check case fires (list it in "
        "rules_fired_include of a case with self_check: true)"]


def test_the_shipped_rule_set_covers_every_red_flag_and_emergency_rule(evaluator):
    errors, _ = lint(evaluator)
    assert not [e for e in errors if "self-check" in e], errors
