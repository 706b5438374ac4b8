"""Graceful shutdown under real gunicorn: on SIGTERM readiness turns 503 first, requests keep
being served for CDS_DRAIN_SECONDS, a request in flight (a client still sending its body) is
answered in full, and the master exits 0. No request fails while a client that follows readiness
(as a load balancer does) keeps sending."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ops_support
import pytest
import requests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DRAIN = 1.5


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None
    error: str | None = None


def slow_request(port: int, body: bytes) -> tuple[socket.socket, bytes]:
    """Open a request and send all but its last bytes: the worker that accepted it is now busy."""
    head = (f"POST /v1/evaluations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Request-ID: in-flight-1\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(head + body[: len(body) // 2])
    return sock, body[len(body) // 2:]


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


def test_sigterm_turns_readiness_off_first_and_drains(tmp_path, knowledge):
    body = json.dumps(knowledge.cases[0].request).encode()
    with ops_support.gunicorn(tmp_path, CDS_ACCESS_LOG="off", CDS_DRAIN_SECONDS=str(DRAIN)) as server:
        url, port = server.url, server.port
        sock, rest = slow_request(port, body)
        time.sleep(0.3)  # let a worker accept it and block reading the body

        outcomes: list[Outcome] = []
        ready_log: list[tuple[float, int | str]] = []
        stop_sending = threading.Event()
        lock = threading.Lock()

        def load() -> None:
            # A client that follows readiness like a load balancer: stops once it sees 503.
            with requests.Session() as http:
                while not stop_sending.is_set():
                    t0 = time.monotonic()
                    try:
                        r = http.post(url + "/v1/evaluations", data=body, timeout=10,
                                      headers={"Content-Type": "application/json", "Connection": "close"})
                        o = Outcome(t0, time.monotonic(), r.status_code)
                    except requests.RequestException as exc:
                        o = Outcome(t0, time.monotonic(), None, exc.__class__.__name__)
                    with lock:
                        outcomes.append(o)

        def readiness() -> None:
            while server.proc.poll() is None:
                try:
                    r = requests.get(url + "/healthz/ready", timeout=2, headers={"Connection": "close"})
                    ready_log.append((time.monotonic(), r.status_code))
                    if r.status_code == 503:
                        stop_sending.set()
                except requests.RequestException as exc:
                    ready_log.append((time.monotonic(), exc.__class__.__name__))
                    stop_sending.set()
                time.sleep(0.05)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        threads.append(threading.Thread(target=readiness, daemon=True))
        for t in threads:
            t.start()
        time.sleep(0.5)  # load running
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        time.sleep(DRAIN + 0.5)  # past the drain delay: the worker has stopped accepting
        sock.sendall(rest)  # ... but still answers the request it holds
        status, answer = read_response(sock)
        sock.close()
        assert status == 200 and answer["urgency"]["tier"], answer

        code = server.proc.wait(timeout=30)
        exited_at = time.monotonic()
        stop_sending.set()
        for t in threads:
            t.join(timeout=15)
        output = server.output()

    assert code == 0, output[-3000:]
    before = [o for o in outcomes if o.started < sigterm_at]
    after = [o for o in outcomes if o.started >= sigterm_at]
    assert len(before) >= 5, "the load never ran"
    failed = [o for o in outcomes if o.status != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}"
    assert after, "no request was served after SIGTERM (during the drain delay)"

    first_503 = next((t for t, s in ready_log if s == 503), None)
    assert first_503 is not None, f"readiness never answered 503 after SIGTERM: {ready_log[-10:]}"
    assert sigterm_at < first_503 < sigterm_at + DRAIN, "readiness did not turn off within the drain delay"
    assert first_503 < exited_at
    assert all(s == 200 for t, s in ready_log if t < sigterm_at)
    assert exited_at - sigterm_at >= DRAIN, "exited before the drain delay"

    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert sum(1 for x in lines if x.get("event") == "drain") == 2  # both workers
    in_flight = [x for x in lines if x.get("event") == "request" and x.get("request_id") == "in-flight-1"]
    assert len(in_flight) == 1 and in_flight[0]["status"] == 200
    assert ops_support.port_answers(port) is False
