"""FHIR R4 patient records in the shape of real EHR exports (US Core profiles, Synthea-style
codings), each with what must and must not be read from it.

Built here, not copied: the codes come from the value sets (rules/valuesets, VSAC) and from
US Core's examples; the people are invented. Every record is a list of resources split the
way the service's prefetch templates split them (conditions, vital-signs, ...). `NOW` is the
evaluation time the tables assume.

A record's table:
* `read`: finding -> True / False (present / absent) or a number (the value read);
* `not_read`: findings that must not be read at all (resolved, stale, entered in error, other
  body site, stopped...).
Each expected finding has a kind of fact (`KIND`) for the recall figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Relative dates are computed from the moment the tests run, so the CDS Hooks calls (which use
# the clock) and the mapping calls (which take NOW) see the same ages.
NOW = datetime.now(UTC).replace(microsecond=0)
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
LNC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:legpain-cds:finding"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"

KIND = {
    "diabetes": "condition", "known_heart_failure": "condition", "known_kidney_disease": "condition",
    "active_cancer": "condition", "cancer_history": "condition", "pregnant": "condition",
    "previous_dvt": "condition", "previous_pe": "condition", "atrial_fibrillation": "condition",
    "previous_heart_attack": "condition", "previous_stroke": "condition", "known_pad": "condition",
    "obesity": "condition", "osteoporosis": "condition", "high_cholesterol": "condition",
    "takes_statin": "medicine", "long_term_oral_steroids": "medicine", "takes_anticoagulant": "medicine",
    "takes_diuretic": "medicine", "takes_calcium_channel_blocker": "medicine",
    "takes_oedema_causing_medicine": "medicine", "oestrogen_therapy": "medicine",
    "takes_nsaid": "medicine", "takes_fluoroquinolone": "medicine",
    "major_surgery_12w": "procedure", "major_surgery_4w": "procedure",
    "heart_rate": "vital sign", "respiratory_rate": "vital sign", "systolic_bp": "vital sign",
    "diastolic_bp": "vital sign",
    "temperature": "vital sign", "oxygen_saturation": "vital sign",
    "ferritin_value": "laboratory", "ck_times_uln": "laboratory",
    "smoker": "smoking status", "former_smoker": "smoking status",
    "pain_calf": "complaint", "pain_back_of_thigh": "complaint", "urinary_retention": "complaint",
    "leg_fracture_recent": "condition", "leg_paralysis": "condition",
}


def ago(**kw: float) -> str:
    return (NOW - timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(**kw: float) -> str:
    return (NOW - timedelta(**kw)).strftime("%Y-%m-%d")


@dataclass
class Record:
    name: str
    pid: str
    gender: str
    born: str
    keys: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    read: dict[str, Any] = field(default_factory=dict)
    not_read: set[str] = field(default_factory=set)
    _n: int = 0

    def add(self, key: str, resource: dict[str, Any]) -> Record:
        self._n += 1
        resource = {"id": f"{self.pid}-{self._n}", **resource, "subject": {"reference": f"Patient/{self.pid}"}}
        self.keys.setdefault(key, []).append(resource)
        return self

    def patient(self) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": self.pid,
                "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
                "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": self.pid}],
                "name": [{"use": "official", "family": "Example", "given": [self.name.split()[0].title()]}],
                "gender": self.gender, "birthDate": self.born}

    def prefetch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patient": self.patient()}
        for key in ("observations", "conditions", "vital-signs", "laboratory", "social-history", "medications",
                    "procedures"):
            out[key] = bundle(self.keys.get(key, []))
        return out


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


def coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def condition(*codings: dict[str, str], text: str, clinical: str | None = "active", verification: str = "confirmed",
              recorded: str | None = None, onset: str | None = None, abated: str | None = None,
              category: str = "problem-list-item") -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Condition",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-problems-health-concerns"
                             if category == "problem-list-item" else
                             "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-encounter-diagnosis"]},
        "verificationStatus": {"coding": [coding(VER, verification, verification.replace("-", " ").title())]},
        "category": [{"coding": [coding(COND_CAT, category, "Problem List Item" if category == "problem-list-item"
                                        else "Encounter Diagnosis")]}],
        "code": {"coding": list(codings), "text": text},
    }
    if clinical is not None:
        r["clinicalStatus"] = {"coding": [coding(CLIN, clinical, clinical.title())]}
    if onset:
        r["onsetDateTime"] = onset
    if abated:
        r["abatementDateTime"] = abated
    if recorded:
        r["recordedDate"] = recorded
    return r


def medication(rxcui: str, display: str, *, status: str = "active", authored: str | None = None,
               validity_end: str | None = None, contained: bool = False,
               also: tuple[dict[str, str], ...] = ()) -> dict[str, Any]:
    """A MedicationRequest coded with `rxcui`, then the codings in `also` (EHRs send several:
    the product, its ingredient, their own formulary code)."""
    r: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-medicationrequest"]},
        "status": status, "intent": "order",
        "authoredOn": authored or ago(days=30),
        "requester": {"reference": "Practitioner/prac-1", "display": "Dr Example"},
    }
    if contained:
        r["contained"] = [{"resourceType": "Medication", "id": "med",
                           "code": {"coding": [coding(RX, rxcui, display), *also], "text": display}}]
        r["medicationReference"] = {"reference": "#med"}
    else:
        r["medicationCodeableConcept"] = {"coding": [coding(RX, rxcui, display), *also], "text": display}
    if validity_end:
        r["dispenseRequest"] = {"validityPeriod": {"start": r["authoredOn"], "end": validity_end}}
    return r


def procedure(sct: str, display: str, performed: str, status: str = "completed") -> dict[str, Any]:
    return {"resourceType": "Procedure",
            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure"]},
            "status": status, "code": {"coding": [coding(SCT, sct, display)], "text": display},
            "performedDateTime": performed}


def vital(loinc: str, display: str, value: float, unit: str, code: str, when: str,
          status: str = "final") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": status,
            "category": [{"coding": [coding(OBS_CAT, "vital-signs", "Vital Signs")]}],
            "code": {"coding": [coding(LNC, loinc, display)], "text": display},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": code}}


def blood_pressure(systolic: float, diastolic: float, when: str) -> dict[str, Any]:
    q = {"unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [coding(OBS_CAT, "vital-signs", "Vital Signs")]}],
            "code": {"coding": [coding(LNC, "85354-9", "Blood pressure panel with all children optional")],
                     "text": "Blood pressure"},
            "effectiveDateTime": when,
            "component": [
                {"code": {"coding": [coding(LNC, "8480-6", "Systolic blood pressure")]},
                 "valueQuantity": {"value": systolic, **q}},
                {"code": {"coding": [coding(LNC, "8462-4", "Diastolic blood pressure")]},
                 "valueQuantity": {"value": diastolic, **q}}]}


def lab(loinc: str, display: str, value: float, unit: str, code: str, when: str,
        high: float | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [coding(OBS_CAT, "laboratory", "Laboratory")]}],
        "code": {"coding": [coding(LNC, loinc, display)], "text": display},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": code}}
    if high is not None:
        r["referenceRange"] = [{"high": {"value": high, "unit": unit, "system": UCUM, "code": code}}]
    return r


def smoking(sct: str, display: str, when: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus"]},
            "category": [{"coding": [coding(OBS_CAT, "social-history", "Social History")]}],
            "code": {"coding": [coding(LNC, "72166-2", "Tobacco smoking status")], "text": "Tobacco smoking status"},
            "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [coding(SCT, sct, display)], "text": display}}


def complaint(finding: str, display: str, when: str) -> dict[str, Any]:
    """A symptom recorded by triage with the service's own code (no standard code is exact)."""
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [coding(OBS_CAT, "exam", "Exam")]}],
            "code": {"coding": [coding(LOCAL, finding, display)], "text": display},
            "effectiveDateTime": when, "valueBoolean": True}


