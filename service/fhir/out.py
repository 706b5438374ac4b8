"""What the service emits in CDS Hooks / FHIR R4 form: cards, ServiceRequest suggestions, a
GuidanceResponse for the native API, and OperationOutcome error bodies.

Card layout: one card per evaluation, for the urgency tier.
* `indicator`: critical for emergency, warning for urgent and soon, info for routine.
* `summary` (< 140 characters): the tier in plain words and what drives it (the first red
  flag, else the top of the differential).
* `detail` (markdown): why (the tier's reasons with rule ids), red flags, the ranked
  differential, suggested and not-indicated tests, scores, what to ask next, the findings read
  from the record (and those matched but not used), the rule set, and the disclaimer.
* `source`: the rule set's title and version; `suggestions`: one per recommended test, each
  creating a draft FHIR ServiceRequest (intent proposal) with the test's codes and priority;
  `overrideReasons` from the HL7 non-adherence reason codes; `extension` holds the rule
  provenance (every rule that fired, with version, evidence and sources).
* `uuid`: a random UUID that also carries the card type (see `card_uuid`), so that feedback
  can be counted per card type without the service remembering any card.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from service.fhir.mapping import (
    LOCAL_CONDITION_SYSTEM,
    LOCAL_FINDING_SYSTEM,
    LOCAL_TEST_SYSTEM,
    Mapped,
)
from service.knowledge.model import PRIORITY_RANK, TIERS, Knowledge

EXTENSION_PROVENANCE = "example.legpain-cds.provenance"
EXTENSION_RULESET = "example.legpain-cds.ruleset"
TOPIC_SYSTEM = "urn:legpain-cds:card-topic"
RED_FLAG_SYSTEM = "urn:legpain-cds:red-flag"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"

# From the CDS Hooks non-adherence reason code system (its "clinical" value set), displays
# verbatim; tests check them against ../shared/cds-hooks/vocabulary. `patient-refuses` is left
# out on purpose: the code system marks it as not a preferred option.
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("action-completed", "Recommended action was already completed"),
    ("patient-contraindication", "Patient has contraindication to recommended action"),
    ("cds-not-applicable", "PC CDS does not apply to patient"),
    ("recipient-disagrees-evidence", "Recipient disagrees with recommendation because of issues with the evidence"),
    ("does-not-align-preferences", "Recommendation does not align with patient preferences or values"),
    ("service-not-available", "Treatment or service is not practically available"),
)
OVERRIDE_CODES = frozenset(code for code, _ in OVERRIDE_REASONS)

INDICATOR = {"emergency": "critical", "urgent": "warning", "soon": "warning", "routine": "info"}
TIER_PHRASE = {
    "emergency": "emergency department now",
    "urgent": "see a clinician today (within hours)",
    "soon": "see a clinician within days to two weeks",
    "routine": "self-care; a routine appointment if it persists",
}
TIER_SUMMARY = {
    "emergency": "EMERGENCY (emergency department now)",
    "urgent": "URGENT (same day)",
    "soon": "SOON (within days to 2 weeks)",
    "routine": "ROUTINE",
}
MAX_SUMMARY = 139

# --- card uuids that carry their type ------------------------------------------------------

CARD_TYPES: tuple[str, ...] = (*(f"urgency-{t}" for t in TIERS), "questions")
_TYPE_BYTE = {t: i + 1 for i, t in enumerate(CARD_TYPES)}
_BYTE_TYPE = {i: t for t, i in _TYPE_BYTE.items()}
_TAG = b"legpain-cds card uuid v1"


def card_uuid(card_type: str) -> str:
    """A version-4 UUID with 98 random bits; byte 13 holds the card type and bytes 14-15 a
    checksum, so `card_type_of` can tell the type back (and tell our uuids from others)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    raw[13] = _TYPE_BYTE[card_type]
    raw[14:16] = hashlib.sha256(_TAG + bytes(raw[:14])).digest()[:2]
    return str(uuid.UUID(bytes=bytes(raw)))


