"""gunicorn configuration used by `python -m service serve` (and the container).

Worker model, chosen by measurement (bench/slow_clients.py, README "Performance"): gthread,
4 threads per worker. Evaluation is CPU-bound and serialised per process by the engine lock,
so the threads add little throughput, but they keep a worker answering while some of its
connections are slow: with 6 clients dribbling their bodies, sync workers (3) answered 0% of
health probes, gthread 88% at 2.4 ms, with no loss of evaluation throughput in the same run.
One process per core plus one. The rule set is compiled once in the master (preload) and
shared copy-on-write with the workers.
"""

import atexit
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

from service.auth import exposure_problem
from service.startup import config_problem, port_problem

# Prometheus multiprocess mode (service/metrics.py). The variable must be set before
# prometheus_client is first imported, which the preloaded app does after this file is read;
# the directory is emptied in on_starting, before any worker forks (not here: this file is read
# again on SIGHUP).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_dir, _master_pid = tempfile.mkdtemp(prefix="legpain-cds-metrics-"), os.getpid()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_dir
    # Ours, so removed when the master exits, however it exits (also when the app fails to load);
    # workers inherit this handler and must leave the directory alone.
    atexit.register(lambda: os.getpid() == _master_pid and shutil.rmtree(_own_dir, ignore_errors=True))

bind = os.environ.get("CDS_BIND", "127.0.0.1:8000")
# Exposed beyond loopback, the service must not run open (service/auth.py): stop here, before
# anything binds, with a message that says what to configure.
_exposure = exposure_problem([bind], dict(os.environ))
if _exposure:
    sys.stderr.write(_exposure + "\n")
    sys.exit(2)
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
# the request in hand and exit (service/lifecycle.py); the master kills what is left after
# graceful_timeout, which is kept above the drain delay.
drain_seconds = float(os.environ.get("CDS_DRAIN_SECONDS", "0"))
graceful_timeout = max(int(os.environ.get("CDS_GRACEFUL_TIMEOUT", "20")), int(drain_seconds) + 5)
keepalive = 5
max_requests = 0  # memory is flat (every engine session is deleted); no recycling needed
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# Access log: method, path without query string, status, size, duration. Never bodies.
# The service also writes its own JSON line per request (service/logs.py); CDS_ACCESS_LOG=off
# turns this text log off (the container does).
_access = os.environ.get("CDS_ACCESS_LOG", "-")
accesslog = None if _access.lower() in ("", "off", "none") else _access
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
logger_class = "service.logs.GunicornLogger"  # gunicorn's own messages as JSON lines
# gunicorn >= 25.1 opens a control socket under $HOME/.gunicorn by default: a write outside the
# container's writable mounts, one path shared by every instance of a user, and a management
# interface nobody here uses.
control_socket_disable = True
loglevel = os.environ.get("CDS_LOG_LEVEL", "info")


def on_starting(server):
    """Before binding: a port already in use gets one line saying how to pick another, instead of
    gunicorn's five retries and "Can't connect". Not when gunicorn inherits its sockets (a
    USR2 upgrade or systemd): the port is then ours and in use by design. Then empty the
    metrics directory: samples of a previous run must not be summed in."""
    if not (os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS")):
        for address in server.cfg.bind:
            problem = port_problem(address)
            if problem:
                sys.stderr.write(problem + "\n")
                sys.exit(2)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for f in glob.glob(os.path.join(path, "*.db")):  # only prometheus_client's files
        os.remove(f)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def pre_request(worker, req):
    """gunicorn's default logs "METHOD /path" at debug level, and a path can carry an identifier;
    the service writes its own request line with the route template instead."""


def post_worker_init(worker):
    from service.lifecycle import install_drain_handler

    install_drain_handler(worker, drain_seconds)


def worker_int(worker):
    from service.lifecycle import start_draining

    start_draining()


def worker_abort(worker):
    from service.lifecycle import start_draining

    start_draining()
