"""Hostile or odd values from the record (issue 14, points 4 and 8), in process.

* Dates at the edge of what Python's datetime holds overflowed once converted to UTC and gave
  500s: they are now a 400 naming where.
* Everything from the record that reaches a card's markdown is literal text: an Observation id
  shaped like a link is refused (FHIR ids are `[A-Za-z0-9-.]{1,64}`), and the card's markdown,
  rendered by a real CommonMark renderer (markdown-it-py, tables on), has no link, image or HTML
  made from record values.
"""

from __future__ import annotations

from typing import Any

import pytest
from markdown_it import MarkdownIt
from test_cds_hooks import SERVICE, check_outcome, dvt_request

from service.fhir.out import _md

RENDER = MarkdownIt("commonmark").enable("table")


def _observations(req: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in req["prefetch"]["observations"]["entry"]]


def _issue(resp) -> tuple[str, str]:
    body = check_outcome(resp, 400)
    issue = body["issue"][0]
    return issue["expression"][0], issue["details"]["text"]


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:30:00+01:00"])
def test_an_observation_date_past_the_calendar_is_a_400_naming_it(client, knowledge, value):
    req = dvt_request(knowledge)
    _observations(req)[0]["effectiveDateTime"] = value
    where, text = _issue(client.post(SERVICE, json=req))
    assert where == "prefetch.observations.entry[0].resource.effectiveDateTime"
    assert "outside the dates" in text


@pytest.mark.parametrize("value", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-14:00"])
def test_a_birth_date_past_the_calendar_is_a_400_naming_it(client, knowledge, value):
    req = dvt_request(knowledge)
    req["prefetch"]["patient"]["birthDate"] = value
    where, text = _issue(client.post(SERVICE, json=req))
    assert where == "prefetch.patient.birthDate"
    assert "outside the dates" in text


@pytest.mark.parametrize("bad_id", ["[Re-login](https://evil.example)", "a" * 65, "obs 1", "obs\n1", ""])
def test_an_observation_id_that_is_not_a_fhir_id_is_a_400_naming_it(client, knowledge, bad_id):
    req = dvt_request(knowledge)
    _observations(req)[2]["id"] = bad_id
    where, text = _issue(client.post(SERVICE, json=req))
    assert where == "prefetch.observations.entry[2].resource.id"
    assert "FHIR id" in text
    assert "evil" not in text


def test_condition_and_patient_ids_are_checked_too(client, knowledge):
    req = dvt_request(knowledge)
    req["prefetch"]["conditions"]["entry"][0]["resource"]["id"] = "<img src=x>"
    assert _issue(client.post(SERVICE, json=req))[0] == "prefetch.conditions.entry[0].resource.id"
    req = dvt_request(knowledge)
    req["prefetch"]["patient"]["id"] = "[x](https://evil.example)"
    assert _issue(client.post(SERVICE, json=req))[0] == "prefetch.patient.id"


def _links_and_html(markdown: str) -> list[str]:
    found = []
    for token in RENDER.parse(markdown):
        for child in [token, *(token.children or [])]:
            if child.type in ("link_open", "image", "html_inline", "html_block"):
                found.append(f"{child.type}: {child.attrs or child.content}")
    return found


def test_record_values_in_the_card_are_literal_text(client, knowledge):
    """A unit and a status from the record are echoed in 'Matched but not used': shaped as
    markdown links and HTML, they render as the same text, never as links."""
    from test_cds_hooks import observation

    req = dvt_request(knowledge)
    entries = req["prefetch"]["observations"]["entry"]
    # First in the list, so that they are among the entries the card shows.
    entries.insert(0, {"resource": observation(knowledge, "obs-unit", "slr_angle",
                              valueQuantity={"value": 40, "unit": "x", "system": "http://unitsofmeasure.org",
                                             "code": "[x](https://evil.example)"})})
    entries.insert(0, {"resource": {**observation(knowledge, "obs-status", "fever", valueBoolean=True),
                                    "status": "<b>[Re-login](https://evil.example)</b>"}})
    resp = client.post(SERVICE, json=req)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    detail = resp.get_json()["cards"][0]["detail"]
    assert "evil" in detail  # the values are shown ...
    assert _links_and_html(detail) == []  # ... but never as a link or HTML
    html = RENDER.render(detail)
    assert "<a " not in html and "<b>" not in html and "[Re-login](https://evil.example)" in html


@pytest.mark.parametrize("text", [
    "[Re-login](https://evil.example)", "![x](https://evil.example/p.png)", "<script>alert(1)</script>",
    "a | b\n# heading", "**bold** _em_ `code`", "<https://evil.example>", "line\r\n- item", "\\[x\\](y)",
])
def test_escaped_text_renders_as_itself(text):
    rendered = RENDER.render(f"| a |\n|---|\n| {_md(text)} |\n\n- {_md(text)}")
    assert _links_and_html(f"- {_md(text)}") == []
    assert "<a " not in rendered and "<img" not in rendered and "<script" not in rendered
    plain = " ".join(text.replace("\r", " ").replace("\n", " ").split())
    expected = plain.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert expected in " ".join(rendered.split())
