"""The fast path of request validation: msgspec checks a well-formed evaluation request in C.

It accepts a subset of what `EvaluationRequestSchema` (marshmallow) accepts and gives the same
data for it; anything it does not accept (a wrong type, a null where none is allowed, an
unknown field, a duplicate finding, a value out of its bounds) returns None, and the caller
runs the marshmallow schema, whose error body is the one clients know. So every error answer
is exactly what it was, and a well-formed request skips marshmallow (0.3 ms of a request).
tests/test_fast_intake.py checks, over generated valid and broken bodies, that both paths give
the same encounter or the same error.

Kept in step with service/intake/schemas.py by hand: the bounds below are that schema's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.intake.schemas import LATERALITIES, MAX_ASK_NEXT, MAX_FINDINGS
from service.knowledge.model import SEXES

_Sex = Literal[tuple(SEXES)]  # type: ignore[valid-type]
_Laterality = Literal[tuple(LATERALITIES)]  # type: ignore[valid-type]
_Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Choice = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Patient(msgspec.Struct, forbid_unknown_fields=True):
    age: Annotated[float, msgspec.Meta(ge=0, le=120)] | None = None
    sex: _Sex | None = None


class _Finding(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    code: _Code
    system: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | msgspec.UnsetType = msgspec.UNSET
    present: bool | None = True
    # bool is not a number to msgspec: a true/false value falls back, as the vocabulary check
    # must then say what a yes/no finding takes.
    value: int | float | _Choice | msgspec.UnsetType = msgspec.UNSET
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | msgspec.UnsetType = msgspec.UNSET
    laterality: _Laterality | msgspec.UnsetType = msgspec.UNSET


class _Request(msgspec.Struct, forbid_unknown_fields=True):
    findings: Annotated[list[_Finding], msgspec.Meta(max_length=MAX_FINDINGS)]
    patient: _Patient | msgspec.UnsetType = msgspec.UNSET
    encounter_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | msgspec.UnsetType = msgspec.UNSET
    ask_next_limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_ASK_NEXT)] | msgspec.UnsetType = msgspec.UNSET


def fast_load(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema's loaded data for a well-formed body, or None (then use the schema)."""
    try:
        req = msgspec.convert(body, _Request, strict=True)
    except msgspec.ValidationError:
        return None
    findings: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str]] = set()
    for f in req.findings:
        item: dict[str, Any] = {"code": f.code, "present": f.present}
        if f.system is not msgspec.UNSET:
            item["system"] = f.system
        if f.value is not msgspec.UNSET:
            item["value"] = f.value
        if f.unit is not msgspec.UNSET:
            item["unit"] = f.unit
        if f.laterality is not msgspec.UNSET:
            item["laterality"] = f.laterality
        key = (item.get("system"), f.code)
        if key in seen:  # the schema names the duplicate and where it was first given
            return None
        seen.add(key)
        findings.append(item)
    data: dict[str, Any] = {"findings": findings}
    if req.patient is msgspec.UNSET:
        data["patient"] = {}
    else:
        patient: dict[str, Any] = {}
        # Only the keys the body sent, as the schema loads them (its Float makes 58 into 58.0).
        sent = body["patient"]
        if "age" in sent:
            patient["age"] = None if req.patient.age is None else float(req.patient.age)
        if "sex" in sent:
            patient["sex"] = req.patient.sex
        data["patient"] = patient
    if req.encounter_id is not msgspec.UNSET:
        data["encounter_id"] = req.encounter_id
    if req.ask_next_limit is not msgspec.UNSET:
        data["ask_next_limit"] = req.ask_next_limit
    return data
