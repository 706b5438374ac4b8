"""Write rules/valuesets/*.yaml from published VSAC value set expansions (eCQM content).

Run by hand when a value set is refreshed, never at service start:
    python3 scripts/import_valuesets.py /path/to/ecqm-content-qicore-2024 /path/to/ecqm-content-r4
Both are git checkouts of github.com/cqframework/ecqm-content-qicore-2024 and
github.com/cqframework/ecqm-content-r4 (VSAC expansions as FHIR ValueSet JSON under
input/vocabulary/valueset/external/). Codes are copied as published: a filter only ever
removes codes (by the published display), it never adds one. The commit of each checkout is
written into every file it produced.

Where no published value set exists for a class of medicines (NSAIDs), CLASS_PLAN builds one
from a named classification: the RxNorm codes, in every value set of the checkouts, whose
published display names a member of the class; each contributing value set is listed in the
file. The member list is the classification's (a fact), never a guess at codes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "rules" / "valuesets"
SYSTEMS = {"http://snomed.info/sct": "snomed", "http://hl7.org/fhir/sid/icd-10-cm": "icd10cm",
           "http://www.nlm.nih.gov/research/umls/rxnorm": "rxnorm", "http://loinc.org": "loinc"}

# id, OID, read from, findings, filter (regex on the display: keep / drop), why
PLAN: list[dict] = [
    {"id": "diabetes", "oid": "2.16.840.1.113883.3.464.1003.103.12.1001", "resource": "Condition",
     "findings": {"diabetes": "active"}},
    {"id": "heart-failure", "oid": "2.16.840.1.113883.3.526.3.376", "resource": "Condition",
     "findings": {"known_heart_failure": "active"}},
    {"id": "chronic-kidney-disease", "oid": "2.16.840.1.113883.3.464.1003.109.12.1028", "resource": "Condition",
     "findings": {"known_kidney_disease": "active"}, "drop": r"(?i)acute|^584|586",
     "filter_note": "acute kidney failure codes dropped: the finding is known (chronic) kidney disease"},
    {"id": "cancer", "oid": "2.16.840.1.113883.3.526.3.1010", "resource": "Condition",
     "findings": {"active_cancer": "active", "cancer_history": "any"},
     "filter_note": "an active Condition is read as active cancer; any documented one as a history of cancer"},
    {"id": "pregnancy", "oid": "2.16.840.1.113883.3.526.3.378", "resource": "Condition",
     "findings": {"pregnant": "active"}},
    {"id": "venous-thrombosis", "oid": "2.16.840.1.113883.3.117.1.7.1.279", "resource": "Condition",
     "findings": {"previous_dvt": "any"}, "drop": r"(?i)pulmonary",
     "filter_note": "pulmonary embolism codes are the value set pulmonary-embolism"
                    " (venous 'embolism and thrombosis' of a limb stays here)"},
    {"id": "pulmonary-embolism", "oid": "2.16.840.1.113883.3.117.1.7.1.279", "resource": "Condition",
     "findings": {"previous_pe": "any"}, "keep": r"(?i)pulmonary",
     "filter_note": "only the pulmonary embolism codes of the VTE value set"},
    {"id": "atrial-fibrillation", "oid": "2.16.840.1.113883.3.117.1.7.1.202", "resource": "Condition",
     "findings": {"atrial_fibrillation": "active"}},
    {"id": "myocardial-infarction", "oid": "2.16.840.1.113883.3.526.3.403", "resource": "Condition",
     "findings": {"previous_heart_attack": "any"}},
    {"id": "ischemic-stroke", "oid": "2.16.840.1.113883.3.117.1.7.1.247", "resource": "Condition",
     "findings": {"previous_stroke": "any"}},
    {"id": "hypercholesterolemia", "oid": "2.16.840.1.113762.1.4.1047.100", "resource": "Condition",
     "findings": {"high_cholesterol": "active"}},
    {"id": "peripheral-arterial-disease", "oid": "2.16.840.1.113762.1.4.1047.21", "resource": "Condition",
     "findings": {"known_pad": "active"}, "keep": r"(?i)extremit|leg|limb|peripheral|claudication|iliac|femoral"
     r"|popliteal|tibial|gangrene|arteries of (the )?(lower|native arteries of)|aorto",
     "filter_note": "coronary and cerebral atherosclerosis codes dropped: the finding is peripheral arterial disease"},
    {"id": "obesity", "oid": "2.16.840.1.113762.1.4.1248.162", "resource": "Condition",
     "findings": {"obesity": "active"}},
    {"id": "osteoporosis", "oid": "2.16.840.1.113883.3.464.1003.113.12.1038", "resource": "Condition",
     "findings": {"osteoporosis": "active"}},
    # smoking status: the answer (valueCodeableConcept) of an Observation coded LOINC 72166-2
    {"id": "smoking-current", "oid": "2.16.840.1.113762.1.4.1248.220", "resource": "Observation",
     "observation_code": "72166-2", "findings": {"smoker": "present", "former_smoker": "absent"},
     "drop": r"(?i)ex-|former|non[ -]smoker|passive",
     "keep_also": r"^735128000 ",
     "filter_note": "current smokers; an ex-smoker of less than a year counts as a smoker (the finding's definition)"},
    {"id": "smoking-former", "oid": "2.16.840.1.113762.1.4.1248.220", "resource": "Observation",
     "observation_code": "72166-2", "findings": {"former_smoker": "present", "smoker": "absent"},
     "keep": r"(?i)ex-|former", "drop": r"^735128000 ",
     "filter_note": "ex-smokers, except an ex-smoker of less than a year (read as a smoker)"},
    {"id": "smoking-never", "oid": "2.16.840.1.113762.1.4.1248.220", "resource": "Observation",
     "observation_code": "72166-2", "findings": {"smoker": "absent", "former_smoker": "absent"},
     "keep": r"(?i)non[ -]smoker", "drop": r"(?i)past smoking history unknown",
     "filter_note": "non-smokers (a current non-smoker whose past is unknown is not read as never having smoked)"},
    # medicines: read from active MedicationRequests
    {"id": "statins", "oid": "2.16.840.1.113762.1.4.1110.19", "resource": "MedicationRequest",
     "findings": {"takes_statin": "active"}},
    {"id": "anticoagulants", "oid": "2.16.840.1.113762.1.4.1248.22", "resource": "MedicationRequest",
     "findings": {"takes_anticoagulant": "active"}},
    {"id": "warfarin", "oid": "2.16.840.1.113883.3.117.1.7.1.232", "resource": "MedicationRequest",
     "findings": {"takes_anticoagulant": "active"}},
    {"id": "heparins", "oid": "2.16.840.1.113883.3.117.1.7.1.218", "resource": "MedicationRequest",
     "findings": {"takes_anticoagulant": "active"}},
    {"id": "low-molecular-weight-heparins", "oid": "2.16.840.1.113883.3.117.1.7.1.219", "resource": "MedicationRequest",
     "findings": {"takes_anticoagulant": "active"}},
    {"id": "oral-factor-xa-inhibitors", "oid": "2.16.840.1.113883.3.117.1.7.1.134", "resource": "MedicationRequest",
     "findings": {"takes_anticoagulant": "active"}},
    {"id": "diuretics", "oid": "2.16.840.1.113762.1.4.1248.170", "resource": "MedicationRequest",
     "findings": {"takes_diuretic": "active"}},
    {"id": "calcium-channel-blockers", "oid": "2.16.840.1.113883.3.526.1577", "resource": "MedicationRequest",
     "findings": {"takes_calcium_channel_blocker": "active", "takes_oedema_causing_medicine": "active"},
     "keep": r"(?i)amlodipine|nifedipine|felodipine|diltiazem|verapamil|nicardipine|isradipine|nisoldipine"
             r"|levamlodipine",
     "filter_note": "only the calcium-channel blockers of the antihypertensive value set (by ingredient)"},
    {"id": "oestrogens-contraceptive", "oid": "2.16.840.1.113883.3.464.1003.196.12.1080",
     "resource": "MedicationRequest",
     "findings": {"oestrogen_therapy": "active"}, "keep": r"(?i)estradiol|estrogen|mestranol",
     "filter_note": "only oestrogen-containing contraceptives (progestogen-only methods dropped)"},
    {"id": "oestrogens-hrt", "oid": "2.16.840.1.113883.3.464.1003.1058", "resource": "MedicationRequest",
     "findings": {"oestrogen_therapy": "active"}},
    {"id": "oral-glucocorticoids", "oid": "2.16.840.1.113883.3.464.1003.196.12.1266", "resource": "MedicationRequest",
     "findings": {"long_term_oral_steroids": "long_term", "takes_oedema_causing_medicine": "active"}},
    # procedures: read from completed Procedures within the finding's window
    {"id": "general-surgery", "oid": "2.16.840.1.113883.3.117.1.7.1.255", "resource": "Procedure",
     "findings": {"major_surgery_12w": "84d", "major_surgery_4w": "28d"}},
    {"id": "hip-replacement", "oid": "2.16.840.1.113883.3.117.1.7.1.259", "resource": "Procedure",
     "findings": {"major_surgery_12w": "84d", "major_surgery_4w": "28d"}},
    {"id": "knee-replacement", "oid": "2.16.840.1.113883.3.117.1.7.1.261", "resource": "Procedure",
     "findings": {"major_surgery_12w": "84d", "major_surgery_4w": "28d"}},
    # Fluoroquinolones: VSAC publishes no fluoroquinolone grouper in the eCQM content; the
    # antibiotic value set of CMS154 lists every systemic fluoroquinolone product (oral and
    # injection, no eye or ear drops: the MHRA/EMA tendon warnings are about systemic use).
    {"id": "fluoroquinolones", "oid": "2.16.840.1.113883.3.464.1003.1190", "resource": "MedicationRequest",
     "findings": {"takes_fluoroquinolone": "active"}, "keep": r"(?i)floxacin",
     "filter_note": "only the fluoroquinolones (ATC J01MA) of the antibiotic value set, by ingredient"},
]

# Value sets built from a published classification where no published expansion exists: every
# RxNorm code, in any value set of the checkouts, whose display names a member of the class.
# The member list is the classification (a fact); the codes are copied as published.
ATC_M01A = ("ibuprofen", "naproxen", "diclofenac", "aceclofenac", "indometacin", "indomethacin", "sulindac",
            "tolmetin", "etodolac", "ketorolac", "nabumetone", "ketoprofen", "dexketoprofen", "flurbiprofen",
            "fenoprofen", "oxaprozin", "tiaprofenic", "piroxicam", "meloxicam", "tenoxicam", "lornoxicam",
            "mefenamic", "meclofenamic", "meclofenamate", "tolfenamic", "celecoxib", "etoricoxib", "rofecoxib",
            "valdecoxib", "parecoxib", "nimesulide")
CLASS_PLAN: list[dict] = [
    {"id": "nsaids", "title": "Non-steroidal anti-inflammatory drugs (ATC M01A)", "resource": "MedicationRequest",
     "findings": {"takes_nsaid": "active", "takes_oedema_causing_medicine": "active"},
     "keep": r"(?i)\b(" + "|".join(ATC_M01A) + r")\b",
     "source": {"kind": "classification", "name": "WHO ATC M01A (anti-inflammatory and antirheumatic products, "
                "non-steroids)", "url": "https://www.whocc.no/atc_ddd_index/?code=M01A", "version": "ATC 2024"},
     "filter_note": "no published NSAID value set: the RxNorm codes of the value sets below whose display names an "
                    "ATC M01A ingredient (alone or in a combination). Ingredient codes (from US Core) are read too, "
                    "so a topical NSAID coded only by its ingredient is read as one"},
]


def _index(repo: Path) -> dict[str, tuple[str, dict]]:
    out: dict[str, tuple[str, dict]] = {}
    composed: dict[str, tuple[str, dict]] = {}
    names = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if "valueset/external/" not in name or not name.endswith(".json"):
            continue
        doc = json.loads(subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{name}"], check=True,
                                        capture_output=True, text=True).stdout)
        if doc.get("expansion", {}).get("contains"):
            out.setdefault(doc["id"], (name, doc))
        elif any(inc.get("concept") for inc in doc.get("compose", {}).get("include", [])):
            composed.setdefault(doc["id"], (name, doc))
    # A value set published as an enumerated compose (US Core's) reads as its expansion; an
    # expansion of the same id always wins.
    for vid, (name, doc) in composed.items():
        contains = [{"system": inc["system"], **c} for inc in doc["compose"]["include"] for c in inc.get("concept", [])]
        out.setdefault(vid, (name, {**doc, "expansion": {"contains": contains}}))
    return out


def main(repos: list[str]) -> None:
    indexes = []
    for r in repos:
        repo = Path(r)
        commit = subprocess.run(["git", "-C", r, "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        remote = repo.parent.name.replace("+", "/")
        indexes.append((remote, commit, _index(repo)))
    for plan in PLAN:
        # the first checkout that holds the value set
        found = next(((r, c, index[plan["oid"]]) for r, c, index in indexes if plan["oid"] in index), None)
        if found is None:
            raise SystemExit(f"{plan['oid']} ({plan['id']}) is in none of the repositories")
        remote, commit, (path, doc) = found
        codes: dict[str, list[str]] = {}
        for c in doc["expansion"]["contains"]:
            kind = SYSTEMS.get(c["system"])
            display = c.get("display", "")
            if kind is None:
                continue  # ICD-9-CM, CPT, HCPCS, ICD-10-PCS: not what R4 records in our scope carry
            text = f"{c['code']} {display}"
            also = "keep_also" in plan and re.search(plan["keep_also"], text)
            if not also and "keep" in plan and not re.search(plan["keep"], text):
                continue
            if not also and "drop" in plan and re.search(plan["drop"], text):
                continue
            codes.setdefault(kind, []).append(c["code"])
        body = {
            "id": plan["id"],
            "title": doc.get("title") or doc.get("name"),
            "resource": plan["resource"],
            "findings": plan["findings"],
            "source": {"kind": "VSAC", "oid": plan["oid"], "url": doc.get("url"), "version": str(doc.get("version")),
                       "publisher": doc.get("publisher"),
                       "copied_from": f"github.com/{remote} {path} @ {commit}"},
            "version": str(doc.get("version")),
        }
        if "observation_code" in plan:
            body["observation_code"] = {"system": "http://loinc.org", "code": plan["observation_code"]}
        if "filter_note" in plan:
            body["filter"] = plan["filter_note"]
        body["codes"] = {k: sorted(set(v)) for k, v in sorted(codes.items())}
        text = yaml.safe_dump(body, sort_keys=False, width=120)
        (OUT / f"{plan['id']}.yaml").write_text(
            f"# Generated by scripts/import_valuesets.py from VSAC {plan['oid']}: edit the plan, not this file.\n"
            + text)
        print(plan["id"], {k: len(v) for k, v in codes.items()})
    for plan in CLASS_PLAN:
        _write_class(plan, indexes)


def _write_class(plan: dict, indexes: list[tuple[str, str, dict[str, tuple[str, dict]]]]) -> None:
    """A class value set: RxNorm codes of every value set whose display names a class member."""
    codes: set[str] = set()
    built_from: list[str] = []
    seen: set[str] = set()
    for remote, commit, index in indexes:
        for vid, (path, doc) in sorted(index.items()):
            if vid in seen:
                continue  # the first checkout's copy of a value set, as for the VSAC plan
            seen.add(vid)
            hits = {c["code"] for c in doc["expansion"]["contains"]
                    if SYSTEMS.get(c["system"]) == "rxnorm" and re.search(plan["keep"], c.get("display", ""))}
            if hits:
                codes |= hits
                built_from.append(f"{doc.get('title') or doc.get('name')} {vid} version {doc.get('version')}"
                                  f" ({len(hits)}): github.com/{remote} {path} @ {commit}")
    body = {"id": plan["id"], "title": plan["title"], "resource": plan["resource"], "findings": plan["findings"],
            "source": {**plan["source"], "built_from": built_from}, "version": plan["source"]["version"],
            "filter": plan["filter_note"], "codes": {"rxnorm": sorted(codes)}}
    text = yaml.safe_dump(body, sort_keys=False, width=120)
    (OUT / f"{plan['id']}.yaml").write_text(
        f"# Generated by scripts/import_valuesets.py from {plan['source']['name']}: edit the plan, not this file.\n"
        + text)
    print(plan["id"], {"rxnorm": len(codes)}, "from", len(built_from), "value sets")


if __name__ == "__main__":
    main(sys.argv[1:])
