"""The README and the documents it leads to (docs/, ARCHITECTURE.md): every link reaches a file
and a heading that exist, every document is reachable from the README, the commands and the
files they name exist, and every request example is valid against the OpenAPI document and
answered 200 by the service."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = [README, ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Paths of this repository named in code: they must exist (a moved module leaves no stale name).
REPO_PATH = re.compile(r"(?<![\w./-])((?:service|tests|bench|scripts|deploy|rules|openapi|docs)/[\w./*-]*[\w*/])")
# Folders that commands write into (bench/results/, ...): named, never committed.
OUTPUT_DIRS = tuple(line for line in (ROOT / ".gitignore").read_text().split() if "/" in line.rstrip("/"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.M)}


def prose(path: Path) -> str:
    """The text outside code blocks (a link inside a code block is not a link)."""
    return CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))


def local_links(path: Path) -> list[tuple[Path, str]]:
    out = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        out.append(((path.parent / file).resolve() if file else path, anchor))
    return out


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("doc", DOCS, ids=ids(DOCS))
def test_every_link_has_its_file_and_heading(doc):
    for target, anchor in local_links(doc):
        assert target.exists(), f"{doc.name}: no {target}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{doc.name}: no heading #{anchor} in {target.name}"


def test_the_readme_is_the_way_in():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150
    assert len(local_links(README)) >= 15  # the map of the documents, down to their sections
    reached, todo = set(), [README.resolve()]
    while todo:
        doc = todo.pop()
        if doc in reached:
            continue
        reached.add(doc)
        todo += [t for t, _ in local_links(doc) if t.suffix == ".md" and t.is_relative_to(ROOT)]
    unreachable = {p.resolve() for p in DOCS} - reached
    assert not unreachable, f"not reachable from the README: {sorted(map(str, unreachable))}"


def code_of(doc: Path) -> list[str]:
    """Every piece of code in a document: its code blocks and its inline code."""
    text = doc.read_text(encoding="utf-8")
    return [body for _, body in CODE_BLOCK.findall(text)] + INLINE_CODE.findall(CODE_BLOCK.sub("", text))


CLI_COMMANDS = set(re.findall(r'add_parser\("(\w+)"', (ROOT / "service" / "__main__.py").read_text()))


@pytest.mark.parametrize("doc", DOCS, ids=ids(DOCS))
def test_the_commands_and_files_named_exist(doc):
    for code in code_of(doc):
        for command in re.findall(r"-m service ([a-z]+)", code):
            assert command in CLI_COMMANDS, f"{doc.name}: python -m service {command}: no such command"
        for module in re.findall(r"-m (bench\.\w+)", code):
            assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{doc.name}: no module {module}"
        for name in REPO_PATH.findall(code):
            if not name.startswith(OUTPUT_DIRS):
                assert list(ROOT.glob(name.rstrip("/"))), f"{doc.name}: {name} does not exist"


def curl_commands(doc: Path) -> list[list[str]]:
    out = []
    for lang, body in CODE_BLOCK.findall(doc.read_text(encoding="utf-8")):
        if lang in ("sh", "bash", ""):
            for line in body.replace("\\\n", " ").splitlines():
                if line.lstrip().startswith("curl "):
                    out.append(shlex.split(line.split("|")[0]))
    return out


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text(encoding="utf-8"))


def request_schema_validator(spec: dict, path: str) -> OAS30Validator:
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return OAS30Validator({**schema, "components": spec["components"]})


def examples(docs: list[Path]) -> list[tuple[str, str, object]]:
    """(document, API path, request body) for every curl that posts a body and every JSON example
    of an evaluation request."""
    found: list[tuple[str, str, object]] = []
    for doc in docs:
        for argv in curl_commands(doc):
            url = next(a for a in argv if a.startswith("http"))
            path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
            data = next((argv[i + 1] for i, a in enumerate(argv) if a in ("-d", "--data", "--data-binary")), None)
            if data is not None:
                body = json.loads((ROOT / data[1:]).read_text() if data.startswith("@") else data)
                found.append((doc.name, path, body))
        for lang, block in CODE_BLOCK.findall(doc.read_text(encoding="utf-8")):
            if lang == "json":
                body = json.loads(block)
                if isinstance(body, dict) and "findings" in body and "patient" in body:
                    found.append((doc.name, "/v1/evaluations", body))
    return found


EXAMPLES = examples(DOCS)


def test_there_are_examples_to_check():
    assert {doc for doc, _, _ in EXAMPLES} >= {"README.md", "integrators.md"}


@pytest.mark.parametrize(("doc", "path", "body"), EXAMPLES, ids=[f"{d}:{p}" for d, p, _ in EXAMPLES])
def test_request_examples_are_valid_and_answered(doc, path, body, spec, client):
    errors = [e.message for e in request_schema_validator(spec, path).iter_errors(body)]
    assert not errors, f"{doc}: {errors}"
    response = client.post(path, json=body)
    assert response.status_code == 200, (doc, response.get_json())


@pytest.mark.parametrize("doc", DOCS, ids=ids(DOCS))
def test_curl_paths_are_documented_routes(doc, spec):
    templates = [re.compile("^" + re.sub(r"\{\w+\}", r"[^/]+", p) + "$") for p in spec["paths"]]
    for argv in curl_commands(doc):
        url = next(a for a in argv if a.startswith("http"))
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0] or "/"
        assert any(t.match(path) for t in templates), f"{doc.name}: {path} is not in the OpenAPI document"
