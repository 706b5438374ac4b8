"""Two FHIR R4 servers for the fetch path, answering the service's prefetch searches:

* `StubFhir`: hand-made, in process (a transport for `FhirFetcher`), fast, for unit tests;
* `SekmetServer`: the real sekmet-fhir server (SQLite), in its own venv (.venv-sekmet, made by
  `scripts/setup.sh test`), bound to 127.0.0.1, simulator off, bearer token required.

tests/test_fhir_contract.py runs the same searches against both so the stub stays faithful.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "contract-test-token"
SEKMET_BIN = Path(__file__).resolve().parents[1] / os.environ.get("SEKMET_VENV", ".venv-sekmet") / "bin" / "sekmet"
# The search parameters the prefetch templates use; the stub refuses any other (as sekmet does
# under Prefer: handling=strict), so a template that starts using a new one fails here first.
_STUB_PARAMS = {"patient", "code", "category", "status", "clinical-status", "_sort", "_count"}


def _tokens(resource: dict[str, Any], key: str) -> set[tuple[str, str]]:
    value = resource.get(key)
    concepts = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return {(c.get("system", ""), c.get("code", "")) for cc in concepts for c in cc.get("coding", [])}


def _token_match(wanted: str, have: set[tuple[str, str]]) -> bool:
    for item in wanted.split(","):
        system, _, code = item.rpartition("|") if "|" in item else ("", "", item)
        if any((code == c or (code == "" and system == s)) and (not system or system == s) for s, c in have):
            return True
    return False


def _date_of(r: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "performedDateTime", "authoredOn", "recordedDate", "issued"):
        if isinstance(r.get(key), str):
            return r[key]
    return ""


class StubFhir:
    """The searches of the prefetch templates over a list of resources. Call it as the
    fetcher's transport: (url, headers, timeout, max_bytes) -> (status, body)."""

    def __init__(self, base: str, resources: list[dict[str, Any]], token: str = TOKEN) -> None:
        self.base = base.rstrip("/")
        self.resources = resources
        self.token = token
        self.urls: list[str] = []

    def __call__(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> tuple[int, bytes]:
        self.urls.append(url)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b""
        path, _, query = url[len(self.base) + 1:].partition("?")
        parts = path.split("/")
        if len(parts) == 2:
            for r in self.resources:
                if r["resourceType"] == parts[0] and r["id"] == parts[1]:
                    return 200, json.dumps(r).encode()
            return 404, b""
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        if set(params) - _STUB_PARAMS:
            return 400, json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-supported"}]}).encode()
        found = []
        for r in self.resources:
            if r["resourceType"] != parts[0]:
                continue
            if r.get("subject", {}).get("reference") != f"Patient/{params.get('patient')}":
                continue
            if "code" in params and not _token_match(params["code"], _tokens(r, "code")):
                continue
            if "category" in params and not _token_match(params["category"], _tokens(r, "category")):
                continue
            if "status" in params and r.get("status") not in params["status"].split(","):
                continue
            if "clinical-status" in params and not _token_match(params["clinical-status"],
                                                                _tokens(r, "clinicalStatus")):
                continue
            found.append(r)
        if params.get("_sort") == "-date":
            found.sort(key=_date_of, reverse=True)
        found = found[: int(params.get("_count", "100"))]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                  "entry": [{"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r,
                             "search": {"mode": "match"}} for r in found]}
        return 200, json.dumps(bundle).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SekmetServer:
    """sekmet-fhir on 127.0.0.1 with a fresh SQLite file; `stop()` ends only its own process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.workdir = workdir
        (workdir / "settings.yaml").write_text(json.dumps({
            "base_url": self.base, "host": "127.0.0.1", "port": self.port, "data_dir": str(workdir / "data"),
            "simulator": {"enabled": False},  # no simulated lab, pharmacy or payer answering our data
            "server_auth": {"types": ["bearer"], "tokens": [TOKEN]},
            "log_inbound": False,
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.workdir / "server.log", "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen([str(SEKMET_BIN), "serve", "-c", str(self.workdir / "settings.yaml")],
                                         cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sekmet-fhir exited with {self.proc.returncode}: "
                                   f"{(self.workdir / 'server.log').read_text()[-2000:]}")
            try:
                self.get("metadata")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sekmet-fhir did not answer /metadata on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only what we started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def headers(self) -> dict[str, str]:
        # strict: a search parameter the server does not support is an error, not ignored
        return {"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json",
                "Content-Type": "application/fhir+json", "Prefer": "handling=strict"}

    def get(self, relative: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.base}/{relative}", headers=self.headers())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.load(resp))

    def load(self, resources: list[dict[str, Any]]) -> dict[str, Any]:
        """All resources in one transaction Bundle (PUT with their ids, so references hold)."""
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources]}
        req = urllib.request.Request(self.base, data=json.dumps(tx).encode(), headers=self.headers(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return dict(json.load(resp))

    def transport(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> tuple[int, bytes]:
        """The service's reads, with Prefer: handling=strict added."""
        from service.ehr.cds_hooks import urllib_transport

        return urllib_transport(url, {**headers, "Prefer": "handling=strict"}, timeout, max_bytes)
