"""No raw request path in any log by default (issue 14, point 9).

gunicorn's text access log wrote `%(U)s`, the raw path: `GET /v1/rules/MRN-998877-DOE-JANE`
put a patient identifier into the log, and `%0A` in a path could split a line. The text log is
now off unless CDS_ACCESS_LOG asks for it; the service's JSON request line carries the route
template. Real gunicorn with the deploy config and its defaults.
"""

from __future__ import annotations

import json
import time

import pytest

from tests import ops_support

pytestmark = pytest.mark.slow

PATHS = [
    "/v1/rules/MRN-998877-DOE-JANE",
    "/v1/rules/MRN-998877%0AFORGED-LINE-DOE-JANE",
    "/MRN-998877-DOE-JANE/x%0d%0aFORGED-LINE",
]


def test_no_raw_path_reaches_any_log_by_default(tmp_path):
    with ops_support.gunicorn(tmp_path) as server:  # CDS_ACCESS_LOG unset: the default
        assert "CDS_ACCESS_LOG" not in server.env
        for path in PATHS:
            r = server.http.get(server.url + path, timeout=10)
            assert r.status_code == 404
        time.sleep(0.3)
        ops_support.stop(server.proc)
        output = server.output()
    for needle in ("MRN-998877", "DOE-JANE", "FORGED-LINE", "%0A", "%0a", "%0d"):
        assert needle not in output, f"{needle!r} reached gunicorn's output"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    routes = [(r.get("route"), r.get("status")) for r in lines if r.get("event") == "request"]
    # the service's own request lines are there, with the route template instead of the path
    assert routes.count(("/v1/rules/<rule_id>", 404)) == 2, routes
    assert ("<unmatched>", 404) in routes, routes


def test_the_text_access_log_is_only_on_when_asked_for(tmp_path):
    with ops_support.gunicorn(tmp_path, CDS_ACCESS_LOG="-") as server:
        server.http.get(server.url + "/healthz/live", timeout=10)
        time.sleep(0.3)
        assert '"GET /healthz/live" 200' in server.output()
