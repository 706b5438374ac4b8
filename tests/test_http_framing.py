"""HTTP framing against real gunicorn (issue 14, points 4 and 11), with raw sockets where a
client library would refuse to send what an attacker sends.

* A chunked body with a bad chunk size is the client's error: 400, not 500.
* A chunked body over the size limit is refused (413), not cut at the limit and evaluated.
* An answer that leaves the body unread (413, broken chunks) says `Connection: close` and closes,
  so a client that reuses connections is not reset on its next request.
* While a worker drains after SIGTERM, every response says `Connection: close`, so keep-alive
  clients move to a new connection before the worker stops.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from pathlib import Path

import ops_support
import pytest
import requests

pytestmark = pytest.mark.slow

LIMIT = 256 * 1024  # CDS_MAX_BODY_BYTES default
HOOKS_LIMIT = 2 * 1024 * 1024  # CDS_HOOKS_MAX_BODY_BYTES default


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ops_support.gunicorn(tmp_path_factory.mktemp("framing"), CDS_ACCESS_LOG="off") as s:
        yield s


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes, bool]:
    """Send `data`, read one response: (status, headers, body, closed by the server after it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may answer and close before it has read everything
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {buf[:200]!r}"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed in the middle of the body"
            rest += chunk
        try:
            sock.settimeout(3)
            closed = sock.recv(1) == b""
        except ConnectionResetError:  # closed with unread bytes in its buffer: a reset, after the answer
            closed = True
        except TimeoutError:
            closed = False
        return status, headers, rest[:length], closed
    finally:
        sock.close()


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def post_head(path: str, extra: str = "Transfer-Encoding: chunked\r\n") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def padded_evaluation(knowledge, size: int) -> bytes:
    """A valid evaluation request padded with trailing whitespace to `size` bytes: cut anywhere
    past its JSON, it still parses, which is how a cut body used to be evaluated."""
    body = json.dumps(knowledge.cases[0].request).encode()
    return body + b" " * (size - len(body))


def test_a_bad_chunk_size_is_a_400_that_closes(server):
    status, headers, body, closed = exchange(server.port, post_head("/v1/evaluations") + b"ZZ\r\n{}\r\n0\r\n\r\n")
    assert status == 400, body
    problem = json.loads(body)
    assert "chunked" in problem["detail"]
    assert headers["connection"] == "close" and closed


def test_a_chunked_body_within_the_limit_is_evaluated(server, knowledge):
    status, headers, body, _ = exchange(server.port, post_head("/v1/evaluations")
                                        + chunked(padded_evaluation(knowledge, LIMIT)))
    assert status == 200, body
    assert json.loads(body)["urgency"]["tier"]
    assert headers["connection"] == "keep-alive"


def test_a_chunked_body_over_the_limit_is_a_413_not_cut_and_evaluated(server, knowledge):
    status, headers, body, closed = exchange(server.port, post_head("/v1/evaluations")
                                             + chunked(padded_evaluation(knowledge, LIMIT + 1)))
    assert status == 413, body[:300]
    assert json.loads(body)["status"] == 413
    assert headers["connection"] == "close" and closed


def test_a_chunked_cds_hooks_body_over_its_limit_is_a_413_operation_outcome(server):
    status, headers, body, closed = exchange(server.port, post_head("/cds-services/leg-pain-triage")
                                             + chunked(b"{" + b" " * HOOKS_LIMIT + b"}", 256 * 1024))
    assert status == 413, body[:300]
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert headers["connection"] == "close" and closed


def test_a_413_from_content_length_closes_before_reading_the_body(server):
    """Only the headers and a little of the body are sent: the 413 comes back at once and the
    server closes, instead of promising keep-alive on a socket full of unread body."""
    head = post_head("/v1/evaluations", f"Content-Length: {LIMIT * 4}\r\n")
    status, headers, _, closed = exchange(server.port, head + b"{" + b" " * 1000)
    assert status == 413
    assert headers["connection"] == "close" and closed


def test_a_client_that_reuses_connections_survives_a_413(server, knowledge):
    """requests.Session keeps connections alive: after a 413 it must open a new one (the server
    said close) and the next request succeeds on it."""
    good = json.dumps(knowledge.cases[0].request)
    with requests.Session() as http:
        for _ in range(5):
            r = http.post(server.url + "/v1/evaluations", data=b"{" + b" " * (LIMIT + 10) + b"}",
                          headers={"Content-Type": "application/json"}, timeout=10)
            assert r.status_code == 413 and r.headers["Connection"] == "close"
            r = http.post(server.url + "/v1/evaluations", data=good, headers={"Content-Type": "application/json"},
                          timeout=10)
            assert r.status_code == 200 and r.headers["Connection"] == "keep-alive"


def test_an_early_415_on_a_request_with_a_body_closes(server):
    status, headers, _, closed = exchange(
        server.port, b"POST /v1/evaluations HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 5\r\n\r\nhello")
    assert status == 415 and headers["connection"] == "close" and closed


def test_a_422_after_the_whole_body_was_read_keeps_the_connection(server):
    status, headers, _, closed = exchange(
        server.port, b"POST /v1/evaluations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 14\r\n\r\n{\"findings\":1}")
    assert status == 422 and headers["connection"] == "keep-alive" and not closed


def test_draining_workers_answer_connection_close(tmp_path: Path):
    """A keep-alive client polls through SIGTERM: every answer after it says close, none fails
    until the workers stop accepting, and the master exits 0."""
    drain = 2.0
    with ops_support.gunicorn(tmp_path, CDS_ACCESS_LOG="off", CDS_DRAIN_SECONDS=str(drain)) as srv:
        # Both workers booted: a worker forked just before the master handles SIGTERM can miss
        # the signal (gunicorn's own race), serve on undrained and be killed at graceful_timeout.
        deadline = time.monotonic() + 20
        while srv.output().count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        with requests.Session() as http:
            for _ in range(5):
                r = http.get(srv.url + "/healthz/live", timeout=5)
                assert r.headers["Connection"] == "keep-alive"
            srv.proc.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            time.sleep(0.2)  # both workers have the signal
            during: list[str] = []
            while time.monotonic() < sigterm + drain - 0.5:
                r = http.get(srv.url + "/healthz/live", timeout=5)  # raises on a reset
                assert r.status_code == 200
                during.append(r.headers["Connection"])
                time.sleep(0.05)
        code = srv.proc.wait(timeout=30)
        lines = [x for x in srv.json_lines() if x.get("event") in ("drain", "drain-done")
                 or "signal" in x.get("msg", "") or "orker" in x.get("msg", "")]
        assert len(during) >= 10
        assert set(during) == {"close"}, (during, lines)
        assert code == 0
