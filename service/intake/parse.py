"""Turn a request body into an `Encounter`, or a 422 that says what is wrong and where.

Two layers: the marshmallow schema checks shape and types (a well-formed body passes msgspec's
faster check instead, service/intake/fast.py, which sends anything else to the schema); then every finding is checked
against the vocabulary (known code, the value its type needs, the declared unit, the valid
range). All problems are reported together, each with a JSON pointer into the request.
"""

from __future__ import annotations

import difflib
from typing import Any

from marshmallow import ValidationError

from service.errors import FieldError, ValidationFailed
from service.fhir.mapping import LOCAL_FINDING_SYSTEM, findings_for_coding
from service.fhir.units import convert, describe
from service.intake.fast import fast_load
from service.intake.schemas import MAX_FINDINGS, EvaluationRequestSchema
from service.knowledge.model import Knowledge
from service.reasoning.encounter import Encounter

_SCHEMA = EvaluationRequestSchema()


def parse_encounter(k: Knowledge, body: Any) -> Encounter:
    if not isinstance(body, dict):
        raise ValidationFailed(
            "The request body must be a JSON object.",
            [FieldError("", "type", "Expected an object with 'findings'.").as_dict()],
        )
    findings_raw = body.get("findings")
    if isinstance(findings_raw, list) and len(findings_raw) > MAX_FINDINGS:
        # Checked before the schema walks every item: a huge list must cost nothing.
        raise ValidationFailed(
            f"Too many findings: {len(findings_raw)}; at most {MAX_FINDINGS}.",
            [FieldError("/findings", "too-many", f"At most {MAX_FINDINGS} findings per evaluation.").as_dict()],
        )
    # A well-formed body skips marshmallow; anything else gets the schema's own error body.
    data = fast_load(body)
    if data is None:
        data = _load_with_schema(body)
    return _encounter(k, data)


