"""Leg-pain clinical decision support: a stateless Flask service over a durable-rules rule set.

`create_app` loads and compiles the rule set once; a rule set that does not load raises
`RuleLoadError`, so neither the app nor gunicorn starts (fail closed). It also refuses to be
served beyond loopback (`CDS_BIND`) without authentication (`service/app/exposure.py`).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from service.app.exposure import binds_of, refuse_if_exposed
from service.config import load_config

# The one place the version is written: pyproject.toml reads it (dynamic version), the image tag in
# deploy/Containerfile, deploy/k8s/deployment.yaml and docs/operators.md must equal it
# (tests/test_deploy.py), and legpain_cds_build_info reports it, also in the container, where the
# package is not installed.
__version__ = "0.1.0"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    # metrics: imported only here, after PROMETHEUS_MULTIPROC_DIR is settled
    from service.api import routes as api
    from service.app.openapi import committed_spec_json
    from service.checks.self_check import run_self_check
    from service.ehr.cds_hooks import install as install_cds_hooks
    from service.knowledge.loader import load_knowledge
    from service.ops import auth, connection, health, logs, metrics, problems
    from service.reasoning.evaluation import Evaluator
    from service.web import ui

    app = Flask(__name__, static_folder=None)  # the page's assets are under /ui/static
    app.config.update(load_config(config))
    # Before anything else: served beyond loopback (CDS_BIND) without a parsed API key and
    # issuer, the factory itself refuses, whatever WSGI server calls it (service/app/exposure.py).
    refuse_if_exposed(binds_of(app.config["BIND"]), app.config)
    knowledge = load_knowledge(app.config["RULES_DIR"])  # raises: the service must not start
    app.extensions["evaluator"] = Evaluator(knowledge)
    app.extensions["openapi"] = committed_spec_json()
    logs.init_app(app)  # request id and the JSON request line; first, so its before_request runs first
    run_self_check(app.extensions["evaluator"])  # raises: cases that must pass at every start (rules/README.md)
    metrics.init_app(app)  # GET /metrics and the request metrics
    connection.init_app(app)  # Connection: close after errors that leave the body unread, and while draining
    auth.init_app(app)  # API keys on /v1/ and security headers on every response
    problems.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)
    if str(app.config["HOOKS_ENABLED"]).lower() not in ("0", "false", "no"):
        install_cds_hooks(app, knowledge)  # /cds-services: CDS Hooks, its JWT authentication and CORS
    return app