def card_type_of(value: str) -> str:
    """The card type a uuid from `card_uuid` carries; "unknown" for any other string."""
    try:
        raw = uuid.UUID(value).bytes
    except (ValueError, AttributeError, TypeError):
        return "unknown"
    if hashlib.sha256(_TAG + raw[:14]).digest()[:2] != raw[14:16]:
        return "unknown"
    return _BYTE_TYPE.get(raw[13], "unknown")


# --- FHIR pieces ---------------------------------------------------------------------------


def _coding(c: dict[str, Any]) -> dict[str, Any]:
    out = {"system": c["system"], "code": c["code"]}
    if c.get("display"):
        out["display"] = c["display"]
    return out


def _fhir_id(code: str) -> str:
    """A local code as a FHIR id ([A-Za-z0-9-.]{1,64})."""
    return code.replace("_", "-")[:64]


def service_request(test: dict[str, Any], k: Knowledge, *, subject: dict[str, Any],
                    encounter: dict[str, Any] | None = None, rid: str | None = None) -> dict[str, Any]:
    """A draft ServiceRequest (intent proposal) for one entry of `recommended_tests`."""
    codings = [_coding(c) for c in test["codes"]]
    codings.append({"system": LOCAL_TEST_SYSTEM, "code": test["test"], "display": test["display"]})
    resource: dict[str, Any] = {"resourceType": "ServiceRequest"}
    if rid is not None:
        resource["id"] = rid
    resource.update({
        "status": "draft",
        "intent": "proposal",
        "priority": test["priority"],
        "code": {"coding": codings, "text": test["display"]},
        "subject": subject,
    })
    if encounter is not None:
        resource["encounter"] = encounter
    reasons = []
    for code in test["for_conditions"]:
        cond = k.conditions.get(code)
        if cond is None:
            continue
        reasons.append({
            "coding": [*({"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})}
                         for c in cond.codes),
                       {"system": LOCAL_CONDITION_SYSTEM, "code": cond.code, "display": cond.display}],
            "text": cond.display,
        })
    if reasons:
        resource["reasonCode"] = reasons
    resource["note"] = [{"text": test["rationale"] + " (rules: " + ", ".join(test["rules"]) + ")"}]
    return resource


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """issues: {code, diagnostics, expression?, severity?} -> an R4 OperationOutcome."""
    out = []
    for issue in issues:
        entry: dict[str, Any] = {"severity": issue.get("severity", "error"), "code": issue["code"]}
        entry["details"] = {"text": issue["diagnostics"]}
        if issue.get("expression"):
            entry["expression"] = [issue["expression"]]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


# --- the card ------------------------------------------------------------------------------


# Every ASCII punctuation character may be backslash-escaped in CommonMark (and GFM tables),
# and escaped it is always literal text. So anything that comes from the record (ids, units,
# statuses) and any display text is escaped whole: no link, image, emphasis, HTML, table cell
# break or autolink can be made from it. Line breaks and other control characters become spaces
# so that a value cannot start a new block (a heading, a list, a table row).
_MD_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_MD_TABLE = str.maketrans({c: "\\" + c for c in _MD_PUNCTUATION})


def _md(text: Any) -> str:
    """`text` as literal markdown text."""
    clean = "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029") else c for c in str(text))
    return clean.translate(_MD_TABLE)


def summary_for(answer: dict[str, Any]) -> str:
    tier = answer["urgency"]["tier"]
    head = TIER_SUMMARY[tier]
    if answer["red_flags"]:
        focus = answer["red_flags"][0]["display"]
    elif answer["differential"]:
        focus = "consider " + answer["differential"][0]["display"]
    else:
        focus = ""
    text = f"Leg pain triage {head}" + (f": {focus}" if focus else "")
    if len(text) <= MAX_SUMMARY:
        return text
    cut = text[: MAX_SUMMARY - 1].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut + "…"


