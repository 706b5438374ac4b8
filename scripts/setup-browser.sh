#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_ui_browser.py), which Playwright drives
# through its executable path: `playwright install` (a browser download) does not work offline.
# Quiet and quick when it is already installed. Installing needs root and apt-get (as in CI on a
# fresh machine); elsewhere, or when apt-get fails, it says what is missing and the browser tests
# skip: it never stops the test run.
set -uo pipefail
cd "$(dirname "$0")/.."
CHROMIUM="${CDS_CHROMIUM:-/usr/bin/chromium}"  # another path only to exercise this script in tests

# axe-core for the accessibility check, from the npm registry, exactly as locked (version and
# integrity hash in tests/a11y/package-lock.json). Without node/npm or the registry, the
# accessibility tests skip and say why; like the browser, it never stops the test run.
install_axe() {
  local dir=tests/a11y
  [ -f "$dir/node_modules/axe-core/axe.min.js" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup-browser: npm missing; the accessibility check (axe-core) will be skipped" >&2
    return 0
  fi
  if ! npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null; then
    echo "setup-browser: npm ci could not install axe-core; the accessibility check will be skipped" >&2
  fi
}
[ -n "${CDS_CHROMIUM:-}" ] || install_axe

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-browser: $CHROMIUM missing; as root on Debian: apt-get install --no-install-recommends chromium" >&2
  echo "setup-browser: the browser tests will be skipped" >&2
  exit 0
fi
echo "setup-browser: installing chromium (for the browser tests) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  echo "setup-browser: apt-get could not install chromium; the browser tests will be skipped" >&2
  exit 0
fi
