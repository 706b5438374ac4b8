"""The service under REAL gunicorn (deploy/gunicorn.conf.py, 2 sync workers, preload), over HTTP.

No mocks and no test client: these tests start processes, bind ports and speak HTTP with
`requests`, so they are marked slow (deselect with `-m 'not slow'`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from service.checks.cases import compare
from service.config import DEFAULT_RULES_DIR
from service.knowledge.loader import load_knowledge
from tests.ops_support import GUNICORN, ROOT, free_port, port_answers

pytestmark = pytest.mark.slow

MINI_RULES = ROOT / "tests" / "fixtures" / "mini_rules"
EXAMPLE_REQUEST = ROOT / "openapi" / "example-request.json"
MAX_BODY = 65536
START_TIMEOUT = 30.0
TIERS = {"emergency", "urgent", "soon", "routine"}
PROBLEM_JSON = "application/problem+json"

BROKEN_RULE = """
  - id: mini.broken
    version: 1
    title: Names a finding the vocabulary does not declare
    rationale: A rule set with this rule must stop start-up.
    sources: [src-000]
    evidence: low
    when: {all: [{finding: nope}]}
    then: {tier: soon}
"""


# --- helpers -----------------------------------------------------------------------------------


def server_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update({"CDS_BIND": f"127.0.0.1:{port}", "CDS_WORKERS": "2", "PYTHONUNBUFFERED": "1", **extra})
    return env


def read_log(fh: IO[bytes]) -> str:
    fh.flush()
    fh.seek(0)
    return fh.read().decode("utf-8", "replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.stdout = stdout
        self.stderr = stderr
        self.http = requests.Session()

    def log(self) -> str:
        """Everything the server wrote: the access log (stdout) and the error log (stderr)."""
        return read_log(self.stdout) + read_log(self.stderr)

    def post_json(self, path: str, body: Any) -> requests.Response:
        return self.http.post(self.url + path, json=body, timeout=30)


def wait_ready(proc: subprocess.Popen[bytes], url: str, stderr: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with code {proc.returncode} before it was ready; stderr:\n"
                        f"{read_log(stderr)}")
        try:
            r = requests.get(url + "/healthz/ready", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:500]}"
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.2)
    pytest.fail(f"gunicorn not ready after {START_TIMEOUT:.0f} s (last: {last}); stderr:\n{read_log(stderr)}")


def assert_problem(r: requests.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == PROBLEM_JSON, r.headers
    assert "Traceback" not in r.text
    body = r.json()
    assert body["status"] == status
    assert body.get("title") and body.get("detail") and body.get("type")
    return body


# --- the server: default rule set, real gunicorn -------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    logs = tmp_path_factory.mktemp("gunicorn")
    with open(logs / "stdout.log", "w+b") as out, open(logs / "stderr.log", "w+b") as err:
        proc = subprocess.Popen(
            GUNICORN, cwd=ROOT, env=server_env(port, CDS_MAX_BODY_BYTES=str(MAX_BODY)),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        srv = Server(proc, port, out, err)
        try:
            wait_ready(proc, srv.url, err)
            yield srv
        finally:
            srv.http.close()
            stop(proc)


@pytest.fixture(scope="module")
def default_knowledge():
    return load_knowledge(DEFAULT_RULES_DIR)


# (a) ------------------------------------------------------------------------------------------


def test_example_request_gives_a_complete_answer(server: Server) -> None:
    if not EXAMPLE_REQUEST.exists():
        pytest.skip(f"{EXAMPLE_REQUEST.relative_to(ROOT)} does not exist yet")
    body = json.loads(EXAMPLE_REQUEST.read_text(encoding="utf-8"))
    r = server.post_json("/v1/evaluations", body)
    assert r.status_code == 200, r.text[:1000]
    assert r.headers["Content-Type"].split(";")[0] == "application/json"
    answer = r.json()
    assert answer["urgency"]["tier"] in TIERS
    assert "not a diagnosis" in answer["disclaimer"]
    assert answer["provenance"], "no rule fired for the example request"
    provenance = {p["rule"] for p in answer["provenance"]}
    missing = {rule for d in answer["differential"] for rule in d["rules"]} - provenance
    assert not missing, f"differential cites rules missing from provenance: {sorted(missing)}"


# (b) ------------------------------------------------------------------------------------------


def test_every_clinical_case_passes_over_http(server: Server, default_knowledge) -> None:
    k = default_knowledge
    assert k.cases, "the default rule set has no clinical cases"
    failures: list[str] = []
    for case in k.cases:
        r = server.post_json("/v1/evaluations", case.request)
        if r.status_code != 200:
            failures.append(f"{case.id}: HTTP {r.status_code} {r.text[:300]}")
            continue
        answer = r.json()
        if answer["ruleset"]["sha256"] != k.sha256:
            failures.append(f"{case.id}: served rule set {answer['ruleset']['sha256'][:12]} is not the one on disk "
                            f"{k.sha256[:12]} (rules/ changed while the test ran?)")
        failures.extend(f"{case.id}: {f}" for f in compare(case.expect, answer))
    assert not failures, f"{len(failures)} failure(s) over {len(k.cases)} cases:\n" + "\n".join(failures)


# (c) ------------------------------------------------------------------------------------------


def test_malformed_json_is_400(server: Server) -> None:
    r = server.http.post(server.url + "/v1/evaluations", data=b'{"findings": [', timeout=30,
                         headers={"Content-Type": "application/json"})
    assert_problem(r, 400)


def test_text_plain_is_415(server: Server) -> None:
    r = server.http.post(server.url + "/v1/evaluations", data=b'{"findings": []}', timeout=30,
                         headers={"Content-Type": "text/plain"})
    assert_problem(r, 415)


def test_body_over_the_limit_is_413(server: Server) -> None:
    filler = "x" * (100 * 1024)
    data = json.dumps({"findings": [], "encounter_id": filler}).encode()
    assert len(data) > MAX_BODY
    # Its own connection, closed after: the server answers 413 without reading the body and
    # drops the connection, which a shared keep-alive session would reuse for the next test
    # (seen as RemoteDisconnected in test_unknown_finding_code_is_422_with_suggestions).
    r = requests.post(server.url + "/v1/evaluations", data=data, timeout=30,
                      headers={"Content-Type": "application/json", "Connection": "close"})
    body = assert_problem(r, 413)
    assert str(MAX_BODY) in body["detail"]
    assert filler[:64] not in r.text


def test_unknown_finding_code_is_422_with_suggestions(server: Server) -> None:
    codes = [item["code"] for item in server.http.get(server.url + "/v1/findings", timeout=30).json()["items"]]
    assert codes
    wrong = codes[0] + "x"
    assert wrong not in codes
    r = server.post_json("/v1/evaluations", {"findings": [{"code": wrong}]})
    body = assert_problem(r, 422)
    err = body["errors"][0]
    assert err["pointer"] == "/findings/0/code"
    assert "suggestions" in err
    assert codes[0] in err["suggestions"]


def test_unknown_path_is_404_problem(server: Server) -> None:
    assert_problem(server.http.get(server.url + "/v1/nothing-here", timeout=30), 404)


# (d) ------------------------------------------------------------------------------------------


def test_liveness(server: Server) -> None:
    r = server.http.get(server.url + "/healthz/live", timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_openapi_json(server: Server) -> None:
    if not EXAMPLE_REQUEST.exists():
        # service/app/openapi.py builds the example response from this file: without it the
        # endpoint answers 500, which says nothing about the server under test.
        pytest.skip(f"{EXAMPLE_REQUEST.relative_to(ROOT)} does not exist yet (/openapi.json needs it)")
    r = server.http.get(server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0] == "application/json"
    assert r.json()["paths"]


def test_access_log_carries_no_bodies(server: Server) -> None:
    """Bodies are patient data: neither gunicorn's logs nor error output may echo them."""
    marker = "zzmarker" + "q" * 20
    server.post_json("/v1/evaluations", {"findings": [{"code": marker}]})
    server.http.post(server.url + "/v1/evaluations", data=f'{{"x": "{marker}"'.encode(), timeout=30,
                     headers={"Content-Type": "application/json"})
    time.sleep(0.3)
    log = server.log()
    # gunicorn's text access log is off by default (tests/test_access_log.py): the request lines
    # are the service's JSON ones, with the route template.
    requests_logged = [(r.get("route"), r.get("status")) for r in map(json.loads, log.splitlines())
                       if r.get("event") == "request"]
    assert ("/v1/evaluations", 422) in requests_logged and ("/v1/evaluations", 400) in requests_logged, log[-2000:]
    assert marker not in log