# --- the codes (each from a value set in rules/valuesets or a US Core example) -------------
T2DM = (coding(SCT, "44054006", "Diabetes mellitus type 2 (disorder)"),
        coding(ICD, "E11.9", "Type 2 diabetes mellitus without complications"))
T1DM = (coding(SCT, "46635009", "Diabetes mellitus type 1 (disorder)"),)
CHF = (coding(SCT, "88805009", "Chronic congestive heart failure (disorder)"),
       coding(ICD, "I50.22", "Chronic systolic (congestive) heart failure"))
CKD3 = (coding(SCT, "433144002", "Chronic kidney disease stage 3 (disorder)"),
        coding(ICD, "N18.30", "Chronic kidney disease, stage 3 unspecified"))
NSCLC = (coding(SCT, "254637007", "Non-small cell lung cancer (disorder)"),)
COLON_CA = (coding(SCT, "363406005", "Malignant neoplasm of colon (disorder)"),)
PREGNANT = (coding(SCT, "77386006", "Pregnancy (finding)"), coding(ICD, "Z34.90", "Encounter for supervision of "
                                                                             "normal pregnancy, unspecified"))
DVT = (coding(SCT, "128053003", "Deep venous thrombosis (disorder)"),
       coding(ICD, "I82.401", "Acute embolism and thrombosis of unspecified deep veins of right lower extremity"))
