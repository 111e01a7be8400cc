#!/bin/sh
# Container entry point for sluice.
#   (no arguments)      validate $SLUICE_CONFIG, then run sluice on it
#   --check | -V | ...  pass sluice options through (e.g. --check)
#   any other command   run it instead (e.g. "sh" for debugging)
set -eu
CONFIG=${SLUICE_CONFIG:-/etc/sluice/sluice.json}
SLUICE=${SLUICE_BIN:-/usr/local/bin/sluice}

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
if [ ! -r "$CONFIG" ]; then
    echo "sluice: no readable configuration at $CONFIG" >&2
    echo "sluice: mount one, e.g. -v \"\$PWD/sluice.json:$CONFIG:ro\", or set SLUICE_CONFIG" >&2
    exit 78
fi
exec "$SLUICE" -c "$CONFIG" "$@"
