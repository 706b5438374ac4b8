"""CDS Client authentication: signed JWT bearer tokens from trusted issuers (CDS Hooks 2.0
"Trusting CDS Clients" and the cds-hooks.org security best practices). Keys are generated at
test time; the spec's example private key is deliberately not used."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jsonschema import Draft202012Validator, FormatChecker

from service import create_app
from service.ehr.hooks_auth import (
    AuthenticationFailed,
    Authenticator,
    HooksConfigError,
    ReplayCache,
    load_issuers,
)
from tests.conftest import SHARED as SHARED_ROOT

ROOT = Path(__file__).resolve().parent.parent
SHARED = SHARED_ROOT / "cds-hooks"
ISS_EC = "https://ehr.example.org"
ISS_RSA = "https://other-ehr.example.com/"
ISS_JKU = "https://jku-ehr.example.net"
JKU = "https://jku-ehr.example.net/.well-known/jwks.json"
BASE = "http://localhost"
DISCOVERY = "/cds-services"
SERVICE = "/cds-services/leg-pain-triage"
FEEDBACK = SERVICE + "/feedback"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.ECAlgorithm if alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SHARED / "schemas" / f"{name}.schema.json").read_text()),
                                format_checker=FormatChecker())


@pytest.fixture(scope="module")
def issuers_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("jwks") / "other-ehr.jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1", "RS384")]}))
    return {
        ISS_EC: {"keys": [public_jwk(EC_KEY, "ec-1", "ES384")]},  # inline JWKS
        ISS_RSA: str(path),  # JWKS file
        ISS_JKU: {"jwks": {"keys": [public_jwk(EC_KEY, "ec-j", "ES384")]}, "jku": [JKU]},
    }


@pytest.fixture(scope="module")
def app(issuers_config):
    return create_app({"TESTING": True, "HOOKS_TRUSTED_ISSUERS": json.dumps(issuers_config),
                       "HOOKS_CORS_ORIGINS": "https://ehr.example.org", "HOOKS_BASE_URL": BASE})


@pytest.fixture()
def client(app):
    return app.test_client()


def token(path: str = SERVICE, *, iss: str = ISS_EC, key: Any = EC_KEY, alg: str = "ES384", kid: str = "ec-1",
          aud: Any = None, exp: float | None = None, iat: float | None = None, jti: str | None = None,
          drop: tuple[str, ...] = (), headers: dict[str, Any] | None = None, **claims: Any) -> str:
    now = time.time()
    payload = {"iss": iss, "aud": aud if aud is not None else BASE + path,
               "exp": int(exp if exp is not None else now + 300), "iat": int(iat if iat is not None else now),
               "jti": jti or str(uuid.uuid4()), "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2", **claims}
    for claim in drop:
        payload.pop(claim)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


REQUEST = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
           "context": {"userId": "Practitioner/example", "patientId": "1288992"},
           "prefetch": {"patient": None, "observations": None, "conditions": None}}


def is_unauthorized(resp) -> None:
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = resp.get_json()
    assert body == {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "security", "details": {"text": "Unauthorized"}}]}


@pytest.fixture()
def auth_logs():
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage() + " " + json.dumps(getattr(record, "cds_fields", None), default=str))

    logger = logging.getLogger("service")
    handler = _Keep(level=logging.DEBUG)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


# --- accepted ------------------------------------------------------------------------------


def test_valid_es384_token_on_every_endpoint(client):
    assert client.get(DISCOVERY, headers=bearer(token(DISCOVERY))).status_code == 200
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(SERVICE))).status_code == 200
    fb = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                        "outcomeTimestamp": "2025-01-01T00:00:00Z"}]}
    assert client.post(FEEDBACK, json=fb, headers=bearer(token(FEEDBACK))).status_code == 200
    # feedback may also name the service endpoint as its audience
    assert client.post(FEEDBACK, json=fb, headers=bearer(token(FEEDBACK, aud=BASE + SERVICE))).status_code == 200


def test_valid_rs384_token_from_a_jwks_file(client):
    t = token(iss=ISS_RSA, key=RSA_KEY, alg="RS384", kid="rsa-1")
    assert client.post(SERVICE, json=REQUEST, headers=bearer(t)).status_code == 200


def test_aud_may_be_an_array(client):
    t = token(aud=["https://elsewhere.example/x", BASE + SERVICE])
    assert client.post(SERVICE, json=REQUEST, headers=bearer(t)).status_code == 200


def test_jku_must_be_configured_for_its_issuer(client):
    good = token(iss=ISS_JKU, kid="ec-j", headers={"jku": JKU})
    assert client.post(SERVICE, json=REQUEST, headers=bearer(good)).status_code == 200
    is_unauthorized(client.post(SERVICE, json=REQUEST, headers=bearer(
        token(iss=ISS_JKU, kid="ec-j", headers={"jku": "https://attacker.example/jwks"}))))
    is_unauthorized(client.post(SERVICE, json=REQUEST, headers=bearer(
        token(kid="ec-1", headers={"jku": "https://attacker.example/jwks"}))))


@pytest.mark.needs_shared
def test_the_token_validates_against_the_shared_jwt_schemas():
    t = token()
    assert list(schema("jwt-header").iter_errors(jwt.get_unverified_header(t))) == []
    assert list(schema("jwt-payload").iter_errors(jwt.decode(t, options={"verify_signature": False}))) == []


def test_preflight_needs_no_token(client):
    resp = client.options(SERVICE, headers={"Origin": "https://ehr.example.org",
                                            "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "authorization,content-type"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"


def test_401_carries_cors_headers_so_the_browser_can_read_it(client):
    resp = client.get(DISCOVERY, headers={"Origin": "https://ehr.example.org"})
    is_unauthorized(resp)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"


def test_native_api_is_not_behind_the_cds_hooks_token(client):
    assert client.get("/v1/findings").status_code == 200


# --- refused -------------------------------------------------------------------------------


def _none_token() -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec-1"}).encode())
    now = int(time.time())
    body = jwt.utils.base64url_encode(json.dumps({"iss": ISS_EC, "aud": BASE + SERVICE, "exp": now + 300,
                                                  "iat": now, "jti": str(uuid.uuid4())}).encode())
    return f"{header.decode()}.{body.decode()}."


def _hs256_with_public_key() -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public key (which an attacker knows)."""
    pem = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "ec-1"}
    now = int(time.time())
    payload = {"iss": ISS_EC, "aud": BASE + SERVICE, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    signing_input = (jwt.utils.base64url_encode(json.dumps(header).encode()) + b"."
                     + jwt.utils.base64url_encode(json.dumps(payload).encode()))
    import hashlib
    import hmac

    sig = jwt.utils.base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + sig).decode()