# (e) ------------------------------------------------------------------------------------------


@pytest.fixture()
def broken_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(MINI_RULES, rules)
    with open(rules / "domains" / "mini.yaml", "a", encoding="utf-8") as fh:
        fh.write(BROKEN_RULE)
    return rules


def run_to_exit(cmd: list[str], env: dict[str, str], port: int, log_dir: Path) -> tuple[int, str, bool]:
    """Run `cmd` until it exits (at most 30 s); return (exit code, stderr, whether `port` ever answered)."""
    answered = False
    with open(log_dir / "out.log", "w+b") as out, open(log_dir / "err.log", "w+b") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                answered = answered or port_answers(port)
                time.sleep(0.1)
            if proc.poll() is None:
                pytest.fail(f"{cmd} still running after {START_TIMEOUT:.0f} s with a broken rule set; stderr:\n"
                            f"{read_log(err)}")
            answered = answered or port_answers(port)
            return proc.returncode, read_log(err) + read_log(out), answered
        finally:
            stop(proc)


def test_a_broken_rule_set_stops_start_up(broken_rules: Path, tmp_path: Path) -> None:
    # Through the CLI: it loads the rules before it execs gunicorn, and explains the failure.
    port = free_port()
    cmd = [sys.executable, "-m", "service", "--rules", str(broken_rules), "serve", "--bind", f"127.0.0.1:{port}"]
    (tmp_path / "cli").mkdir()
    code, output, answered = run_to_exit(cmd, server_env(port), port, tmp_path / "cli")
    assert code != 0, output
    assert "domains/mini.yaml" in output and "mini.broken" in output, output
    assert "Traceback" not in output, "the CLI should explain, not dump a traceback"
    assert not answered

    port = free_port()
    (tmp_path / "gunicorn").mkdir()
    code, output, answered = run_to_exit(GUNICORN, server_env(port, CDS_RULES_DIR=str(broken_rules)), port,
                                         tmp_path / "gunicorn")
    assert code != 0, output
    assert "mini.broken" in output, output
    assert not answered, f"gunicorn answered on port {port} with a broken rule set"


def test_the_fixture_rule_set_serves_under_gunicorn(tmp_path: Path) -> None:
    """Control for the test above: the same start-up path with the unbroken fixture serves."""
    port = free_port()
    with open(tmp_path / "err.log", "w+b") as err:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=server_env(port, CDS_RULES_DIR=str(MINI_RULES)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, err)
            r = requests.post(url + "/v1/evaluations", timeout=30,
                              json={"findings": [{"code": "a"}, {"code": "b"}, {"code": "c"}]})
            assert r.status_code == 200, r.text
            assert r.json()["urgency"]["tier"] == "emergency"
        finally:
            stop(proc)
