"""What keeps the engine adapter lean (issue 18), as properties that a change could silently lose:
findings spread over several type tags so that no node of the C engine's alpha network has
hundreds of children, and no garbage cycle per evaluation for the collector to find."""

from __future__ import annotations

import gc
import zlib
from collections import Counter

import pytest

from service.config import DEFAULT_RULES_DIR
from service.errors import ServiceError
from service.intake.parse import parse_encounter
from service.knowledge.loader import load_knowledge
from service.knowledge.model import Knowledge
from service.reasoning.engine import FINDING_BUCKETS, Engine, Fact, fact_payload, finding_tag


@pytest.fixture(scope="module")
def real() -> Knowledge:
    return load_knowledge(DEFAULT_RULES_DIR)


def test_finding_tags_are_a_pure_function_of_the_code():
    assert finding_tag("abi_value") == f"f{zlib.crc32(b'abi_value') % FINDING_BUCKETS}"
    assert fact_payload(Fact("finding", "abi_value", value=0.5))["t"] == finding_tag("abi_value")
    assert fact_payload(Fact("patient", "patient", value=40))["t"] == "p"


def test_no_type_tag_carries_most_of_the_real_rules_codes(real):
    """The engine probes a node's children one by one for every property of a fact; one tag for
    all ~240 codes made every finding cost ~4x a patient fact."""
    codes = {leaf.key for r in real.rules for leaf in r.when.positive_leaves() if leaf.kind == "finding"}
    per_tag = Counter(finding_tag(c) for c in codes)
    assert len(per_tag) == FINDING_BUCKETS
    assert max(per_tag.values()) <= 2 * len(codes) // FINDING_BUCKETS


def test_every_compiled_finding_pattern_tests_its_codes_tag(real):
    """H7 and the tags together: each finding pattern starts with the tag of the code it tests."""
    engine = Engine(real)
    seen = 0

    def walk(node):
        nonlocal seen
        if isinstance(node, dict):
            tests = node.get("$and")
            if isinstance(tests, list) and tests and "t" in tests[0] and "code" in tests[1]:
                assert tests[0]["t"] == finding_tag(tests[1]["code"])
                seen += 1
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    import json

    walk(json.loads(engine._definition_json))
    assert seen > 200


def test_an_evaluation_leaves_no_garbage_cycle(real):
    """A cycle per evaluation (it was a recursive closure per firing, 36 objects) makes the
    collector run every few dozen evaluations, inside a request."""
    engine = Engine(real)
    encounters = []
    for case in real.cases:
        try:
            encounters.append(parse_encounter(real, dict(case.request)))
        except ServiceError:  # a case built to be refused
            continue
    assert len(encounters) > 20
    for enc in encounters:
        engine.evaluate(enc.facts())
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for enc in encounters:
            engine.evaluate(enc.facts())
        gc.collect()
        cycles = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cycles == []
