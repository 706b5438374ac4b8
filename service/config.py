"""Configuration: embedded defaults, overridden by environment variables, overridden by the
mapping passed to `create_app` (tests). Every variable is listed in docs/operators.md (Configuration)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"

# name -> (environment variable, default, parser)
_SETTINGS: dict[str, tuple[str, Any, Any]] = {
    "RULES_DIR": ("CDS_RULES_DIR", str(DEFAULT_RULES_DIR), str),
    "MAX_CONTENT_LENGTH": ("CDS_MAX_BODY_BYTES", 256 * 1024, int),
    # Where the service is served, comma-separated gunicorn-style binds. gunicorn binds it; the
    # app factory refuses to serve non-loopback binds without authentication (service/app/exposure.py),
    # so another WSGI server must be given its listen address here.
    "BIND": ("CDS_BIND", "127.0.0.1:8000", str),
    # Native API keys (service/ops/auth.py)
    "API_KEYS": ("CDS_API_KEYS", "", str),  # comma-separated keys (16-256 characters each)
    "API_KEYS_FILE": ("CDS_API_KEYS_FILE", "", str),  # file: one key (or name=key) per line
    "PROTECT_METRICS": ("CDS_PROTECT_METRICS", "false", str),  # true: /metrics needs an API key too
    "HOOKS_ENABLED": ("CDS_HOOKS_ENABLED", "true", str),  # false: no /cds-services endpoints
    # CDS Hooks (service/ehr/cds_hooks.py, service/ehr/hooks_auth.py)
    "HOOKS_TRUSTED_ISSUERS": ("CDS_HOOKS_TRUSTED_ISSUERS", "", str),  # JSON {iss: JWKS path | JWKS}; empty: open
    "HOOKS_CORS_ORIGINS": ("CDS_HOOKS_CORS_ORIGINS", "", str),  # comma-separated EHR origins
    "HOOKS_BASE_URL": ("CDS_HOOKS_BASE_URL", "", str),  # public base URL the JWT aud is checked against
    "HOOKS_JWT_MAX_LIFETIME": ("CDS_HOOKS_JWT_MAX_LIFETIME", 3600, int),  # seconds, exp - iat
    "HOOKS_JWT_LEEWAY": ("CDS_HOOKS_JWT_LEEWAY", 30, int),  # seconds of clock skew
    "HOOKS_REPLAY_CACHE_SIZE": ("CDS_HOOKS_REPLAY_CACHE_SIZE", 100_000, int),  # jti entries per process
    "HOOKS_REPLAY_DB": ("CDS_HOOKS_REPLAY_DB", "", str),  # SQLite jti store shared by a pod's workers
    "HOOKS_REPLAY_REDIS_URL": ("CDS_HOOKS_REPLAY_REDIS_URL", "", str),  # Redis jti store shared by every pod
    "HOOKS_FHIR_SERVERS": ("CDS_HOOKS_FHIR_SERVERS", "", str),  # FHIR bases the service may read with a token
    "HOOKS_FHIR_TIMEOUT": ("CDS_HOOKS_FHIR_TIMEOUT", 5.0, float),  # seconds per FHIR read
    "HOOKS_MAX_BODY_BYTES": ("CDS_HOOKS_MAX_BODY_BYTES", 2 * 1024 * 1024, int),  # CDS Hooks bodies (prefetch)
    "HOOKS_OBSERVATION_MAX_AGE_DAYS": ("CDS_HOOKS_OBSERVATION_MAX_AGE_DAYS", 7, int),  # older ones are not used
    "LOG_LEVEL": ("CDS_LOG_LEVEL", "info", str),  # the service's JSON logs (and gunicorn's)
    "BUILD_REVISION": ("CDS_BUILD_REVISION", "unknown", str),  # legpain_cds_build_info{revision}
}


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, (env, default, parse) in _SETTINGS.items():
        raw = os.environ.get(env)
        config[name] = parse(raw) if raw not in (None, "") else default
    config.update(overrides or {})
    return config


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, setting) rows for documentation."""
    return [(env, str(default), name) for name, (env, default, _) in _SETTINGS.items()]
