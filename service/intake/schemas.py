"""Marshmallow schemas: the request is loaded through them, the response and catalogues are
documented by them (openapi/openapi.yaml is generated from these classes) and checked
against them in the tests. Responses are serialised directly (orjson) on the request path."""

from __future__ import annotations

from typing import ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from service.knowledge.model import EVIDENCE_LEVELS, PRIORITIES, SEXES, TIERS

# Every finding of the vocabulary must fit in one request (the full form sends them all) and in
# one ask_next list: 326 at vocabulary 0.3.1; tests/test_api.py fails when the vocabulary
# outgrows these bounds.
MAX_FINDINGS = 400
MAX_ASK_NEXT = 400
LATERALITIES = ("left", "right", "bilateral")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True


class StrictBoolean(fields.Boolean):
    """Only JSON true/false: "yes", 1 or "true" are errors, not guesses."""

    truthy: ClassVar[set[bool]] = {True}
    falsy: ClassVar[set[bool]] = {False}


class NumberOrChoice(fields.Field):
    """A finding's value: a number (number findings) or a choice code (choice findings). A JSON
    true/false passes here so that the vocabulary check can say what a yes/no finding takes
    (`present`), which only it knows; it is refused there for every finding type."""

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(value, bool):
            return value
        if not isinstance(value, int | float | str):
            raise ValidationError("Must be a number, or a choice code for choice findings.")
        if isinstance(value, str) and not 0 < len(value) <= 64:
            raise ValidationError("A choice code is 1 to 64 characters.")
        if isinstance(value, float) and value != value:  # NaN cannot come from JSON, but be sure
            raise ValidationError("Must be a finite number.")
        return value


class StrictNumber(fields.Float):
    """Only a JSON number: "58" is an error, not a guess (a string age is a client bug worth seeing)."""

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"Must be a JSON number, e.g. 58, not {type(value).__name__} {value!r}"[:120] + ".")
        return super()._deserialize(value, attr, data, **kwargs)


class PatientSchema(StrictSchema):
    age = StrictNumber(
        allow_none=True, validate=validate.Range(0, 120),
        metadata={"description": "Age in years, as a JSON number (a string such as \"58\" is refused). Without "
                                 "it, the rules on age cannot fire: the answer then carries an `age-missing` "
                                 "warning and asks for it first in ask_next", "example": 58},
    )
    sex = fields.String(allow_none=True, validate=validate.OneOf(SEXES), metadata={"example": "female"})


class CodingSchema(StrictSchema):
    system = fields.String(required=True)
    code = fields.String(required=True)
    display = fields.String()


class FindingInputSchema(StrictSchema):
    # A finding sent as a bare string ("fever") is the commonest slip: show the shape instead of
    # marshmallow's "Invalid input type."
    error_messages: ClassVar[dict[str, str]] = {
        "type": 'Each finding is an object, e.g. {"code": "fever"} (present), {"code": "fever", "present": false} '
                '(denied) or {"code": "abi_value", "value": 0.72}.',
    }

    system = fields.String(
        validate=validate.Length(1, 256),
        metadata={"description": "Optional code system: `code` is then a code of that system (e.g. "
                                 "http://snomed.info/sct or http://loinc.org) that GET /v1/findings lists for a "
                                 "finding, or any code of a value set (rules/valuesets: SNOMED CT, ICD-10-CM "
                                 "codes and their children, LOINC, RxNorm); the answer's codings_read says which "
                                 "finding it was read as. urn:legpain-cds:finding takes the local codes",
                  "example": "http://snomed.info/sct"},
    )
    code = fields.String(
        required=True, validate=validate.Length(1, 64),
        metadata={"description": "A finding code from GET /v1/findings (or, with `system`, a code of that system)",
                  "example": "calf_tenderness"},
    )
    present = StrictBoolean(
        load_default=True, allow_none=True,
        metadata={"description": "true: present (default); false: explicitly denied; null: asked, but the "
                                 "answer is unknown (counts as neither, and ask_next moves on to other "
                                 "questions; give no value). A finding left out is unknown and not yet asked."},
    )
    value = NumberOrChoice(metadata={
        "description": "Number findings: the measured value, in the finding's unit (or in `unit`). "
                       "Choice findings: one of its choices. Yes/no findings take no value: use `present`.",
        "oneOf": [{"type": "number"}, {"type": "string", "minLength": 1, "maxLength": 64}],
    })
    unit = fields.String(
        validate=validate.Length(1, 32),
        metadata={"description": "UCUM unit of the value. Default: the finding's unit (GET /v1/findings); any "
                                 "UCUM unit of the same kind is converted to it (ng/mL where ug/L is declared)",
                  "example": "ug/L"},
    )
    laterality = fields.String(validate=validate.OneOf(LATERALITIES))


