"""Checks over the knowledge, run through the reasoning they exercise: the lint, the clinical
cases and their scores, and the self-check at every start."""
