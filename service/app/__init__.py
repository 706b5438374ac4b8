"""Assembling the app: the checks before it starts (startup.py, exposure.py) and the OpenAPI
document built from both interfaces. Used by service/__init__.py (create_app) and the CLI."""
