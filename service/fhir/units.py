"""UCUM units: conversion between commensurable units through a units library, not a table of
our own.

UCUM codes (`ng/mL`, `ug/L`, `[degF]`, `mo`) are parsed by ucumvert into pint units, and pint
converts. Used by the native API (a value may come in any unit equal in kind to the finding's,
e.g. ng/mL where ug/L is declared) and by the FHIR mapping (`valueQuantity`).

Two guards on top of pint:
- pint counts angles as dimensionless, so degrees would convert to the unit `1`. Units are
  commensurable here only when their root units agree (radian is a root unit of its own), so
  `deg` never becomes a ratio.
- UCUM `''` (second of arc) is parsed by ucumvert as the second of time; both arc units are
  read here as the angles UCUM defines.

The registry costs about 0.5 s to build, so it is built on the first conversion between two
different units, once per process; a request in the declared unit never pays for it.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Any

# UCUM special cases that ucumvert reads differently from the UCUM specification.
_ARC = {"'": 1 / 60, "''": 1 / 3600}  # in degrees
_ANNOTATION = re.compile(r"\{[^{}]*\}")
_lock = threading.Lock()


@cache
def _registry() -> Any:
    with _lock:
        from ucumvert import PintUcumRegistry

        return PintUcumRegistry()


@cache
def _unit(code: str) -> Any:
    """The pint quantity of one UCUM code, or None when it is not valid UCUM."""
    ureg = _registry()
    if code in _ARC:
        return ureg.from_ucum("deg") * _ARC[code]
    # A pure annotation ({score}) is the unit 1; one attached to a unit (mg{total}) adds nothing.
    bare = _ANNOTATION.sub("", code) or "1"
    try:
        quantity = ureg.from_ucum(bare)
    except Exception:  # ucumvert raises lark and pint errors of many kinds for invalid codes
        return None
    return quantity if hasattr(quantity, "to_root_units") else None


@cache
def _commensurable(source: str, target: str) -> bool:
    s, t = _unit(source), _unit(target)
    if s is None or t is None:
        return False
    return bool(s.to_root_units().units == t.to_root_units().units)


def convert(value: float, source: str, target: str) -> float | None:
    """`value` in UCUM unit `source` in unit `target`, rounded to 6 decimals; None when the
    units are not both valid UCUM of the same kind."""
    if source == target:
        return value
    if not _commensurable(source, target):
        return None
    ureg = _registry()
    s, t = _unit(source), _unit(target)
    # Quantity(value, unit) and not value * unit: temperatures are offset units (Cel, [degF]).
    out = ureg.Quantity(value * s.magnitude, s.units).to(t.units).magnitude / t.magnitude
    return round(float(out), 6)


def describe(unit: str | None) -> str:
    """A unit for a sentence: nothing for the unit 1 ("between 0.1 and 2", not "... 2 1")."""
    return "" if unit in (None, "", "1") else f" {unit}"
