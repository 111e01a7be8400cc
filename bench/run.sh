#!/bin/sh
# Benchmark: the same load, in one run, on the same machine, against the
# same upstream (an nginx answering a small body):
#   direct     wrk -> upstream
#   relay      wrk -> bench/relay.c -> upstream: a bare relay built from the
#              same two libraries as sluice (libmicrohttpd, libcurl) with the
#              same options, deciding nothing: the floor under sluice's cost
#              and the ceiling of its design
#   nginx      wrk -> nginx proxy_pass (keep-alive pool) -> upstream
#   nginx-limit  the same nginx with limit_req (one zone, one key for every
#              call, a rate and burst that never trigger, like sluice's rule)
#   haproxy    wrk -> haproxy (http-reuse always) -> upstream
#   fastify    wrk -> Fastify, @fastify/http-proxy and @fastify/rate-limit
#              counting in Redis (bench/node/proxy.js, one Node process per
#              core, a limit that never triggers) -> upstream: what a Node
#              team would put in front of a provider
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
# NGINX and against the relay, the latency added over calling the upstream
# directly, and the proxy's CPU per call (perf stat -e task-clock on its
# processes for the run, divided by the calls; for the Redis targets, the
# Node one included, also redis-server's).
#
# Then, in the same run:
#   one connection   direct, relay, nginx, sluice, sluice-redis with wrk -c1: CPU
#                    per call when every call crosses the event loops alone
#   10,000 buckets   sluice and sluice-redis with a `per` rule keyed by a
#                    header: one key for every call, then 10,000 keys in
#                    turn; CPU per call for both, and the idle CPU of each
#                    sluice (ms per second) for 5 s afterwards, while the
#                    buckets are still alive
#   TLS upstream     the same upstream over HTTPS (a local CA made with
#                    openssl): nginx (proxy_ssl_session_reuse on, keep-alive)
#                    and sluice (ca_file), req/s and CPU per call
#   fixed rate       bench/openloop.c at 500 and 2,000 calls/s (64
#                    connections): p50/p99/p99.9 from each call's due time,
#                    and what each proxy adds over calling the upstream
#                    directly, for the relay, nginx, sluice and sluice-redis
#   Redis decisions  bench/redis_decide.c drives sluice's own Redis store
#                    (no HTTP) at batches of 1, 6 and 32 calls a script run,
#                    4 batches in flight, for a plain rate rule, a rule
#                    with shares and a per rule over 10,000 buckets:
#                    Redis's CPU per decision (INFO cpu), so the decisions
#                    per second one Redis core sustains, and the
#                    redis.call()s a decision costs
#
# Usage: bench/run.sh [DURATION_SECONDS] [CONNECTIONS]
#   env: SLUICE_BIN (default build/sluice), WORKERS (default: nproc),
#        BENCH_SKIP_DEPS=1 to skip installing nginx/haproxy/wrk/perf,
#        OPENLOOP_SECONDS (default: DURATION_SECONDS),
#        REDIS_DECIDE (default: redis_decide beside SLUICE_BIN),
#        RELAY (default: relay beside SLUICE_BIN; built if missing),
#        BENCH_TARGETS="relay nginx-limit fastify": run only these targets of
#          the first table and skip the other sections (to check that a
#          target works; compare figures only from whole runs).
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
RELAY=${RELAY:-$(dirname "$SLUICE_BIN")/relay}
[ -x "$RELAY" ] || { cmake -S . -B build -DSLUICE_BENCH=ON >/dev/null &&
                     cmake --build build -j "$(nproc)" --target relay >/dev/null; }
[ -d bench/node/node_modules ] ||
    { echo "bench/node/node_modules is missing: run scripts/install-deps.sh --bench" >&2; exit 1; }

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
SP=$(port); SRP=$(port); UPT=$(port); SLT=$(port); RL=$(port); FZ=$(port)
OL_DUR=${OPENLOOP_SECONDS:-$DUR}