def evidence_lines(k: Knowledge, mapped: Mapped, not_read: list[tuple[str, str]]) -> list[str]:
    """What was read from the record, as the record named it and with where and when it was
    recorded ("Type 2 diabetes mellitus (Condition, recorded 2019-03-02)"), and what could not
    be read. Every value from the record is escaped."""
    lines: list[str] = []
    if mapped.used:
        lines.append("**Read from the record**")
        for u in mapped.used:
            f = k.findings[u["finding"]]
            value = ("present" if u["present"] else "absent") if "value" not in u and "choice" not in u else (
                f"{u['value']:g} {f.unit}" if "value" in u else u["choice"])
            label = u.get("label") or f.display
            where = u.get("evidence") or u["resource"]
            read_as = "" if label == f.display else f" - read as {_md(f.display)}"
            lines.append(f"- {_md(label)} ({_md(where)}; {_md(u['resource'])}): {_md(value)}{read_as}")
        lines.append("")
    if not_read:
        lines.append("**Could not be read** (not known to be absent)")
        for what, why in not_read:
            lines.append(f"- {_md(what)}: {_md(why)}")
        lines.append("")
    return lines


def detail_for(answer: dict[str, Any], k: Knowledge, mapped: Mapped,
               not_read: list[tuple[str, str]] | None = None) -> str:
    not_read = not_read or []
    tier = answer["urgency"]["tier"]
    lines = [f"**Urgency: {tier}** - {TIER_PHRASE[tier]}.", ""]
    if answer["urgency"]["reasons"]:
        lines.append("**Why**")
        for r in answer["urgency"]["reasons"]:
            lines.append(f"- {_md(r['text'])} (`{r['rule']}`, {r['tier']})")
        lines.append("")
    if answer["red_flags"]:
        lines.append("**Red flags**")
        for f in answer["red_flags"]:
            lines.append(f"- {_md(f['display'])}: at least {f['tier']} (`{'`, `'.join(f['rules'])}`)")
        lines.append("")
    if answer["differential"]:
        lines += ["**Differential** (ranked)", "",
                  "| # | Condition | Likelihood | Must not miss | Supporting findings |", "|---|---|---|---|---|"]
        for d in answer["differential"]:
            support = ", ".join(k.findings[f].display if f in k.findings else f for f in d["supporting_findings"])
            lines.append(f"| {d['rank']} | {_md(d['display'])} | {d['likelihood']} (score {d['score']}) | "
                         f"{'yes' if d['must_not_miss'] else 'no'} | {_md(support) or '-'} |")
        lines.append("")
    if answer["recommended_tests"]:
        lines.append("**Suggested tests**")
        for t in answer["recommended_tests"]:
            lines.append(f"- {_md(t['display'])} - priority {t['priority']}: {_md(t['rationale'])}")
        lines.append("")
    if answer["tests_not_indicated"]:
        lines.append("**Not indicated here**")
        for t in answer["tests_not_indicated"]:
            lines.append(f"- {_md(t['display'])}: {_md(t['reason'])}")
        lines.append("")
    for s in answer["scores"]:
        items = ", ".join(f"{_md(i['title'])}" for i in s["items"])
        lines += [f"**{_md(s['display'])}: {s['value']:g}** ({items})", ""]
    if answer["ask_next"]:
        lines.append("**Ask next**")
        for q in answer["ask_next"][:3]:
            lines.append(f"- {_md(q['question'])}")
        lines.append("")
    lines += evidence_lines(k, mapped, not_read)
    if mapped.ignored:
        lines.append(f"**Matched but not used** ({len(mapped.ignored)})")
        for entry in mapped.ignored[:10]:
            lines.append(f"- {_md(entry['resource'])}: {_md(entry['reason'])}")
        lines.append("")
    lines.append(f"Rule set {_md(k.name)} {k.version} (sha256 {k.sha256[:12]}).")
    lines += ["", f"_{answer['disclaimer']}_"]
    return "\n".join(lines)


def provenance_extension(answer: dict[str, Any], mapped: Mapped) -> dict[str, Any]:
    return {EXTENSION_PROVENANCE: {
        "ruleset": answer["ruleset"],
        "evaluationId": answer["evaluation_id"],
        "tier": answer["urgency"]["tier"],
        "rules": [
            {"rule": p["rule"], "version": p["version"], "title": p["title"], "evidence": p["evidence"],
             "sources": [s["id"] for s in p["sources"]]}
            for p in answer["provenance"]
        ],
        "findingsUsed": [{"finding": u["finding"], "present": u["present"], "resource": u["resource"]}
                         for u in mapped.used],
        "recordsMatchedNotUsed": len(mapped.ignored),
        # A record coded with an old bundled local code (urn:legpain-cds:finding|...) still
        # counts; the card says which, and what replaces it (vocabulary 0.3.1).
        "deprecatedCodesUsed": [{"code": d["code"], "replacedBy": d["replaced_by"]}
                                for d in answer.get("deprecated_codes_used", [])],
    }}


