"""The nurse page as HTML: generated from the vocabulary, red flags first, every control
labelled, nothing loaded from outside the service."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from service.web.ui import TOPICS


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.controls: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.h2: list[str] = []
        self._in_h2 = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "label" and "for" in a:
            self.label_for.add(a["for"])
        if tag in ("input", "select", "textarea"):
            self.controls.append({"tag": tag, **a})
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "script":
            self._in_script = True
            if "src" not in a:
                self.inline_scripts += 1
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def parse(client) -> tuple[Page, str]:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = Page()
    html = resp.get_data(as_text=True)
    page.feed(html)
    return page, html


def test_every_finding_is_asked_with_its_question(client, knowledge):
    _, html = parse(client)
    for f in knowledge.findings.values():
        if f.deprecated:  # vocabulary 0.3.1: an old bundled code is asked as its atomic findings
            assert f'id="q-{f.code}"' not in html
            continue
        assert f'id="q-{f.code}"' in html
        assert f.question.replace("'", "&#39;").replace('"', "&#34;") in html or f.question in html


def test_red_flags_come_first_then_the_other_topics_in_order(client):
    page, _ = parse(client)
    titles = [t for _, t in TOPICS]
    shown = [h.strip() for h in page.h2 if h.strip() in titles]
    assert shown[0] == "Red flags: ask these first"
    assert shown == [t for t in titles if t in shown]


def test_every_control_has_a_label(client):
    page, _ = parse(client)
    for c in page.controls:
        assert c.get("id") in page.label_for, c


def test_booleans_offer_yes_no_unknown_defaulting_to_unknown(client, knowledge):
    _, html = parse(client)
    code = next(f.code for f in knowledge.findings.values() if f.type == "boolean")
    for answer in ("yes", "no", "unknown"):
        assert f'id="{code}-{answer}"' in html
    assert re.search(rf'id="{code}-unknown" name="{code}" value="unknown" checked', html)


def test_numbers_carry_unit_and_valid_range(client, knowledge):
    _, html = parse(client)
    f = next(f for f in knowledge.findings.values() if f.type == "number")
    assert f'min="{f.range[0]}" max="{f.range[1]}"' in html


def test_nothing_is_loaded_from_outside_and_no_inline_script(client):
    page, _ = parse(client)
    assert page.inline_scripts == 0
    for url in page.urls:
        assert not url.startswith(("http:", "https:", "//")), url
    resp = client.get("/")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    for asset in ("/ui/static/ui.js", "/ui/static/ui.css"):
        with client.get(asset) as r:
            assert r.status_code == 200


def test_the_page_says_decision_support_not_diagnosis(client):
    _, html = parse(client)
    assert "Decision support, not a diagnosis" in html


def test_the_page_carries_the_question_groups_for_its_script(client, knowledge):
    """The interview's script reads the groups from a data attribute (no inline script): every
    group of rules/presentations.yaml, with each item's short name and question."""
    import html as html_mod
    import json

    from service.knowledge.question_groups import load_question_groups

    _, page_html = parse(client)
    found = re.search(r"data-groups='([^']*)'", page_html)
    assert found, "the interview's questions carry no groups"
    groups = json.loads(html_mod.unescape(found.group(1)))
    assert [g["id"] for g in groups] == [g.id for g in load_question_groups(knowledge)]
    ces = next(g for g in groups if g["id"] == "cauda_equina")
    assert ces["label"].startswith("Since the pain started")
    retention = next(i for i in ces["items"] if i["code"] == "urinary_retention")
    assert retention == {"code": "urinary_retention", "display": knowledge.findings["urinary_retention"].display,
                         "question": knowledge.findings["urinary_retention"].question}