class EvaluationRequestSchema(StrictSchema):
    patient = fields.Nested(PatientSchema, load_default=dict)
    findings = fields.List(
        fields.Nested(FindingInputSchema), required=True,
        validate=validate.Length(0, MAX_FINDINGS),
    )
    encounter_id = fields.String(
        validate=validate.Length(1, 128),
        metadata={"description": "The caller's identifier, echoed back unchanged"},
    )
    ask_next_limit = fields.Integer(
        strict=True, validate=validate.Range(1, MAX_ASK_NEXT),
        metadata={"description": "How many finding questions ask_next may return (urgency questions first, "
                                 "then the differential's). Default: the four best for urgency and the three "
                                 "best for the differential, ranked together. Missing patient attributes are "
                                 "asked on top of it", "example": 20},
    )

    @validates_schema
    def _no_duplicates(self, data, **kwargs):  # type: ignore[no-untyped-def]
        seen: dict[tuple[str | None, str], int] = {}
        for i, f in enumerate(data.get("findings", [])):
            key = (f.get("system"), f["code"])
            if key in seen:
                raise ValidationError(
                    f"Finding {f['code']!r} is given twice (also at index {seen[key]}).",
                    field_name=f"findings.{i}.code",
                )
            seen[key] = i


# --- response (documentation and test-time conformance) -------------------------------------


class SourceRefSchema(Schema):
    id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["document", "guideline"]))
    title = fields.String(required=True)
    file = fields.String()
    url = fields.String()


class RulesetInfoSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    sha256 = fields.String(required=True, metadata={"description": "SHA-256 of the loaded rule files"})
    vocabulary_version = fields.String(metadata={
        "description": "The vocabulary's own version (rules/vocabulary.yaml; GET /v1/findings)", "example": "0.3.2"})


class ReasonSchema(Schema):
    tier = fields.String(required=True, validate=validate.OneOf(TIERS))
    rule = fields.String(required=True)
    text = fields.String(required=True)
    red_flag = fields.String()


class UrgencySchema(Schema):
    tier = fields.String(required=True, validate=validate.OneOf(TIERS))
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)


class RedFlagOutSchema(Schema):
    code = fields.String(required=True)
    display = fields.String(required=True)
    tier = fields.String(required=True, validate=validate.OneOf(TIERS))
    rules = fields.List(fields.String(), required=True)
    findings = fields.List(fields.String(), required=True)
    sources = fields.List(fields.String(), required=True)


class DifferentialSchema(Schema):
    rank = fields.Integer(required=True)
    condition = fields.String(required=True)
    display = fields.String(required=True)
    codes = fields.List(fields.Nested(CodingSchema), required=True)
    score = fields.Integer(required=True)
    likelihood = fields.String(required=True, validate=validate.OneOf(["high", "moderate", "low", "unlikely"]))
    must_not_miss = fields.Boolean(required=True)
    supporting_findings = fields.List(fields.String(), required=True)
    against_findings = fields.List(fields.String(), required=True)
    rules = fields.List(fields.String(), required=True)


