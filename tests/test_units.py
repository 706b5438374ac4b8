"""UCUM conversion through the units library (service/fhir/units.py), and the two guards it adds."""

from __future__ import annotations

import pytest

from service.fhir.units import convert, describe


@pytest.mark.parametrize(("value", "source", "target", "expected"), [
    (1.5, "ng/mL", "ug/L", 1.5),  # equal units, written differently
    (1, "mg/dL", "g/L", 0.01),
    (37, "Cel", "[degF]", 98.6),  # offset units
    (310.15, "K", "Cel", 37.0),
    (0.5, "rad", "deg", 28.647890),
    (2, "wk", "d", 14.0),
    (1, "a", "mo", 12.0),  # UCUM: a = 365.25 d, mo = a/12
    (72, "%", "1", 0.72),
    (3, "{score}", "1", 3.0),  # a pure annotation is the unit 1
    (1, "[in_i]", "cm", 2.54),
    (30, "'", "deg", 0.5),  # minutes and seconds of arc, which ucumvert alone reads as time
    (3600, "''", "deg", 1.0),
])
def test_commensurable_units_convert(value, source, target, expected):
    assert convert(value, source, target) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("source", "target"), [
    ("deg", "1"),  # pint counts angles as dimensionless; an angle is never a ratio here
    ("rad", "%"),
    ("''", "s"),  # an arc second is not a second
    ("ug/L", "wk"),
    ("kg", "deg"),
    ("furlong", "m"),  # not UCUM
    ("not a unit", "1"),
])
def test_units_of_different_kinds_or_not_ucum_do_not_convert(source, target):
    assert convert(1.0, source, target) is None


def test_the_same_unit_is_returned_untouched_without_building_the_registry():
    assert convert(0.72, "whatever", "whatever") == 0.72


def test_the_unit_1_is_not_written_in_sentences():
    assert describe("1") == "" and describe(None) == ""
    assert describe("ug/L") == " ug/L"
