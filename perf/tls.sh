#!/usr/bin/env bash
# TLS through one proxy core, Ringside and nginx side by side in one run: the proxy pinned
# to CPU 0 with one worker, the load generator and the upstream (nginx serving 1 KB) on
# CPU 1, the same ECDSA P-256 certificate for both. Proxy CPU is utime+stime from /proc
# around each run; the table reports medians of RUNS runs.
#   tls13-full:    openssl s_time -new -www /1k, TLS 1.3 (X25519): a full handshake and one
#                  HTTP/1.0 request per connection (so the handshake completes on both sides)
#   tls12-full:    the same with TLS 1.2 (ECDHE-ECDSA-AES128-GCM-SHA256)
#   tls12-resumed: openssl s_time -reuse, TLS 1.2: every connection after the first resumes
#   keep-alive https:        wrk -c 16 over TLS 1.3 to /1k, proxied to the keep-alive upstream
# Usage: perf/tls.sh [seconds per run, default 5] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RUNS=${2:-3}
. perf/lib.sh
need wrk:wrk nginx:nginx-light openssl:openssl taskset:util-linux
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
BIN=target/release/ringside
TMP=$(mktemp -d)
chmod 755 "$TMP"
UP=15310 PROXY=15311 ADMIN=15312
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$TMP/www/1k"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.local \
  -addext subjectAltName=DNS:bench.local -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1

nginx_conf "$TMP/backend.conf" backend "    server { listen 127.0.0.1:$UP; root $TMP/www; }"
nginx_conf "$TMP/nginx.conf" nginx "    upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PROXY ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
cat >"$TMP/ringside.yaml" <<CONF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $ADMIN}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $PROXY}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: up}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{certificate_chain: {filename: $TMP/cert.pem}, private_key: {filename: $TMP/key.pem}}]
  clusters:
  - name: up
    load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP}}}}]}]}
CONF

taskset -c 1 nginx -c "$TMP/backend.conf" -p "$TMP" &
pids+=($!)
sleep 0.5

# One run of a case; prints "operations seconds" (operations: handshakes or requests).
run_case() {
  local c=$1
  case $c in
    tls13-full) taskset -c 1 openssl s_time -connect 127.0.0.1:$PROXY -www /1k -new -tls1_3 -time "$SECS" 2>/dev/null |
      awk '/connections in .* real seconds/ {print $1, $4; exit}' ;;
    tls12-full) taskset -c 1 openssl s_time -connect 127.0.0.1:$PROXY -www /1k -new -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -time "$SECS" 2>/dev/null |
      awk '/connections in .* real seconds/ {print $1, $4; exit}' ;;
    tls12-resumed) taskset -c 1 openssl s_time -connect 127.0.0.1:$PROXY -www /1k -reuse -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -time "$SECS" 2>/dev/null |
      awk '/connections in .* real seconds/ {print $1, $4; exit}' ;;
    keepalive) taskset -c 1 wrk -t1 -c16 -d"${SECS}s" "https://127.0.0.1:$PROXY/1k" 2>/dev/null |
      awk '/requests in/ {n=$1} /^Requests\/sec/ {print n, n/$2; exit}' ;;
  esac
}
CASES=(tls13-full tls12-full tls12-resumed keepalive)
declare -A RATE CPS
# measure PROXY "PIDS" CASE: medians of RUNS runs of operations/s and per proxy CPU-second.
measure() {
  local name=$1 pp=$2 c=$3 t0 t1 out rates=() cpus=()
  for _ in $(seq "$RUNS"); do
    t0=$(ticks $pp)
    out=$(run_case "$c")
    t1=$(ticks $pp)
    rates+=("$(echo "$out" | awk '{ if ($2 > 0) printf "%.0f", $1 / $2; else print 0 }')")
    cpus+=("$(echo "$out" | awk -v t=$((t1 - t0)) -v hz="$HZ" '{ if (t > 0) printf "%.0f", $1 / (t / hz); else print 0 }')")
  done
  RATE[$name.$c]=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  CPS[$name.$c]=$(printf '%s\n' "${cpus[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
}

REUSED=-
for proxy in ringside nginx; do
  if [ $proxy = ringside ]; then
    taskset -c 0 "$BIN" -c "$TMP/ringside.yaml" --concurrency 1 -l warn >"$TMP/ringside.log" 2>&1 &
  else
    taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" >"$TMP/nginx.log" 2>&1 &
  fi
  pid=$!
  pids+=($pid)
  sleep 1
  kill -0 "$pid" 2>/dev/null || { echo "$proxy did not start:"; cat "$TMP/$proxy.log"; exit 1; }
  pp="$pid $(pgrep -P "$pid" | tr '\n' ' ' || true)"
  for c in "${CASES[@]}"; do measure $proxy "$pp" "$c"; done
  if [ $proxy = ringside ]; then
    # The resumed case must really resume: Envoy's ssl.session_reused counts it.
    REUSED=$(curl -s "http://127.0.0.1:$ADMIN/stats" | sed -n 's/^listener.127.0.0.1_15311.ssl.session_reused: //p')
  fi
  kill "$pid"
  sleep 1
  wait "$pid" 2>/dev/null || true
done

ratio() { python3 -c "import sys; a, b = sys.argv[1:]; print('%.2fx' % (float(a) / float(b)) if a.isdigit() and b.isdigit() and int(b) else '-')" "$1" "$2"; }
echo
echo "TLS through one proxy core: $SECS s x $RUNS runs (median), $(date -u +%Y-%m-%d), $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); Ringside counted ${REUSED:-?} resumed sessions"
echo
echo "| case | target | per second | per proxy CPU-second | CPU efficiency vs nginx |"
echo "|---|---|---|---|---|"
for c in "${CASES[@]}"; do
  for p in ringside nginx; do
    echo "| $c | $p | ${RATE[$p.$c]} | ${CPS[$p.$c]} | $(ratio "${CPS[$p.$c]}" "${CPS[nginx.$c]}") |"
  done
done