PE = (coding(SCT, "59282003", "Pulmonary embolism (disorder)"), coding(ICD, "I26.99", "Other pulmonary embolism "
                                                                               "without acute cor pulmonale"))
AF = (coding(SCT, "49436004", "Atrial fibrillation (disorder)"),)
MI = (coding(SCT, "22298006", "Myocardial infarction (disorder)"),)
STROKE = (coding(SCT, "230690007", "Cerebrovascular accident (disorder)"),)
PAD = (coding(SCT, "399957001", "Peripheral arterial occlusive disease (disorder)"),
       coding(ICD, "I70.213", "Atherosclerosis of native arteries of extremities with intermittent claudication, "
                              "bilateral legs"))
OBESE = (coding(ICD, "E66.9", "Obesity, unspecified"),)
OSTEOPOROSIS = (coding(SCT, "64859006", "Osteoporosis (disorder)"),)
ARM_FRACTURE = (coding(SCT, "65966004", "Fracture of forearm (disorder)"),
                coding(ICD, "S52.90XA", "Unspecified fracture of unspecified forearm, initial encounter"))
HTN = (coding(SCT, "38341003", "Hypertensive disorder, systemic arterial (disorder)"),
       coding(ICD, "I10", "Essential (primary) hypertension"))

ATORVASTATIN = ("259255", "atorvastatin 80 MG Oral Tablet")
SIMVASTATIN = ("314231", "simvastatin 10 MG Oral Tablet")
WARFARIN = ("855332", "warfarin sodium 5 MG Oral Tablet")
APIXABAN = ("1364445", "apixaban 5 MG Oral Tablet")
RIVAROXABAN = ("1114198", "rivaroxaban 10 MG Oral Tablet")
ENOXAPARIN = ("854235", "enoxaparin sodium 40 MG/0.4ML Injectable Solution")
HCTZ = ("310798", "hydrochlorothiazide 25 MG Oral Tablet")
FUROSEMIDE = ("313988", "furosemide 40 MG Oral Tablet")
AMLODIPINE = ("197361", "amlodipine 5 MG Oral Tablet")
COC = ("1037183", "ethinyl estradiol 0.01 MG / norethindrone acetate 1 MG Oral Tablet")
HRT = ("1000355", "estrogens, conjugated (USP) 0.625 MG / medroxyprogesterone acetate 2.5 MG Oral Tablet")
PREDNISONE = ("312617", "predniSONE 5 MG Oral Tablet")
# NSAIDs and fluoroquinolones: product codes from the VSAC value sets, ingredient codes from US
# Core's substance value set (rules/valuesets/nsaids.yaml, fluoroquinolones.yaml).
IBUPROFEN_IN = coding(RX, "5640", "Ibuprofen")
FORMULARY = "https://ehr.example.org/fhir/CodeSystem/formulary"  # an EHR's own medicine codes
HYDROCODONE_IBUPROFEN = ("858778", "hydrocodone bitartrate 5 MG / ibuprofen 200 MG Oral Tablet")
AMLODIPINE_CELECOXIB = ("2047716", "amlodipine 5 MG / celecoxib 200 MG Oral Tablet")
KETOROLAC_INJ = ("860096", "ketorolac tromethamine 30 MG/ML Injectable Solution")
CIPROFLOXACIN = ("309309", "ciprofloxacin 500 MG Oral Tablet")
LEVOFLOXACIN = ("199885", "levofloxacin 500 MG Oral Tablet")
MOXIFLOXACIN = ("311787", "moxifloxacin 400 MG Oral Tablet")


