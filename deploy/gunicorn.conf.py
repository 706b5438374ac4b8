"""gunicorn configuration used by `python -m service serve` (and the container).

Sync workers: an evaluation is CPU-bound and serialised per process by the engine lock, so
threads inside a worker add no throughput; one process per core (plus one to cover a worker
blocked on I/O) does. The rule set is compiled once in the master (preload) and shared
copy-on-write with the workers.
"""

import multiprocessing
import os

bind = os.environ.get("CDS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("CDS_WORKERS", multiprocessing.cpu_count() + 1))
worker_class = "sync"
preload_app = True  # compile rules once; a broken rule set stops the master before forking
timeout = int(os.environ.get("CDS_WORKER_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
max_requests = 0  # memory is flat (every engine session is deleted); no recycling needed
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# Access log: method, path without query string, status, size, duration. Never bodies.
accesslog = os.environ.get("CDS_ACCESS_LOG", "-")
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = os.environ.get("CDS_LOG_LEVEL", "info")
