"""Checks before the service starts, each answered with one line that says what to change.

Without them a first run ends in a traceback (a short API key: 30 lines from inside the app
factory) or in gunicorn's retry loop and "Can't connect" (a port already in use). Used by the
gunicorn configuration (so the container gets them too) and by `python -m service serve`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any

DEFAULT_BIND = "127.0.0.1:8000"


def config_problem(env: Mapping[str, Any]) -> str | None:
    """The API keys and trusted issuers as the app will read them; their error as one line."""
    from service.ehr.hooks_auth import HooksConfigError, load_issuers
    from service.ops.auth import AuthConfigError, load_keys

    try:
        load_keys(str(env.get("CDS_API_KEYS") or ""), str(env.get("CDS_API_KEYS_FILE") or ""))
    except AuthConfigError as exc:
        return f"refusing to start: {exc}"
    if str(env.get("CDS_HOOKS_ENABLED", "true")).lower() not in ("0", "false", "no"):
        try:
            load_issuers(str(env.get("CDS_HOOKS_TRUSTED_ISSUERS") or ""))
        except HooksConfigError as exc:
            return f"refusing to start: CDS_HOOKS_TRUSTED_ISSUERS: {exc}"
    return None


def split_bind(bind: str) -> tuple[str, int] | None:
    """host and port of a TCP bind as gunicorn reads it (`host:port`, `[v6]:port`, `host`), or
    None for unix sockets and file descriptors."""
    if bind.startswith(("unix:", "fd://")) or "/" in bind:
        return None
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        port = rest.lstrip(":")
    elif bind.count(":") == 1:
        host, _, port = bind.partition(":")
    else:
        host, port = bind, "8000"
    try:
        # Bandit B104: gunicorn's own reading of ":8000" (all interfaces), only probed, never served.
        return host or "0.0.0.0", int(port)  # nosec B104
    except ValueError:
        return None


def port_problem(bind: str) -> str | None:
    """One line when `bind`'s port is taken, saying how to pick another; else None (any other
    bind error is left to gunicorn, which reports it)."""
    parsed = split_bind(bind)
    if parsed is None:
        return None
    host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None
            other = f"[{host}]:{port + 1}" if family == socket.AF_INET6 else f"{host}:{port + 1}"
            return (f"port {port} on {host} is already in use (another server, or an earlier run still going); "
                    f"pick another with CDS_BIND, e.g. CDS_BIND={other} bash scripts/serve.sh")
    return None
