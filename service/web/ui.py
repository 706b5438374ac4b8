"""The triage nurse page at `/`: a guided interview (the default: patient, one opening question -
what the problem is and where - then the questions ask_next ranks highest, with the answer so
far beside them) and the full questionnaire
generated from the vocabulary; both post to `POST /v1/evaluations` and show the answer. Served by
the service itself, with no CDN and no inline script, so that it works offline and under a strict
Content-Security-Policy."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, render_template
from flask.blueprints import BlueprintSetupState

from service.knowledge.model import Finding, Knowledge
from service.web.interview import complaints, pain_sites

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")

# Red flags first: a nurse must not reach them last on a busy desk.
TOPICS: list[tuple[str, str]] = [
    ("red_flags", "Red flags: ask these first"),
    ("pain", "The pain itself"),
    ("swelling_skin", "Leg swelling and skin"),
    ("nerves", "Nerves: numbness, tingling, weakness"),
    ("circulation", "Circulation"),
    ("history", "History and medicines"),
    ("measurements", "Measurements"),
]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def grouped_findings(k: Knowledge) -> list[tuple[str, str, list[Finding]]]:
    groups = []
    for topic, title in TOPICS:
        # Deprecated bundled findings are not asked: their atomic findings are (vocabulary 0.3.1).
        items = [f for f in k.findings.values() if f.topic == topic and not f.deprecated]
        if items:
            groups.append((topic, title, items))
    return groups


def groups_for_page(k: Knowledge) -> list[dict[str, Any]]:
    """The question groups as the page's script reads them (rules/presentations.yaml): the label
    read aloud, and per item its code, its short name (the checkbox) and its own question."""
    return [{"id": g.id, "label": g.label,
             "items": [{"code": c, "display": k.findings[c].display, "question": k.findings[c].question}
                       for c in g.items]}
            for g in k.question_groups]


@bp.record_once
def _load_page(state: BlueprintSetupState) -> None:
    # Everything the page shows comes from the loaded rule set (presentations.yaml was read and
    # checked by the loader: a bad group stops the start like a bad rule); it is built once here,
    # when the service starts, not per page request.
    app = state.app
    k = app.extensions["evaluator"].knowledge
    app.extensions["question_groups"] = groups_for_page(k)
    app.extensions["page_context"] = {"groups": grouped_findings(k), "sites": pain_sites(k),
                                      "complaints": complaints(k), "ruleset": k}


@bp.get("/")
def page() -> Response:
    html = render_template("index.html", **current_app.extensions["page_context"],
                           question_groups=current_app.extensions["question_groups"])
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
