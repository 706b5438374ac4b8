"""The native JSON API under /v1, and /openapi.json."""
