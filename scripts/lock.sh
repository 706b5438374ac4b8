#!/usr/bin/env bash
# Regenerate the lock files under requirements/ after a change to pyproject.toml's dependencies.
# One universal lock per role (markers cover Python 3.11 to 3.13), every file pinned by hash:
#   requirements/build.txt  setuptools, used to build durable-rules and the editable install
#   requirements/serve.txt  what `scripts/serve.sh` and the container install
#   requirements/test.txt   serve + the test extras; constrained by serve.txt, so every package
#                           the two share has the same pin (a test venv serves exactly as a serve one)
#   requirements/sekmet.txt the FHIR R4 server the fetch-path tests run (its own venv)
# Needs network access to PyPI. uv is installed, pinned, into a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install --quiet "uv==$UV_VERSION" 2> >(grep -v "^WARNING: Location 'file:" >&2)
uv=("$tools/venv/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes
    --no-header --annotation-style line)
"${uv[@]}" requirements/build.in -o requirements/build.txt
"${uv[@]}" pyproject.toml -o requirements/serve.txt
"${uv[@]}" pyproject.toml --extra test -c requirements/serve.txt -o requirements/test.txt
# The FHIR server of the fetch-path tests, in a venv of its own (scripts/setup.sh test).
"${uv[@]}" requirements/sekmet.in -o requirements/sekmet.txt
echo "lock: requirements/{build,serve,test,sekmet}.txt written with uv $UV_VERSION"
