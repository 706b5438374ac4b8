"""The knowledge: the rule set as data. The model (model.py), its loader from rules/*.yaml, the
catalogues the API lists, the presentations and the value sets. Imports nothing above it."""
