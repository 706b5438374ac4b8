"""Authentication of CDS Clients: the signed JWT bearer token of CDS Hooks 2.0.

Every call to /cds-services (discovery, service, feedback) must carry
`Authorization: Bearer <JWT>` once trusted issuers are configured. The token is accepted
only when (cds-hooks.org security best practices, in this order):

1. its header names an allowed asymmetric algorithm (ES384 or RS384; never `none`, never
   HMAC) and a `kid`;
2. its `iss` is on the allowlist, and its `jku` (if any) is one configured for that issuer
   (the service never fetches a `jku`: key sets are configured out of band);
3. the signature verifies against that issuer's key with that `kid`;
4. `aud` is the exact URL called; `exp` is in the future, `iat` not in the future, and the
   token lives no longer than `CDS_HOOKS_JWT_MAX_LIFETIME`;
5. its `jti` has not been seen before from that issuer (replay).

Any failure answers 401 with the same fixed body: no detail of what failed. Tokens are
never logged, stored or echoed; only the reason class is logged.

Configuration (`CDS_HOOKS_TRUSTED_ISSUERS`): a JSON object mapping each trusted `iss` to its
JWK Set, given as a file path, an inline JWKS object, or
`{"jwks": <path or JWKS>, "jku": ["https://ehr.example/jwks"]}`. Empty: the endpoints are
open (a warning is logged at start).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK

from service.ehr.replay_store import ReplayStore, ReplayStoreError
from service.errors import StartupRefused

log = logging.getLogger("service.hooks_auth")

ALLOWED_ALGORITHMS = ("ES384", "RS384")
_ALG_KTY = {"ES384": "EC", "RS384": "RSA"}


class HooksConfigError(StartupRefused, ValueError):
    """The trusted-issuer configuration is unusable: the service must not start."""


class AuthenticationFailed(Exception):
    """The token is not acceptable. `reason` is for the log only, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Issuer:
    iss: str
    keys: dict[str, PyJWK]  # kid -> key
    jku: frozenset[str] = frozenset()


# --- configuration -------------------------------------------------------------------------


def _load_jwks(iss: str, spec: Any) -> dict[str, Any]:
    if isinstance(spec, str):
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except OSError as exc:
            raise HooksConfigError(f"issuer {iss!r}: cannot read JWKS file {spec!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise HooksConfigError(f"issuer {iss!r}: JWKS file is not JSON ({exc.msg})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("keys"), list) or not spec["keys"]:
        raise HooksConfigError(f"issuer {iss!r}: a JWKS is an object with a non-empty 'keys' array")
    return spec


def _load_keys(iss: str, jwks: dict[str, Any]) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for i, jwk in enumerate(jwks["keys"]):
        if not isinstance(jwk, dict):
            raise HooksConfigError(f"issuer {iss!r}: key {i} is not an object")
        kid, kty = jwk.get("kid"), jwk.get("kty")
        if not isinstance(kid, str) or not kid:
            raise HooksConfigError(f"issuer {iss!r}: key {i} has no 'kid' (CDS Hooks requires one)")
        if kty not in ("EC", "RSA"):
            # Symmetric ("oct") keys would allow HMAC tokens, which CDS Hooks forbids.
            raise HooksConfigError(f"issuer {iss!r}: key {kid!r} has kty {kty!r}; only EC and RSA public keys")
        if "d" in jwk:
            raise HooksConfigError(f"issuer {iss!r}: key {kid!r} is a private key; configure public keys only")
        if jwk.get("use", "sig") != "sig":
            raise HooksConfigError(f"issuer {iss!r}: key {kid!r} is not a signing key (use={jwk.get('use')!r})")
        alg = jwk.get("alg")
        if alg is not None and alg not in ALLOWED_ALGORITHMS:
            raise HooksConfigError(f"issuer {iss!r}: key {kid!r} has alg {alg!r}; allowed: {ALLOWED_ALGORITHMS}")
        if kid in keys:
            raise HooksConfigError(f"issuer {iss!r}: kid {kid!r} appears twice")
        try:
            keys[kid] = PyJWK(jwk, algorithm=alg or ("ES384" if kty == "EC" else "RS384"))
        except jwt.PyJWTError as exc:
            raise HooksConfigError(f"issuer {iss!r}: key {kid!r} is not usable: {exc}") from None
    return keys


