"""The README's internal links (its table of contents) lead to headings that exist."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def test_every_internal_link_has_its_heading():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert len(links) >= 15  # the contents, at least
    assert links <= anchors, sorted(links - anchors)
