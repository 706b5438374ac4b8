"""Slow clients against real gunicorn: do a few connections that dribble their request body
tie up the service? Compares worker models in one run.

    .venv/bin/python bench/slow_clients.py [--slow 6] [--seconds 8]

For each worker model (sync, gthread), it starts gunicorn with the deploy config, opens
`--slow` connections that send a POST's headers and then one byte of body every 0.5 s, and
meanwhile probes GET /healthz/live every 0.2 s with a 1 s timeout. It reports the share of
probes answered and their latency, and (without slow clients) the evaluation throughput of
the same server, so that resistance and speed are weighed in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run as harness  # noqa: E402  (bench/run.py: start_server, wrk, lua_script)


def dribble(port: int, stop: threading.Event) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/evaluations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{")
        while not stop.is_set():
            s.sendall(b" ")
            time.sleep(0.5)
        s.close()
    except OSError:
        pass


def half_header(port: int, stop: threading.Event) -> None:
    """Send a request line and one header, never the blank line that ends the headers."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n")
        stop.wait()
        s.close()
    except OSError:
        pass


def idle(port: int, stop: threading.Event) -> None:
    """Connect and send nothing."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        stop.wait()
        s.close()
    except OSError:
        pass


@contextlib.contextmanager
def attack(port: int, *, half: int = 10, idle_conns: int = 50, dribblers: int = 16) -> Iterator[None]:
    """The three slow-client attacks of issue 14 at once, on loopback, until the block ends."""
    stop = threading.Event()
    threads = ([threading.Thread(target=half_header, args=(port, stop), daemon=True) for _ in range(half)]
               + [threading.Thread(target=idle, args=(port, stop), daemon=True) for _ in range(idle_conns)]
               + [threading.Thread(target=dribble, args=(port, stop), daemon=True) for _ in range(dribblers)])
    for t in threads:
        t.start()
    time.sleep(0.5)  # every connection open and (for dribblers) its headers sent
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)


def probe(port: int, seconds: float) -> dict[str, float]:
    ok, latencies, sent = 0, [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sent += 1
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/live", timeout=1) as r:
                if r.status == 200:
                    ok += 1
                    latencies.append((time.monotonic() - t0) * 1000)
        except OSError:
            pass
        time.sleep(0.2)
    latencies.sort()
    return {"probes": sent, "answered_pct": round(100 * ok / sent, 1),
            "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=6, help="slow connections (default 6: twice the workers)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    binary = harness.ensure_wrk()
    from service.config import DEFAULT_RULES_DIR
    from service.knowledge.loader import load_knowledge

    bodies, _ = harness.latency.build_inputs(load_knowledge(DEFAULT_RULES_DIR), 1000, 70_000, 20)
    report = {}
    for model in ("sync", "gthread"):
        port = harness.free_port()
        proc, _ = harness.start_server(port, args.workers, CDS_WORKER_CLASS=model)
        try:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                script = harness.lua_script(bodies, Path(tmp))
                harness.wrk(binary, f"http://127.0.0.1:{port}/v1/evaluations", 16, 2, script)
                speed = harness.wrk(binary, f"http://127.0.0.1:{port}/v1/evaluations", 16, 5, script)
            stop = threading.Event()
            threads = [threading.Thread(target=dribble, args=(port, stop), daemon=True) for _ in range(args.slow)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            under_attack = probe(port, args.seconds)
            stop.set()
            report[model] = {"evaluations_rps": speed["rps"], "evaluations_p99_ms": speed["p99_ms"],
                             "slow_clients": args.slow, "health_while_slow": under_attack}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
