#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests, if it is not there yet. Playwright drives it
# through its executable path: `playwright install` (a browser download) does not work offline.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "setup-browser: /usr/bin/chromium is missing and this is not root; browser tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
