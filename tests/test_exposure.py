"""No listening beyond loopback without authentication (issue 14, point 1).

Each of these listened on 0.0.0.0 and answered without a key or JWT: `-b 0.0.0.0:P` on
gunicorn's command line, `GUNICORN_CMD_ARGS=--bind=0.0.0.0:P`, `CDS_BIND=0.0.0.0:P` with
`CDS_API_KEYS=' '` or `,` or an empty key file, `CDS_HOOKS_TRUSTED_ISSUERS='{}'`. gunicorn now
checks its final binds (after config file, command line and GUNICORN_CMD_ARGS) and the sockets
it really listens on, and counts parsed keys and issuers; the app factory refuses on its own
too (CDS_BIND), for any other WSGI server. Real gunicorn for each variant: it must exit non-zero
with a message that says what to set, and never answer on the port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from service import create_app
from service.app.exposure import ExposureRefused, exposure_problem
from tests.ops_support import ROOT, free_port, port_answers, stop

KEY = "exposure-test-key-0123456789abcdef"
BASE_URL = "https://cds.example.org"
START_TIMEOUT = 30.0


def trusted_issuers() -> dict[str, Any]:
    """A CDS_HOOKS_TRUSTED_ISSUERS value with one issuer and one fresh EC P-384 public key."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    return {"https://ehr.example.org": {"keys": [{**jwk, "kid": "k1", "alg": "ES384", "use": "sig"}]}}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CDS_", "GUNICORN_")) and k not in ("PROMETHEUS_MULTIPROC_DIR",)}
    env.update({"CDS_WORKERS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_until_exit(cmd: list[str], env: dict[str, str], port: int, tmp: Path) -> tuple[int, str, bool]:
    """Run until it exits (at most START_TIMEOUT); (exit code, output, whether the port ever
    accepted a connection on 0.0.0.0, probed through 127.0.0.1)."""
    answered = False
    with open(tmp / "out", "w+b") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                answered = answered or port_answers(port)
                time.sleep(0.05)
            if proc.poll() is None:
                pytest.fail(f"still running after {START_TIMEOUT:.0f} s: it started exposed and open")
            out.seek(0)
            return proc.returncode, out.read().decode("utf-8", "replace"), answered
        finally:
            stop(proc)


GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"]
APP = "service:create_app()"


def _variants(tmp: Path, port: int) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (command, environment, what the message must name)."""
    empty_file = tmp / "empty-keys"
    empty_file.write_text("\n# only a comment\n   \n")
    hooks_ok = {"CDS_HOOKS_TRUSTED_ISSUERS": json.dumps(trusted_issuers()), "CDS_HOOKS_BASE_URL": BASE_URL}
    keys_ok = {"CDS_API_KEYS": KEY}
    wildcard = f"0.0.0.0:{port}"
    return {
        # the bind from the command line / GUNICORN_CMD_ARGS, CDS_BIND left at loopback
        "-b on the command line": ([*GUNICORN, "-b", wildcard, APP], clean_env(), "CDS_API_KEYS"),
        "GUNICORN_CMD_ARGS": ([*GUNICORN, APP], clean_env(GUNICORN_CMD_ARGS=f"--bind={wildcard}"), "CDS_API_KEYS"),
        "second bind on the command line": ([*GUNICORN, "-b", "127.0.0.1:0", "-b", wildcard, APP],
                                            clean_env(), "CDS_API_KEYS"),
        # keys that parse to nothing
        "CDS_API_KEYS=' '": ([*GUNICORN, APP], clean_env(CDS_BIND=wildcard, CDS_API_KEYS=" ", **hooks_ok),
                             "CDS_API_KEYS"),
        "CDS_API_KEYS=','": ([*GUNICORN, APP], clean_env(CDS_BIND=wildcard, CDS_API_KEYS=",", **hooks_ok),
                             "CDS_API_KEYS"),
        "empty key file": ([*GUNICORN, APP], clean_env(CDS_BIND=wildcard, CDS_API_KEYS_FILE=str(empty_file),
                                                       **hooks_ok), "CDS_API_KEYS"),
        # issuers that parse to nothing
        "CDS_HOOKS_TRUSTED_ISSUERS='{}'": ([*GUNICORN, APP],
                                           clean_env(CDS_BIND=wildcard, CDS_HOOKS_TRUSTED_ISSUERS="{}", **keys_ok),
                                           "CDS_HOOKS_TRUSTED_ISSUERS"),
        # keys given, but the wildcard comes from the command line and issuers are empty
        "-b with '{}' issuers": ([*GUNICORN, "-b", wildcard, APP],
                                 clean_env(CDS_HOOKS_TRUSTED_ISSUERS="{}", **keys_ok), "CDS_HOOKS_TRUSTED_ISSUERS"),
        # without the deploy config: gunicorn has no hooks, the factory refuses (CDS_BIND)
        "no config file, CDS_BIND": ([sys.executable, "-m", "gunicorn", "--preload", "-b", wildcard, APP],
                                     clean_env(CDS_BIND=wildcard, CDS_API_KEYS=","), "CDS_API_KEYS"),
    }


VARIANTS = ["-b on the command line", "GUNICORN_CMD_ARGS", "second bind on the command line", "CDS_API_KEYS=' '",
            "CDS_API_KEYS=','", "empty key file", "CDS_HOOKS_TRUSTED_ISSUERS='{}'", "-b with '{}' issuers",
            "no config file, CDS_BIND"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_gunicorn_refuses_every_exposed_and_open_variant(tmp_path, variant):
    port = free_port()
    cmd, env, names = _variants(tmp_path, port)[variant]
    code, output, answered = run_until_exit(cmd, env, port, tmp_path)
    assert code != 0, output[-2000:]
    assert not answered, f"{variant}: something answered on port {port}"
    assert "refusing to start" in output and names in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]  # one clear line, not a stack
    assert KEY not in output


@pytest.mark.slow
def test_gunicorn_serves_exposed_with_a_key_and_an_issuer(tmp_path):
    """Control: the same command with real authentication starts, and the key is required.
    (Bound to 0.0.0.0, probed only through 127.0.0.1.)"""
    import requests

    port = free_port()
    env = clean_env(CDS_API_KEYS=KEY, CDS_HOOKS_TRUSTED_ISSUERS=json.dumps(trusted_issuers()),
                    CDS_HOOKS_BASE_URL=BASE_URL)
    with open(tmp_path / "out", "w+b") as out:
        proc = subprocess.Popen([*GUNICORN, "-b", f"0.0.0.0:{port}", APP], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                assert proc.poll() is None, (tmp_path / "out").read_text()[-2000:]
                assert time.monotonic() < deadline, "not ready"
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz/ready", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            assert requests.get(f"http://127.0.0.1:{port}/v1/findings", timeout=5).status_code == 401
            assert requests.get(f"http://127.0.0.1:{port}/v1/findings", headers={"X-API-Key": KEY},
                                timeout=5).status_code == 200
            assert requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=5).status_code == 401
        finally:
            stop(proc)


# --- the factory on its own ------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    {"BIND": "0.0.0.0:8000"},
    {"BIND": "0.0.0.0:8000", "API_KEYS": " ", "HOOKS_ENABLED": "false"},
    {"BIND": "0.0.0.0:8000", "API_KEYS": ",", "HOOKS_ENABLED": "false"},
    {"BIND": "127.0.0.1:8000, 10.0.0.5:8000", "API_KEYS": KEY, "HOOKS_TRUSTED_ISSUERS": "{}"},
    {"BIND": "fd://3", "API_KEYS": KEY, "HOOKS_ENABLED": "false", "API_KEYS_FILE": "/nonexistent/keys"},
])
def test_the_factory_refuses_to_be_served_exposed_and_open(config):
    with pytest.raises(ExposureRefused, match="refusing to start"):
        create_app({"TESTING": True, **config})


def test_the_factory_counts_keys_in_the_file_not_the_setting(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# rotated out\n\n")
    with pytest.raises(ExposureRefused, match="CDS_API_KEYS"):
        create_app({"BIND": "0.0.0.0:8000", "API_KEYS_FILE": str(keys), "HOOKS_ENABLED": "false"})
    keys.write_text(f"ehr={KEY}\n")
    create_app({"BIND": "0.0.0.0:8000", "API_KEYS_FILE": str(keys), "HOOKS_ENABLED": "false"})


def test_loopback_and_unix_sockets_may_run_open():
    assert exposure_problem(["127.0.0.1:8000", "[::1]:8000", "unix:/run/cds.sock"], {}) is None
    create_app({"TESTING": True, "BIND": "127.0.0.1:9000"})


def test_the_message_is_one_line_and_names_what_to_set():
    message = exposure_problem(["0.0.0.0:1"], {"API_KEYS": " ", "HOOKS_TRUSTED_ISSUERS": "{}"})
    assert message is not None and "\n" not in message
    assert "CDS_API_KEYS" in message and "CDS_HOOKS_TRUSTED_ISSUERS" in message and "0.0.0.0:1" in message
