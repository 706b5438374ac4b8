"""The refusal to serve beyond loopback without authentication.

Exposed (any listening address that is not loopback or a unix socket), the service needs
both, as *parsed*, not merely as non-empty variables:

- at least one API key for the native API (`CDS_API_KEYS=' '`, `','` or a key file holding
  only blank lines and comments give none);
- unless CDS Hooks is switched off (`CDS_HOOKS_ENABLED=false`), at least one trusted JWT
  issuer (`CDS_HOOKS_TRUSTED_ISSUERS='{}'` gives none).

Two places check, because neither alone sees everything:

- gunicorn (deploy/gunicorn.conf.py): `on_starting` checks the final `server.cfg.bind`, after
  the config file, the command line (`-b`) and `GUNICORN_CMD_ARGS` are merged, and
  `when_ready` checks the addresses of the sockets actually listening (systemd socket
  activation, inherited file descriptors);
- the app factory (`create_app`), so that another WSGI server cannot bypass the check. A
  factory cannot see the server's sockets, so it is told where it is served: `CDS_BIND`
  (comma-separated for several). The container and the Kubernetes manifests set it to
  `0.0.0.0:8000`, so any server started there refuses without authentication.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from service.errors import StartupRefused


class ExposureRefused(StartupRefused):
    """Bound beyond loopback without authentication."""


def is_loopback(bind: str) -> bool:
    """True for a gunicorn bind on loopback or a unix socket. An inherited file descriptor
    (`fd://N`) or a host name could be anything: not loopback (fail closed)."""
    bind = bind.strip()
    if bind.startswith("unix:"):
        return True
    if bind.startswith("fd://"):
        return False
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", a host name or a wildcard: assume it is reachable from elsewhere


def binds_of(raw: str | Iterable[str]) -> list[str]:
    """`CDS_BIND` (comma-separated) or a list of binds -> the non-blank binds."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [b.strip() for b in items if b and b.strip()]


def socket_bind(sock: socket.socket) -> str:
    """The address a listening socket really has, written as a gunicorn bind."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hooks_on(config: Mapping[str, Any]) -> bool:
    return str(config.get("HOOKS_ENABLED", "true")).lower() not in ("0", "false", "no")


def exposure_problem(binds: Iterable[str], config: Mapping[str, Any]) -> str | None:
    """Why the service must not serve on these binds with this configuration (the mapping of
    `service.config.load_config`), or None."""
    from service.ehr.hooks_auth import HooksConfigError, load_issuers
    from service.ops.auth import AuthConfigError, load_keys

    exposed = [b for b in binds_of(binds) if not is_loopback(b)]
    if not exposed:
        return None
    missing = []
    try:
        if not load_keys(str(config.get("API_KEYS") or ""), str(config.get("API_KEYS_FILE") or "")).enabled:
            missing.append("API keys for the native API: CDS_API_KEYS / CDS_API_KEYS_FILE give no key "
                           "(blank entries and comments do not count)")
    except AuthConfigError as exc:
        missing.append(f"usable API keys ({exc})")
    if _hooks_on(config):
        try:
            if not load_issuers(config.get("HOOKS_TRUSTED_ISSUERS")):
                missing.append("trusted JWT issuers for CDS Hooks: CDS_HOOKS_TRUSTED_ISSUERS gives no issuer "
                               "(or set CDS_HOOKS_ENABLED=false if no EHR calls the hooks)")
        except HooksConfigError as exc:
            missing.append(f"usable trusted issuers ({exc})")
    if not missing:
        return None
    return (f"refusing to start: bound to {', '.join(exposed)} (beyond loopback) without authentication: "
            + "; ".join(missing)
            + ". See the Security model in docs/operators.md, or bind to 127.0.0.1 for local use.")


def refuse_if_exposed(binds: Iterable[str], config: Mapping[str, Any]) -> None:
    problem = exposure_problem(binds, config)
    if problem:
        raise ExposureRefused(problem)
