"""The service with one extra route, for the benchmark only: POST /bench/precomputed reads and
parses the request body as an evaluation does, then returns a precomputed answer of the size of
a typical evaluation's, through the same middleware (request id, logs, metrics, auth headers).
Its throughput is the ceiling HTTP, Flask and gunicorn leave to evaluation on this machine.

    gunicorn -c deploy/gunicorn.conf.py 'bench.ceiling_app:create()'   (bench/run.py does this)

Never deployed: the service's own factory is service:create_app.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from flask import Flask, Response

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import latency  # noqa: E402

from service import create_app  # noqa: E402
from service.ops.body import read_json_body  # noqa: E402


def create() -> Flask:
    app = create_app()
    evaluator = app.extensions["evaluator"]
    _, encounters = latency.build_inputs(evaluator.knowledge, 1, offset=50_000, target=20)
    answer = orjson.dumps(evaluator.evaluate(encounters[0]))

    def precomputed() -> Response:
        read_json_body()  # the body is read and parsed, as for an evaluation
        return Response(answer, mimetype="application/json")

    app.add_url_rule("/bench/precomputed", "bench_precomputed", precomputed, methods=["POST"])
    return app
