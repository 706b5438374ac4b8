"""Configuration: embedded defaults, overridden by environment variables, overridden by the
mapping passed to `create_app` (tests). Every variable is listed in the README."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"

# name -> (environment variable, default, parser)
_SETTINGS: dict[str, tuple[str, Any, Any]] = {
    "RULES_DIR": ("CDS_RULES_DIR", str(DEFAULT_RULES_DIR), str),
    "MAX_CONTENT_LENGTH": ("CDS_MAX_BODY_BYTES", 256 * 1024, int),
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