REFUSED = {
    "no header": lambda: None,
    "basic auth": lambda: "Basic dXNlcjpwYXNz",
    "garbage": lambda: "Bearer not.a.jwt",
    "expired": lambda: "Bearer " + token(exp=time.time() - 3600, iat=time.time() - 3900),
    "expired beyond the leeway": lambda: "Bearer " + token(exp=time.time() - 31, iat=time.time() - 300),
    "not yet valid": lambda: "Bearer " + token(nbf=int(time.time()) + 600),
    "wrong audience": lambda: "Bearer " + token(aud=BASE + "/cds-services/another-service"),
    "audience of discovery": lambda: "Bearer " + token(DISCOVERY),
    "other host": lambda: "Bearer " + token(aud="https://cds.example.org" + SERVICE),
    "unknown issuer": lambda: "Bearer " + token(iss="https://unknown-ehr.example"),
    "alg none": lambda: "Bearer " + _none_token(),
    "HS256 shared secret": lambda: "Bearer " + jwt.encode(
        {"iss": ISS_EC, "aud": BASE + SERVICE, "exp": int(time.time()) + 300, "iat": int(time.time()),
         "jti": str(uuid.uuid4())}, "a-shared-secret-of-at-least-32-bytes!!", algorithm="HS256",
        headers={"kid": "ec-1"}),
    "HS256 keyed with the public key": lambda: "Bearer " + _hs256_with_public_key(),
    "ES256 not allowed": lambda: "Bearer " + token(key=ec.generate_private_key(ec.SECP256R1()), alg="ES256"),
    "RS256 not allowed": lambda: "Bearer " + token(iss=ISS_RSA, key=RSA_KEY, alg="RS256", kid="rsa-1"),
    "unknown kid": lambda: "Bearer " + token(kid="nope"),
    "signed by another key": lambda: "Bearer " + token(key=OTHER_EC_KEY),
    "RS384 header for an EC kid": lambda: "Bearer " + token(key=RSA_KEY, alg="RS384", kid="ec-1"),
    "issued in the future": lambda: "Bearer " + token(iat=time.time() + 600, exp=time.time() + 900),
    "lives too long": lambda: "Bearer " + token(exp=time.time() + 7200),
    "no jti": lambda: "Bearer " + token(drop=("jti",)),
    "no exp": lambda: "Bearer " + token(drop=("exp",)),
    "no iat": lambda: "Bearer " + token(drop=("iat",)),
    "no aud": lambda: "Bearer " + token(drop=("aud",)),
    "typ not JWT": lambda: "Bearer " + token(headers={"typ": "at+jwt"}),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refused_tokens_get_a_bare_401(client, auth_logs, case):
    header = REFUSED[case]()
    headers = {"Authorization": header} if header else {}
    is_unauthorized(client.post(SERVICE, json=REQUEST, headers=headers))
    if header and header.startswith("Bearer "):
        parts = [p for p in header[len("Bearer "):].split(".") if len(p) > 10]
        assert not any(p in line for p in parts for line in auth_logs)
    assert any("rejected (401)" in line for line in auth_logs)


def test_a_replayed_jti_is_refused(client):
    t = token()
    assert client.post(SERVICE, json=REQUEST, headers=bearer(t)).status_code == 200
    is_unauthorized(client.post(SERVICE, json=REQUEST, headers=bearer(t)))
    # the same jti in a freshly signed token is a replay too
    jti = str(uuid.uuid4())
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(jti=jti))).status_code == 200
    is_unauthorized(client.post(SERVICE, json=REQUEST, headers=bearer(token(jti=jti))))
    # another issuer may use the same jti
    assert client.post(SERVICE, json=REQUEST, headers=bearer(
        token(iss=ISS_RSA, key=RSA_KEY, alg="RS384", kid="rsa-1", jti=jti))).status_code == 200