class RecommendedTestSchema(Schema):
    test = fields.String(required=True)
    display = fields.String(required=True)
    codes = fields.List(fields.Nested(CodingSchema), required=True)
    priority = fields.String(required=True, validate=validate.OneOf(PRIORITIES))
    for_conditions = fields.List(fields.String(), required=True)
    rules = fields.List(fields.String(), required=True)
    rationale = fields.String(required=True)


class NotIndicatedSchema(Schema):
    test = fields.String(required=True)
    display = fields.String(required=True)
    reason = fields.String(required=True)
    rules = fields.List(fields.String(), required=True)


class AskNextSchema(Schema):
    finding = fields.String(metadata={"description": "The finding to ask about (a code of GET /v1/findings); "
                                                     "absent on a `patient` item"})
    patient = fields.String(
        validate=validate.OneOf(["age", "sex"]),
        metadata={"description": "A patient attribute the request did not give but rules test (send it as "
                                 "patient.<attribute>); asked first, outside the six finding questions"},
    )
    display = fields.String(required=True)
    question = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["boolean", "number", "choice"]))
    unit = fields.String()
    choices = fields.List(fields.String())
    aim = fields.String(
        required=True, validate=validate.OneOf(["urgency", "differential"]),
        metadata={"description": "urgency: could raise the tier (red-flag screening); "
                                 "differential: would help tell the causes apart"},
    )
    impact = fields.Float(required=True)
    raises_tier_to = fields.String(
        required=True, allow_none=True, validate=validate.OneOf(["emergency", "urgent", "soon", "routine"]),
        metadata={"description": "The highest tier a rule this question could complete would set, when it is "
                                 "above the current tier; null when its answer cannot raise the tier (it can "
                                 "only refine the differential)"},
    )
    tier_steps = fields.Integer(
        required=True,
        metadata={"description": "How many tier steps the answer could still raise the tier (0 to 3)"},
    )
    why = fields.String(required=True)
    rules = fields.List(fields.String(), required=True)


class AnswerWarningSchema(Schema):
    code = fields.String(required=True, validate=validate.OneOf(["age-missing", "sex-missing"]))
    pointer = fields.String(required=True, metadata={"description": "Where in the request it belongs",
                                                     "example": "/patient/age"})
    text = fields.String(required=True)
    rules = fields.List(fields.String(), required=True,
                        metadata={"description": "The rules that could not fire without it"})


class AdviceOutSchema(Schema):
    code = fields.String(required=True)
    text = fields.String(required=True)
    sources = fields.List(fields.String(), required=True)
    rules = fields.List(fields.String(), required=True)


class ScoreItemSchema(Schema):
    rule = fields.String(required=True)
    title = fields.String(required=True)
    points = fields.Float(required=True)


class ScoreOutSchema(Schema):
    score = fields.String(required=True)
    display = fields.String(required=True)
    value = fields.Float(required=True)
    items = fields.List(fields.Nested(ScoreItemSchema), required=True)


class ProvenanceSchema(Schema):
    rule = fields.String(required=True)
    version = fields.Integer(required=True)
    title = fields.String(required=True)
    evidence = fields.String(required=True, validate=validate.OneOf(EVIDENCE_LEVELS))
    sources = fields.List(fields.Nested(SourceRefSchema), required=True)


class MatchedFactSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(["finding", "patient", "fact", "score"]))
    code = fields.String(required=True)
    present = fields.Boolean()
    value = fields.Float()
    choice = fields.String()


class TraceSchema(Schema):
    seq = fields.Integer(required=True)
    rule = fields.String(required=True)
    round = fields.Integer(required=True, metadata={"description": "Chaining round (0: input facts)"})
    matched = fields.List(fields.Nested(MatchedFactSchema), required=True)
    derived = fields.List(fields.String(), required=True)


