"""Value sets (rules/valuesets/*.yaml): which recorded codes count as which finding.

One file per value set, each naming its source (a VSAC OID, or a guideline for the LOINC lists)
and its version. A value set says which resource it is read from and, per finding, how:

* Condition value sets: `active` (an active Condition) or `any` (any documented Condition,
  for history findings such as a previous DVT);
* MedicationRequest value sets: `active` (an active, current prescription) or `long_term`
  (active and started 90 days or more ago: "steroid tablets for 3 months or more");
* Procedure value sets: a window such as `84d` (completed within 84 days);
* Observation answer value sets (smoking status): `present` / `absent` for the finding when the
  Observation coded `observation_code` has one of the value set's codes as its answer;
* Observation measurement lists (`observations`): LOINC code -> number finding, with UCUM
  units and a freshness window.

SNOMED CT and RxNorm codes match exactly; an ICD-10-CM code matches itself and every code
beneath it (a listed `E11` or `E11.9` is a prefix of `E11.9` / `E11.65`), dot and case ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYSTEM_OF = {"snomed": SNOMED, "icd10cm": ICD10CM, "rxnorm": RXNORM, "loinc": LOINC}
RESOURCES = ("Condition", "MedicationRequest", "Procedure", "Observation")
_HOW = {"Condition": {"active", "any"}, "MedicationRequest": {"active", "long_term"},
        "Observation": {"present", "absent"}}
_WINDOW = re.compile(r"[1-9][0-9]{0,3}d")

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "rules" / "valuesets"


class ValueSetError(Exception):
    """A value set file that cannot be used: the message names the file and the field."""


@dataclass(frozen=True)
class Measurement:
    finding: str
    loinc: str
    units: tuple[str, ...]
    max_age: timedelta
    per_reference_high: bool = False
    valueset: str = ""


@dataclass
class ValueSet:
    id: str
    title: str
    resource: str
    findings: dict[str, str]
    source: dict[str, Any]
    version: str
    path: str
    codes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    observation_code: tuple[str, str] | None = None
    measurements: tuple[Measurement, ...] = ()
    category: str | None = None


@dataclass
class ValueSets:
    sets: dict[str, ValueSet]
    exact: dict[tuple[str, str], list[ValueSet]]
    icd_prefixes: dict[str, list[ValueSet]]
    measurements: dict[str, list[Measurement]]

    def lookup(self, system: str, code: str) -> list[ValueSet]:
        """The value sets that hold a coding (ICD-10-CM by prefix)."""
        if system == ICD10CM:
            norm = icd_norm(code)
            out: list[ValueSet] = []
            for n in range(3, len(norm) + 1):
                out += self.icd_prefixes.get(norm[:n], [])
            return _unique(out)
        return list(self.exact.get((system, code), []))

    def measurement(self, system: str, code: str) -> list[Measurement]:
        return self.measurements.get(code, []) if system == LOINC else []


def _unique(items: list[ValueSet]) -> list[ValueSet]:
    seen: dict[str, ValueSet] = {}
    for vs in items:
        seen.setdefault(vs.id, vs)
    return list(seen.values())


def icd_norm(code: str) -> str:
    return code.replace(".", "").strip().upper()


def _req(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc or doc[key] in (None, "", {}, []):
        raise ValueSetError(f"{where}: '{key}' is required")
    return doc[key]


def load(directory: Path = DEFAULT_DIR) -> ValueSets:
    sets: dict[str, ValueSet] = {}
    for path in sorted(directory.glob("*.yaml")):
        where = f"{directory.name}/{path.name}"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueSetError(f"{where}: must be a mapping")
        vid = _req(doc, "id", where)
        if vid != path.stem:
            raise ValueSetError(f"{where}: id {vid!r} must be the file name")
        source = _req(doc, "source", where)
        if not isinstance(source, dict) or not (source.get("oid") or source.get("url")):
            raise ValueSetError(f"{where}: source needs an oid or a url")
        resource = _req(doc, "resource", where)
        if resource not in RESOURCES:
            raise ValueSetError(f"{where}: resource must be one of {', '.join(RESOURCES)}")
        vs = ValueSet(id=vid, title=str(_req(doc, "title", where)), resource=resource,
                      findings=dict(doc.get("findings") or {}), source=source,
                      version=str(_req(doc, "version", where)), path=where, category=doc.get("category"))
        for how in vs.findings.values():
            ok = _WINDOW.fullmatch(how) if resource == "Procedure" else how in _HOW.get(resource, set())
            if not ok:
                raise ValueSetError(f"{where}: findings: {how!r} is not a way to read a {resource}")
        for kind, codes in (doc.get("codes") or {}).items():
            if kind not in SYSTEM_OF:
                raise ValueSetError(f"{where}: codes: unknown code system {kind!r}")
            vs.codes[kind] = tuple(str(c) for c in codes)
        if doc.get("observation_code"):
            oc = doc["observation_code"]
            vs.observation_code = (oc["system"], oc["code"])
        measurements = []
        for i, m in enumerate(doc.get("observations") or []):
            mwhere = f"{where}: observations[{i}]"
            if "max_age_days" in m:
                age = timedelta(days=int(m["max_age_days"]))
            elif "max_age_hours" in doc:
                age = timedelta(hours=int(doc["max_age_hours"]))
            else:
                raise ValueSetError(f"{mwhere}: needs max_age_days (or the file's max_age_hours)")
            measurements.append(Measurement(finding=_req(m, "finding", mwhere), loinc=str(_req(m, "loinc", mwhere)),
                                            units=tuple(_req(m, "units", mwhere)), max_age=age,
                                            per_reference_high=bool(m.get("per_reference_high")), valueset=vid))
        vs.measurements = tuple(measurements)
        if not vs.codes and not vs.measurements:
            raise ValueSetError(f"{where}: holds no codes")
        sets[vid] = vs
    exact: dict[tuple[str, str], list[ValueSet]] = {}
    prefixes: dict[str, list[ValueSet]] = {}
    meas: dict[str, list[Measurement]] = {}
    for vs in sets.values():
        for kind, codes in vs.codes.items():
            for code in codes:
                if kind == "icd10cm":
                    prefixes.setdefault(icd_norm(code), []).append(vs)
                else:
                    exact.setdefault((SYSTEM_OF[kind], code), []).append(vs)
        for m in vs.measurements:
            meas.setdefault(m.loinc, []).append(m)
    return ValueSets(sets, exact, prefixes, meas)


_CACHE: dict[Path, ValueSets] = {}


def of_dir(directory: Path) -> ValueSets:
    """The value sets in a folder, loaded once per process; none when it does not exist (a
    rule set without value sets reads only its vocabulary's own codes)."""
    if directory not in _CACHE:
        _CACHE[directory] = load(directory) if directory.is_dir() else ValueSets({}, {}, {}, {})
    return _CACHE[directory]


def default() -> ValueSets:
    """The value sets of the shipped rule set (rules/valuesets)."""
    return of_dir(DEFAULT_DIR)


def for_knowledge(k: Any) -> ValueSets:
    """The value sets beside a loaded rule set (`<rules_dir>/valuesets`)."""
    rules_dir = getattr(k, "rules_dir", None)
    return of_dir(Path(rules_dir) / "valuesets") if rules_dir is not None else default()


# --- code syntax ---------------------------------------------------------------------------

_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def snomed_ok(code: str) -> bool:
    """SNOMED CT concept id: 6-18 digits, no leading zero, Verhoeff check digit, partition
    identifier (the two digits before the check digit) of a concept (00 or 10)."""
    if not re.fullmatch(r"[1-9][0-9]{5,17}", code) or code[-3:-1] not in ("00", "10"):
        return False
    c = 0
    for i, ch in enumerate(reversed(code)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def loinc_ok(code: str) -> bool:
    """LOINC: digits, '-', a mod-10 (Luhn) check digit."""
    m = re.fullmatch(r"([0-9]{1,7})-([0-9])", code)
    if m is None:
        return False
    total = 0
    for i, ch in enumerate(reversed(m[1])):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10 == int(m[2])


_ICD10CM = re.compile(r"[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")


def icd10cm_ok(code: str) -> bool:
    return _ICD10CM.fullmatch(code) is not None


def rxnorm_ok(code: str) -> bool:
    return re.fullmatch(r"[1-9][0-9]{0,8}", code) is not None


CHECKS = {"snomed": snomed_ok, "loinc": loinc_ok, "icd10cm": icd10cm_ok, "rxnorm": rxnorm_ok}


def lint(vsets: ValueSets, known_findings: set[str]) -> list[str]:
    """Problems: a code of bad syntax, a finding the vocabulary lacks, a code in two value sets
    that mean different things (one reads a finding as present, the other as absent)."""
    problems: list[str] = []
    for vs in vsets.sets.values():
        for f in [*vs.findings, *(m.finding for m in vs.measurements)]:
            if f not in known_findings:
                problems.append(f"{vs.path}: finding {f!r} is not in the vocabulary")
        for kind, codes in vs.codes.items():
            for code in codes:
                if not CHECKS[kind](code):
                    problems.append(f"{vs.path}: {kind} code {code!r} is not valid {kind} syntax")
        for m in vs.measurements:
            if not loinc_ok(m.loinc):
                problems.append(f"{vs.path}: LOINC code {m.loinc!r} fails its check digit")
    # A code may rightly sit in two value sets when its concept means both (diabetes in
    # pregnancy; a statin-diuretic combination): it is then read as both findings. It may
    # not sit where one value set reads a finding as present and another as absent.
    owners: dict[tuple[str, str], list[ValueSet]] = {}
    for vs in vsets.sets.values():
        for kind, codes in vs.codes.items():
            for code in codes:
                owners.setdefault((kind, icd_norm(code) if kind == "icd10cm" else code), []).append(vs)
    for (kind, code), sets in sorted(owners.items()):
        readings: dict[str, set[str]] = {}
        for vs in sets:
            for finding, how in vs.findings.items():
                readings.setdefault(finding, set()).add("absent" if how == "absent" else "present")
        clash = sorted(f for f, r in readings.items() if len(r) > 1)
        if clash:
            problems.append(f"{kind} code {code} is in value sets that mean different things "
                            f"({', '.join(sorted(vs.id for vs in sets))}: {', '.join(clash)} present and absent)")
    return problems
