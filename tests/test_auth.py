"""API keys on the native API, security headers on every response, and the refusal to run
exposed beyond loopback without authentication."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import create_app
from service.app.exposure import exposure_problem, is_loopback
from service.ops.auth import AuthConfigError, load_keys
from tests.conftest import ROOT
from tests.test_exposure import trusted_issuers

KEY = "k3y-for-tests-0123456789abcdef"
OTHER = "not-the-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_app():
    return create_app({"API_KEYS": KEY})


@pytest.fixture()
def keyed(keyed_app):
    return keyed_app.test_client()


def test_no_key_is_401_with_a_challenge(keyed):
    resp = keyed.post("/v1/evaluations", json={"findings": []})
    assert resp.status_code == 401 and resp.mimetype == "application/problem+json"
    assert resp.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    assert resp.get_json()["title"] == "Authentication required"


def test_a_wrong_key_is_403_and_says_nothing_more(keyed):
    resp = keyed.get("/v1/findings", headers={"X-API-Key": OTHER})
    assert resp.status_code == 403 and resp.mimetype == "application/problem+json"
    assert OTHER not in resp.get_data(as_text=True) and KEY not in resp.get_data(as_text=True)


def test_the_right_key_passes(keyed):
    resp = keyed.post("/v1/evaluations", json={"findings": [{"code": "back_pain"}]}, headers={"X-API-Key": KEY})
    assert resp.status_code == 200


@pytest.mark.parametrize("path", ["/healthz/live", "/healthz/ready", "/openapi.json", "/", "/ui/static/ui.js",
                                  "/metrics", "/cds-services"])
def test_probes_docs_page_metrics_and_hooks_stay_open(keyed, path):
    with keyed.get(path) as resp:
        assert resp.status_code == 200, path


def test_metrics_can_be_protected_too():
    client = create_app({"API_KEYS": KEY, "PROTECT_METRICS": "true"}).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200


def test_keys_from_a_file_with_names_and_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# EHR gateway\nehr={KEY}\n\nnurse-desk={OTHER}\n")
    keys = load_keys("", str(path))
    assert keys.match(KEY) == "ehr" and keys.match(OTHER) == "nurse-desk" and keys.match("x" * 20) is None


def test_keys_are_kept_only_as_digests():
    keys = load_keys(KEY, "")
    assert KEY not in repr(vars(keys)) and KEY.encode() not in b"".join(d for _, d in keys._digests)


@pytest.mark.parametrize("bad", ["short", "a=" + "x" * 300, f"{KEY},{KEY}".replace(KEY, "same=" + KEY, 2)])
def test_unusable_key_configuration_stops_the_start(bad):
    with pytest.raises(AuthConfigError):
        load_keys(bad, "")
    with pytest.raises(AuthConfigError):
        create_app({"API_KEYS": bad})


def test_a_missing_key_file_stops_the_start(tmp_path):
    with pytest.raises(AuthConfigError, match="CDS_API_KEYS_FILE"):
        create_app({"API_KEYS_FILE": str(tmp_path / "nope")})


@pytest.mark.parametrize("path", ["/v1/findings", "/healthz/live", "/nope", "/openapi.json", "/cds-services"])
def test_security_headers_on_every_response(keyed, path):
    resp = keyed.get(path, headers={"X-API-Key": KEY})
    for header in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy"):
        assert header in resp.headers, (path, header)
    assert resp.headers["Cache-Control"] == "no-store"


def test_the_page_keeps_its_own_policy(keyed):
    assert "script-src 'self'" in keyed.get("/").headers["Content-Security-Policy"]


@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1:8000", True), ("127.0.0.5:1", True), ("localhost:8000", True), ("[::1]:8000", True),
    ("unix:/tmp/x.sock", True), ("0.0.0.0:8000", False), (":8000", False), ("10.1.2.3:80", False),
    ("[::]:8000", False), ("example.org:80", False), ("fd://3", False),
])
def test_is_loopback(bind, loopback):
    assert is_loopback(bind) is loopback


def test_exposure_needs_both_api_keys_and_hook_issuers():
    jwks = trusted_issuers()
    message = exposure_problem(["0.0.0.0:8000"], {})
    assert "CDS_API_KEYS" in message and "CDS_HOOKS_TRUSTED_ISSUERS" in message
    assert "CDS_HOOKS_TRUSTED_ISSUERS" not in exposure_problem(["0.0.0.0:8000"], {"HOOKS_ENABLED": "false"})
    assert exposure_problem(["0.0.0.0:8000"], {"API_KEYS": KEY, "HOOKS_ENABLED": "false"}) is None
    assert exposure_problem(["0.0.0.0:8000"], {"API_KEYS": KEY, "HOOKS_TRUSTED_ISSUERS": jwks}) is None
    assert exposure_problem(["127.0.0.1:8000"], {}) is None


def test_hooks_can_be_switched_off():
    client = create_app({"HOOKS_ENABLED": "false"}).test_client()
    assert client.get("/cds-services").status_code == 404


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(extra)
    return env


def test_serve_refuses_to_bind_beyond_loopback_without_auth():
    proc = subprocess.run([sys.executable, "-m", "service", "serve", "--bind", "0.0.0.0:8999"], cwd=ROOT,
                          env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and "CDS_API_KEYS" in proc.stderr


@pytest.mark.slow
def test_gunicorn_itself_refuses_before_binding():
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service:create_app()"],
                          cwd=ROOT, env=_clean_env(CDS_BIND="0.0.0.0:8998"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "refusing to start" in proc.stderr and "CDS_HOOKS_TRUSTED_ISSUERS" in proc.stderr
