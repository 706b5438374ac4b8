"""First-run mistakes get one line that says what to change (service/app/startup.py): a port
already in use, a malformed API key or issuer list. Run as a user would: `python -m service
serve`, and gunicorn with the deploy config as the container runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.app.startup import config_problem, port_problem, split_bind
from tests.conftest import MINI_RULES, ROOT
from tests.ops_support import GUNICORN, free_port


@contextmanager
def listening() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    full.update(CDS_RULES_DIR=str(MINI_RULES), **env)
    return subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def serve(**env: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "service", "serve"], **env)


def test_a_port_in_use_is_one_line_naming_cds_bind():
    with listening() as port:
        problem = port_problem(f"127.0.0.1:{port}")
    assert problem is not None and "\n" not in problem
    assert f"port {port} on 127.0.0.1 is already in use" in problem
    assert f"CDS_BIND=127.0.0.1:{port + 1}" in problem


def test_a_free_port_or_a_unix_socket_is_no_problem():
    assert port_problem(f"127.0.0.1:{free_port()}") is None
    assert port_problem("unix:/tmp/legpain.sock") is None


@pytest.mark.parametrize(("bind", "expected"), [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("[::1]:9000", ("::1", 9000)),
    (":8001", ("0.0.0.0", 8001)),  # nosec B104: gunicorn's reading, not a bind
    ("localhost", ("localhost", 8000)),
    ("unix:/run/x.sock", None),
])
def test_binds_are_read_as_gunicorn_reads_them(bind, expected):
    assert split_bind(bind) == expected


@pytest.mark.parametrize(("env", "says"), [
    ({"CDS_API_KEYS": "short"}, "API key 'key-1' must be 16 to 256 characters"),
    ({"CDS_API_KEYS_FILE": "/nonexistent/keys"}, "CDS_API_KEYS_FILE '/nonexistent/keys' cannot be read"),
    ({"CDS_HOOKS_TRUSTED_ISSUERS": "{not json"}, "CDS_HOOKS_TRUSTED_ISSUERS"),
])
def test_a_malformed_key_or_issuer_list_is_one_line(env, says):
    problem = config_problem(env)
    assert problem is not None and problem.startswith("refusing to start: ") and "\n" not in problem
    assert says in problem


def test_a_good_configuration_is_no_problem():
    assert config_problem({}) is None
    assert config_problem({"CDS_API_KEYS": "ehr=" + "k" * 32}) is None
    assert config_problem({"CDS_HOOKS_TRUSTED_ISSUERS": "{not json", "CDS_HOOKS_ENABLED": "false"}) is None


def test_serve_with_a_short_api_key_prints_one_line_and_no_traceback():
    proc = serve(CDS_API_KEYS="short", CDS_BIND=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [config_problem({"CDS_API_KEYS": "short"})]


def test_serve_on_a_port_in_use_prints_one_line_and_exits():
    with listening() as port:
        proc = serve(CDS_BIND=f"127.0.0.1:{port}")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is already in use" in line and "CDS_BIND=" in line


@pytest.mark.slow
def test_gunicorn_as_the_container_runs_it_says_the_same_on_a_port_in_use():
    with listening() as port:
        proc = run(GUNICORN, CDS_BIND=f"127.0.0.1:{port}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Can't connect" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "already in use" in line]
    assert f"port {port} on 127.0.0.1 is already in use" in line and "CDS_BIND=" in line


@pytest.mark.slow
def test_gunicorn_with_a_short_api_key_prints_one_line():
    proc = run(GUNICORN, CDS_API_KEYS="short", CDS_BIND=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [config_problem({"CDS_API_KEYS": "short"})]
