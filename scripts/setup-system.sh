#!/usr/bin/env bash
# System tools the test suite uses beyond Python, all Debian packages:
# - `prometheus` (server and promtool): the metrics integration test and the alert-rule tests;
# - `nginx`: the buffering sidecar (deploy/nginx/nginx.conf) in front of real gunicorn in the
#   slow-client test;
# - `redis-server`: the shared JWT replay store across two gunicorn instances.
# Quiet and quick when all are already installed. Installing needs root and apt-get (as in CI on
# a fresh machine); elsewhere, or when apt-get fails, it says what is missing and the tests that
# need it skip: it never stops the test run.
set -uo pipefail
missing=()
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
# nginx lives in /usr/sbin, which a non-login PATH may lack: look there too.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
if [ "${#missing[@]}" = "0" ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: missing ${missing[*]}; as root on Debian: apt-get install --no-install-recommends ${missing[*]}" >&2
  echo "setup-system: the tests that need them will be skipped" >&2
  exit 0
fi
echo "setup-system: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# The tests run each server binary themselves on a free loopback port; the packaged services are
# not wanted. policy-rc.d stops the packages' maintainer scripts from starting them (where there is
# no systemd they would otherwise start under sysvinit and hold ports 80 / 6379).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "setup-system: apt-get could not install ${missing[*]}; the tests that need them will be skipped" >&2
  exit 0
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus nginx redis-server >/dev/null 2>&1 || true
fi
exit 0
