"""Helpers for the operations tests that start real processes (gunicorn, Prometheus).

Not a test module: imported by test_logs.py, test_metrics.py, test_prometheus_integration.py and
test_shutdown.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service:create_app()"]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Gunicorn:
    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str]
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the server wrote so far, stdout then stderr."""
        return (self.stdout_path.read_text(encoding="utf-8", errors="replace")
                + self.stderr_path.read_text(encoding="utf-8", errors="replace"))

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output().splitlines() if line.strip()]


def gunicorn_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CDS_") and k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
    env.update({"CDS_BIND": f"127.0.0.1:{port}", "CDS_WORKERS": "2", "PYTHONUNBUFFERED": "1", **extra})
    return env


def wait_ready(server: Gunicorn, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.proc.returncode} before it was ready:\n"
                        f"{server.output()[-3000:]}")
        try:
            r = requests.get(server.url + "/healthz/ready", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.1)
    pytest.fail(f"gunicorn not ready after {timeout:.0f} s (last: {last}):\n{server.output()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def gunicorn(tmp: Path, port: int | None = None, **env: str) -> Iterator[Gunicorn]:
    """Real gunicorn with deploy/gunicorn.conf.py (2 sync workers, preload); stopped on exit."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    out_path, err_path = tmp / "gunicorn.stdout", tmp / "gunicorn.stderr"
    full_env = gunicorn_env(port, **env)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    server = Gunicorn(proc, port, out_path, err_path, full_env)
    try:
        wait_ready(server)
        yield server
    finally:
        server.http.close()
        stop(proc)