# A local CA and a certificate for 127.0.0.1, for the TLS upstream.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$TMP/ca.key" -out "$TMP/ca.pem" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TMP/up.key" -out "$TMP/up.csr" >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1\n' > "$TMP/san.ext"
openssl x509 -req -in "$TMP/up.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" \
    -CAcreateserial -days 2 -extfile "$TMP/san.ext" -out "$TMP/up.pem" >/dev/null 2>&1
cc -O2 -o "$TMP/openloop" bench/openloop.c

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
    server {
        listen 127.0.0.1:$UPT ssl reuseport backlog=4096;
        ssl_certificate $TMP/up.pem;
        ssl_certificate_key $TMP/up.key;
        ssl_session_cache shared:up:10m;
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
    # nginx-limit: one key for every call, as sluice's one rule; limit_req
    # counts by the millisecond, so the burst lets any number of calls share
    # one millisecond, and the rate is never reached.
    limit_req_zone all zone=bench:10m rate=100000000r/s;
    upstream uptls { server 127.0.0.1:$UPT; keepalive 256; }
    server {
        listen 127.0.0.1:$NG reuseport backlog=4096;
        location /up/ {
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /limit/ {
            limit_req zone=bench burst=100000 nodelay;
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /tls/ {
            proxy_pass https://uptls/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_name 127.0.0.1;
            proxy_ssl_trusted_certificate $TMP/ca.pem;
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

# A `per` rule keyed by a header (60 s window, so the buckets outlive the
# run and the idle measurement after it).
PER='"per": "header:X-Key"'
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SP\"/" \
    -e "s/\"window\": \"1s\"}/\"window\": \"60s\", $PER}/" \
    "$TMP/sluice.json" > "$TMP/sluice-per.json"
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SRP\", \"store\": \"redis:\/\/127.0.0.1:$RD\", \"store_prefix\": \"per:\"/" \
    -e "s/\"window\": \"1s\"}/\"window\": \"60s\", $PER}/" \
    "$TMP/sluice.json" > "$TMP/sluice-redis-per.json"
# The TLS upstream.
sed -e "s/\"listen\": \"127.0.0.1:$SL\"/\"listen\": \"127.0.0.1:$SLT\"/" \
    -e "s|\"prefix\": \"/up\", \"url\": \"http://127.0.0.1:$UP\"|\"prefix\": \"/tls\", \"url\": \"https://127.0.0.1:$UPT\", \"ca_file\": \"$TMP/ca.pem\"|" \
    "$TMP/sluice.json" > "$TMP/sluice-tls.json"
# 10,000 keys in turn (each wrk thread runs its own copy), and the same
# script with one key, so that wrk's own cost is the same in both runs.
for k in 1 10000; do
    cat > "$TMP/keys$k.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-Key"] = tostring(n % $k)})
end
LUA
done

redis-server --port "$RD" --bind 127.0.0.1 --save "" --appendonly no \
    --loglevel warning >/dev/null & PIDS="$PIDS $!"; REDIS_PID=$!
nginx -c "$TMP/upstream.conf" -e "$TMP/upstream.err" & PIDS="$PIDS $!"
nginx -c "$TMP/proxy.conf" -e "$TMP/proxy.err" & PIDS="$PIDS $!"
haproxy -q -f "$TMP/haproxy.cfg" & PIDS="$PIDS $!"
HA_PID=$!
"$SLUICE_BIN" -c "$TMP/sluice.json" 2>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SL=$!
sleep 0.3  # redis-server up before the second sluice connects
"$SLUICE_BIN" -c "$TMP/sluice-redis.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SR=$!
"$SLUICE_BIN" -c "$TMP/sluice-ops.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SO=$!
"$SLUICE_BIN" -c "$TMP/sluice-redis-ops.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SOR=$!
"$SLUICE_BIN" -c "$TMP/sluice-shares.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SH=$!
"$SLUICE_BIN" -c "$TMP/sluice-redis-shares.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SRH=$!
"$SLUICE_BIN" -c "$TMP/sluice-per.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SP=$!
"$SLUICE_BIN" -c "$TMP/sluice-redis-per.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SRP=$!
"$SLUICE_BIN" -c "$TMP/sluice-tls.json" 2>>"$TMP/sluice.log" & PIDS="$PIDS $!"; P_SLT=$!
"$RELAY" "127.0.0.1:$RL" /up "http://127.0.0.1:$UP" "$WORKERS" 2>"$TMP/relay.err" & PIDS="$PIDS $!"; P_RL=$!
node bench/node/proxy.js "127.0.0.1:$FZ" /up "http://127.0.0.1:$UP" "redis://127.0.0.1:$RD" "$WORKERS" \
    2>"$TMP/fastify.err" & PIDS="$PIDS $!"; P_FZ=$!
for p in $UP $NG $HA $SL $SR $SO $SOR $SH $SRH $SP $SRP $SLT $RL $FZ; do
    i=0
    until curl -fsS -o /dev/null "http://127.0.0.1:$p/up/x" 2>/dev/null ||
          curl -fsS -o /dev/null "http://127.0.0.1:$p/tls/x" 2>/dev/null ||
          curl -fsS -o /dev/null "http://127.0.0.1:$p/x" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "port $p did not come up" >&2; cat "$TMP"/*.err "$TMP/sluice.log" >&2; exit 1; }
        sleep 0.1
    done
done

NGINX_PIDS="$(cat "$TMP/proxy.pid")"
for c in $(pgrep -P "$NGINX_PIDS"); do NGINX_PIDS="$NGINX_PIDS,$c"; done
UP_PIDS="$(cat "$TMP/upstream.pid")"
for c in $(pgrep -P "$UP_PIDS"); do UP_PIDS="$UP_PIDS,$c"; done
# The Node peer: its cluster's primary and one process per worker.
FZ_PIDS="$P_FZ"
for c in $(pgrep -P "$P_FZ"); do FZ_PIDS="$FZ_PIDS,$c"; done
HAVE_PERF=0
perf stat -e task-clock true >/dev/null 2>&1 && HAVE_PERF=1

# cpu_ms PERF_OUTPUT -> task-clock in ms, or "-"
cpu_ms() { awk -F, '/task-clock/ { print $1; found = 1 } END { if (!found) print "-" }' "$1" 2>/dev/null || echo -; }

# want NAME: whether NAME is to be run (every target, unless BENCH_TARGETS
# names some).
want() {
    [ -n "${BENCH_TARGETS:-}" ] || return 0
    case " $BENCH_TARGETS " in *" $1 "*) return 0 ;; esac
    return 1
}

# run NAME URL PIDS REDIS(0|1) CONNS [wrk options]
#   -> "NAME rps p50_ms p99_ms non2xx cpu_us_per_call redis_us_per_call"
# PIDS (comma-separated) are the proxy's processes, measured with perf stat
# for exactly the wrk run; REDIS=1 also measures redis-server.
run() {
    name=$1 url=$2 pids=$3 redis=$4 conns=$5
    shift 5
    want "$name" || return 0
    threads=2; [ "$conns" -ge 2 ] || threads=1
    wrk -t$threads -c"$conns" -d1s "$@" "$url" >/dev/null 2>&1 || true   # warm-up
    set -- wrk -t$threads -c"$conns" -d"${DUR}s" --latency "$@" "$url"
    if [ "$HAVE_PERF" = 1 ] && [ "$redis" = 1 ]; then
        set -- perf stat -x, -e task-clock -p "$REDIS_PID" -o "$TMP/$name.redis.perf" -- "$@"
    fi
    if [ "$HAVE_PERF" = 1 ]; then
        set -- perf stat -x, -e task-clock -p "$pids" -o "$TMP/$name.perf" -- "$@"
    fi
    "$@" > "$TMP/$name.out"
    awk -v name="$name" -v cpu="$(cpu_ms "$TMP/$name.perf")" \
        -v rcpu="$(if [ "$redis" = 1 ]; then cpu_ms "$TMP/$name.redis.perf"; else echo -; fi)" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /requests in/ { n = $1 }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END {
            printf "%s %.0f %.3f %.3f %s %s %s\n", name, rps, p50, p99, (bad == "" ? 0 : bad),
                   (cpu == "-" || n == 0 ? "-" : sprintf("%.1f", cpu * 1000 / n)),
                   (rcpu == "-" || n == 0 ? "-" : sprintf("%.1f", rcpu * 1000 / n))
        }
    ' "$TMP/$name.out"
}

# run_scraped NAME URL PIDS REDIS ADMIN_PORT: with the app header while
# /metrics is scraped every second (as a Prometheus server would, only faster).
run_scraped() {
    want "$1" || return 0
    ( while :; do curl -fsS -o /dev/null "http://127.0.0.1:$5/metrics" || exit 1; sleep 1; done ) &
    scraper=$!
    run "$1" "$2" "$3" "$4" "$CONNS" -H "X-Sluice-App: bench-app"
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
}

# idle NAME PIDS: CPU (ms per second) over 5 s with no calls.
idle() {
    if [ "$HAVE_PERF" = 1 ]; then
        perf stat -x, -e task-clock -p "$2" -o "$TMP/$1.idle" -- sleep 5 >/dev/null 2>&1
        echo "$1 $(cpu_ms "$TMP/$1.idle")" | awk '{ printf "%s %s\n", $1, ($2 == "-" ? "-" : sprintf("%.2f", $2 / 5)) }'
    else
        echo "$1 -"
    fi
}

# table FILE: the wrk results with ratios against nginx, the relay and
# direct.
table() {
    awk '
        function ratio(a, b) { return (b == "" || a == "-" || b == "-" || b == 0) ? "-" : sprintf("%.2f", a / b) }
        { rps[$1] = $2; p50[$1] = $3; p99[$1] = $4; bad[$1] = $5; cpu[$1] = $6; rcpu[$1] = $7; order[NR] = $1 }
        END {
            ng = ""; for (i = 1; i <= NR; i++) if (order[i] ~ /^nginx/) { ng = order[i]; break }
            rl = ""; for (i = 1; i <= NR; i++) if (order[i] ~ /^relay/) { rl = order[i]; break }
            dr = ""; for (i = 1; i <= NR; i++) if (order[i] ~ /^direct/) { dr = order[i]; break }
            printf "%-24s %10s %8s %8s %8s %8s %8s %8s %9s %9s %9s %8s\n", "target", "req/s", "p50 ms", "p99 ms",
                   "+p50 ms", "+p99 ms", "x nginx", "x relay", "cpu us/c", "x ngx cpu", "x rly cpu", "redis us"
            for (i = 1; i <= NR; i++) {
                n = order[i]
                printf "%-24s %10.0f %8.3f %8.3f %8s %8s %8s %8s %9s %9s %9s %8s%s\n", n, rps[n], p50[n], p99[n],
                       dr == "" ? "-" : sprintf("%.3f", p50[n] - p50[dr]),
                       dr == "" ? "-" : sprintf("%.3f", p99[n] - p99[dr]),
                       ng == "" ? "-" : ratio(rps[n], rps[ng]), rl == "" ? "-" : ratio(rps[n], rps[rl]),
                       cpu[n], ng == "" ? "-" : ratio(cpu[n], cpu[ng]), rl == "" ? "-" : ratio(cpu[n], cpu[rl]),
                       rcpu[n], (bad[n] > 0 ? "  (non-2xx: " bad[n] ")" : "")
            }
        }' "$1"
}

echo "sluice bench: ${DUR}s per target, $CONNS connections, 2 wrk threads, $WORKERS proxy workers, $(nproc) cores"
[ "$HAVE_PERF" = 1 ] || echo "(perf stat is not available here: no CPU figures)"
{
    run direct "http://127.0.0.1:$UP/x" "$UP_PIDS" 0 "$CONNS"
    run relay "http://127.0.0.1:$RL/up/x" "$P_RL" 0 "$CONNS"
    run nginx "http://127.0.0.1:$NG/up/x" "$NGINX_PIDS" 0 "$CONNS"
    run nginx-limit "http://127.0.0.1:$NG/limit/x" "$NGINX_PIDS" 0 "$CONNS"
    run haproxy "http://127.0.0.1:$HA/up/x" "$HA_PID" 0 "$CONNS"
    run fastify "http://127.0.0.1:$FZ/up/x" "$FZ_PIDS" 1 "$CONNS"
    run sluice "http://127.0.0.1:$SL/up/x" "$P_SL" 0 "$CONNS"
    run sluice-redis "http://127.0.0.1:$SR/up/x" "$P_SR" 1 "$CONNS"
    run_scraped sluice-ops "http://127.0.0.1:$SO/up/x" "$P_SO" 0 "$AD"
    run_scraped sluice-redis-ops "http://127.0.0.1:$SOR/up/x" "$P_SOR" 1 "$ADR"
    run sluice-shares "http://127.0.0.1:$SH/up/x" "$P_SH" 0 "$CONNS" -H "X-Sluice-App: bench-app"
    run sluice-redis-shares "http://127.0.0.1:$SRH/up/x" "$P_SRH" 1 "$CONNS" -H "X-Sluice-App: bench-app"
} > "$TMP/results"
# The figures the operator sees must match what was sent.
for a in $AD $ADR; do
    { [ "$a" = "$AD" ] && want sluice-ops; } || { [ "$a" = "$ADR" ] && want sluice-redis-ops; } || continue
    curl -fsS "http://127.0.0.1:$a/metrics" | grep -q 'sluice_app_calls_total{upstream="up",rule="never",app="bench-app"}' ||
        { echo "the app's calls are missing from /metrics on $a" >&2; exit 1; }
done
table "$TMP/results"

# sluice_log_check: warnings or errors sluice logged during the run.
sluice_log_check() {
    if grep -Eq "Z (warn|error) " "$TMP/sluice.log"; then
        echo "sluice logged warnings or errors:" >&2
        cat "$TMP/sluice.log" >&2
    fi
}
if [ -n "${BENCH_TARGETS:-}" ]; then
    echo "(BENCH_TARGETS: only $BENCH_TARGETS; the other sections are skipped)"
    sluice_log_check
    exit 0
fi

echo
echo "== one connection (wrk -t1 -c1)"
{
    run direct-c1 "http://127.0.0.1:$UP/x" "$UP_PIDS" 0 1
    run relay-c1 "http://127.0.0.1:$RL/up/x" "$P_RL" 0 1
    run nginx-c1 "http://127.0.0.1:$NG/up/x" "$NGINX_PIDS" 0 1
    run sluice-c1 "http://127.0.0.1:$SL/up/x" "$P_SL" 0 1
    run sluice-redis-c1 "http://127.0.0.1:$SR/up/x" "$P_SR" 1 1
} > "$TMP/results-c1"
table "$TMP/results-c1"

echo
echo "== a per rule: one bucket, then 10,000 buckets (keys in turn), $CONNS connections"
{
    run nginx-ref "http://127.0.0.1:$NG/up/x" "$NGINX_PIDS" 0 "$CONNS" -s "$TMP/keys1.lua"
    run sluice-1-bucket "http://127.0.0.1:$SP/up/x" "$P_SP" 0 "$CONNS" -s "$TMP/keys1.lua"
    run sluice-redis-1-bucket "http://127.0.0.1:$SRP/up/x" "$P_SRP" 1 "$CONNS" -s "$TMP/keys1.lua"
} > "$TMP/results-per"
idle sluice-1-bucket "$P_SP" > "$TMP/idle"
idle sluice-redis-1-bucket "$P_SRP" >> "$TMP/idle"
{
    run sluice-10k-buckets "http://127.0.0.1:$SP/up/x" "$P_SP" 0 "$CONNS" -s "$TMP/keys10000.lua"
    run sluice-redis-10k-buckets "http://127.0.0.1:$SRP/up/x" "$P_SRP" 1 "$CONNS" -s "$TMP/keys10000.lua"
} >> "$TMP/results-per"
idle sluice-10k-buckets "$P_SP" >> "$TMP/idle"
idle sluice-redis-10k-buckets "$P_SRP" >> "$TMP/idle"
table "$TMP/results-per"
echo "idle CPU afterwards (ms per second, buckets still alive):"
awk '{ printf "  %-26s %s\n", $1, $2 }' "$TMP/idle"

echo
echo "== TLS upstream (HTTPS to the upstream, keep-alive, sessions reused), $CONNS connections"
{
    run nginx-tls "http://127.0.0.1:$NG/tls/x" "$NGINX_PIDS" 0 "$CONNS"
    run sluice-tls "http://127.0.0.1:$SLT/tls/x" "$P_SLT" 0 "$CONNS"
} > "$TMP/results-tls"
table "$TMP/results-tls"

echo
echo "== fixed rate (bench/openloop.c, 64 connections, ${OL_DUR}s each): latency from each call's due time"
for rate in 500 2000; do
    for t in "direct $UP /x" "relay $RL /up/x" "nginx $NG /up/x" "sluice $SL /up/x" "sluice-redis $SR /up/x"; do
        set -- $t
        "$TMP/openloop" 127.0.0.1 "$2" "$3" 1 1 4 >/dev/null 2>&1 || true   # warm-up
        echo "$1 $rate $("$TMP/openloop" 127.0.0.1 "$2" "$3" "$rate" "$OL_DUR" 64)"
    done
done > "$TMP/results-ol"
awk '
    { split($0, f, " "); name = f[1]; rate = f[2]
      for (i = 3; i <= NF; i++) { split($i, kv, "="); v[name, rate, kv[1]] = kv[2] }
      if (!(rate in seen)) { seen[rate] = 1; rates[++nr] = rate }
      if (!((name) in known)) { known[name] = 1; names[++nn] = name } }
    END {
        printf "%-14s %6s %9s %9s %9s %10s %10s %11s %6s\n", "target", "rate", "p50 ms", "p99 ms", "p99.9 ms",
               "+p50 ms", "+p99 ms", "+p99.9 ms", "bad"
        for (r = 1; r <= nr; r++) for (k = 1; k <= nn; k++) {
            n = names[k]; R = rates[r]
            printf "%-14s %6s %9.3f %9.3f %9.3f %10.3f %10.3f %11.3f %6s\n", n, R,
                   v[n, R, "p50_ms"], v[n, R, "p99_ms"], v[n, R, "p999_ms"],
                   v[n, R, "p50_ms"] - v["direct", R, "p50_ms"], v[n, R, "p99_ms"] - v["direct", R, "p99_ms"],
                   v[n, R, "p999_ms"] - v["direct", R, "p999_ms"], v[n, R, "bad"]
        }
    }' "$TMP/results-ol"

REDIS_DECIDE=${REDIS_DECIDE:-$(dirname "$SLUICE_BIN")/redis_decide}
if [ -x "$REDIS_DECIDE" ]; then
    echo
    echo "== Redis decisions: one Redis core, the store's own code, ${DUR}s each, 4 batches in flight"
    printf "%-8s %6s %13s %16s %13s\n" rule batch "redis us/dec" "per core dec/s" "calls/dec"
    for rule in rate shares per; do
        for b in 1 6 32; do
            "$REDIS_DECIDE" 127.0.0.1 "$RD" "$b" "$DUR" 4 "$rule" |
                awk -v rule="$rule" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                    printf "%-8s %6s %13.1f %16.0f %13.2f\n", rule, v["batch"], v["us_per_decision"],
                           v["per_core"], v["calls_per_decision"] }'
        done
    done
else
    echo "(no $REDIS_DECIDE: Redis decisions per core not measured)" >&2
fi

sluice_log_check
