#!/usr/bin/env bash
# Set up, then run the whole test suite: lint of code and rules, clinical cases, pytest
# (unit, API, engine hazards, OpenAPI, real gunicorn integration) on the default Python (.venv),
# then the fast suite (-m "not slow", which includes the engine hazard regression tests) on each
# other supported Python found on this machine, each in its own venv (.venv-3.12, .venv-3.13).
#
# Arguments go to pytest on the default Python. The other versions run only when no arguments
# are given, or when CDS_TEST_PYTHONS names them (e.g. CDS_TEST_PYTHONS="3.13"; "" for none).
# A version that is not installed is reported and skipped, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ $# -eq 0 ]; then
  OTHERS="${CDS_TEST_PYTHONS-3.11 3.12 3.13}"
else
  OTHERS="${CDS_TEST_PYTHONS-}"
fi

bash scripts/setup.sh test
bash scripts/setup-system.sh  # Prometheus server and promtool, if missing
bash scripts/setup-browser.sh  # Chromium for the browser tests, if missing
.venv/bin/ruff check service tests bench deploy
.venv/bin/lint-imports --no-cache  # the layers of service/ (pyproject [tool.importlinter]; also tests/test_layers.py)
.venv/bin/python -m service lint
.venv/bin/python -m service cases --min-blind-exact 0.9  # issue 12: the blind folder gates at 90% exact

default_version="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
summary=()
status=0
start=$SECONDS
.venv/bin/python -m pytest "$@" || status=$?
result() { [ "$1" -eq 0 ] && echo passed || echo "FAILED (exit $1)"; }
summary+=("Python $(.venv/bin/python -c 'import platform; print(platform.python_version())') (.venv): whole suite $(result $status) in $((SECONDS - start)) s")

# An interpreter for X.Y: pythonX.Y on PATH if it runs (a pyenv shim for a version that is not
# selected does not), else pyenv's own copy.
find_python() {
  local v="$1" candidate
  for candidate in "$(command -v "python$v" 2>/dev/null || true)" \
                   "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$v"*/bin/"python$v"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c '' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# The other versions' fast suites start real processes rarely and never the timing-sensitive
# ones (those are "slow"), so they run side by side, after the whole suite, each writing its
# own log: on 2 cores that keeps the whole run near 9 minutes instead of 11.
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
pids=()
versions=()
for v in $OTHERS; do
  [ "$v" = "$default_version" ] && continue
  if ! interpreter="$(find_python "$v")"; then
    summary+=("Python $v: not installed on this machine; skipped (not a failure)")
    continue
  fi
  echo "test: the fast suite on Python $v ($interpreter) in .venv-$v" >&2
  if ! VENV=".venv-$v" PYTHON="$interpreter" bash scripts/setup.sh test; then
    summary+=("Python $v (.venv-$v): set-up FAILED")
    status=1
    continue
  fi
  ( start=$SECONDS; rc=0
    ".venv-$v/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider >"$logs/$v.log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - start))" >"$logs/$v.rc" ) &
  pids+=("$!")
  versions+=("$v")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || true
  v="${versions[$i]}"
  echo "test: the fast suite on Python $v" >&2
  cat "$logs/$v.log"
  read -r rc took <"$logs/$v.rc"
  [ "$rc" -eq 0 ] || status=1
  full="$(".venv-$v/bin/python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "$v")"
  summary+=("Python $full (.venv-$v): fast suite $(result "$rc") in $took s")
done

echo
echo "test: per Python version"
for line in "${summary[@]}"; do echo "  $line"; done
exit $status
