"""gunicorn configuration used by `python -m service serve` (and the container).

Worker model, chosen by measurement (bench/slow_clients.py, bench/run.py, docs/contributors.md "Performance"):
gthread, 4 threads per worker, by default: wherever clients can reach gunicorn without the
nginx sidecar. Evaluation is CPU-bound and serialised per process by the engine lock, so the
threads add little throughput, but they keep a worker answering while some of its connections
are slow: with 6 clients dribbling their bodies, sync workers (3) answered 0% of health probes,
gthread 88% at 2.4 ms. Behind nginx (which reads every request completely first) sync workers
are safe; measured there in three runs on 30 November 2026 (issue 18, bench/run.py), sync
carried as many evaluations per second as gthread (1,093-1,214 against 1,077-1,257) with a p99
2.3-3.4x lower (22-23 ms against 53-76 ms at 16 connections), so the Deployment, which runs the
sidecar, sets CDS_WORKER_CLASS=sync. (Earlier steps had measured gthread 1.5-1.7x ahead there.)
One process per core plus one. The rule set is compiled once in the master (preload) and
shared copy-on-write with the workers; each worker's engine state is its own.
"""

import atexit
import gc
import multiprocessing
import os
import shutil
import sys
import tempfile

from service.app.startup import config_problem, port_problem

# Prometheus multiprocess mode (service/ops/metrics.py). The variable must be set before
# prometheus_client is first imported, which the preloaded app does after this file is read;
# the directory is emptied in on_starting, before any worker forks (not here: this file is read
# again on SIGHUP).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_dir, _master_pid = tempfile.mkdtemp(prefix="legpain-cds-metrics-"), os.getpid()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_dir
    # Ours, so removed when the master exits, however it exits (also when the app fails to load);
    # workers inherit this handler and must leave the directory alone.
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(_own_dir, ignore_errors=True))

# CDS Hooks JWT replay store (service/ehr/replay_store.py): the workers are separate processes, so a
# per-process cache would accept a replayed token once per worker. Unless Redis (every pod) or a
# file is configured, one SQLite file in a fresh directory, shared by this master's workers.
if not os.environ.get("CDS_HOOKS_REPLAY_REDIS_URL") and not os.environ.get("CDS_HOOKS_REPLAY_DB"):
    _replay_dir, _replay_master = tempfile.mkdtemp(prefix="legpain-cds-replay-"), os.getpid()
    os.environ["CDS_HOOKS_REPLAY_DB"] = os.path.join(_replay_dir, "jti.sqlite3")
    atexit.register(lambda: os.getpid() == _replay_master and shutil.rmtree(_replay_dir, ignore_errors=True))

bind = [b.strip() for b in os.environ.get("CDS_BIND", "127.0.0.1:8000").split(",") if b.strip()]
# Exposed beyond loopback, the service must not run open (service/app/exposure.py). Not checked
# here: `-b` on the command line and GUNICORN_CMD_ARGS override this file after it is read, so
# only the hooks below see the final addresses.
# A malformed API key or issuer list: one line now, not the app factory's traceback later.
_config = config_problem(os.environ)
if _config:
    sys.stderr.write(_config + "\n")
    sys.exit(2)
workers = int(os.environ.get("CDS_WORKERS", multiprocessing.cpu_count() + 1))
worker_class = os.environ.get("CDS_WORKER_CLASS", "gthread")  # gthread | sync: see the docstring
threads = int(os.environ.get("CDS_THREADS", "1" if worker_class == "sync" else "4"))
preload_app = True  # compile rules once; a broken rule set stops the master before forking
timeout = int(os.environ.get("CDS_WORKER_TIMEOUT", "30"))
# SIGTERM: readiness turns 503 at once, workers keep serving for CDS_DRAIN_SECONDS, then finish
# the request in hand and exit (service/ops/lifecycle.py); the master kills what is left after
# graceful_timeout, which is kept above the drain delay.
drain_seconds = float(os.environ.get("CDS_DRAIN_SECONDS", "0"))
graceful_timeout = max(int(os.environ.get("CDS_GRACEFUL_TIMEOUT", "20")), int(drain_seconds) + 5)
keepalive = 5
max_requests = 0  # memory is flat (one engine state, its facts retracted after each evaluation): no recycling
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn's text access log is OFF unless CDS_ACCESS_LOG names a target: its %(U)s is the raw
# path, and a path can carry a patient identifier (GET /v1/rules/MRN-...) or an encoded line
# break. The service writes its own JSON line per request with the route template instead
# (service/ops/logs.py). Turning it on (CDS_ACCESS_LOG=-) logs raw paths: local debugging only.
_access = os.environ.get("CDS_ACCESS_LOG", "off")
accesslog = None if _access.lower() in ("", "off", "none") else _access
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
logger_class = "service.ops.logs.GunicornLogger"  # gunicorn's own messages as JSON lines
# gunicorn >= 25.1 opens a control socket under $HOME/.gunicorn by default: a write outside the
# container's writable mounts, one path shared by every instance of a user, and a management
# interface nobody here uses.
control_socket_disable = True
loglevel = os.environ.get("CDS_LOG_LEVEL", "info")


