"""Graceful shutdown under gunicorn: readiness turns false first, then the worker drains.

On SIGTERM (Kubernetes deleting the pod, or `kill -TERM` to the gunicorn master, which passes it
on to every worker) each worker:

1. marks itself draining at once: `GET /healthz/ready` answers 503 `{"status": "draining"}`,
   so load balancers and Kubernetes Services stop sending new traffic;
2. keeps serving normally for `CDS_DRAIN_SECONDS` (default 0; the container sets 5), the time
   a load balancer needs to notice;
3. then stops accepting, finishes the request it is serving and exits. gunicorn's master waits
   up to `graceful_timeout` for that, then kills what is left.

A second SIGTERM skips the rest of the delay. SIGINT / SIGQUIT (quick shutdown) and a worker
timeout (SIGABRT) mark the worker draining too (gunicorn's `worker_int` / `worker_abort` hooks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger("service.lifecycle")
_draining = threading.Event()


def is_draining() -> bool:
    return _draining.is_set()


def start_draining() -> None:
    _draining.set()


def reset() -> None:
    """Tests only: forget a previous drain in this process."""
    _draining.clear()


def install_drain_handler(worker: Any, delay: float) -> None:
    """Replace a gunicorn sync worker's SIGTERM handler (call from `post_worker_init`)."""
    stop_now = threading.Event()

    def stop() -> None:
        worker.alive = False
        with contextlib.suppress(OSError):
            os.write(worker.PIPE[1], b"1")  # wake the worker if it is waiting in select()

    def drain_then_stop() -> None:
        log.info("worker draining", extra={"cds_fields": {"event": "drain", "drain_seconds": delay}})
        stop_now.wait(delay)
        log.info("worker stops accepting", extra={"cds_fields": {"event": "drain-done"}})
        stop()

    def on_sigterm(signum: int, frame: Any) -> None:
        # Nothing here that takes a lock: logging happens in the thread.
        if _draining.is_set():
            stop_now.set()
            if delay <= 0:
                stop()
            return
        _draining.set()
        if delay <= 0:
            stop()
            return
        threading.Thread(target=drain_then_stop, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
