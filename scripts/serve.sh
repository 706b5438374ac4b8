#!/usr/bin/env bash
# Set up, then run the service under gunicorn on 127.0.0.1:8000 with the embedded rule set.
# Extra arguments go to `python -m service serve` (e.g. --bind 127.0.0.1:9000); or set CDS_BIND.
# PYTHON picks the interpreter and VENV the environment (default .venv), as for scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh serve  # only what serving needs: no test extras
exec "${VENV:-.venv}/bin/python" -m service serve "$@"
