"""API keys for the native API, and security headers. (The refusal to run exposed and open is
service/app/exposure.py.)

Keys come from `CDS_API_KEYS` (comma-separated) and/or `CDS_API_KEYS_FILE` (one key per
line, `#` comments; `name=key` names a client for the logs). Only SHA-256 digests are kept in
memory; a presented key is hashed and compared with every digest in constant time
(`hmac.compare_digest`, no early exit), so neither timing nor a memory dump gives a key away.

Protected: everything under /v1/ (and /metrics when `CDS_PROTECT_METRICS=true`). Open: the
health probes, /openapi.json, the nurse page and its assets (the page sends the key the nurse
enters), and /cds-services, which has its own JWT authentication (service/ehr/hooks_auth.py).
No key -> 401; a key that is not valid -> 403; both as problem+json.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from flask import Flask, Response, g, request

from service.errors import ServiceError, StartupRefused

log = logging.getLogger("service.auth")
HEADER = "X-API-Key"
MAX_KEY_LENGTH = 256
MIN_KEY_LENGTH = 16


class AuthConfigError(StartupRefused):
    """The auth configuration is unusable: the service must not start."""


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class ApiKeys:
    def __init__(self, keys: dict[str, str]) -> None:
        # name -> digest; the keys themselves are not kept
        self._digests: list[tuple[str, bytes]] = [(name, _digest(key)) for name, key in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def match(self, presented: str) -> str | None:
        """The client name for a valid key, else None. Compares against every digest."""
        candidate = _digest(presented)
        found = None
        for name, digest in self._digests:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = name
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def load_keys(inline: str, path: str) -> ApiKeys:
    entries: list[str] = [k.strip() for k in inline.split(",") if k.strip()] if inline else []
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"CDS_API_KEYS_FILE {path!r} cannot be read ({exc.__class__.__name__})") from None
        entries += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    keys: dict[str, str] = {}
    for n, entry in enumerate(entries, start=1):
        name, _, key = entry.partition("=") if "=" in entry else (f"key-{n}", "", entry)
        name, key = name.strip(), key.strip()
        if not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
            raise AuthConfigError(
                f"API key {name!r} must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters "
                f"(generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if name in keys:
            raise AuthConfigError(f"API key name {name!r} is used twice")
        keys[name] = key
    return ApiKeys(keys)


def _protected(path: str, protect_metrics: bool) -> bool:
    return path.startswith("/v1/") or (protect_metrics and path == "/metrics")


def init_app(app: Flask) -> None:
    cfg = app.config
    keys = load_keys(str(cfg.get("API_KEYS") or ""), str(cfg.get("API_KEYS_FILE") or ""))
    protect_metrics = str(cfg.get("PROTECT_METRICS", "")).lower() in ("1", "true", "yes")
    app.extensions["api_keys"] = keys
    if keys.enabled:
        log.info("native API: API key required (%d key(s))", len(keys))
    else:
        log.warning("native API is OPEN: no API keys configured (CDS_API_KEYS / CDS_API_KEYS_FILE); "
                    "the service must stay bound to loopback")

    @app.before_request
    def _require_key() -> None:
        if not keys.enabled or not _protected(request.path, protect_metrics):
            return
        presented = request.headers.get(HEADER)
        if not presented:
            raise Unauthorized(f"Send your API key in the {HEADER} header.")
        name = keys.match(presented[:MAX_KEY_LENGTH + 1])
        if name is None:
            raise Forbidden("This API key is not valid.")
        g.api_client = name  # a name from the key file, never the key

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        h = resp.headers
        # Each header is added unless the response already has it (what `setdefault` did, in
        # the same order, appended at the end), from one pass over the headers: werkzeug's
        # `setdefault` scans them and raises and catches a KeyError for every header missing,
        # about 3 µs each, on every response.
        req = request._get_current_object()  # one proxy lookup, not two
        present = {key.lower() for key, _ in h.items()}
        for key, value in _SECURITY_HEADERS:
            if key.lower() not in present:
                h.add(key, value)
        if not req.path.startswith("/ui/static/") and "cache-control" not in present:
            h.add("Cache-Control", "no-store")  # answers about patients are never cached
        if req.is_secure and "strict-transport-security" not in present:
            h.add("Strict-Transport-Security", "max-age=31536000")
        if resp.status_code == 401 and "www-authenticate" not in present:
            h.add("WWW-Authenticate", f'ApiKey header="{HEADER}"')
        return resp


_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # The page sets its own policy (service/web/ui.py); everything else is data, never a document.
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
