#!/bin/sh
# Install what sluice needs to build and test on Debian 12 (bookworm).
# Usage: scripts/install-deps.sh [--bench]   (--bench adds nginx, haproxy, wrk, perf)
# prometheus (promtool and a server that scrapes sluice) and chromium (the
# usage page, headless) are for the integration tests.
set -eu
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS="build-essential cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev
      libjansson-dev libhiredis-dev libcmocka-dev redis-server python3
      python3-pytest python3-yaml curl ca-certificates openssl clang prometheus
      chromium"
if [ "${1:-}" = "--bench" ]; then
    PKGS="$PKGS nginx-light haproxy wrk linux-perf"
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PKGS
