"""bench/reliability.py in its short form (--quick: load 5 s, soak 2000 evaluations, one SIGKILL,
SIGTERM, two corrupted rule sets) against real gunicorn; each of its checks must pass.

The script runs once, as a subprocess (it starts gunicorn, sends signals and runs 32 client
threads), and each test below reads one check from its JSON report. Slow: deselect with
-m 'not slow'. The full run is `.venv/bin/python bench/reliability.py` (see its docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "reliability.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reliability") / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--per-case", "5", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    # The script's own exit code is checked by test_the_script_exits_0_when_every_check_passes.
    assert out.exists(), f"no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text(encoding="utf-8"))
    data["_exit_code"], data["_stdout"] = proc.returncode, proc.stdout
    return data


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    c = report["checks"].get(name)
    assert c is not None, f"check {name} did not run: {report.get('server_error')}"
    assert "error" not in c, c["error"]
    return c


def test_sustained_load_has_no_5xx_and_no_wrong_answer(report):
    c = check(report, "load")
    assert c["sent"] > 100, c
    assert c["failures_total"] == 0, (c["failures"], c["failure_examples"])
    assert c["latency_ms"]["p50"] is not None and c["latency_ms"]["p99"] >= c["latency_ms"]["p50"]
    assert c["passed"]
    enc = report["encounters"]
    assert enc["cases_with_age_varied"] > 0 and not enc["variants_rejected_in_process"]


def test_worker_memory_is_flat_over_the_soak(report):
    c = check(report, "soak")
    assert c["sent"] == c["evaluations"] == 2000
    assert c["failures_total"] == 0, (c["failures"], c["failure_examples"])
    assert c["workers_unchanged"] and len(c["rss"]) == report["params"]["workers"]
    for pid, m in c["rss"].items():
        assert m["start_kib"] and m["end_kib"], (pid, m)
        assert m["growth_pct"] <= c["tolerance_pct"], (pid, m)
    assert c["passed"]


def test_sigkill_fails_only_what_the_worker_held_and_gunicorn_replaces_it(report):
    c = check(report, "sigkill")
    [kill] = c["kills"]
    assert kill["victim_gone"] and kill["new_worker"] and kill["workers_after"] == report["params"]["workers"]
    assert kill["recovery_ms"] is not None and kill["recovery_ms"] < 10_000, kill
    assert c["failures_total"] == c["in_flight_failures"] <= c["allowed_failures"], c
    assert set(k for k, n in c["failures"].items() if n) <= {"connection"}, c["failures"]
    if c["worker_class"] == "sync":
        assert c["failures_total"] <= 1
    assert c["passed"]


def test_sigterm_under_load_drops_nothing_and_exits_0(report):
    c = check(report, "sigterm")
    assert c["sent_before_signal"] > 0 and c["dropped_before_signal"] == 0, c
    assert c["sent_during_drain"] > 0 and c["failed_during_drain"] == 0, c
    assert c["ready_during_drain"] == "503 draining"
    assert c["master_exit_code"] == 0 and c["port_closed_after_exit"]
    assert c["passed"]


def test_a_corrupted_rule_file_fails_closed(report):
    c = check(report, "corrupt")
    assert set(c["variants"]) == {"undeclared-finding", "truncated"}
    for name, v in c["variants"].items():
        assert v["exit_code"] not in (None, 0), (name, v)
        assert not v["answered_on_port"], (name, v)
        assert v["message_first_line"] and v["file"] in v["message_first_line"], (name, v)
        if v["rule"]:
            assert v["rule"] in v["message_first_line"], (name, v)
    assert c["passed"]


def test_the_script_exits_0_when_every_check_passes(report):
    assert report["passed"], report["_stdout"][-3000:]
    assert report["_exit_code"] == 0, report["_stdout"][-3000:]
    assert "ALL CHECKS PASSED" in report["_stdout"]