def _refuse_if_exposed(binds):
    """Raise (gunicorn prints "Error: <message>" and exits 1) when these binds are beyond loopback
    and the configuration gives no API key or no trusted issuer. Read from the environment as
    the app reads it, after gunicorn applied any `--env` settings."""
    from service.app.exposure import refuse_if_exposed
    from service.config import load_config

    refuse_if_exposed(binds, load_config())


def on_starting(server):
    """Before binding: refuse an exposed and open start (server.cfg.bind is final here: config
    file, command line and GUNICORN_CMD_ARGS merged); a port already in use gets one line saying
    how to pick another, instead of gunicorn's five retries and "Can't connect" (not when
    gunicorn inherits its sockets: a USR2 upgrade or systemd, where the port is ours by design).
    Then empty the metrics directory (samples of a previous run must not be summed in) and
    preallocate the storage-error tally while there is room (service/ops/metrics_files.py)."""
    _refuse_if_exposed(server.cfg.bind)
    if not (os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS")):
        for address in server.cfg.bind:
            problem = port_problem(address)
            if problem:
                sys.stderr.write(problem + "\n")
                sys.exit(2)
    from service.ops.metrics_files import prepare_directory

    prepare_directory(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def when_ready(server):
    """Check again against the sockets really listening, before any worker is started: systemd
    socket activation and inherited descriptors (fd://) bypass the bind setting."""
    from service.app.exposure import socket_bind

    _refuse_if_exposed([socket_bind(listener.sock) for listener in server.LISTENERS])


def pre_fork(server, worker):
    """Just before each worker is forked, in the master: collect once, then freeze every object
    the master holds (the preloaded app, the knowledge, the compiled rule set) into the
    collector's permanent generation (Python's advice for fork without exec, `gc.freeze`). A
    worker's full (generation 2) collections then skip those objects instead of walking them
    all, and never write to their pages, which stay shared copy-on-write with the master.
    Measured in one process holding the loaded app (issue 18, docs/contributors.md
    "Performance"): a full collection paused an evaluation 75-83 ms without the freeze, 17-24 ms
    with it; p50 and p99 did not move (full collections are rare: ~1 per 8000 evaluations)."""
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """Merge the dead worker's counters and histograms into the archive and remove its files:
    counters never go backwards, and restarts do not fill the metrics volume."""
    from service.ops.metrics_files import archive_dead

    try:
        archive_dead(os.environ["PROMETHEUS_MULTIPROC_DIR"], {os.getpid(), *server.WORKERS})
    except Exception as exc:  # the master must outlive any metrics trouble
        server.log.error("metrics of dead workers not merged: %s", exc.__class__.__name__)


def pre_request(worker, req):
    """gunicorn's default logs "METHOD /path" at debug level, and a path can carry an identifier;
    the service writes its own request line with the route template instead. The request object
    is handed to the service so that it can close the connection after an answer that leaves
    the body unread, or while draining (service/ops/connection.py)."""
    from service.ops.connection import bind

    bind(req)


def post_worker_init(worker):
    from service.ops.lifecycle import install_drain_handler

    install_drain_handler(worker, drain_seconds)


def worker_int(worker):
    from service.ops.lifecycle import start_draining

    start_draining()


def worker_abort(worker):
    from service.ops.lifecycle import start_draining

    start_draining()