class CodingReadSchema(Schema):
    pointer = fields.String(required=True, metadata={"example": "/findings/0"})
    system = fields.String(required=True, metadata={"example": "http://www.nlm.nih.gov/research/umls/rxnorm"})
    code = fields.String(required=True, metadata={"example": "259255"})
    finding = fields.String(required=True, metadata={"description": "The local finding code it was read as",
                                                     "example": "takes_statin"})
    display = fields.String(required=True)


class DeprecatedCodeSchema(Schema):
    code = fields.String(required=True, metadata={"example": "pregnant_or_postpartum"})
    replaced_by = fields.List(fields.String(), required=True, metadata={"example": ["pregnant", "postpartum_6w"]})


class FindingsCatalogueSchema(Schema):
    version = fields.String(required=True, metadata={"description": "The vocabulary's version", "example": "0.3.2"})
    items = fields.List(fields.Dict(), required=True, metadata={
        "description": "Findings; a deprecated one has deprecated: true and replaced_by (its atomic findings)"})


class EvaluationResponseSchema(Schema):
    evaluation_id = fields.UUID(required=True)
    encounter_id = fields.String()
    ruleset = fields.Nested(RulesetInfoSchema, required=True)
    urgency = fields.Nested(UrgencySchema, required=True)
    red_flags = fields.List(fields.Nested(RedFlagOutSchema), required=True)
    differential = fields.List(fields.Nested(DifferentialSchema), required=True)
    recommended_tests = fields.List(fields.Nested(RecommendedTestSchema), required=True)
    tests_not_indicated = fields.List(
        fields.Nested(NotIndicatedSchema), required=True,
        metadata={"description": "Tests the rules advise against here (e.g. no MRI for a simple strain); "
                                 "never one that a rule recommends at urgent, asap or stat priority"},
    )
    warnings = fields.List(
        fields.Nested(AnswerWarningSchema), required=True,
        metadata={"description": "What the request left out that the answer depends on (e.g. no age: the "
                                 "rules on age could not fire); empty when nothing is missing"},
    )
    codings_read = fields.List(
        fields.Nested(CodingReadSchema),
        metadata={"description": "Only when findings were sent as codings ({system, code}): the finding each "
                                 "was read as. Any code of a value set (rules/valuesets: SNOMED CT, ICD-10-CM "
                                 "by prefix, LOINC, RxNorm) names that value set's finding"},
    )
    deprecated_codes_used = fields.List(
        fields.Nested(DeprecatedCodeSchema), required=True,
        metadata={"description": "Deprecated finding codes this request sent (bundled findings split in "
                                 "vocabulary 0.3.1), each with the atomic findings that replace it; they still "
                                 "work, with 'at least one of' meaning. Empty when none was sent"},
    )
    ask_next = fields.List(fields.Nested(AskNextSchema), required=True)
    advice = fields.List(fields.Nested(AdviceOutSchema), required=True)
    scores = fields.List(fields.Nested(ScoreOutSchema), required=True)
    provenance = fields.List(fields.Nested(ProvenanceSchema), required=True)
    trace = fields.List(fields.Nested(TraceSchema), required=True)
    disclaimer = fields.String(required=True)


class FieldErrorSchema(Schema):
    pointer = fields.String(required=True, metadata={"description": "JSON pointer into the request"})
    reason = fields.String(required=True)
    detail = fields.String(required=True)
    suggestions = fields.List(fields.String(), metadata={"description": "Nearest known codes (unknown-code)"})
    range = fields.List(fields.Float(), metadata={"description": "Valid [min, max] (out-of-range)"})
    choices = fields.List(fields.String(), metadata={"description": "Valid choices (invalid-choice)"})


class ProblemSchema(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.List(fields.Nested(FieldErrorSchema))


class ItemsSchema(Schema):
    items = fields.List(fields.Dict(), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    ruleset = fields.Nested(RulesetInfoSchema)
    detail = fields.String()
