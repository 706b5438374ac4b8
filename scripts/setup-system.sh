#!/usr/bin/env bash
# System tools the test suite uses beyond Python: the Prometheus server and promtool (Debian's
# `prometheus` package) for the metrics integration test and the alert-rule tests.
# Quiet and quick when both are already installed. Installing needs root and apt-get (as in CI
# on a fresh machine); elsewhere, or when apt-get fails, it says what is missing and the tests
# that need it skip: it never stops the test run.
set -uo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-system: prometheus/promtool missing; as root on Debian: apt-get install --no-install-recommends prometheus" >&2
  echo "setup-system: the tests that need them will be skipped" >&2
  exit 0
fi
echo "setup-system: installing prometheus (server and promtool) with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
  echo "setup-system: apt-get could not install prometheus; the tests that need it will be skipped" >&2
  exit 0
fi
# The tests run the server binary themselves on a free port; the packaged service is not wanted.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
