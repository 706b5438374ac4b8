"""The lock files (requirements/, made by scripts/lock.sh): every pin has hashes, the test lock
holds the serve lock's pins, and serving installs none of the test tools."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT

REQ = ROOT / "requirements"


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: fhir.resources is fhir-resources


def pins(name: str) -> dict[tuple[str, str], str]:
    """(package, environment marker) -> version, checking each pin carries at least one hash."""
    text = (REQ / name).read_text()
    out: dict[tuple[str, str], str] = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)(?: ; (.*?))? \\", block)
        if not m:
            continue
        assert "--hash=sha256:" in block, f"{name}: {m.group(1)} has no hash"
        out[(normal(m.group(1)), m.group(3) or "")] = m.group(2)
    assert out, name
    return out


def test_every_pin_has_a_hash_and_the_test_lock_keeps_the_serve_pins():
    serve, test = pins("serve.txt"), pins("test.txt")
    assert {k: test.get(k) for k in serve} == serve


def test_serving_installs_no_test_tool():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    tools = {normal(re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]) for spec in extras}
    served = {name for name, _ in pins("serve.txt")}
    assert tools and not tools & served, tools & served
    assert tools <= {name for name, _ in pins("test.txt")}


def test_the_engine_and_its_build_tool_are_pinned():
    assert pins("serve.txt")[("durable-rules", "")] == "2.0.28"
    assert [name for name, _ in pins("build.txt")] == ["setuptools"]
