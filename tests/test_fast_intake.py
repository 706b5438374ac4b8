"""The validation fast path (service/intake/fast.py, msgspec) against the marshmallow schema it
stands in for: over generated bodies, valid and broken, `parse_encounter` must give the same
encounter, or the same error (status, detail and every error entry), as the schema alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import DEFAULT_RULES_DIR
from service.errors import ServiceError
from service.intake import parse as intake
from service.intake.fast import fast_load
from service.intake.schemas import LATERALITIES
from service.knowledge.loader import load_knowledge
from service.knowledge.model import SEXES

K = load_knowledge(DEFAULT_RULES_DIR)
FINDINGS = sorted(K.findings.values(), key=lambda f: f.code)
CODINGS = sorted({(c.system, c.code) for f in FINDINGS for c in f.codes})
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5), st.sampled_from(["", "x" * 65, "x" * 129, "x" * 257, "female", "left", "58", "true"]),
    st.sampled_from([0, 1, 120, 121, -1, 200, 201, 0.5, 5.0, 120.0, 120.5, 1e300]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def outcome(body: Any, fast: bool) -> tuple[str, Any]:
    load = intake.fast_load if fast else (lambda body: None)
    original = intake.fast_load
    intake.fast_load = load
    try:
        enc = intake.parse_encounter(K, copy.deepcopy(body))
    except ServiceError as exc:
        return "error", (exc.status, exc.detail, exc.errors)
    finally:
        intake.fast_load = original
    return "encounter", (enc, enc.codings_read)


def finding_item(f: Any, draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {"code": f.code}
    if f.type == "boolean":
        present = draw(st.sampled_from([True, False, None, "omit"]))
        if present != "omit":
            item["present"] = present
    elif f.type == "choice":
        item["value"] = draw(st.sampled_from(f.choices))
    else:
        lo, hi = f.range
        item["value"] = draw(st.one_of(st.floats(lo, hi, allow_nan=False), st.integers(int(lo), int(hi))))
        if f.unit and draw(st.booleans()):
            item["unit"] = f.unit
    if draw(st.integers(0, 5)) == 0:
        item["laterality"] = draw(st.sampled_from(LATERALITIES))
    return item


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(FINDINGS), max_size=25, unique_by=lambda f: f.code))
    items = [finding_item(f, draw) for f in chosen]
    if CODINGS and draw(st.booleans()):  # a coded finding (the same finding twice is an error later)
        system, code = draw(st.sampled_from(CODINGS))
        items.append({"system": system, "code": code})
    body: dict[str, Any] = {"findings": items}
    patient = draw(st.fixed_dictionaries({}, optional={
        "age": st.one_of(st.none(), st.integers(0, 120), st.floats(0, 120, allow_nan=False)),
        "sex": st.one_of(st.none(), st.sampled_from(SEXES)),
    }))
    if draw(st.booleans()):
        body["patient"] = patient
    if draw(st.booleans()):
        body["encounter_id"] = draw(st.text(min_size=1, max_size=128))
    if draw(st.booleans()):
        body["ask_next_limit"] = draw(st.integers(1, 200))
    return body


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, v in node.items():
            out += _paths(v, (*prefix, key))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def broken_bodies(draw: st.DrawFn) -> Any:
    """A valid body with one to three things broken: a value replaced by any JSON value, a key
    added or removed, a finding repeated."""
    body: Any = draw(valid_bodies())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "add", "remove", "duplicate"]))
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        if kind == "replace":
            if not path:
                body = draw(json_values)
                continue
            parent = body
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = draw(json_values)
        elif kind in ("add", "remove"):
            dicts = [p for p in paths if isinstance(_at(body, p), dict)]
            if not dicts:
                continue
            target = _at(body, draw(st.sampled_from(dicts)))
            if kind == "add":
                target[draw(st.sampled_from(["extra", "code", "present", "value", "age", "sex", "findings"]))] = (
                    draw(json_values))
            elif target:
                target.pop(draw(st.sampled_from(sorted(target, key=str))))
        elif isinstance(body, dict) and isinstance(body.get("findings"), list) and body["findings"]:
            body["findings"].append(copy.deepcopy(draw(st.sampled_from(body["findings"]))))
    return body


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@SETTINGS
@given(valid_bodies())
def test_well_formed_bodies_take_the_fast_path_and_give_the_same_encounter(body):
    assert fast_load(copy.deepcopy(body)) is not None  # the fast path is taken...
    assert outcome(body, fast=True) == outcome(body, fast=False)  # ...and changes nothing


@SETTINGS
@given(broken_bodies())
def test_broken_bodies_give_exactly_the_schemas_error(body):
    assert outcome(body, fast=True) == outcome(body, fast=False)


@pytest.mark.parametrize("body", [
    {"findings": [{"code": "x", "value": True}]},  # bool value: the vocabulary check's message
    {"findings": [{"code": "x", "value": None}]},
    {"findings": [{"code": "x"}, {"code": "x"}]},  # duplicate: the schema's message with the index
    {"findings": [], "ask_next_limit": 5.0},
    {"findings": [], "ask_next_limit": True},
    {"findings": [], "patient": None},
    {"findings": [], "patient": {"age": "58"}},
    {"findings": [], "patient": {"age": True}},
    {"findings": [], "patient": {"age": 120.01}},
    {"findings": [], "extra": 1},
    {"findings": "fever"},
    {"findings": ["fever"]},
    {"patient": {}},
])
def test_bodies_the_fast_path_leaves_to_the_schema(body):
    assert fast_load(copy.deepcopy(body)) is None
    assert outcome(body, fast=True) == outcome(body, fast=False)


def test_the_schema_loads_ages_as_floats_and_so_does_the_fast_path():
    body = {"patient": {"age": 58, "sex": "female"}, "findings": [{"code": FINDINGS[0].code}]}
    data = fast_load(body)
    assert data is not None and data["patient"] == {"age": 58.0, "sex": "female"}
    assert isinstance(data["patient"]["age"], float)
    assert data == intake._SCHEMA.load(copy.deepcopy(body))


def _boundaries() -> list[dict[str, Any]]:
    """Every bound of the schema, just inside and just outside."""
    code = FINDINGS[0].code
    out: list[dict[str, Any]] = []
    for v in ("", "x", "x" * 128, "x" * 129, 5, None):
        out.append({"findings": [], "encounter_id": v})
    for v in (0, 1, 200, 201, -1, 1.0, None, "5"):
        out.append({"findings": [], "ask_next_limit": v})
    for v in (-0.0, 0, -0.01, 120, 120.0, 120.0001, 121, None, 58.5):
        out.append({"findings": [], "patient": {"age": v}})
    for v in (*SEXES, "Female", "", None, 1):
        out.append({"findings": [], "patient": {"sex": v}})
    for v in ("", "x" * 64, "x" * 65, code, 1, None):
        out.append({"findings": [{"code": v}]})
    for v in ("", "x" * 256, "x" * 257, "http://snomed.info/sct", None):
        out.append({"findings": [{"system": v, "code": code}]})
    for v in ("", "x", "x" * 32, "x" * 33, None, 1):
        out.append({"findings": [{"code": code, "value": 1, "unit": v}]})
    for v in ("", "x", "x" * 64, "x" * 65, None, True, False, 0, -1.5, [], {}):
        out.append({"findings": [{"code": code, "value": v}]})
    for v in (*LATERALITIES, "up", "", None):
        out.append({"findings": [{"code": code, "laterality": v}]})
    for v in (True, False, None, 1, 0, "true", "false"):
        out.append({"findings": [{"code": code, "present": v}]})
    out.append({"findings": [{"code": code}] * 2})
    out.append({"findings": [{"code": code, "system": "urn:legpain-cds:finding"}, {"code": code}]})
    out.append({"findings": [{"code": "nope"} for _ in range(201)]})
    return out


@pytest.mark.parametrize("body", _boundaries())
def test_every_bound_of_the_schema_is_kept(body):
    assert outcome(body, fast=True) == outcome(body, fast=False)
