"""FHIR R4 data -> an `Encounter`, through the vocabulary's codes. Pure functions: no I/O.

Used by the CDS Hooks service (prefetched or fetched Patient / Observation / Condition data)
and by the native API's coded findings (`{"system": ..., "code": ...}`).

Codes
-----
A finding is recognised by any coding the vocabulary gives it (SNOMED CT, LOINC, ...) and
always by the service's own code system, `urn:legpain-cds:finding`, whose codes are the local
finding codes of `GET /v1/findings` (e.g. `urn:legpain-cds:finding|calf_tenderness`). So an
EHR can send every finding, even one that has no standard code yet. Choice values may be
coded in `urn:legpain-cds:choice` (code = the choice, e.g. `mild`) or sent as `valueString`.

Mapping rules (each documented where it is implemented):
* Patient: `gender` -> sex (FHIR's four values are the service's four); `birthDate` -> age in
  completed years on the evaluation date (a partial date counts from its earliest day).
* Observation (and each `component`): `code` maps to a finding. Boolean findings read
  `valueBoolean`, a yes/no/present/absent `valueCodeableConcept`, or an interpretation
  (POS / DET / A / AA present; NEG / ND / N absent); with no value at all the observation of
  the finding means it is present. Number findings read `valueQuantity` (UCUM units converted
  to the finding's unit) or, for unit "1", `valueInteger`. Choice findings read `valueString`
  or a `urn:legpain-cds:choice` coding. An Observation whose `code` maps to nothing but whose
  `valueCodeableConcept` maps to a boolean finding ("symptom: fever") makes that finding
  present. Only `final` / `amended` / `corrected` / `preliminary` observations count, and
  only when dated (effective[x], else issued) within the freshness window
  (`CDS_HOOKS_OBSERVATION_MAX_AGE_DAYS`): stale data must not drive triage.
* Condition: boolean findings only. `verificationStatus` entered-in-error -> skipped; refuted
  -> the finding is absent. `clinicalStatus` active / recurrence / relapse (or none given and
  no abatement) -> present; inactive / remission / resolved -> not used (unknown), except for
  history findings (`previous_dvt`) where any documented episode counts. A finding of this
  episode (a red-flag symptom, foot drop, new numbness, a recent fall) is read from a Condition
  only when it began (onset, else recorded date) within the freshness window, or is undated.
* Several sources for one finding: the latest dated one wins; on a tie, present beats absent
  (never under-triage on a tie). The result does not depend on resource order.

Everything matched but not used is returned in `ignored` with the reason, and everything used
in `used` with the resource it came from, so the card can show the clinician what was read.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from service.fhir.units import convert
from service.knowledge import valuesets
from service.knowledge.model import SEXES, Finding, Knowledge
from service.reasoning.encounter import Encounter

LOCAL_FINDING_SYSTEM = "urn:legpain-cds:finding"
LOCAL_CHOICE_SYSTEM = "urn:legpain-cds:choice"
LOCAL_TEST_SYSTEM = "urn:legpain-cds:test"
LOCAL_CONDITION_SYSTEM = "urn:legpain-cds:condition"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
YES_NO_V2 = "http://terminology.hl7.org/CodeSystem/v2-0136"

# Findings that describe history: a documented episode counts whatever its clinical status.
HISTORY_FINDINGS = frozenset({"previous_dvt"})
# Findings that describe this episode (a red-flag symptom, a deficit that is new): a problem-list
# entry dated before the freshness window says the problem is old, not that it began now, so it
# is not read (the finding stays unknown and is asked). A long-standing foot drop or continence
# problem on the problem list must not raise an urgent or emergency flag by itself. An undated
# active Condition is still read: nothing says it is old, and a missed red flag costs more.
EPISODE_TOPICS = frozenset({"red_flags"})
EPISODE_FINDINGS = frozenset({"foot_drop", "leg_numbness_new", "recent_fall"})

USABLE_OBSERVATION_STATUS = frozenset({"final", "amended", "corrected", "preliminary"})
PRESENT_CLINICAL_STATUS = frozenset({"active", "recurrence", "relapse"})
PAST_CLINICAL_STATUS = frozenset({"inactive", "remission", "resolved"})

# valueCodeableConcept answers for yes/no findings.
_YES = frozenset({
    (SNOMED, "52101004"),   # Present
    (SNOMED, "373066001"),  # Yes
    (SNOMED, "10828004"),   # Positive
    (LOINC, "LA33-6"),      # Yes
    (YES_NO_V2, "Y"),
})
_NO = frozenset({
    (SNOMED, "2667000"),    # Absent
    (SNOMED, "373067005"),  # No
    (SNOMED, "260385009"),  # Negative
    (LOINC, "LA32-8"),      # No
    (YES_NO_V2, "N"),
})
_INTERPRETATION_PRESENT = frozenset({"POS", "DET", "A", "AA"})
_INTERPRETATION_ABSENT = frozenset({"NEG", "ND", "N"})


class FhirInputError(Exception):
    """A FHIR structure the service cannot read: a 400 naming where."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# --- the vocabulary index ------------------------------------------------------------------