def test_tokens_are_never_logged(client, auth_logs):
    good = token()
    client.post(SERVICE, json=REQUEST, headers=bearer(good))
    client.post(SERVICE, json=REQUEST, headers=bearer(good))  # replay: logged as rejected
    client.post(SERVICE, json=REQUEST, headers=bearer(token(exp=time.time() - 100, iat=time.time() - 400)))
    assert auth_logs
    signature = good.split(".")[2]
    assert not any(good in line or signature in line for line in auth_logs)


def test_the_configured_base_url_is_the_audience(issuers_config):
    app = create_app({"TESTING": True, "HOOKS_TRUSTED_ISSUERS": issuers_config,
                      "HOOKS_BASE_URL": "https://cds.example.org/"})
    c = app.test_client()
    assert c.get(DISCOVERY, headers=bearer(token(aud="https://cds.example.org/cds-services"))).status_code == 200
    is_unauthorized(c.get(DISCOVERY, headers=bearer(token(DISCOVERY))))  # http://localhost/... is not us


# --- the spec's example token --------------------------------------------------------------


@pytest.mark.needs_shared
def test_the_spec_example_jwt_verifies_against_its_published_jwks():
    jwks = json.loads((SHARED / "examples" / "spec-2.0.1" / "jwks-public.json").read_text())
    header = json.loads((SHARED / "examples" / "spec-2.0.1" / "jwt-authorization-header.json").read_text())
    payload = json.loads((SHARED / "examples" / "spec-2.0.1" / "jwt-payload.json").read_text())
    issuers = load_issuers({payload["iss"]: {"jwks": jwks, "jku": ["https://fhir-ehr.example.com/jwk_uri"]}})
    auth = Authenticator(issuers, max_lifetime=10**9)
    claims = auth.verify(header["Authorization"], [payload["aud"]], now=payload["exp"] - 60)
    assert claims == payload
    with pytest.raises(AuthenticationFailed, match="expired"):
        Authenticator(issuers, max_lifetime=10**9).verify(header["Authorization"], [payload["aud"]])
    with pytest.raises(AuthenticationFailed, match="lifetime"):  # it lived 3.5 years
        Authenticator(issuers).verify(header["Authorization"], [payload["aud"]], now=payload["exp"] - 60)


