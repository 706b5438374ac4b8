"""Leg-pain clinical decision support: a stateless Flask service over a durable-rules rule set.

`create_app` loads and compiles the rule set once; a rule set that does not load raises
`RuleLoadError`, so neither the app nor gunicorn starts (fail closed).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from service.config import load_config


def create_app(config: dict[str, Any] | None = None) -> Flask:
    from service import api, health, problems, ui
    from service.evaluation import Evaluator
    from service.loader import load_knowledge
    from service.openapi import committed_spec_json

    app = Flask(__name__, static_folder=None)  # the page's assets are under /ui/static
    app.config.update(load_config(config))
    knowledge = load_knowledge(app.config["RULES_DIR"])  # raises: the service must not start
    app.extensions["evaluator"] = Evaluator(knowledge)
    app.extensions["openapi"] = committed_spec_json()
    problems.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)
    return app