def _load_with_schema(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return _SCHEMA.load(body)
    except ValidationError as exc:
        errors = [FieldError(ptr, "schema", msg).as_dict() for ptr, msg in _flatten(exc.normalized_messages())]
        raise ValidationFailed("The request does not match the schema.", errors) from None


def _encounter(k: Knowledge, data: dict[str, Any]) -> Encounter:
    errors: list[FieldError] = []
    findings: dict[str, dict[str, Any]] = {}
    unknown: set[str] = set()
    where: dict[str, int] = {}
    codings_read: list[dict[str, str]] = []
    for i, item in enumerate(data["findings"]):
        ptr = f"/findings/{i}"
        f = _resolve_coding(k, item, ptr, errors)
        if f is None:
            continue
        if "system" in item:
            codings_read.append({"pointer": ptr, "system": item["system"], "code": item["code"],
                                 "finding": f["code"], "display": k.findings[f["code"]].display})
        if f["code"] in where:  # e.g. a SNOMED CT coding and the local code of one finding
            errors.append(FieldError(f"{ptr}/code", "duplicate",
                                     f"This names finding {f['code']!r}, already given at index {where[f['code']]}."))
            continue
        where[f["code"]] = i
        if f["present"] is None:
            # Asked, answer unknown: no fact for the rules, only a question ask_next need not repeat.
            if f.get("value") is not None:
                errors.append(FieldError(f"{ptr}/value", "unexpected-value",
                                         f"{f['code']} is sent as unknown (present: null): give no value."))
            elif f["code"] in k.findings:
                unknown.add(f["code"])
            else:
                _check_finding(k, f, ptr, errors)  # the unknown-code error, with suggestions
            continue
        checked = _check_finding(k, f, ptr, errors)
        if checked is not None:
            findings[f["code"]] = checked
    if errors:
        unknown = sum(1 for e in errors if e.reason == "unknown-code")
        detail = f"{len(errors)} finding(s) are not valid"
        if unknown:
            detail += f", {unknown} with an unknown code (see GET /v1/findings)"
        raise ValidationFailed(detail + ".", [e.as_dict() for e in errors])
    patient = data.get("patient") or {}
    return Encounter(
        age=patient.get("age"),
        sex=patient.get("sex"),
        findings=findings,
        encounter_id=data.get("encounter_id"),
        unknown=frozenset(unknown),
        ask_next_limit=data.get("ask_next_limit"),
        codings_read=tuple(codings_read),
    )


def _resolve_coding(k: Knowledge, f: dict[str, Any], ptr: str, errors: list[FieldError]) -> dict[str, Any] | None:
    """A coded finding ({system, code}) -> the same item with the local finding code."""
    if "system" not in f:
        return f
    system, code = f["system"], f["code"]
    local = findings_for_coding(k, system, code)
    if len(local) == 1:
        return {**{key: v for key, v in f.items() if key != "system"}, "code": local[0]}
    if local:
        errors.append(FieldError(f"{ptr}/code", "ambiguous-code",
                                 f"{system}|{code} names several findings ({', '.join(local)}); "
                                 "send the local code instead.", {"suggestions": list(local)}))
        return None
    near = difflib.get_close_matches(code, list(k.findings), n=3, cutoff=0.5) if system == LOCAL_FINDING_SYSTEM else []
    errors.append(FieldError(
        f"{ptr}/code", "unknown-code",
        f"Unknown coding {system}|{code}: no finding has it (GET /v1/findings lists each finding's codes)."
        + (f" Did you mean {', '.join(near)}?" if near else ""),
        {"suggestions": near},
    ))
    return None


def _check_finding(k: Knowledge, f: dict[str, Any], ptr: str, errors: list[FieldError]) -> dict[str, Any] | None:
    code = f["code"]
    finding = k.findings.get(code)
    if finding is None:
        near = difflib.get_close_matches(code, list(k.findings), n=3, cutoff=0.5)
        errors.append(FieldError(
            f"{ptr}/code", "unknown-code",
            f"Unknown finding code {code!r}." + (f" Did you mean {', '.join(near)}?" if near else ""),
            {"suggestions": near},
        ))
        return None
    out: dict[str, Any] = {"present": f["present"]}
    if "laterality" in f:
        out["laterality"] = f["laterality"]
    value = f.get("value")
    in_unit = describe(finding.unit)
    if finding.type == "boolean":
        if value is not None:
            errors.append(FieldError(
                f"{ptr}/value", "unexpected-value",
                f"{code} is a yes/no finding: use present, not value: {{\"code\": \"{code}\"}} or "
                f"{{\"code\": \"{code}\", \"present\": false}}.",
            ))
            return None
    elif finding.type == "number":
        if value is None:
            if f["present"]:
                errors.append(FieldError(f"{ptr}/value", "missing-value",
                                         f"{code} is a measurement{' in' + in_unit if in_unit else ''}; "
                                         "give its value."))
                return None
        elif isinstance(value, str | bool):
            errors.append(FieldError(f"{ptr}/value", "type",
                                     f"{code} takes a number{' in' + in_unit if in_unit else ''}."))
            return None
        else:
            unit = f.get("unit")
            if unit is not None and unit != finding.unit:
                # Any unit of the same kind is accepted (ng/mL where ug/L is declared) and converted,
                # through the UCUM library: the rules only ever see the declared unit.
                converted = convert(value, unit, finding.unit or "1")
                if converted is None:
                    errors.append(FieldError(
                        f"{ptr}/unit", "unit",
                        f"{code} is measured in {finding.unit!r}"
                        f"{' (a pure number)' if not in_unit else ''}; {unit!r} is not a UCUM unit of the same kind.",
                    ))
                    return None
                value = converted
            lo, hi = finding.range  # type: ignore[misc]
            if not lo <= value <= hi:
                errors.append(FieldError(f"{ptr}/value", "out-of-range",
                                         f"{code} must be between {lo:g} and {hi:g}{in_unit}; got {value:g}{in_unit}.",
                                         {"range": [lo, hi]}))
                return None
            out["value"] = value
    else:
        if value is None:
            if f["present"]:
                errors.append(FieldError(f"{ptr}/value", "missing-value",
                                         f"{code} needs one of: {', '.join(finding.choices)}."))
                return None
        elif isinstance(value, bool) or value not in finding.choices:
            errors.append(FieldError(f"{ptr}/value", "invalid-choice",
                                     f"{code} must be one of: {', '.join(finding.choices)}; got {value!r}.",
                                     {"choices": list(finding.choices)}))
            return None
        else:
            out["choice"] = value
    return out


def _flatten(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    """marshmallow's nested error dict -> (JSON pointer, message) pairs."""
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, sub in messages.items():
            key = str(key)
            if key == "_schema":
                out.extend(_flatten(sub, prefix))
            else:
                # field_name "findings.3.code" from schema-level validators
                out.extend(_flatten(sub, prefix + "/" + key.replace(".", "/")))
    elif isinstance(messages, list):
        for m in messages:
            out.extend(_flatten(m, prefix))
    else:
        out.append((prefix, str(messages)))
    return out