def load_issuers(raw: str | Mapping[str, Any] | None) -> dict[str, Issuer]:
    """Parse CDS_HOOKS_TRUSTED_ISSUERS (JSON text, or a mapping in tests)."""
    if raw is None or raw == "" or raw == {}:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HooksConfigError(f"CDS_HOOKS_TRUSTED_ISSUERS is not JSON ({exc.msg})") from None
    if not isinstance(raw, Mapping):
        raise HooksConfigError("CDS_HOOKS_TRUSTED_ISSUERS must be a JSON object: iss -> JWKS")
    issuers: dict[str, Issuer] = {}
    for iss, spec in raw.items():
        if not isinstance(iss, str) or not iss:
            raise HooksConfigError("CDS_HOOKS_TRUSTED_ISSUERS: every issuer must be a non-empty string")
        jku: Iterable[str] = ()
        if isinstance(spec, dict) and "jwks" in spec:
            extra = set(spec) - {"jwks", "jku"}
            if extra:
                raise HooksConfigError(f"issuer {iss!r}: unknown settings {sorted(extra)}")
            jku = spec.get("jku") or ()
            if isinstance(jku, str):
                jku = [jku]
            if not all(isinstance(u, str) and u.startswith("https://") for u in jku):
                raise HooksConfigError(f"issuer {iss!r}: 'jku' must be https URLs")
            spec = spec["jwks"]
        issuers[iss] = Issuer(iss, _load_keys(iss, _load_jwks(iss, spec)), frozenset(jku))
    return issuers


# --- replay protection ---------------------------------------------------------------------


@dataclass
class ReplayCache:
    """`jti`s seen, until their token expires. Bounded (oldest dropped first when full) and
    per process: the fallback when no shared store is configured (in-process use and tests).
    Under gunicorn, deploy/gunicorn.conf.py configures the SQLite store shared by the workers,
    or Redis is configured for every pod (service/ehr/replay_store.py)."""

    max_entries: int = 100_000
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, iss: str, jti: str, exp: float, now: float) -> bool:
        """Record the jti; False when it was already seen (a replay)."""
        key = (iss, jti)
        with self._lock:
            while self._seen:  # drop expired entries (insertion order ~ expiry order)
                oldest_key, oldest_exp = next(iter(self._seen.items()))
                if oldest_exp >= now:
                    break
                del self._seen[oldest_key]
            if key in self._seen and self._seen[key] >= now:
                return False
            self._seen[key] = exp
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._seen)


# --- verification --------------------------------------------------------------------------


class Authenticator:
    def __init__(self, issuers: dict[str, Issuer], *, leeway: int = 30, max_lifetime: int = 3600,
                 replay_cache_size: int = 100_000, replay_store: ReplayStore | None = None) -> None:
        self.issuers = issuers
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        # Shared by the workers (SQLite) or the pods (Redis) when configured: service/ehr/replay_store.py
        self.replay: ReplayStore = replay_store or ReplayCache(replay_cache_size)

    @property
    def enabled(self) -> bool:
        return bool(self.issuers)

    def verify(self, authorization: str | None, audiences: list[str], now: float | None = None) -> dict[str, Any]:
        """Check the Authorization header; the verified claims, or AuthenticationFailed."""
        now = time.time() if now is None else now
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthenticationFailed("no bearer token")
        token = authorization[len("Bearer "):].strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed token") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationFailed("algorithm not allowed")
        if header.get("typ", "JWT") != "JWT":
            raise AuthenticationFailed("typ is not JWT")
        issuer = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if issuer is None:
            raise AuthenticationFailed("issuer not trusted")
        jku = header.get("jku")
        if jku is not None and jku not in issuer.jku:
            raise AuthenticationFailed("jku not allowed for this issuer")
        key = issuer.keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
        if key is None:
            raise AuthenticationFailed("unknown kid")
        if key.key_type != _ALG_KTY[alg] or (key.algorithm_name and key.algorithm_name != alg):
            raise AuthenticationFailed("key does not match the algorithm")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audiences,
                issuer=issuer.iss,
                # exp / iat / nbf are checked below against `now`
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False},
            )
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("audience is not the URL called") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid token ({exc.__class__.__name__})") from None
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthenticationFailed("jti is not a string")
        if isinstance(exp, bool) or isinstance(iat, bool) or not isinstance(exp, int | float) \
                or not isinstance(iat, int | float):
            raise AuthenticationFailed("exp / iat are not numbers")
        if exp + self.leeway <= now:
            raise AuthenticationFailed("expired")
        if iat > now + self.leeway:
            raise AuthenticationFailed("issued in the future")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + self.leeway):
            raise AuthenticationFailed("not yet valid (nbf)")
        if exp - iat > self.max_lifetime:
            raise AuthenticationFailed("lifetime longer than allowed")
        try:
            fresh = self.replay.add(issuer.iss, jti, float(exp) + self.leeway, now)
        except ReplayStoreError as exc:  # fail closed: without the store a replay cannot be told
            log.error("CDS Hooks replay store unavailable: %s", exc)
            raise AuthenticationFailed("replay store unavailable") from None
        if not fresh:
            raise AuthenticationFailed("jti replayed")
        return claims
