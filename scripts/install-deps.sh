#!/bin/sh
# Install what sluice needs on Debian 12 (bookworm).
#   scripts/install-deps.sh           building and running sluice
#   scripts/install-deps.sh --test    ... and the test suite (tests/run uses it):
#                                     redis-server, redis-sentinel, cmocka, pytest, clang (libFuzzer),
#                                     Prometheus, Chromium, stress-ng, podman,
#                                     lintian, systemd-analyze, docker-compose
#   scripts/install-deps.sh --bench   ... and the benchmark (nginx, haproxy, wrk, perf,
#                                     Node.js and bench/node's locked packages)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS="build-essential cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev
      libjansson-dev libhiredis-dev libssl-dev ca-certificates"
for arg in "$@"; do
    case "$arg" in
    --test)
        PKGS="$PKGS libcmocka-dev redis-server redis-sentinel python3 python3-pytest python3-pytest-xdist python3-yaml python3-cryptography
              curl openssl clang prometheus chromium stress-ng
              podman runc mmdebstrap uidmap
              dpkg-dev lintian man-db systemd docker-compose" ;;
    --bench)
        PKGS="$PKGS redis-server python3 curl nginx-light haproxy wrk linux-perf nodejs"
        BENCH=1 ;;
    *)
        echo "usage: scripts/install-deps.sh [--test] [--bench]" >&2
        exit 2 ;;
    esac
done
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PKGS
if [ "$BENCH" = 1 ]; then
    # Debian's nodejs leaves npm to a package of its own; a Node.js from
    # elsewhere may bring its own npm, which that package would conflict with.
    command -v npm >/dev/null 2>&1 ||
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
    # The Node peer's packages, exactly as locked (bench/node/package-lock.json).
    (cd "$ROOT/bench/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
