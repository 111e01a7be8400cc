#!/bin/sh
# Benchmark: the same load, in one run, on the same machine, against the
# same upstream (an nginx answering a small body):
#   direct     wrk -> upstream
#   nginx      wrk -> nginx proxy_pass (keep-alive pool) -> upstream
#   haproxy    wrk -> haproxy (http-reuse always) -> upstream
#   sluice     wrk -> sluice, memory store, a rule matching every call
#              that never triggers -> upstream
#   sluice-redis  the same with the Redis store (a local redis-server),
#              so every call costs one Lua script run in Redis
#   sluice-ops, sluice-redis-ops  the same two with the operator view on:
#              every call names its app (X-Sluice-App), the admin listener
#              runs, and /metrics is scraped every second during the run
#   sluice-shares, sluice-redis-shares  the first two with the rule split
#              between apps ("apps": a max for the caller's app, a
#              reservation for another): every decision also checks the
#              shares, still one store round trip
# Prints requests/s and p50/p99 latency for each, the ratios against
# NGINX, and the latency added over calling the upstream directly.
#
# Usage: bench/run.sh [DURATION_SECONDS] [CONNECTIONS]
#   env: SLUICE_BIN (default build/sluice), WORKERS (default: nproc),
#        BENCH_SKIP_DEPS=1 to skip installing nginx/haproxy/wrk.
set -eu
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-32}
WORKERS=${WORKERS:-$(nproc)}
SLUICE_BIN=${SLUICE_BIN:-build/sluice}
if [ "${BENCH_SKIP_DEPS:-0}" != 1 ]; then
    scripts/install-deps.sh --bench >/dev/null
fi
[ -x "$SLUICE_BIN" ] || { cmake -S . -B build >/dev/null && cmake --build build -j "$(nproc)" >/dev/null; }

TMP=$(mktemp -d)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NG=$(port); HA=$(port); SL=$(port); SR=$(port); RD=$(port)
SO=$(port); SOR=$(port); AD=$(port); ADR=$(port); SH=$(port); SRH=$(port)

