"""FHIR in and out, shared by both interfaces: a prefetch or a coding read into an Encounter
(mapping.py, with UCUM units and FHIR ids), an answer written as FHIR (out.py)."""
