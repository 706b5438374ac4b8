#!/usr/bin/env bash
# Set up, then run the whole test suite: lint of code and rules, clinical cases, pytest
# (unit, API, engine hazards, OpenAPI, real gunicorn integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-system.sh  # Prometheus server and promtool, if missing
bash scripts/setup-browser.sh
.venv/bin/ruff check service tests bench deploy
.venv/bin/python -m service lint
.venv/bin/python -m service cases --min-blind-exact 0.9  # issue 12: the blind folder gates at 90% exact
exec .venv/bin/python -m pytest "$@"
