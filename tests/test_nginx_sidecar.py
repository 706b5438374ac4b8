"""The nginx sidecar (deploy/nginx/nginx.conf) keeps slow clients away from gunicorn's workers
(issue 14, point 7).

Real nginx (Debian's, installed by scripts/setup-system.sh) runs the shipped configuration, only
moved to free loopback ports and a temporary directory, in front of real gunicorn with the deploy
configuration. Under 10 connections sending half a header, 50 idle ones and 16 dribbling their
bodies at once, every health probe through nginx is answered. The same attack straight at gunicorn
is run first, to show that it is a real attack.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ops_support
import pytest
import requests
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
sys.path.insert(0, str(ROOT / "bench"))
import slow_clients  # noqa: E402  (bench/slow_clients.py: the attacks and the probe)

PROBE_SECONDS = 5.0  # 0.2 s apart, 1 s timeout each: about 20 probes


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.skip("nginx is not installed (scripts/setup-system.sh installs Debian's as root with apt-get)")
    return found


def render(tmp: Path, listen: int, upstream: int) -> Path:
    text = CONF.read_text()
    for needle in ("listen 8080;", "server 127.0.0.1:8000;", "/tmp/nginx"):
        assert needle in text, f"{needle!r} is no longer in {CONF.name}: update this test"
    text = (text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
            .replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
            .replace("/tmp/nginx", str(tmp)))
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


def nginx_args(binary: str, tmp: Path, conf: Path) -> list[str]:
    # As root nginx would switch its worker to `nobody`, which cannot enter pytest's 0700 temp dirs.
    extra = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    return [binary, "-p", str(tmp), "-c", str(conf), "-e", "stderr", "-g", extra]


def deployed_worker_class() -> str:
    """The gunicorn worker class the Deployment runs behind this sidecar."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()))
    api = next(c for c in docs[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "api")
    return {e["name"]: e.get("value") for e in api["env"]}.get("CDS_WORKER_CLASS", "gthread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[int, int]]:
    """(nginx port, gunicorn port): gunicorn with the deploy config and the Deployment's worker
    class, with nginx in front."""
    binary = nginx_binary()
    tmp = tmp_path_factory.mktemp("nginx")
    with ops_support.gunicorn(tmp_path_factory.mktemp("gunicorn"), CDS_ACCESS_LOG="off",
                              CDS_WORKER_CLASS=deployed_worker_class()) as server:
        port = ops_support.free_port()
        conf = render(tmp, port, server.port)
        check = subprocess.run([*nginx_args(binary, tmp, conf)[:-2], "-t"], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stderr
        with open(tmp / "nginx.log", "wb") as log:
            proc = subprocess.Popen(nginx_args(binary, tmp, conf), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not ops_support.port_answers(port):
                assert proc.poll() is None, (tmp / "nginx.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
            yield port, server.port
        finally:
            ops_support.stop(proc, timeout=10)


def test_through_nginx_every_health_probe_is_answered_under_all_three_attacks(stack):
    nginx, gunicorn = stack
    with slow_clients.attack(gunicorn):
        direct = slow_clients.probe(gunicorn, PROBE_SECONDS)
    assert direct["answered_pct"] < 100, f"the attack did not hurt bare gunicorn ({direct}): it proves nothing"
    time.sleep(1)  # let gunicorn's workers finish with the attackers' connections
    with slow_clients.attack(nginx):
        proxied = slow_clients.probe(nginx, PROBE_SECONDS)
    print(json.dumps({"direct": direct, "through_nginx": proxied}))
    assert proxied["probes"] >= 10
    assert proxied["answered_pct"] == 100.0, proxied


def test_evaluations_and_errors_pass_through(stack, knowledge):
    nginx, _ = stack
    url = f"http://127.0.0.1:{nginx}"
    r = requests.post(url + "/v1/evaluations", json=knowledge.cases[0].request, timeout=10)
    assert r.status_code == 200 and r.json()["urgency"]["tier"]
    assert "X-Request-ID" in r.headers and r.headers.get("Server") == "nginx"  # no version (server_tokens off)
    # Over the service's 256 KiB (nginx passes it on): the service's own problem+json 413.
    r = requests.post(url + "/v1/evaluations", data=b"{" + b" " * (300 * 1024) + b"}",
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["status"] == 413
    # Over the proxy's 2 MiB: refused by nginx, still problem+json.
    r = requests.post(url + "/cds-services/leg-pain-triage", data=b" " * (3 * 1024 * 1024),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.headers["Content-Type"] == "application/problem+json"
    assert json.loads(r.content)["status"] == 413


def test_a_client_that_never_finishes_its_headers_is_cut_off(stack):
    """client_header_timeout: the connection is closed, not held for ever."""
    nginx, _ = stack
    timeout = int(next(line.split()[1].rstrip("s;") for line in CONF.read_text().splitlines()
                       if line.strip().startswith("client_header_timeout")))
    assert timeout <= 10
    s = socket.create_connection(("127.0.0.1", nginx), timeout=timeout + 5)
    s.sendall(b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    try:
        data = s.recv(4096)
    except ConnectionResetError:
        data = b""
    s.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
    assert timeout - 1 <= time.monotonic() - t0 <= timeout + 3


def test_the_deployment_runs_this_file_as_a_sidecar():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text()))
    pod = docs[0]["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    assert names == ["api", "proxy"]
    proxy = next(c for c in pod["containers"] if c["name"] == "proxy")
    assert [p["containerPort"] for p in proxy["ports"] if p["name"] == "http"] == [8080]
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "nginx-configmap.yaml").read_text())
    assert configmap["data"]["nginx.conf"] == CONF.read_text(), "regenerate deploy/k8s/nginx-configmap.yaml"
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert mounts["/etc/nginx/nginx.conf"]["subPath"] == "nginx.conf"
    assert "/tmp/nginx" in mounts