def build() -> list[Record]:
    out: list[Record] = []

    def rec(name: str, gender: str = "female", born: str = "1961-04-12") -> Record:
        r = Record(name, f"pat-{len(out) + 1:02d}", gender, born)
        out.append(r)
        return r

    # 1 the issue's own case: problems and medicines only
    r = rec("diabetes pad dvt statin anticoagulant", "male", "1950-06-01")
    r.add("conditions", condition(*T2DM, text="Type 2 diabetes", recorded="2019-03-02"))
    r.add("conditions", condition(*PAD, text="PAD", recorded="2021-07-15"))
    r.add("conditions", condition(*DVT, text="DVT right leg", clinical="resolved", recorded="2018-01-09",
                                  abated="2018-04-01"))
    r.add("medications", medication(*ATORVASTATIN, authored=ago(days=40)))
    r.add("medications", medication(*APIXABAN, authored=ago(days=40)))
    r.read.update(diabetes=True, known_pad=True, previous_dvt=True, takes_statin=True,
                  takes_anticoagulant=True)

    # 2 resolved and entered-in-error problems are not read
    r = rec("resolved and entered in error")
    r.add("conditions", condition(*CHF, text="CHF", clinical="resolved", recorded="2015-01-01", abated="2016-01-01"))
    r.add("conditions", condition(*T2DM, text="T2DM", verification="entered-in-error", recorded=day(days=3)))
    r.add("conditions", condition(*CKD3, text="CKD 3", verification="refuted", clinical=None, recorded=day(days=20)))
    r.read.update(known_kidney_disease=False)
    r.not_read |= {"known_heart_failure", "diabetes"}

    # 3 ICD-10-CM only (billing diagnosis), child codes by prefix
    r = rec("icd only", "male")
    r.add("conditions", condition(coding(ICD, "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
                                  text="T2DM with hyperglycaemia", category="encounter-diagnosis",
                                  recorded=day(days=9)))
    r.add("conditions", condition(coding(ICD, "N18.30", "Chronic kidney disease, stage 3 unspecified"),
                                  text="CKD", category="encounter-diagnosis", recorded=day(days=9)))
    r.add("conditions", condition(*OBESE, text="Obesity", recorded=day(days=400)))
    r.read.update(diabetes=True, known_kidney_disease=True, obesity=True)

    # 4 type 1 diabetes, child concept, snomed only
    r = rec("type 1 diabetes", born="1990-02-02")
    r.add("conditions", condition(*T1DM, text="Type 1 DM", recorded="2005-09-01"))
    r.read.update(diabetes=True)

    # 5 stale medicine still marked active
    r = rec("stale statin", "male")
    r.add("medications", medication(*SIMVASTATIN, authored="2019-05-01T09:00:00Z"))
    r.add("medications", medication(*WARFARIN, status="stopped", authored=ago(days=60)))
    r.not_read |= {"takes_statin", "takes_anticoagulant"}

    # 6 an old order still valid (90-day supply renewed by validity period) is current
    r = rec("old order still valid", "male")
    r.add("medications", medication(*ATORVASTATIN, authored="2024-01-01T09:00:00Z", validity_end=day(days=-60)))
    r.read.update(takes_statin=True)

    # 7 combined pill
    r = rec("combined pill", born="1998-08-08")
    r.add("medications", medication(*COC, authored=ago(days=100)))
    r.read.update(oestrogen_therapy=True)

    # 8 HRT, contained Medication
    r = rec("hrt contained", born="1965-01-01")
    r.add("medications", medication(*HRT, authored=ago(days=200), contained=True))
    r.read.update(oestrogen_therapy=True)

    # 9 diuretics and a calcium-channel blocker
    r = rec("diuretics ccb", "male", "1948-01-01")
    r.add("conditions", condition(*HTN, text="Hypertension", recorded="2010-01-01"))
    r.add("medications", medication(*FUROSEMIDE, authored=ago(days=20)))
    r.add("medications", medication(*AMLODIPINE, authored=ago(days=20)))
    r.add("medications", medication(*HCTZ, status="cancelled", authored=ago(days=20)))
    r.read.update(takes_diuretic=True, takes_calcium_channel_blocker=True,
                  takes_oedema_causing_medicine=True)

    # 10 long-term steroid vs a short course
    r = rec("long term prednisone", born="1955-05-05")
    r.add("medications", medication(*PREDNISONE, authored=ago(days=200)))
    r.read.update(long_term_oral_steroids=True, takes_oedema_causing_medicine=True)
    r = rec("short prednisone course", "male")
    r.add("medications", medication(*PREDNISONE, authored=ago(days=10)))
    r.read.update(takes_oedema_causing_medicine=True)
    r.not_read |= {"long_term_oral_steroids"}

    # 12 osteoporosis
    r = rec("osteoporosis", born="1940-01-01")
    r.add("conditions", condition(*OSTEOPOROSIS, text="Osteoporosis", recorded="2016-01-01"))
    r.read.update(osteoporosis=True)

    # 13 heparin and rivaroxaban
    r = rec("heparin after surgery", "male")
    r.add("medications", medication(*ENOXAPARIN, authored=ago(days=5)))
    r.add("procedures", procedure("52734007", "Total replacement of hip", day(days=6)))
    r.read.update(takes_anticoagulant=True, major_surgery_12w=True, major_surgery_4w=True)

    # 14 surgery 8 weeks ago: within 12 weeks, not within 4
    r = rec("knee replacement 8 weeks")
    r.add("procedures", procedure("609588000", "Total knee replacement", day(days=56)))
    r.add("medications", medication(*RIVAROXABAN, authored=ago(days=56), status="completed"))
    r.read.update(major_surgery_12w=True)
    r.not_read |= {"major_surgery_4w", "takes_anticoagulant"}

    # 15 surgery half a year ago, and one not done
    r = rec("old surgery", "male")
    r.add("procedures", procedure("52734007", "Total replacement of hip", day(days=200)))
    r.add("procedures", procedure("609588000", "Total knee replacement", day(days=3), status="not-done"))
    r.not_read |= {"major_surgery_12w", "major_surgery_4w"}

    # 16 active cancer and a past one
    r = rec("active lung cancer", "male", "1952-02-02")
    r.add("conditions", condition(*NSCLC, text="NSCLC", recorded=day(days=120)))
    r.read.update(active_cancer=True, cancer_history=True)
    r = rec("colon cancer in remission")
    r.add("conditions", condition(*COLON_CA, text="Colon cancer", clinical="remission", recorded="2014-06-01"))
    r.read.update(cancer_history=True)
    r.not_read |= {"active_cancer"}

    # 18 pregnancy
    r = rec("pregnant", born="1995-03-03")
    r.add("conditions", condition(*PREGNANT, text="Pregnancy", recorded=day(days=90)))
    r.read.update(pregnant=True)
    r = rec("past pregnancy", born="1985-03-03")
    r.add("conditions", condition(*PREGNANT, text="Pregnancy", clinical="resolved", recorded="2015-03-03",
                                  abated="2015-10-01"))
    r.not_read |= {"pregnant"}

    # 20 previous PE and AF, MI
    r = rec("pe af mi", "male", "1945-01-01")
    r.add("conditions", condition(*PE, text="PE", clinical="resolved", recorded="2020-01-01", abated="2020-06-01"))
    r.add("conditions", condition(*AF, text="AF", recorded="2019-01-01"))
    r.add("conditions", condition(*MI, text="MI", clinical="resolved", recorded="2017-01-01", abated="2017-02-01"))
    r.add("conditions", condition(*STROKE, text="CVA", clinical="inactive", recorded="2021-01-01"))
    r.read.update(previous_pe=True, atrial_fibrillation=True, previous_heart_attack=True,
                  previous_stroke=True)
    r.not_read |= {"previous_dvt"}

    # 21 current smoker, recent
    r = rec("current smoker", "male")
    r.add("social-history", smoking("449868002", "Smokes tobacco daily (finding)", ago(days=60)))
    r.read.update(smoker=True, former_smoker=False)

    # 22 former smoker, and an older 'current' answer that is superseded
    r = rec("former smoker")
    r.add("social-history", smoking("8517006", "Ex-smoker (finding)", ago(days=100)))
    r.add("social-history", smoking("77176002", "Smoker (finding)", ago(days=300)))
    r.read.update(former_smoker=True, smoker=False)

    # 23 smoking status 3 years old: not read
    r = rec("stale smoking status", "male")
    r.add("social-history", smoking("449868002", "Smokes tobacco daily (finding)", ago(days=1100)))
    r.not_read |= {"smoker", "former_smoker"}

    # 24 never smoked
    r = rec("never smoked")
    r.add("social-history", smoking("8392000", "Non-smoker (finding)", ago(days=30)))
    r.read.update(smoker=False, former_smoker=False)

    # 25 vital signs in other units, fresh
    r = rec("vitals fresh fahrenheit", "male")
    r.add("vital-signs", vital("8867-4", "Heart rate", 118, "beats/minute", "/min", ago(hours=2)))
    r.add("vital-signs", vital("9279-1", "Respiratory rate", 24, "breaths/minute", "/min", ago(hours=2)))
    r.add("vital-signs", vital("8310-5", "Body temperature", 100.4, "degF", "[degF]", ago(hours=2)))
    r.add("vital-signs", vital("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", 91, "%", "%",
                               ago(hours=2)))
    r.add("vital-signs", blood_pressure(96, 60, ago(hours=2)))
    r.read.update(heart_rate=118, respiratory_rate=24, temperature=38.0, oxygen_saturation=91, systolic_bp=96,
                  diastolic_bp=60)  # the panel's diastolic component (LOINC 8462-4): a finding since 0.3.1

    # 26 vital signs two days old: not read
    r = rec("vitals stale")
    r.add("vital-signs", vital("8867-4", "Heart rate", 80, "beats/minute", "/min", ago(hours=49)))
    r.add("vital-signs", vital("2708-6", "Oxygen saturation in Arterial blood", 97, "%", "%", ago(hours=30)))
    r.add("vital-signs", vital("8310-5", "Body temperature", 37.1, "Cel", "Cel", ago(hours=3),
                               status="entered-in-error"))
    r.not_read |= {"heart_rate", "oxygen_saturation", "temperature"}

    # 27 labs: ferritin in ng/mL, CK against the lab's own upper limit
    r = rec("labs")
    r.add("laboratory", lab("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", 12, "ng/mL", "ng/mL",
                            ago(days=40)))
    r.add("laboratory", lab("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", 1710,
                            "U/L", "U/L", ago(days=1), high=171))
    r.read.update(ferritin_value=12, ck_times_uln=10.0)

    # 28 labs outside their windows
    r = rec("labs stale", "male")
    r.add("laboratory", lab("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", 300, "ug/L", "ug/L",
                            ago(days=200)))
    r.add("laboratory", lab("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", 900,
                            "U/L", "U/L", ago(days=20), high=180))
    r.not_read |= {"ferritin_value", "ck_times_uln"}

    # 29 a fracture of the arm beside a leg question: nothing about the leg is read from it
    r = rec("arm fracture with calf pain", "male", "1980-01-01")
    r.add("conditions", condition(*ARM_FRACTURE, text="Forearm fracture", category="encounter-diagnosis",
                                  recorded=day(days=5)))
    r.add("observations", complaint("pain_calf", "Pain in calf", ago(hours=1)))
    r.read.update(pain_calf=True)
    r.not_read |= {"leg_fracture_recent", "leg_paralysis"}

    # 30 heart failure and CKD with child concepts, both codings
    r = rec("chf ckd", "male", "1944-01-01")
    r.add("conditions", condition(*CHF, text="CHF", recorded="2018-05-05"))
    r.add("conditions", condition(*CKD3, text="CKD stage 3", recorded="2019-05-05"))
    r.add("medications", medication(*FUROSEMIDE, authored=ago(days=14)))
    r.read.update(known_heart_failure=True, known_kidney_disease=True, takes_diuretic=True)

    # 31 emergency in the complaints: urinary retention
    r = rec("urinary retention", "male", "1970-01-01")
    r.add("observations", complaint("urinary_retention", "Urinary retention", ago(hours=1)))
    r.add("observations", complaint("pain_back_of_thigh", "Pain back of thigh", ago(hours=1)))
    r.read.update(urinary_retention=True, pain_back_of_thigh=True)

    # 32 everything at once (a busy chart)
    r = rec("busy chart", "female", "1958-01-01")
    r.add("conditions", condition(*T2DM, text="T2DM", recorded="2012-01-01"))
    r.add("conditions", condition(*CHF, text="HF", recorded="2016-01-01"))
    r.add("conditions", condition(*DVT, text="DVT", clinical="resolved", recorded="2022-02-02", abated="2022-06-01"))
    r.add("conditions", condition(*NSCLC, text="Lung ca", clinical="resolved", recorded="2010-01-01",
                                  abated="2011-01-01"))
    r.add("medications", medication(*ATORVASTATIN, authored=ago(days=90)))
    r.add("medications", medication(*WARFARIN, authored=ago(days=90)))
    r.add("medications", medication(*SIMVASTATIN, authored="2018-01-01T00:00:00Z"))
    r.add("vital-signs", vital("8867-4", "Heart rate", 104, "/min", "/min", ago(hours=1)))
    r.add("social-history", smoking("8517006", "Ex-smoker (finding)", ago(days=30)))
    r.add("observations", complaint("pain_calf", "Pain in calf", ago(hours=1)))
    r.read.update(diabetes=True, known_heart_failure=True, previous_dvt=True, cancer_history=True, takes_statin=True,
                  takes_anticoagulant=True, heart_rate=104, former_smoker=True,
                  smoker=False, pain_calf=True)
    r.not_read |= {"active_cancer"}

    # 33 ibuprofen as an EHR sends it: the ingredient, the EHR's formulary code and a text (no
    # product code that the value set holds: the ingredient alone makes it an NSAID)
    r = rec("ibuprofen several codings", "male", "1952-03-03")
    r.add("conditions", condition(*CHF, text="Heart failure", recorded="2020-02-02"))
    r.add("medications", medication("5640", "Ibuprofen", authored=ago(days=12), also=(
        coding(FORMULARY, "IBU600", "Ibuprofen 600 mg tablet"),)))
    r.read.update(known_heart_failure=True, takes_nsaid=True, takes_oedema_causing_medicine=True)

    # 34 a stopped ciprofloxacin, an NSAID entered in error, an NSAID order cancelled
    r = rec("stopped ciprofloxacin, nsaid entered in error", "female", "1949-09-09")
    r.add("medications", medication(*CIPROFLOXACIN, status="stopped", authored=ago(days=20)))
    r.add("medications", medication(*HYDROCODONE_IBUPROFEN, status="entered-in-error", authored=ago(days=3),
                                    also=(IBUPROFEN_IN,)))
    r.add("medications", medication("7258", "Naproxen", status="cancelled", authored=ago(days=3)))
    r.not_read |= {"takes_fluoroquinolone", "takes_nsaid", "takes_oedema_causing_medicine"}

    # 35 a current fluoroquinolone and an NSAID in a combination tablet that also holds a
    # calcium-channel blocker (one code, three findings); a stale ketorolac order
    r = rec("levofloxacin and amlodipine-celecoxib", "male", "1960-10-10")
    r.add("medications", medication(*LEVOFLOXACIN, authored=ago(days=4), validity_end=day(days=-3)))
    r.add("medications", medication(*AMLODIPINE_CELECOXIB, authored=ago(days=60), contained=True))
    r.add("medications", medication(*KETOROLAC_INJ, authored="2021-03-03T10:00:00Z"))
    r.read.update(takes_fluoroquinolone=True, takes_nsaid=True, takes_oedema_causing_medicine=True,
                  takes_calcium_channel_blocker=True)

    # 36 moxifloxacin sent with a contained Medication and a naproxen tablet coded by its ingredient
    r = rec("moxifloxacin contained", "female", "1975-05-05")
    r.add("medications", medication(*MOXIFLOXACIN, authored=ago(days=2), contained=True))
    r.add("medications", medication("7258", "Naproxen", authored=ago(days=40), also=(
        coding(FORMULARY, "NAP500", "Naproxen 500 mg tablet"),)))
    r.read.update(takes_fluoroquinolone=True, takes_nsaid=True, takes_oedema_causing_medicine=True)

    # 37-38 CK against its 5-day window (rules/valuesets/laboratory.yaml): 6 days old (a normal
    # result from before this episode) is not read, 4 days old is
    r = rec("ck six days old", "male", "1966-06-06")
    r.add("laboratory", lab("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", 120,
                            "U/L", "U/L", ago(days=6), high=200))
    r.not_read |= {"ck_times_uln"}
    r = rec("ck four days old", "female", "1971-07-07")
    r.add("laboratory", lab("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma", 2400,
                            "U/L", "U/L", ago(days=4), high=200))
    r.read.update(ck_times_uln=12.0)
    return out


RECORDS = build()


def read_all(k: Any, record: Record) -> dict[str, dict[str, Any]]:
    """The findings the service reads from a record (its prefetch, mapped at NOW)."""
    from service.fhir.mapping import map_prefetch

    pf = record.prefetch()
    mapped = map_prefetch(k, patient=pf["patient"], patient_id=record.pid, now=NOW,
                          records=[(f"prefetch.{key}", v) for key, v in pf.items() if key != "patient"])
    return mapped.encounter.findings


def matches(want: Any, got: dict[str, Any] | None) -> bool:
    if got is None:
        return False
    if isinstance(want, bool):
        return got["present"] is want
    return abs(got.get("value", float("nan")) - want) <= 0.05


def score(k: Any, records: list[Record] | None = None) -> dict[str, dict[str, int]]:
    """Per kind of fact: expected facts, read correctly, and false reads (a fact read that
    must not be, or read with the wrong value or polarity, or read but in no table)."""
    out: dict[str, dict[str, int]] = {}
    for record in records or RECORDS:
        got = read_all(k, record)
        for finding, want in record.read.items():
            row = out.setdefault(KIND.get(finding, "other"), {"expected": 0, "read": 0, "false": 0, "forbidden": 0})
            row["expected"] += 1
            if matches(want, got.get(finding)):
                row["read"] += 1
            elif finding in got:
                row["false"] += 1
        for finding in record.not_read:
            row = out.setdefault(KIND.get(finding, "other"), {"expected": 0, "read": 0, "false": 0, "forbidden": 0})
            row["forbidden"] += 1
            if finding in got:
                row["false"] += 1
        for finding in set(got) - set(record.read) - record.not_read:
            row = out.setdefault(KIND.get(finding, "other"), {"expected": 0, "read": 0, "false": 0, "forbidden": 0})
            row["false"] += 1
    return out