_INDEXES: dict[int, tuple[Knowledge, dict[tuple[str, str], tuple[str, ...]]]] = {}


def coding_index(k: Knowledge) -> dict[tuple[str, str], tuple[str, ...]]:
    """(system, code) -> the local finding codes that carry that coding (normally one)."""
    cached = _INDEXES.get(id(k))
    if cached is not None and cached[0] is k:
        return cached[1]
    index: dict[tuple[str, str], list[str]] = {}
    for finding in k.findings.values():
        for c in finding.codes:
            index.setdefault((c.system, c.code), []).append(finding.code)
    frozen = {key: tuple(sorted(set(v))) for key, v in index.items()}
    _INDEXES[id(k)] = (k, frozen)
    return frozen


def findings_for_coding(k: Knowledge, system: str, code: str) -> tuple[str, ...]:
    """The local findings a coding names: () when unknown, more than one when ambiguous.
    A vocabulary code names its finding; any other code of a value set names the value set's
    first finding (a cancer code: active_cancer; a statin: takes_statin), and a measurement's
    LOINC code its finding."""
    if system == LOCAL_FINDING_SYSTEM:
        return (code,) if code in k.findings else ()
    own = coding_index(k).get((system, code), ())
    if own:
        return own
    vsets = valuesets.for_knowledge(k)
    named = {next(iter(vs.findings)) for vs in vsets.lookup(system, code)
             if vs.findings and next(iter(vs.findings.values())) != "absent"}
    named |= {m.finding for m in vsets.measurement(system, code)}
    return tuple(sorted(f for f in named if f in k.findings))


def prefetch_code_filter(k: Knowledge) -> str:
    """The `code=` value of the prefetch templates: every coding the vocabulary maps, plus the
    whole local system (`system|` matches any code in it)."""
    # History findings (conditions, procedures, medicines) come from their own templates
    # (Condition, Procedure, MedicationRequest); leaving their codes out keeps this URL under
    # the 2,000 characters the CDS Hooks query rules allow.
    codes = sorted(f"{system}|{code}" for (system, code), found in coding_index(k).items()
                   if any(k.findings[f].topic != "history" for f in found))
    return ",".join([*codes, f"{LOCAL_FINDING_SYSTEM}|"])


# --- UCUM units ----------------------------------------------------------------------------
# Conversion is service/fhir/units.py (a UCUM library); here only reading a Quantity's unit.

# Human-readable `unit` strings seen in EHR data, used only when no UCUM `code` is given.
_ALIASES = {
    "°": "deg", "degree": "deg", "degrees": "deg",
    "sec": "s", "second": "s", "seconds": "s", "minute": "min", "minutes": "min", "hour": "h", "hours": "h",
    "day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo",
    "year": "a", "years": "a", "yr": "a", "yrs": "a",
    "°C": "Cel", "°F": "[degF]", "ratio": "1", "": "1",
    "µg/L": "ug/L", "mcg/L": "ug/L", "μg/L": "ug/L", "µg/mL": "ug/mL", "mcg/mL": "ug/mL",
}
_ANNOTATION = re.compile(r"\{[^{}]*\}")  # full-matched


def ucum_unit(system: str | None, code: str | None, unit: str | None) -> str | None:
    """The UCUM unit of a Quantity: its `code` when the system is UCUM, else its `unit` text
    read as UCUM or a common alias. A pure annotation (`{score}`) is the unit 1."""
    raw = code if system == UCUM and code is not None else unit
    if raw is None:
        return None
    raw = raw.strip()
    if _ANNOTATION.fullmatch(raw):
        return "1"
    if system != UCUM:
        raw = _ALIASES.get(raw, _ALIASES.get(raw.lower(), raw))
    return raw


# --- dates ---------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)  # full-matched: "$" would accept a trailing newline


