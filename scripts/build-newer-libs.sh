#!/bin/sh
# Build newer libcurl and libmicrohttpd than Debian 12 ships (7.88 / 0.9.75)
# into their own prefix, so that sluice can be built against them and the two
# builds compared.  Nothing is installed outside PREFIX (apart from the build
# tools below) and nothing is written into the source trees given.
#
# Usage:
#   scripts/build-newer-libs.sh PREFIX CURL_SRC MHD_SRC
#
# CURL_SRC and MHD_SRC are each either
#   - a source directory (an unpacked release tarball or a checkout), or
#   - GITDIR@TAG: a (bare) git repository and a tag/commit in it, exported
#     with `git archive`.
# e.g.
#   scripts/build-newer-libs.sh /opt/sluice-newlibs \
#       /path/to/curl.git@curl-8_19_0 /path/to/libmicrohttpd.git@v1.0.1
#
# What it does:
#   1. as root, apt-get installs the build tools it needs if any is missing
#      (autoconf automake libtool pkg-config libssl-dev zlib1g-dev cmake make
#      gcc, and git for GITDIR@TAG); not as root, it lists what is missing.
#   2. libcurl with CMake: shared, Release with -O2 -g, OpenSSL, zlib, the
#      threaded resolver; HTTP(S) only, no nghttp2, brotli, zstd, libpsl,
#      libidn2, libssh(2), LDAP; no curl tool, docs, tests or examples.
#      CA bundle/path are Debian's (/etc/ssl/certs...), as in Debian's libcurl.
#   3. libmicrohttpd with autotools: shared only, -O2 -g, no asserts, no
#      HTTPS (sluice's front end is plain HTTP), no docs, examples or tools.
#   4. writes PREFIX/BUILD-INFO (sources, versions, options) and prints how
#      to build sluice against PREFIX.
#
# Building sluice against PREFIX (from the repository's top directory, into a
# fresh build directory):
#   cmake -S . -B build-newlibs -DCMAKE_PREFIX_PATH=PREFIX \
#         -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build-newlibs -j2
# CMAKE_PREFIX_PATH is enough: pkg_check_modules searches PREFIX/lib/pkgconfig
# first (PKG_CONFIG_USE_CMAKE_PREFIX_PATH defaults to ON for
# cmake_minimum_required >= 3.1), links PREFIX's libraries by full path, and
# CMake's build RPATH (RUNPATH) makes the built binary load them without
# LD_LIBRARY_PATH.  `cmake --install` strips that RUNPATH, and an installed
# copy then silently loads Debian's libcurl.so.4 / libmicrohttpd.so.12 (same
# sonames): run it with LD_LIBRARY_PATH=PREFIX/lib, or configure with
# -DCMAKE_INSTALL_RPATH=PREFIX/lib.  Check with ldd.
#
# Environment: JOBS (parallel jobs, default: nproc), WORKDIR (where to build,
# default: a fresh directory under /tmp, removed at the end unless KEEP=1).
set -eu

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -eq 3 ] || usage
case "$1" in /*) ;; *) echo "PREFIX must be an absolute path: $1" >&2; exit 2 ;; esac
PREFIX=$1
CURL_SRC=$2
MHD_SRC=$3
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

log() { printf '\n=== %s\n' "$*"; }

# --- 1. build tools --------------------------------------------------------
need="autoconf automake libtool pkg-config libssl-dev zlib1g-dev cmake make gcc libc6-dev"
case "$CURL_SRC$MHD_SRC" in *@*) need="$need git" ;; esac
missing=""
for p in $need; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        log "installing:$missing"
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    else
        echo "missing build tools:$missing" >&2
        echo "run as root, or: sudo apt-get install$missing" >&2
        exit 1
    fi
fi

# --- sources ---------------------------------------------------------------
if [ -n "${WORKDIR:-}" ]; then
    mkdir -p "$WORKDIR"
else
    WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-newlibs.XXXXXX")
    [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORKDIR"' EXIT
fi
WORKDIR=$(cd "$WORKDIR" && pwd)

# get_src SPEC DEST: DEST becomes a fresh copy of the tree SPEC names.
# Prints a one-line description of where it came from.
get_src() {
    rm -rf "$2"
    mkdir -p "$2"
    if [ -d "$1" ]; then
        (cd "$1" && tar -cf - .) | tar -xf - -C "$2"
        echo "$1"
        return
    fi
    case "$1" in
        *@*) gitdir=${1%@*}; rev=${1##*@} ;;
        *) echo "not a directory nor GITDIR@TAG: $1" >&2; exit 2 ;;
    esac
    commit=$(git --git-dir="$gitdir" rev-parse --verify -q "$rev^{commit}") || {
        echo "no tag or commit '$rev' in $gitdir" >&2; exit 2; }
    git --git-dir="$gitdir" archive "$commit" | tar -xf - -C "$2"
    echo "$gitdir $rev ($commit)"
}

log "sources into $WORKDIR"
curl_from=$(get_src "$CURL_SRC" "$WORKDIR/curl-src")
mhd_from=$(get_src "$MHD_SRC" "$WORKDIR/mhd-src")
# A git tag's curlver.h says "X.Y.Z-DEV"; curl's release tarballs drop the
# suffix (scripts/maketgz).  Do the same so curl_version() reads as a release.
case "$CURL_SRC" in
    *@*) [ -d "$CURL_SRC" ] || sed -i 's/^\(#define LIBCURL_VERSION "[0-9.]*\)-DEV"/\1"/' \
             "$WORKDIR/curl-src/include/curl/curlver.h" ;;
esac
echo "curl: $curl_from"
echo "mhd:  $mhd_from"
mkdir -p "$PREFIX"

# --- 2. libcurl ------------------------------------------------------------
CURL_CFLAGS="-O2 -g -DNDEBUG"
CURL_OPTS="-DCMAKE_BUILD_TYPE=Release
 -DCMAKE_INSTALL_PREFIX=$PREFIX -DCMAKE_INSTALL_LIBDIR=lib
 -DBUILD_SHARED_LIBS=ON -DBUILD_STATIC_LIBS=OFF -DBUILD_CURL_EXE=OFF
 -DBUILD_TESTING=OFF -DBUILD_EXAMPLES=OFF -DBUILD_LIBCURL_DOCS=OFF
 -DBUILD_MISC_DOCS=OFF -DENABLE_CURL_MANUAL=OFF
 -DCURL_USE_OPENSSL=ON -DCURL_ZLIB=ON -DCURL_BROTLI=OFF -DCURL_ZSTD=OFF
 -DUSE_NGHTTP2=OFF -DUSE_LIBIDN2=OFF -DCURL_USE_LIBPSL=OFF
 -DCURL_USE_LIBSSH2=OFF -DCURL_USE_LIBSSH=OFF -DCURL_USE_GSSAPI=OFF
 -DCURL_DISABLE_LDAP=ON -DCURL_DISABLE_LDAPS=ON -DHTTP_ONLY=ON
 -DENABLE_THREADED_RESOLVER=ON
 -DCURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt -DCURL_CA_PATH=/etc/ssl/certs"
log "libcurl: configure, build, install"
t0=$(date +%s)
# shellcheck disable=SC2086
cmake -S "$WORKDIR/curl-src" -B "$WORKDIR/curl-build" $CURL_OPTS \
      -DCMAKE_C_FLAGS_RELEASE="$CURL_CFLAGS"
cmake --build "$WORKDIR/curl-build" -j "$JOBS"
cmake --install "$WORKDIR/curl-build"
t1=$(date +%s)
curl_secs=$((t1 - t0))

# --- 3. libmicrohttpd ------------------------------------------------------
MHD_OPTS="--prefix=$PREFIX --libdir=$PREFIX/lib --enable-shared --disable-static
 --disable-doc --disable-examples --disable-tools --disable-curl
 --enable-https=no --without-gnutls --disable-asserts"
log "libmicrohttpd: bootstrap, configure, build, install"
t0=$(date +%s)
if [ ! -x "$WORKDIR/mhd-src/configure" ]; then
    # Not ./autogen.sh: its bootstrap reports failures but exits 0.
    (cd "$WORKDIR/mhd-src" && autoreconf -fi)
fi
mkdir -p "$WORKDIR/mhd-build"
# shellcheck disable=SC2086
(cd "$WORKDIR/mhd-build" && "$WORKDIR/mhd-src/configure" $MHD_OPTS CFLAGS="-O2 -g")
make -C "$WORKDIR/mhd-build" -j "$JOBS"
make -C "$WORKDIR/mhd-build" install
rm -f "$PREFIX"/lib/libmicrohttpd.la
t1=$(date +%s)
mhd_secs=$((t1 - t0))

# --- 4. record and tell ----------------------------------------------------
curl_ver=$(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion libcurl)
mhd_ver=$(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --modversion libmicrohttpd)
{
    # shellcheck source=/dev/null
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(cc --version | head -n1)"
    echo "libcurl $curl_ver from $curl_from"
    # shellcheck disable=SC2086
    echo "  cmake" $CURL_OPTS "-DCMAKE_C_FLAGS_RELEASE='$CURL_CFLAGS'"
    echo "libmicrohttpd $mhd_ver from $mhd_from"
    # shellcheck disable=SC2086
    echo "  configure" $MHD_OPTS "CFLAGS='-O2 -g'"
} > "$PREFIX/BUILD-INFO"

log "done: libcurl $curl_ver (${curl_secs}s), libmicrohttpd $mhd_ver (${mhd_secs}s) in $PREFIX"
cat <<EOF

Build sluice against them (from sluice's top directory, a fresh build dir):
  cmake -S . -B build-newlibs -DCMAKE_PREFIX_PATH=$PREFIX -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build-newlibs -j2
No PKG_CONFIG_PATH or LD_LIBRARY_PATH is needed for the binary in the build
dir (pkg-config looks in $PREFIX/lib/pkgconfig first; the build RUNPATH
points at $PREFIX/lib).  Check with:
  ldd build-newlibs/sluice | grep -E 'curl|microhttpd'
  build-newlibs/sluice --version
An installed copy (cmake --install) has no RUNPATH and would load Debian's
libraries (same sonames): run it with LD_LIBRARY_PATH=$PREFIX/lib, or add
-DCMAKE_INSTALL_RPATH=$PREFIX/lib to the cmake command.
EOF
