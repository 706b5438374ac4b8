#!/usr/bin/env bash
# Create a virtual environment and install exactly the locked packages of one role.
#
#   bash scripts/setup.sh [serve|test]     (default: test)
#
# PYTHON  the interpreter (default python3): 3.11, 3.12 or 3.13
# VENV    the environment's folder (default .venv)
#
# The lock files (requirements/*.txt, made by scripts/lock.sh) pin every package by hash.
# A stamp in the venv holds a hash of pyproject.toml, the lock files and the interpreter: when
# nothing changed, pip is not run at all, so a second start is quiet and quick.
set -euo pipefail
cd "$(dirname "$0")/.."
ROLE="${1:-test}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
case "$ROLE" in serve|test) ;; *) echo "setup: role must be serve or test, not '$ROLE'" >&2; exit 2 ;; esac

if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c '' >/dev/null 2>&1; then
  echo "setup: no Python at PYTHON=$PYTHON; set PYTHON to a Python 3.11, 3.12 or 3.13 interpreter" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
  echo "setup: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
       "3.11, 3.12 or 3.13 is required; set PYTHON=..." >&2
  exit 1
fi

# The hash of everything that decides what gets installed. A test venv (test.txt is constrained
# by serve.txt, so it holds serve's pins) also satisfies serve.
stamp_of() {
  cat pyproject.toml requirements/build.txt "requirements/$1.txt" | sha256sum | cut -d' ' -f1
}
interpreter_id() {
  "$1" -c 'import sys; print(sys.implementation.cache_tag, sys.version, sys.prefix)'
}
up_to_date() {
  local role
  [ -x "$VENV/bin/python" ] || return 1
  [ "$(interpreter_id "$VENV/bin/python" 2>/dev/null)" = "$(cat "$VENV/.setup-python" 2>/dev/null)" ] || return 1
  for role in "$@"; do
    [ "$(cat "$VENV/.setup-$role" 2>/dev/null)" = "$(stamp_of "$role")" ] && return 0
  done
  return 1
}
# A venv keeps the Python it was made with: asking for another one is a mistake worth a message.
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -x "$VENV/bin/python" ] && [ "$(version_of "$VENV/bin/python")" != "$(version_of "$PYTHON")" ]; then
  echo "setup: $VENV holds Python $(version_of "$VENV/bin/python"), but PYTHON=$PYTHON is $(version_of "$PYTHON");" \
       "remove $VENV, or give this Python its own venv (VENV=.venv-$(version_of "$PYTHON"))" >&2
  exit 1
fi
# The FHIR R4 server the fetch-path tests read from (sekmet-fhir, requirements/sekmet.txt, pinned
# by hash): its own venv, because its dependencies (FastAPI, pydantic, ...) are not ours to pin
# together with the service's. Made with the system python3 whatever $PYTHON is: it is a tool.
if [ "$ROLE" = test ]; then
  SEKMET_VENV="${SEKMET_VENV:-.venv-sekmet}"
  sekmet_stamp="$(sha256sum requirements/sekmet.txt | cut -d' ' -f1)"
  if [ "$(cat "$SEKMET_VENV/.setup-sekmet" 2>/dev/null)" != "$sekmet_stamp" ]; then
    echo "setup: installing the locked FHIR test server into $SEKMET_VENV (requirements/sekmet.txt)" >&2
    [ -x "$SEKMET_VENV/bin/python" ] || python3 -m venv "$SEKMET_VENV"
    "$SEKMET_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --require-hashes \
      -r requirements/sekmet.txt 2> >(grep -v "^WARNING: Location 'file:" >&2)
    echo "$sekmet_stamp" > "$SEKMET_VENV/.setup-sekmet"
  fi
fi
if [ "$ROLE" = serve ] && up_to_date serve test; then exit 0; fi
if [ "$ROLE" = test ] && up_to_date test; then exit 0; fi

# durable-rules is built from its source package (the only form it is published in): that needs
# a C compiler and the Python headers. Checked here so that a missing one gets one clear line
# instead of a page of compiler output from pip.
if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import durable.engine' >/dev/null 2>&1; then
  include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  compiler="${CC:-$(command -v gcc || command -v cc || true)}"
  if [ -z "$compiler" ] || ! command -v "${compiler%% *}" >/dev/null 2>&1; then
    echo "setup: no C compiler found; durable-rules is built from source." \
         "On Debian/Ubuntu: apt-get install gcc python3-dev (or set CC)" >&2
    exit 1
  fi
  if ! printf '#include <Python.h>\n' | $compiler -fsyntax-only -I"$include" -x c - >/dev/null 2>&1; then
    echo "setup: the Python headers (Python.h) for $PYTHON are missing from $include; durable-rules" \
         "is built from source. On Debian/Ubuntu: apt-get install python3-dev (pyenv builds include them)" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))" >&2
  "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing the locked $ROLE packages into $VENV (requirements/$ROLE.txt)" >&2

# This machine's pip configuration lists local index folders that hold only a few packages;
# pip warns once per missing package ("Location ... is ignored"). Those lines say nothing about
# this project, so they are dropped; every other message of pip is kept.
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
}
pip_install --require-hashes --no-deps -r requirements/build.txt
# durable-rules 2.0.28 calls PyEval_CallObject, which Python 3.13 removed; its setup.py sets
# CFLAGS itself, so the define that maps it to PyObject_CallObject rides on CC.
if "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)'; then
  export CC="${CC:-gcc} -DPyEval_CallObject=PyObject_CallObject"
fi
# --no-build-isolation: durable-rules and the project build with the hash-pinned setuptools
# installed above, not with whatever an isolated build would fetch.
pip_install --require-hashes --no-deps --no-build-isolation -r "requirements/$ROLE.txt"
# The project itself is not installed: it runs from this source tree (next to rules/ and
# openapi/, which it reads), as in the container. A .pth file puts the tree on the venv's path, so
# `import service` works from any folder, without a build step or setuptools' editable-install notices.
"$VENV/bin/python" - "$PWD" <<'PY'
import pathlib, sys, sysconfig
pathlib.Path(sysconfig.get_paths()["purelib"], "legpain_cds_source.pth").write_text(sys.argv[1] + "\n")
PY
"$VENV/bin/python" -c 'import durable.engine' || {
  echo "setup: durable-rules was installed but does not import in $VENV" >&2
  exit 1
}
interpreter_id "$VENV/bin/python" > "$VENV/.setup-python"
stamp_of "$ROLE" > "$VENV/.setup-$ROLE"
