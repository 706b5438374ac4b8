"""A real Prometheus server scrapes real gunicorn (2 workers, multiprocess metrics) and reports
exactly the number of evaluations sent, summed over the workers.

Prometheus is Debian's `prometheus` package (scripts/setup-system.sh), run as a plain binary on a
free port with a temporary storage directory; its first sample lands a few seconds after start,
so it is started before gunicorn and the query API is polled.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ops_support
import pytest
import requests

pytestmark = pytest.mark.slow

N = 40
SCRAPE_TIMEOUT = 30.0


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.url, self.log = proc, f"http://127.0.0.1:{port}", log

    def query(self, expr: str) -> list[dict]:
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, want: float, timeout: float = SCRAPE_TIMEOUT) -> float | None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.scalar(expr)
            if got == want:
                return got
            time.sleep(0.5)
        return got


@pytest.fixture()
def prometheus_for(tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the Prometheus server is not installed (bash scripts/setup-system.sh installs it)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Prometheus:
        port = ops_support.free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: legpain-cds\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            encoding="utf-8")
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        started.append(proc)
        prom = Prometheus(proc, port, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if requests.get(prom.url + "/-/ready", timeout=1).status_code == 200:
                    return prom
            except requests.RequestException:
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready:\n{log.read_text(errors='replace')[-3000:]}")

    yield start
    for proc in started:
        ops_support.stop(proc, timeout=10)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ops_support.Gunicorn]:
    with ops_support.gunicorn(tmp_path / "gunicorn", CDS_ACCESS_LOG="off") as srv:
        yield srv


def test_prometheus_counts_exactly_n_evaluations_across_workers(prometheus_for, knowledge, tmp_path):
    port = ops_support.free_port()
    prom = prometheus_for(port)  # first: its first scrape comes a few seconds after start
    multiproc = tmp_path / "multiproc"
    with ops_support.gunicorn(tmp_path / "gunicorn", port=port, CDS_ACCESS_LOG="off",
                              PROMETHEUS_MULTIPROC_DIR=str(multiproc)) as server:
        _send_and_check(server, prom, knowledge, multiproc)


def _send_and_check(server: ops_support.Gunicorn, prom: Prometheus, knowledge, multiproc: Path) -> None:
    cases = [c for c in knowledge.cases if c.request.get("findings")]
    tiers: collections.Counter[str] = collections.Counter()
    pids: set[int] = set()

    def post(i: int) -> requests.Response:
        # a fresh connection each time, four at once: both sync workers get some
        return requests.post(server.url + "/v1/evaluations", json=cases[i % len(cases)].request, timeout=10,
                             headers={"Connection": "close"})

    with ThreadPoolExecutor(max_workers=4) as pool:
        for r in pool.map(post, range(N)):
            assert r.status_code == 200, r.text[:500]
            tiers[r.json()["urgency"]["tier"]] += 1
    # a few requests that are not evaluations must not count as ones
    assert requests.post(server.url + "/v1/evaluations", json={"findings": [{"code": "zz"}]}, timeout=10).status_code \
        == 422
    requests.get(server.url + "/v1/findings", timeout=10)

    for line in server.json_lines():
        if line.get("event") == "evaluation":
            pids.add(line["pid"])
    assert len(pids) >= 2, f"all evaluations went to one worker ({pids}): the test proves nothing about summing"
    files = sorted(p.name for p in multiproc.glob("counter_*.db"))
    assert len(files) >= 2, files

    got = prom.wait_for('sum(legpain_cds_evaluations_total{job="legpain-cds"})', N)
    assert got == N, f"Prometheus reports {got} evaluations, sent {N}; prometheus log:\n" \
                     f"{prom.log.read_text(errors='replace')[-2000:]}"
    by_tier = {r["metric"]["tier"]: float(r["value"][1])
               for r in prom.query('sum by (tier) (legpain_cds_evaluations_total{job="legpain-cds"})')}
    assert {t: v for t, v in by_tier.items() if v} == {t: float(n) for t, n in tiers.items()}
    ok = prom.scalar('sum(legpain_cds_http_requests_total{route="/v1/evaluations",method="POST",status="200"})')
    assert ok == N
    assert prom.scalar('sum(legpain_cds_http_request_duration_seconds_count{route="/v1/evaluations"})') == N + 1
    assert prom.scalar('sum(legpain_cds_validation_errors_total{reason="unknown-code"})') == 1
    assert prom.scalar(f'legpain_cds_ruleset_info{{sha256="{knowledge.sha256}"}}') == 1
    assert prom.scalar('up{job="legpain-cds"}') == 1


def test_multiprocess_exposition_passes_promtool(server):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (bash scripts/setup-system.sh installs it)")
    for _ in range(4):
        requests.post(server.url + "/v1/evaluations", json={"findings": []}, timeout=10,
                      headers={"Connection": "close"})
    text = requests.get(server.url + "/metrics", timeout=10).content
    assert b"legpain_cds_evaluations_total" in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