def urgency_card(answer: dict[str, Any], k: Knowledge, mapped: Mapped, *, patient_id: str,
                 encounter_id: str | None, not_read: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    tier = answer["urgency"]["tier"]
    card: dict[str, Any] = {
        "uuid": card_uuid(f"urgency-{tier}"),
        "summary": summary_for(answer),
        "detail": detail_for(answer, k, mapped, not_read),
        "indicator": INDICATOR[tier],
        "source": {
            "label": f"{k.title} (rule set {k.name} {k.version})"[:200],
            "topic": {"system": TOPIC_SYSTEM, "code": "leg-pain-triage", "display": "Leg pain triage"},
        },
    }
    subject = {"reference": f"Patient/{patient_id}"}
    encounter = {"reference": f"Encounter/{encounter_id}"} if encounter_id else None
    suggestions = []
    for t in answer["recommended_tests"]:
        suggestions.append({
            "label": f"Order {t['display']} ({t['priority']})",
            "uuid": str(uuid.uuid4()),
            "isRecommended": PRIORITY_RANK[t["priority"]] >= PRIORITY_RANK["urgent"],
            "actions": [{
                "type": "create",
                "description": f"Create a draft order: {t['display']}, priority {t['priority']}",
                "resource": service_request(t, k, subject=subject, encounter=encounter),
            }],
        })
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    card["overrideReasons"] = [{"system": NON_ADHERENCE, "code": c, "display": d} for c, d in OVERRIDE_REASONS]
    card["extension"] = provenance_extension(answer, mapped)
    return card


def cards_for(answer: dict[str, Any], k: Knowledge, mapped: Mapped, *, patient_id: str,
              encounter_id: str | None, not_read: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """A card for the tier when a rule fired. When none fired but the record holds a leg-pain
    complaint, one info card with the red-flag questions to ask: silence would read as "nothing
    to worry about". Otherwise (nothing bears on leg pain) no card."""
    if answer["provenance"]:
        return [urgency_card(answer, k, mapped, patient_id=patient_id, encounter_id=encounter_id,
                             not_read=not_read)]
    complaint = [c for c, f in mapped.encounter.findings.items()
                 if f.get("present") and c in k.findings and k.findings[c].topic == "pain"]
    if not complaint:
        return []
    return [questions_card(answer, k, mapped, not_read or [])]


def questions_card(answer: dict[str, Any], k: Knowledge, mapped: Mapped,
                   not_read: list[tuple[str, str]]) -> dict[str, Any]:
    """Leg pain in the record but too little for a tier: the red-flag questions to ask."""
    known = set(mapped.encounter.findings)
    questions = [f.question for f in k.findings.values()
                 if f.topic == "red_flags" and f.code not in known and not f.deprecated]
    lines = ["**Not enough data for a triage tier.** The record has a leg-pain complaint; ask about the red "
             "flags below, then enter the answers.", "", "**Red-flag questions**"]
    lines += [f"- {_md(q)}" for q in questions]
    lines.append("")
    lines += evidence_lines(k, mapped, not_read)
    lines += [f"Rule set {_md(k.name)} {k.version} (sha256 {k.sha256[:12]}).", "", f"_{answer['disclaimer']}_"]
    return {
        "uuid": card_uuid("questions"),
        "summary": "Leg pain: not enough data for triage - ask the red-flag questions",
        "detail": "\n".join(lines),
        "indicator": "info",
        "source": {
            "label": f"{k.title} (rule set {k.name} {k.version})"[:200],
            "topic": {"system": TOPIC_SYSTEM, "code": "leg-pain-triage", "display": "Leg pain triage"},
        },
        "overrideReasons": [{"system": NON_ADHERENCE, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
        "extension": provenance_extension(answer, mapped),
    }


# --- GuidanceResponse (native API, Accept: application/fhir+json) -------------------------


def _finding_concept(k: Knowledge, code: str) -> dict[str, Any]:
    f = k.findings[code]
    codings = [{"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})}
               for c in f.codes]
    codings.append({"system": LOCAL_FINDING_SYSTEM, "code": f.code, "display": f.display})
    return {"coding": codings, "text": f.display}


def guidance_response(answer: dict[str, Any], k: Knowledge, now: datetime | None = None) -> dict[str, Any]:
    """The answer as an R4 GuidanceResponse; the recommended tests are a contained
    RequestGroup of contained draft ServiceRequests; the tier, red flags and differential are
    a contained Parameters resource; what to ask next is `dataRequirement`."""
    now = now or datetime.now(UTC)
    subject = {"display": "The patient of this evaluation (not identified to the service)"}
    contained: list[dict[str, Any]] = []
    actions = []
    for t in answer["recommended_tests"]:
        rid = "sr-" + _fhir_id(t["test"])
        contained.append(service_request(t, k, subject=subject, rid=rid))
        actions.append({
            "title": t["display"],
            "description": t["rationale"],
            "priority": t["priority"],
            "resource": {"reference": f"#{rid}"},
        })
    tier = answer["urgency"]["tier"]
    priorities = [t["priority"] for t in answer["recommended_tests"]]
    request_group: dict[str, Any] = {
        "resourceType": "RequestGroup",
        "id": "recommended-tests",
        "status": "draft",
        "intent": "proposal",
    }
    if priorities:
        request_group["priority"] = max(priorities, key=lambda p: PRIORITY_RANK[p])
    request_group["subject"] = subject
    request_group["note"] = [{"text": f"Urgency {tier}: {TIER_PHRASE[tier]}."}]
    if actions:
        request_group["action"] = actions
    parameters: dict[str, Any] = {"resourceType": "Parameters", "id": "output", "parameter": [
        {"name": "urgency", "valueCode": tier},
        *({"name": "redFlag", "valueCoding": {"system": RED_FLAG_SYSTEM, "code": f["code"], "display": f["display"]}}
          for f in answer["red_flags"]),
        *({"name": "condition", "part": [
            {"name": "code", "valueCodeableConcept": {
                "coding": [*(_coding(c) for c in d["codes"]),
                           {"system": LOCAL_CONDITION_SYSTEM, "code": d["condition"], "display": d["display"]}],
                "text": d["display"]}},
            {"name": "rank", "valueInteger": d["rank"]},
            {"name": "score", "valueInteger": d["score"]},
            {"name": "likelihood", "valueCode": d["likelihood"]},
            {"name": "mustNotMiss", "valueBoolean": d["must_not_miss"]},
        ]} for d in answer["differential"]),
        {"name": "rulesFired", "valueString": ", ".join(f"{p['rule']} v{p['version']}" for p in answer["provenance"])
         or "none"},
        {"name": "ruleset", "valueString": f"{k.name} {k.version} sha256:{k.sha256}"},
        {"name": "vocabularyVersion", "valueString": k.vocabulary_version},
        *({"name": "deprecatedCode", "part": [
            {"name": "code", "valueCode": d["code"]},
            *({"name": "replacedBy", "valueCode": a} for a in d["replaced_by"])]}
          for d in answer.get("deprecated_codes_used", [])),
        {"name": "disclaimer", "valueString": answer["disclaimer"]},
    ]}
    body: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": answer["evaluation_id"],
        "contained": [request_group, *contained, parameters],
    }
    if answer.get("encounter_id"):
        body["requestIdentifier"] = {"value": answer["encounter_id"]}
    body.update({
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{answer['evaluation_id']}"}],
        "moduleUri": f"urn:legpain-cds:ruleset:{k.name}:{k.version}",
        "status": "success",
        "occurrenceDateTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": [{"text": answer["disclaimer"]}],
        "outputParameters": {"reference": "#output"},
        "result": {"reference": "#recommended-tests"},
    })
    requirements = [{"type": "Observation", "codeFilter": [{"path": "code", "code": _finding_concept(k, q["finding"])
                                                           ["coding"]}]}
                    for q in answer["ask_next"] if q.get("finding") in k.findings]  # patient items: no finding
    if requirements:
        body["dataRequirement"] = requirements
    return body