def parse_fhir_datetime(value: Any, path: str, *, latest: bool) -> datetime:
    """A FHIR date / dateTime / instant as an aware UTC datetime. A partial date stands for
    its whole period: `latest=True` gives the period's last second, else its first."""
    if not isinstance(value, str) or (m := _DATETIME.fullmatch(value)) is None:
        raise FhirInputError(path, "is not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or with a time)")
    try:
        year = int(m["y"])
        if m["m"] is None:
            month_lo, month_hi = 1, 12
        else:
            month_lo = month_hi = int(m["m"])
        month = month_hi if latest else month_lo
        last_day = calendar.monthrange(year, month)[1]
        day = (last_day if latest else 1) if m["d"] is None else int(m["d"])
        if m["H"] is None:
            t = (23, 59, 59) if latest else (0, 0, 0)
            return datetime(year, month, day, *t, tzinfo=UTC)
        second = int(m["S"] or 0)
        dt = datetime(year, month, day, int(m["H"]), int(m["M"]), second, tzinfo=UTC)
        tz = m["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        return dt
    except ValueError:
        raise FhirInputError(path, "is not a valid calendar date") from None
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 or 0001-01-01T00:30:00+01:00 in UTC
        raise FhirInputError(path, "is outside the dates this service can read (0001-01-01 to 9999-12-31 in UTC)") \
            from None


def age_in_years(birth_date: str, today: date, path: str) -> int:
    born = parse_fhir_datetime(birth_date, path, latest=False).date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


# --- structure helpers ---------------------------------------------------------------------


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FhirInputError(path, "must be a JSON object")
    return value


DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ASKED_UNKNOWN = {"asked-unknown", "unknown"}


def _opt_obj(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = parent.get(key)
    return None if value is None else _obj(value, f"{path}.{key}")


def _opt_list(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FhirInputError(f"{path}.{key}", "must be an array")
    return value


def _opt_str(parent: dict[str, Any], key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise FhirInputError(f"{path}.{key}", "must be a string")
    return value


def _codings(concept: dict[str, Any] | None, path: str) -> list[tuple[str, str]]:
    """A CodeableConcept's (system, code) pairs; codings without both are skipped."""
    if concept is None:
        return []
    out = []
    for i, c in enumerate(_opt_list(concept, "coding", path)):
        cpath = f"{path}.coding[{i}]"
        c = _obj(c, cpath)
        system, code = _opt_str(c, "system", cpath), _opt_str(c, "code", cpath)
        if system and code:
            out.append((system, code))
    return out


def _concepts(parent: dict[str, Any], key: str, path: str) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept or of a list of them (R4 uses both)."""
    value = parent.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _codings(_obj(v, f"{path}.{key}[{i}]"),
                                                                        f"{path}.{key}[{i}]")]
    return _codings(_obj(value, f"{path}.{key}"), f"{path}.{key}")


def _patient_id_of(reference: str) -> str | None:
    """'Patient/123', 'https://x/fhir/Patient/123' or 'Patient/123/_history/2' -> '123'."""
    parts = reference.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return None


def _check_subject(resource: dict[str, Any], path: str, patient_id: str | None) -> None:
    subject = _opt_obj(resource, "subject", path)
    if subject is None or patient_id is None:
        return
    ref = _opt_str(subject, "reference", f"{path}.subject")
    if ref is None:
        return
    other = _patient_id_of(ref)
    if other is not None and other != patient_id:
        raise FhirInputError(f"{path}.subject.reference",
                             "refers to a different patient than context.patientId")


def resources_of(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The resources in a prefetch value: a resource itself, or a Bundle's entries (entries
    with no resource, and OperationOutcome entries of a search, are skipped)."""
    resource = _obj(value, path)
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirInputError(f"{path}.resourceType", "is required")
    if rtype != "Bundle":
        yield path, resource
        return
    for i, entry in enumerate(_opt_list(resource, "entry", path)):
        epath = f"{path}.entry[{i}]"
        entry = _obj(entry, epath)
        inner = entry.get("resource")
        if inner is None:
            continue
        inner = _obj(inner, f"{epath}.resource")
        itype = inner.get("resourceType")
        if not isinstance(itype, str):
            raise FhirInputError(f"{epath}.resource.resourceType", "is required")
        if itype in ("OperationOutcome", "Bundle"):
            continue
        yield f"{epath}.resource", inner


# FHIR R4 `id`: 1-64 of these characters. Checked on every resource read, because the id is
# echoed into the card's markdown and provenance: an id such as `[Re-login](https://evil.example)`
# would otherwise reach the clinician's screen.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _ref(resource: dict[str, Any], path: str) -> str:
    rid = resource.get("id")
    if rid is None:
        return str(resource["resourceType"])
    if not isinstance(rid, str) or not FHIR_ID.fullmatch(rid):
        raise FhirInputError(f"{path}.id", "is not a FHIR id (1-64 characters of A-Z, a-z, 0-9, '-' and '.')")
    return f"{resource['resourceType']}/{rid}"


# --- mapping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    finding: str
    present: bool
    when: datetime | None
    source: str
    value: float | None = None
    choice: str | None = None
    label: str = ""      # what the record called it ("Type 2 diabetes mellitus")
    evidence: str = ""   # where and when ("Condition, recorded 2019-03-02")

    def rank(self) -> tuple[Any, ...]:
        # Latest first; undated last; on a tie present beats absent; then a total order.
        return (self.when is not None, self.when or datetime.min.replace(tzinfo=UTC), self.present,
                self.value if self.value is not None else -math.inf, self.choice or "", self.source)


@dataclass
class Mapped:
    """The result: the encounter, what was used and what was matched but not used."""

    encounter: Encounter
    used: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)


MEDICATION_CURRENT = timedelta(days=365)
LONG_TERM = timedelta(days=90)
SMOKING_MAX_AGE = timedelta(days=365)


def _span(age: timedelta) -> str:
    return f"{age.days} days" if age.days >= 2 else f"{int(age.total_seconds() // 3600)} hours"


def _shown(obs: dict[str, Any]) -> str:
    """The date an Observation shows the clinician: its effective date, else issued."""
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if isinstance(obs.get(key), str):
            return str(obs[key])[:16].replace("T", " ")
    period = obs.get("effectivePeriod")
    if isinstance(period, dict) and isinstance(period.get("start"), str):
        return str(period["start"])[:16].replace("T", " ")
    return "undated"


def _label(concept: Any) -> str:
    """What the record calls a concept: its text, else the first coding's display."""
    if not isinstance(concept, dict):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return concept["text"].strip()[:120]
    for c in concept.get("coding") or []:
        if isinstance(c, dict) and isinstance(c.get("display"), str) and c["display"].strip():
            return c["display"].strip()[:120]
    return ""


class _Mapper:
    def __init__(self, k: Knowledge, patient_id: str | None, now: datetime, max_age: timedelta) -> None:
        self.k = k
        self.vsets = valuesets.for_knowledge(k)
        self.patient_id = patient_id
        self.now = now
        self.max_age = max_age
        self.candidates: list[_Candidate] = []
        self.ignored: list[dict[str, Any]] = []
        # Findings recorded as asked but not known (dataAbsentReason asked-unknown or unknown):
        # still reported as ignored, and passed on as unknown so that ask_next does not ask
        # them again (issue 16). A usable record of the same finding wins.
        self.unknown: set[str] = set()

    def ignore(self, source: str, reason: str, finding: str | None = None) -> None:
        entry = {"resource": source, "reason": reason}
        if finding is not None:
            entry["finding"] = finding
        self.ignored.append(entry)

    # -- which finding a code names
    def _finding(self, pairs: list[tuple[str, str]], source: str) -> Finding | None:
        codes = sorted({f for s, c in pairs for f in findings_for_coding(self.k, s, c)})
        if len(codes) > 1:
            self.ignore(source, f"its code maps to several findings ({', '.join(codes)})")
            return None
        return self.k.findings[codes[0]] if codes else None

    # -- Observation
    def observation(self, obs: dict[str, Any], path: str) -> None:
        source = _ref(obs, path)
        _check_subject(obs, path, self.patient_id)
        status = _opt_str(obs, "status", path)
        components = [(f"{path}.component[{i}]", _obj(c, f"{path}.component[{i}]"))
                      for i, c in enumerate(_opt_list(obs, "component", path))]
        parts = [(path, obs), *components]
        code_pairs = _concepts(obs, "code", path)
        answer_sets = [vs for vs in self.vsets.sets.values()
                       if vs.observation_code is not None and vs.observation_code in code_pairs]
        if answer_sets:
            self._coded_answer(obs, path, source, status, answer_sets)
            return
        matched = [(p, part, f) for p, part in parts
                   if (f := self._finding(_concepts(part, "code", p), source)) is not None]
        if not matched:
            # "symptom: fever": the finding is the value, not the code.
            value_pairs = _concepts(obs, "valueCodeableConcept", path)
            f = self._finding(value_pairs, source)
            if f is None or f.type != "boolean":
                return
            when = self._observation_time(obs, path, source, f.code, status)
            if when is not None:
                self.candidates.append(_Candidate(f.code, True, when, source))
            return
        for ppath, part, finding in matched:
            measure = next((m for sy, c in _concepts(part, "code", ppath) for m in self.vsets.measurement(sy, c)
                            if m.finding == finding.code), None)
            when = self._observation_time(obs, path, source, finding.code, status,
                                          measure.max_age if measure else None)
            if when is None:
                continue
            absent = _opt_obj(part, "dataAbsentReason", ppath)
            if absent is not None:
                self.ignore(source, "dataAbsentReason is given", finding.code)
                if {c for s, c in _concepts(part, "dataAbsentReason", ppath) if s == DATA_ABSENT} & ASKED_UNKNOWN:
                    self.unknown.add(finding.code)
                continue
            label = _label(part.get("code")) or finding.display
            evidence = f"Observation, {_shown(obs)}"
            if measure is not None and measure.per_reference_high:
                self._ratio_to_upper_limit(part, ppath, finding, when, source, label, evidence)
                continue
            before = len(self.candidates)
            self._observation_value(part, ppath, finding, when, source)
            if len(self.candidates) > before:  # add what the record called it and when
                c = self.candidates[-1]
                self.candidates[-1] = _Candidate(c.finding, c.present, c.when, c.source, c.value, c.choice,
                                                 label=label, evidence=evidence)

    def _coded_answer(self, obs: dict[str, Any], path: str, source: str, status: str | None,
                      answer_sets: list[valuesets.ValueSet]) -> None:
        """Smoking status and the like: the answer code says which findings are present or
        absent. Read within 12 months: an older answer may no longer hold."""
        reads: dict[str, bool] = {}
        answer = _concepts(obs, "valueCodeableConcept", path)
        for system, code in answer:
            for vs in self.vsets.lookup(system, code):
                if vs in answer_sets:
                    for f, how in vs.findings.items():
                        reads[f] = how == "present"
        if not reads:
            self.ignore(source, "its answer is in none of the value sets for this question")
            return
        for code, present in sorted(reads.items()):
            when = self._observation_time(obs, path, source, code, status, SMOKING_MAX_AGE)
            if when is None:
                continue
            self.candidates.append(_Candidate(code, present, when, source,
                                              label=_label(obs.get("valueCodeableConcept")),
                                              evidence=f"Observation, {_shown(obs)}"))

    def _ratio_to_upper_limit(self, part: dict[str, Any], path: str, finding: Finding, when: datetime,
                              source: str, label: str, evidence: str) -> None:
        """CK as a multiple of the upper limit of normal: the lab's own referenceRange.high."""
        q = part.get("valueQuantity")
        high = None
        for i, rr in enumerate(_opt_list(part, "referenceRange", path)):
            rr = _obj(rr, f"{path}.referenceRange[{i}]")
            if isinstance(rr.get("high"), dict):
                high = rr["high"]
                break
        if not isinstance(q, dict) or high is None:
            self.ignore(source, "needs a valueQuantity and a referenceRange.high to compare with", finding.code)
            return
        value, top = q.get("value"), high.get("value")
        unit_v = ucum_unit(q.get("system"), q.get("code"), q.get("unit"))
        unit_h = ucum_unit(high.get("system"), high.get("code"), high.get("unit"))
        if not isinstance(value, int | float) or not isinstance(top, int | float) or isinstance(value, bool) \
                or top <= 0 or unit_v is None or unit_h is None:
            self.ignore(source, "value or upper limit of normal is not a usable number", finding.code)
            return
        same = convert(float(top), unit_h, unit_v)
        if same is None or same <= 0:
            self.ignore(source, f"unit {unit_h!r} of the upper limit cannot be compared with {unit_v!r}", finding.code)
            return
        ratio = round(float(value) / same, 2)
        lo, hi = finding.range or (-math.inf, math.inf)
        if not lo <= ratio <= hi:
            self.ignore(source, f"value {ratio:g} is outside {lo:g}..{hi:g}", finding.code)
            return
        self.candidates.append(_Candidate(finding.code, True, when, source, value=ratio, label=label,
                                          evidence=evidence))

    def _observation_time(self, obs: dict[str, Any], path: str, source: str, finding: str,
                          status: str | None, max_age: timedelta | None = None) -> datetime | None:
        max_age = max_age or self.max_age
        if status not in USABLE_OBSERVATION_STATUS:
            self.ignore(source, f"status {status or 'missing'} is not final, amended, corrected or preliminary",
                        finding)
            return None
        when: datetime | None = None
        for key in ("effectiveDateTime", "effectiveInstant"):
            if obs.get(key) is not None:
                when = parse_fhir_datetime(obs[key], f"{path}.{key}", latest=True)
        period = _opt_obj(obs, "effectivePeriod", path)
        if when is None and period is not None:
            for key in ("end", "start"):
                if period.get(key) is not None:
                    when = parse_fhir_datetime(period[key], f"{path}.effectivePeriod.{key}", latest=True)
                    break
        if when is None and obs.get("issued") is not None:
            when = parse_fhir_datetime(obs["issued"], f"{path}.issued", latest=True)
        if when is None:
            self.ignore(source, "undated (no effective[x] or issued)", finding)
            return None
        if when < self.now - max_age:
            self.ignore(source, f"older than {_span(max_age)}", finding)
            return None
        if when > self.now + timedelta(days=1):
            self.ignore(source, "dated in the future", finding)
            return None
        return when

    def _observation_value(self, part: dict[str, Any], path: str, finding: Finding, when: datetime,
                           source: str) -> None:
        value_keys = [key for key in part if key.startswith("value") and part[key] is not None]
        if len(value_keys) > 1:
            raise FhirInputError(path, f"has more than one value[x] ({', '.join(sorted(value_keys))})")
        key = value_keys[0] if value_keys else None
        add = self.candidates.append
        if finding.type == "boolean":
            present = self._boolean(part, path, key, finding)
            if present is None:
                self.ignore(source, "no yes/no answer could be read from its value or interpretation", finding.code)
            else:
                add(_Candidate(finding.code, present, when, source))
        elif finding.type == "number":
            value = self._number(part, path, key, finding, source)
            if value is not None:
                add(_Candidate(finding.code, True, when, source, value=value))
        else:
            choice = self._choice(part, path, key, finding)
            if choice is None:
                self.ignore(source, f"value is not one of {', '.join(finding.choices)}", finding.code)
            else:
                add(_Candidate(finding.code, True, when, source, choice=choice))

    def _boolean(self, part: dict[str, Any], path: str, key: str | None, finding: Finding) -> bool | None:
        if key == "valueBoolean":
            if not isinstance(part[key], bool):
                raise FhirInputError(f"{path}.valueBoolean", "must be true or false")
            return bool(part[key])
        if key == "valueCodeableConcept":
            pairs = set(_concepts(part, key, path))
            if pairs & _YES or any(finding.code in findings_for_coding(self.k, s, c) for s, c in pairs):
                return True
            if pairs & _NO:
                return False
            return None
        if key is not None:
            return None
        interp = {c for s, c in _concepts(part, "interpretation", path) if s == INTERPRETATION}
        if interp & _INTERPRETATION_PRESENT:
            return True
        if interp & _INTERPRETATION_ABSENT:
            return False
        if interp:
            return None
        return True  # an observation of the finding with no value: the finding was observed

    def _number(self, part: dict[str, Any], path: str, key: str | None, finding: Finding,
                source: str) -> float | None:
        target = finding.unit or "1"
        if key == "valueInteger":
            raw = part[key]
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise FhirInputError(f"{path}.valueInteger", "must be an integer")
            if target != "1":
                self.ignore(source, f"valueInteger has no unit; {finding.code} is measured in {target}", finding.code)
                return None
            value: float | None = float(raw)
        elif key == "valueQuantity":
            qpath = f"{path}.valueQuantity"
            q = _obj(part[key], qpath)
            raw = q.get("value")
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise FhirInputError(f"{qpath}.value", "must be a number")
            if not math.isfinite(raw):
                raise FhirInputError(f"{qpath}.value", "must be a finite number")
            if q.get("comparator") is not None:
                self.ignore(source, "the quantity has a comparator (not an exact value)", finding.code)
                return None
            unit = ucum_unit(_opt_str(q, "system", qpath), _opt_str(q, "code", qpath), _opt_str(q, "unit", qpath))
            if unit is None:
                if target != "1":
                    self.ignore(source, f"the quantity has no unit; {finding.code} is measured in {target}",
                                finding.code)
                    return None
                unit = "1"
            value = convert(float(raw), unit, target)
            if value is None:
                self.ignore(source, f"unit {unit!r} cannot be converted to {target!r}", finding.code)
                return None
        else:
            self.ignore(source, f"{finding.code} needs valueQuantity in {target}", finding.code)
            return None
        lo, hi = finding.range or (-math.inf, math.inf)
        if not lo <= value <= hi:
            self.ignore(source, f"value {value:g} {target} is outside {lo:g}..{hi:g}", finding.code)
            return None
        return value

    def _choice(self, part: dict[str, Any], path: str, key: str | None, finding: Finding) -> str | None:
        if key == "valueString":
            value = part[key]
            if not isinstance(value, str):
                raise FhirInputError(f"{path}.valueString", "must be a string")
            return value if value in finding.choices else None
        if key == "valueCodeableConcept":
            for system, code in _concepts(part, key, path):
                if system == LOCAL_CHOICE_SYSTEM and code in finding.choices:
                    return code
        return None

    # -- Condition
    def _condition_findings(self, pairs: list[tuple[str, str]]) -> dict[str, str]:
        """finding -> how to read it ("active" or "any") for a Condition's codings: the
        vocabulary's own codes, then every Condition value set holding one of the codings."""
        out: dict[str, str] = {}
        for system, code in pairs:
            own = (code,) if system == LOCAL_FINDING_SYSTEM and code in self.k.findings else \
                coding_index(self.k).get((system, code), ())
            for f in own:
                out.setdefault(f, "any" if f in HISTORY_FINDINGS else "active")
            for vs in self.vsets.lookup(system, code):
                if vs.resource != "Condition":
                    continue
                for f, how in vs.findings.items():
                    if f in self.k.findings and (out.get(f) != "any"):
                        out[f] = how if f not in HISTORY_FINDINGS else "any"
        return out

    @staticmethod
    def _episode_finding(finding: Finding) -> bool:
        return finding.topic in EPISODE_TOPICS or finding.code in EPISODE_FINDINGS

    def condition(self, cond: dict[str, Any], path: str) -> None:
        source = _ref(cond, path)
        _check_subject(cond, path, self.patient_id)
        pairs = _concepts(cond, "code", path)
        reads = self._condition_findings(pairs)
        if not reads:
            return
        label = _label(cond.get("code"))
        verification = {c for s, c in _concepts(cond, "verificationStatus", path) if s == CONDITION_VERIFICATION}
        clinical = {c for s, c in _concepts(cond, "clinicalStatus", path) if s == CONDITION_CLINICAL}
        # Each date parsed once: the latest instant a partial date allows (a date on the window's
        # edge is not called old). `when` (which record is latest) prefers the recorded date;
        # `began` (is it of this episode) prefers the onset.
        dates = {key: parse_fhir_datetime(cond[key], f"{path}.{key}", latest=True)
                 for key in ("recordedDate", "onsetDateTime") if cond.get(key) is not None}
        when = dates.get("recordedDate", dates.get("onsetDateTime"))
        began = dates.get("onsetDateTime", dates.get("recordedDate"))
        shown = None
        for key in ("recordedDate", "onsetDateTime"):
            if key in dates:
                shown = f"{'recorded' if key == 'recordedDate' else 'onset'} {str(cond[key])[:10]}"
                break
        status = sorted(clinical)[0] if clinical else None
        evidence = "Condition" + (f", {status}" if status and status != "active" else "") + \
            (f", {shown}" if shown else "")
        for code, how in sorted(reads.items()):
            finding = self.k.findings[code]
            if finding.type != "boolean":
                self.ignore(source, f"{code} is a {finding.type} finding; a Condition can only say yes or no", code)
                continue
            if "entered-in-error" in verification:
                self.ignore(source, "entered in error", code)
                continue
            if how != "any" and began is not None and self._episode_finding(finding) \
                    and self.now - began > self.max_age:
                self.ignore(source, f"began {began.date().isoformat()}, before the "
                            f"{self.max_age.days}-day window: ask whether it is new", code)
                continue
            if "refuted" in verification:
                self.candidates.append(_Candidate(code, False, when, source, label=label, evidence=evidence))
                continue
            if clinical & PRESENT_CLINICAL_STATUS or how == "any":
                self.candidates.append(_Candidate(code, True, when, source, label=label, evidence=evidence))
                continue
            if clinical & PAST_CLINICAL_STATUS:
                self.ignore(source, f"clinical status {sorted(clinical)[0]}: not current", code)
                continue
            if any(cond.get(k) is not None for k in cond if k.startswith("abatement")):
                self.ignore(source, "abated, with no clinical status", code)
                continue
            self.candidates.append(_Candidate(code, True, when, source, label=label, evidence=evidence))

    # -- MedicationRequest
    def medication_request(self, med: dict[str, Any], path: str) -> None:
        source = _ref(med, path)
        _check_subject(med, path, self.patient_id)
        concept = _opt_obj(med, "medicationCodeableConcept", path)
        cpath = f"{path}.medicationCodeableConcept"
        ref = _opt_obj(med, "medicationReference", path)
        if concept is None and ref is not None:
            # Only a contained Medication can be read: an outside one would need another query.
            target = _opt_str(ref, "reference", f"{path}.medicationReference")
            for i, c in enumerate(_opt_list(med, "contained", path)):
                c = _obj(c, f"{path}.contained[{i}]")
                if target and target.startswith("#") and c.get("id") == target[1:] \
                        and c.get("resourceType") == "Medication":
                    concept, cpath = _opt_obj(c, "code", f"{path}.contained[{i}]"), f"{path}.contained[{i}].code"
        pairs = _codings(concept, cpath)
        reads: dict[str, str] = {}
        for system, code in pairs:
            for vs in self.vsets.lookup(system, code):
                if vs.resource == "MedicationRequest":
                    for f, how in vs.findings.items():
                        if f in self.k.findings:
                            reads[f] = "active" if reads.get(f) == "active" else how
        if not reads:
            if concept is None and ref is not None:
                self.ignore(source, "medicationReference to a Medication outside the request is not read")
            return
        status = _opt_str(med, "status", path)
        label = _label(concept)
        authored = None
        if med.get("authoredOn") is not None:
            authored = parse_fhir_datetime(med["authoredOn"], f"{path}.authoredOn", latest=False)
        validity_end = None
        dispense = _opt_obj(med, "dispenseRequest", path)
        period = _opt_obj(dispense, "validityPeriod", f"{path}.dispenseRequest") if dispense else None
        if period is not None and period.get("end") is not None:
            validity_end = parse_fhir_datetime(period["end"], f"{path}.dispenseRequest.validityPeriod.end",
                                               latest=True)
        for code, how in sorted(reads.items()):
            if status != "active":
                self.ignore(source, f"status {status or 'missing'}: not an active prescription", code)
                continue
            if med.get("doNotPerform") is True:
                self.ignore(source, "doNotPerform: a medicine not to give", code)
                continue
            # An order left "active" for years is a record-keeping leftover, not a current
            # medicine: current means written within a year or still inside its validity period.
            current = (validity_end is not None and validity_end >= self.now) or \
                (authored is not None and authored >= self.now - MEDICATION_CURRENT)
            if not current:
                self.ignore(source, "marked active but written over a year ago with no current validity period "
                                    "(stale)", code)
                continue
            if how == "long_term" and (authored is None or authored > self.now - LONG_TERM):
                self.ignore(source, "started less than 3 months ago (the finding needs 3 months or more)", code)
                continue
            evidence = "active MedicationRequest" + (f", written {str(med['authoredOn'])[:10]}"
                                                     if authored is not None else "")
            self.candidates.append(_Candidate(code, True, authored or self.now, source, label=label,
                                              evidence=evidence))

    # -- Procedure
    def procedure(self, proc: dict[str, Any], path: str) -> None:
        source = _ref(proc, path)
        _check_subject(proc, path, self.patient_id)
        pairs = _concepts(proc, "code", path)
        reads: dict[str, timedelta] = {}
        for system, code in pairs:
            for vs in self.vsets.lookup(system, code):
                if vs.resource == "Procedure":
                    for f, how in vs.findings.items():
                        if f in self.k.findings:
                            reads[f] = timedelta(days=int(how[:-1]))
        if not reads:
            return
        status = _opt_str(proc, "status", path)
        when, shown = None, None
        if proc.get("performedDateTime") is not None:
            when = parse_fhir_datetime(proc["performedDateTime"], f"{path}.performedDateTime", latest=True)
            shown = str(proc["performedDateTime"])[:10]
        period = _opt_obj(proc, "performedPeriod", path)
        if when is None and period is not None:
            for key in ("end", "start"):
                if period.get(key) is not None:
                    when = parse_fhir_datetime(period[key], f"{path}.performedPeriod.{key}", latest=True)
                    shown = str(period[key])[:10]
                    break
        label = _label(proc.get("code"))
        for code, window in sorted(reads.items()):
            if status != "completed":
                self.ignore(source, f"status {status or 'missing'}: not a completed procedure", code)
                continue
            if when is None:
                self.ignore(source, "undated (no performed[x])", code)
                continue
            if when < self.now - window:
                self.ignore(source, f"performed more than {window.days} days ago", code)
                continue
            if when > self.now + timedelta(days=1):
                self.ignore(source, "dated in the future", code)
                continue
            self.candidates.append(_Candidate(code, True, when, source, label=label,
                                              evidence=f"Procedure, performed {shown}"))

    def result(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        best: dict[str, _Candidate] = {}
        for c in self.candidates:
            if c.finding not in best or c.rank() > best[c.finding].rank():
                best[c.finding] = c
        findings: dict[str, dict[str, Any]] = {}
        used: list[dict[str, Any]] = []
        for code in sorted(best):
            c = best[code]
            entry: dict[str, Any] = {"present": c.present}
            if c.value is not None:
                entry["value"] = c.value
            if c.choice is not None:
                entry["choice"] = c.choice
            findings[code] = entry
            used.append({"finding": code, **entry, "resource": c.source,
                         **({"label": c.label} if c.label else {}),
                         **({"evidence": c.evidence} if c.evidence else {})})
        for c in self.candidates:
            if best[c.finding] is not c and c.source != best[c.finding].source:
                self.ignore(c.source, f"a later or equal record of {c.finding} was used", c.finding)
        return findings, used


def map_patient(resource: dict[str, Any] | None, path: str, patient_id: str | None,
                today: date) -> tuple[float | None, str | None, list[dict[str, Any]]]:
    """Patient -> (age, sex, ignored)."""
    if resource is None:
        return None, None, []
    if resource.get("resourceType") != "Patient":
        raise FhirInputError(f"{path}.resourceType", "must be Patient")
    ref = _ref(resource, path)  # validates the id
    rid = resource.get("id")
    if patient_id is not None and isinstance(rid, str) and rid != patient_id:
        raise FhirInputError(f"{path}.id", "is not context.patientId")
    ignored: list[dict[str, Any]] = []
    sex = _opt_str(resource, "gender", path)
    if sex is not None and sex not in SEXES:
        raise FhirInputError(f"{path}.gender", "must be male, female, other or unknown")
    age: float | None = None
    birth = resource.get("birthDate")
    if birth is not None:
        years = age_in_years(birth, today, f"{path}.birthDate")
        if 0 <= years <= 120:
            age = float(years)
        else:
            ignored.append({"resource": ref, "reason": "birthDate gives an age outside 0..120"})
    return age, sex, ignored


def map_prefetch(
    k: Knowledge,
    *,
    patient: Any,
    records: Iterable[tuple[str, Any]],
    patient_id: str | None,
    encounter_id: str | None = None,
    now: datetime | None = None,
    max_observation_age_days: int = 7,
) -> Mapped:
    """Map prefetch values to an Encounter. `patient` is the Patient value (a Patient, a
    Bundle holding one, or None); `records` are (path, value) pairs of Bundles or resources
    holding Observations and Conditions (None values are skipped: the client had no data)."""
    now = now or datetime.now(UTC)
    patient_resource = None
    if patient is not None:
        found = list(resources_of(patient, "prefetch.patient"))
        patients = [(p, r) for p, r in found if r.get("resourceType") == "Patient"]
        if len(patients) > 1:
            raise FhirInputError("prefetch.patient", "holds more than one Patient")
        if found and not patients:
            raise FhirInputError("prefetch.patient", "holds no Patient resource")
        patient_resource = patients[0] if patients else None
    age, sex, ignored = map_patient(patient_resource[1] if patient_resource else None,
                                    patient_resource[0] if patient_resource else "prefetch.patient",
                                    patient_id, now.date())
    mapper = _Mapper(k, patient_id, now, timedelta(days=max_observation_age_days))
    for path, value in records:
        if value is None:
            continue
        for rpath, resource in resources_of(value, path):
            rtype = resource["resourceType"]
            if rtype == "Observation":
                mapper.observation(resource, rpath)
            elif rtype == "Condition":
                mapper.condition(resource, rpath)
            elif rtype == "MedicationRequest":
                mapper.medication_request(resource, rpath)
            elif rtype == "Procedure":
                mapper.procedure(resource, rpath)
            # Other resource types are not ours to read; they are skipped.
    findings, used = mapper.result()
    return Mapped(
        encounter=Encounter(age=age, sex=sex, findings=findings, encounter_id=encounter_id,
                            unknown=frozenset(mapper.unknown - findings.keys())),
        used=used,
        ignored=ignored + mapper.ignored,
    )