cat > "$TMP/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/upstream.pid;
error_log $TMP/upstream.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP reuseport backlog=4096;
        location / { return 200 "hello from the upstream\n"; }
    }
}
CONF
cat > "$TMP/proxy.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $TMP/proxy.pid;
error_log $TMP/proxy.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$UP; keepalive 256; }
    server {
        listen 127.0.0.1:$NG reuseport backlog=4096;
        location /up/ {
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
cat > "$TMP/haproxy.cfg" <<CONF
global
    nbthread $WORKERS
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HA
    http-request replace-path /up/(.*) /\1
    default_backend be
backend be
    server up 127.0.0.1:$UP
CONF
cat > "$TMP/sluice.json" <<CONF
{
  "listen": "127.0.0.1:$SL",
  "workers": $WORKERS,
  "access_log": false,
  "upstreams": [{
    "name": "up", "prefix": "/up", "url": "http://127.0.0.1:$UP",
    "rules": [{"name": "never", "limit": 100000000, "window": "1s"}]
  }]
}
CONF

sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SR\", \"store\": \"redis:\/\/127.0.0.1:$RD\"/" \
    "$TMP/sluice.json" > "$TMP/sluice-redis.json"

# The operator view on: app identity, the admin listener (scraped below).
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SO\", \"app\": \"header:X-Sluice-App\", \"admin\": {\"listen\": \"127.0.0.1:$AD\"}/" \
    "$TMP/sluice.json" > "$TMP/sluice-ops.json"
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SOR\", \"store\": \"redis:\/\/127.0.0.1:$RD\", \"store_prefix\": \"ops:\", \"app\": \"header:X-Sluice-App\", \"admin\": {\"listen\": \"127.0.0.1:$ADR\"}/" \
    "$TMP/sluice.json" > "$TMP/sluice-redis-ops.json"

# Shares on the rule: the calling app may use at most half, another keeps
# a tenth (never triggered at this rate, but checked on every call).
SHARES='"apps": {"bench-app": {"max": 0.5}, "ui": {"reserve": 0.1}}'
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SH\", \"app\": \"header:X-Sluice-App\"/" \
    -e "s/\"window\": \"1s\"}/\"window\": \"1s\", $SHARES}/" \
    "$TMP/sluice.json" > "$TMP/sluice-shares.json"
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SRH\", \"store\": \"redis:\/\/127.0.0.1:$RD\", \"store_prefix\": \"sh:\", \"app\": \"header:X-Sluice-App\"/" \
    -e "s/\"window\": \"1s\"}/\"window\": \"1s\", $SHARES}/" \
    "$TMP/sluice.json" > "$TMP/sluice-redis-shares.json"

redis-server --port "$RD" --bind 127.0.0.1 --save "" --appendonly no \
    --loglevel warning >/dev/null & PIDS="$PIDS $!"
nginx -c "$TMP/upstream.conf" -e "$TMP/upstream.err" & PIDS="$PIDS $!"
nginx -c "$TMP/proxy.conf" -e "$TMP/proxy.err" & PIDS="$PIDS $!"
haproxy -q -f "$TMP/haproxy.cfg" & PIDS="$PIDS $!"
"$SLUICE_BIN" -c "$TMP/sluice.json" 2>"$TMP/sluice.log" & PIDS="$PIDS $!"
sleep 0.3  # redis-server up before the second sluice connects
"$SLUICE_BIN" -c "$TMP/sluice-redis.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"
"$SLUICE_BIN" -c "$TMP/sluice-ops.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"
"$SLUICE_BIN" -c "$TMP/sluice-redis-ops.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"
"$SLUICE_BIN" -c "$TMP/sluice-shares.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"
"$SLUICE_BIN" -c "$TMP/sluice-redis-shares.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"
for p in $UP $NG $HA $SL $SR $SO $SOR $SH $SRH; do
    i=0
    until curl -fsS -o /dev/null "http://127.0.0.1:$p/up/x" 2>/dev/null ||
          curl -fsS -o /dev/null "http://127.0.0.1:$p/x" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "port $p did not come up" >&2; cat "$TMP"/*.err "$TMP/sluice.log" >&2; exit 1; }
        sleep 0.1
    done
done

# run NAME URL [wrk options] -> "NAME rps p50_ms p99_ms non2xx"
run() {
    name=$1 url=$2
    shift 2
    wrk -t2 -c"$CONNS" -d1s "$@" "$url" >/dev/null 2>&1 || true   # warm-up
    wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$@" "$url" > "$TMP/$name.out"
    awk -v name="$name" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%s %.0f %.3f %.3f %s\n", name, rps, p50, p99, (bad == "" ? 0 : bad) }
    ' "$TMP/$name.out"
}

# run_scraped NAME URL ADMIN_PORT: run with the app header while /metrics
# is scraped every second (as a Prometheus server would, only faster).
run_scraped() {
    ( while :; do curl -fsS -o /dev/null "http://127.0.0.1:$3/metrics" || exit 1; sleep 1; done ) &
    scraper=$!
    run "$1" "$2" -H "X-Sluice-App: bench-app"
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
}

echo "sluice bench: ${DUR}s per target, $CONNS connections, 2 wrk threads, $WORKERS proxy workers, $(nproc) cores"
{
    run direct "http://127.0.0.1:$UP/x"
    run nginx "http://127.0.0.1:$NG/up/x"
    run haproxy "http://127.0.0.1:$HA/up/x"
    run sluice "http://127.0.0.1:$SL/up/x"
    run sluice-redis "http://127.0.0.1:$SR/up/x"
    run_scraped sluice-ops "http://127.0.0.1:$SO/up/x" "$AD"
    run_scraped sluice-redis-ops "http://127.0.0.1:$SOR/up/x" "$ADR"
    run sluice-shares "http://127.0.0.1:$SH/up/x" -H "X-Sluice-App: bench-app"
    run sluice-redis-shares "http://127.0.0.1:$SRH/up/x" -H "X-Sluice-App: bench-app"
} > "$TMP/results"
# The figures the operator sees must match what was sent.
for a in $AD $ADR; do
    curl -fsS "http://127.0.0.1:$a/metrics" | grep -q 'sluice_app_calls_total{upstream="up",rule="never",app="bench-app"}' ||
        { echo "the app's calls are missing from /metrics on $a" >&2; exit 1; }
done
awk '
    { rps[$1] = $2; p50[$1] = $3; p99[$1] = $4; bad[$1] = $5; order[NR] = $1 }
    END {
        printf "%-16s %12s %10s %10s %12s %12s %8s %8s\n", "target", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "x nginx", "non-2xx"
        for (i = 1; i <= NR; i++) {
            n = order[i]
            printf "%-16s %12.0f %10.3f %10.3f %12.3f %12.3f %8.2f %8s\n", n, rps[n], p50[n], p99[n],
                   p50[n] - p50["direct"], p99[n] - p99["direct"], rps[n] / rps["nginx"], bad[n]
        }
    }' "$TMP/results"
if grep -Eq "Z (warn|error) " "$TMP/sluice.log"; then
    echo "sluice logged warnings or errors:" >&2
    cat "$TMP/sluice.log" >&2
fi
