"""The JWT audience is the configured public base URL, never the request's Host (issue 14,
point 5).

With issuers set and no CDS_HOOKS_BASE_URL, the audience used to be built from the request,
so a caller choosing the Host header chose the audience: a token minted by a trusted EHR for
another CDS service (aud https://other.example/cds-services/...) was accepted here when sent
with `Host: other.example`. Now the base URL is required whenever issuers are configured:
start-up refuses without it, with one line that says what to set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from service import create_app
from service.ehr.hooks_auth import HooksConfigError
from tests.ops_support import ROOT, free_port
from tests.test_exposure import clean_env, run_until_exit

ISS = "https://ehr.example.org"
KEY = ec.generate_private_key(ec.SECP384R1())
BASE_URL = "https://cds.example.org"
DISCOVERY = "/cds-services"


def issuers() -> str:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    return json.dumps({ISS: {"keys": [{**jwk, "kid": "k1", "alg": "ES384", "use": "sig"}]}})


def token(aud: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "exp": now + 120, "iat": now, "jti": str(uuid.uuid4())}, KEY,
                      algorithm="ES384", headers={"kid": "k1", "typ": "JWT"})


@pytest.mark.parametrize("base_url", [None, "", "  "])
def test_issuers_without_a_base_url_stop_the_start_with_one_line(base_url):
    config = {"TESTING": True, "HOOKS_TRUSTED_ISSUERS": issuers()}
    if base_url is not None:
        config["HOOKS_BASE_URL"] = base_url
    with pytest.raises(HooksConfigError) as info:
        create_app(config)
    assert "CDS_HOOKS_BASE_URL must be set" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("base_url", ["cds.example.org", "ftp://cds.example.org", "https://cds.example.org/?x=1",
                                      "https://user@cds.example.org", "https://cds.example.org/#f"])
def test_a_base_url_that_is_not_a_plain_http_url_is_refused(base_url):
    with pytest.raises(HooksConfigError, match="CDS_HOOKS_BASE_URL"):
        create_app({"TESTING": True, "HOOKS_TRUSTED_ISSUERS": issuers(), "HOOKS_BASE_URL": base_url})


def test_the_host_header_never_chooses_the_audience():
    client = create_app({"TESTING": True, "HOOKS_TRUSTED_ISSUERS": issuers(),
                         "HOOKS_BASE_URL": BASE_URL + "/"}).test_client()
    # a token for another service, replayed with that service's Host header
    foreign = token("https://other.example" + DISCOVERY)
    resp = client.get(DISCOVERY, headers={"Authorization": f"Bearer {foreign}", "Host": "other.example"})
    assert resp.status_code == 401
    resp = client.get(DISCOVERY, base_url="https://other.example", headers={"Authorization": f"Bearer {foreign}"})
    assert resp.status_code == 401
    # the configured base URL is the audience, whatever Host the request carries
    ours = token(BASE_URL + DISCOVERY)
    assert client.get(DISCOVERY, headers={"Authorization": f"Bearer {ours}", "Host": "anything.example"}
                      ).status_code == 200


@pytest.mark.slow
def test_gunicorn_refuses_issuers_without_a_base_url(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service:create_app()"]
    code, output, answered = run_until_exit(
        cmd, clean_env(CDS_BIND=f"127.0.0.1:{port}", CDS_HOOKS_TRUSTED_ISSUERS=issuers()), port, tmp_path)
    assert code != 0 and not answered
    assert "CDS_HOOKS_BASE_URL must be set" in output and "Traceback" not in output, output[-2000:]


def test_the_cli_refuses_issuers_without_a_base_url():
    proc = subprocess.run([sys.executable, "-m", "service", "serve"], cwd=ROOT, capture_output=True, text=True,
                          env=clean_env(CDS_HOOKS_TRUSTED_ISSUERS=issuers()), timeout=120)
    assert proc.returncode != 0
    assert "CDS_HOOKS_BASE_URL must be set" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