# --- configuration -------------------------------------------------------------------------


def _ec_jwk(**changes: Any) -> dict[str, Any]:
    jwk = public_jwk(EC_KEY, "k", "ES384")
    jwk.update(changes)
    return {k: v for k, v in jwk.items() if v is not None}


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", "not JSON"),
    ("[]", "JSON object"),
    ({"https://x": {"keys": []}}, "non-empty 'keys'"),
    ({"https://x": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}}, "only EC and RSA"),
    ({"https://x": {"keys": [_ec_jwk(kid=None)]}}, "no 'kid'"),
    ({"https://x": {"keys": [_ec_jwk(alg="HS256")]}}, "alg 'HS256'"),
    ({"https://x": {"keys": [_ec_jwk(use="enc")]}}, "not a signing key"),
    ({"https://x": {"keys": [{**_ec_jwk(), "d": "private"}]}}, "private key"),
    ({"https://x": {"keys": [_ec_jwk(), _ec_jwk()]}}, "appears twice"),
    ({"https://x": "/no/such/jwks.json"}, "cannot read"),
    ({"https://x": {"jwks": {"keys": [_ec_jwk()]}, "jku": ["http://plain.example/jwks"]}}, "https"),
    ({"https://x": {"jwks": {"keys": [_ec_jwk()]}, "cache": 1}}, "unknown settings"),
])
def test_bad_issuer_configuration_is_refused(raw, message):
    with pytest.raises(HooksConfigError, match=message):
        load_issuers(raw)


def test_bad_issuer_configuration_stops_the_service(monkeypatch):
    monkeypatch.setenv("CDS_HOOKS_TRUSTED_ISSUERS", json.dumps({"https://x": {"keys": [{"kty": "oct", "k": "c2Vj",
                                                                                         "kid": "h"}]}}))
    with pytest.raises(HooksConfigError, match="only EC and RSA"):
        create_app({"TESTING": True})


@pytest.mark.parametrize("raw", [None, "", {}])
def test_no_issuers_means_open(raw):
    assert load_issuers(raw) == {}
    assert not Authenticator({}).enabled


def test_replay_cache_is_bounded_and_forgets_expired_tokens():
    cache = ReplayCache(max_entries=3)
    now = 1000.0
    assert cache.add("i", "a", now + 10, now)
    assert not cache.add("i", "a", now + 10, now)
    assert cache.add("j", "a", now + 10, now)  # per issuer
    for jti in "bcdef":
        assert cache.add("i", jti, now + 10, now)
    assert len(cache) == 3  # bounded: the oldest went first
    assert cache.add("i", "a", now + 10, now)  # evicted, so no longer known (documented trade-off)
    later = now + 20
    assert cache.add("i", "g", later + 10, later)
    assert len(cache) == 1  # everything expired was dropped
