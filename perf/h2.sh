#!/usr/bin/env bash
# HTTP/2 and gRPC-shaped load, side by side in one run: h2load through Ringside and nginx
# (and direct to the upstream, the physical reference). The proxy runs pinned to CPU 0
# with one worker; h2load and the upstreams to CPU 1. Reports requests/s and requests per
# proxy CPU-second (utime+stime from /proc around each run), median of RUNS runs.
#   h2:   h2c client (4 connections x 10 streams) -> proxy -> HTTP/1.1 keep-alive upstream
#         (nginx serving 1 KB)
#   grpc: gRPC-shaped POSTs (application/grpc, te: trailers, 1 KB body) over h2c on both
#         legs -> nghttpd echoing the body (nginx proxies with grpc_pass)
# Usage: perf/h2.sh [requests per run, default 100000 (gRPC: a fifth)] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RUNS=${2:-3}
. perf/lib.sh
need h2load:nghttp2-client nghttpd:nghttp2-server nginx:nginx-light taskset:util-linux
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
BIN=target/release/ringside
TMP=$(mktemp -d)
chmod 755 "$TMP" # nginx workers (user nobody) serve files from it
H1=15300 H2=15301 PROXY=15302
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
mkdir -p "$TMP/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$TMP/www/1k"
# One gRPC message: 5-byte prefix (uncompressed, length 1019) and 1019 payload bytes.
python3 -c "import sys; sys.stdout.buffer.write(b'\x00' + (1019).to_bytes(4,'big') + b'y'*1019)" >"$TMP/msg"

nginx_conf "$TMP/backend.conf" backend "    server { listen 127.0.0.1:$H1; root $TMP/www; }"
nginx_conf "$TMP/nginx.conf" nginx "    upstream h1 { server 127.0.0.1:$H1; keepalive 128; keepalive_requests 1000000; }
    upstream h2 { server 127.0.0.1:$H2; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PROXY http2;
        location /grpc/ { grpc_pass grpc://h2; }
        location / { proxy_pass http://h1; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
cat >"$TMP/ringside.yaml" <<CONF
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
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {match: {prefix: /grpc/}, route: {cluster: h2}}
              - {match: {prefix: /}, route: {cluster: h1}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: h1
    load_assignment: {cluster_name: h1, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $H1}}}}]}]}
  - name: h2
    http2_protocol_options: {}
    load_assignment: {cluster_name: h2, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $H2}}}}]}]}
CONF

taskset -c 1 nginx -c "$TMP/backend.conf" -p "$TMP" &
pids+=($!)
taskset -c 1 nghttpd --no-tls --echo-upload -d "$TMP/www" $H2 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# One h2load run; prints requests/s, or ERR when any request failed.
load() {
  local url=$1
  shift
  taskset -c 1 h2load -c 4 -m 10 "$@" "$url" 2>&1 |
    awk '/^finished in/ {gsub(",", "", $4); rps=$4} /^requests:/ {fail=$10 $12} END {if (fail != "00") rps="ERR"; print rps}'
}
declare -A RPS CPS
# measure NAME CASE "PIDS" REQUESTS URL [h2load args]: medians of RUNS runs.
measure() {
  local name=$1 case=$2 pp=$3 n=$4 url=$5 r t0 t1 vals=() cpus=()
  shift 5
  for _ in $(seq "$RUNS"); do
    t0=0 t1=0
    [ -n "$pp" ] && t0=$(ticks $pp)
    r=$(load "$url" -n "$n" "$@")
    [ -n "$pp" ] && t1=$(ticks $pp)
    vals+=("$r")
    cpus+=("$(python3 -c "print(($t1 - $t0) / $HZ)")")
  done
  read -r RPS[$name.$case] CPS[$name.$case] < <(python3 - "$n" "${vals[@]}" "${cpus[@]}" <<'PY'
import statistics, sys
count = float(sys.argv[1]); rest = sys.argv[2:]; n = len(rest) // 2
r, c = rest[:n], [float(x) for x in rest[n:]]
if "ERR" in r:
    print("ERR ERR")
else:
    rps = [float(x) for x in r]
    per_cpu = statistics.median(count / b for b in c) if all(c) else None
    print("%.0f %s" % (statistics.median(rps), "%.0f" % per_cpu if per_cpu else "-"))
PY
)
}
GRPC=(-d "$TMP/msg" -H "content-type: application/grpc" -H "te: trailers")

measure direct h2 "" "$N" "http://127.0.0.1:$H1/1k" --h1
measure direct grpc "" $((N / 5)) "http://127.0.0.1:$H2/grpc/echo" "${GRPC[@]}"
for proxy in ringside nginx; do
  if [ $proxy = ringside ]; then
    taskset -c 0 "$BIN" -c "$TMP/ringside.yaml" --concurrency 1 -l warn >"$TMP/ringside.log" 2>&1 &
  else
    taskset -c 0 nginx -c "$TMP/nginx.conf" -p "$TMP" >"$TMP/nginx.log" 2>&1 &
    sleep 0.5
    kill -0 $! 2>/dev/null || { echo "nginx did not start:"; cat "$TMP/nginx.log" "$TMP/nginx.err"; exit 1; }
  fi
  pid=$!
  pids+=($pid)
  sleep 1
  pp="$pid $(pgrep -P "$pid" | tr '\n' ' ' || true)"
  measure $proxy h2 "$pp" "$N" "http://127.0.0.1:$PROXY/1k"
  measure $proxy grpc "$pp" $((N / 5)) "http://127.0.0.1:$PROXY/grpc/echo" "${GRPC[@]}"
  kill "$pid"
  sleep 1
  wait "$pid" 2>/dev/null || true
done

ratio() { python3 -c "import sys; a, b = sys.argv[1:]; print('%.2fx' % (float(a) / float(b)) if a.isdigit() and b.isdigit() and int(b) else '-')" "$1" "$2"; }
echo
echo "HTTP/2 through one proxy core: h2load -c 4 -m 10, $N requests (gRPC $((N / 5))) x $RUNS runs (median), $(date -u +%Y-%m-%d), $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo
echo "| case | target | req/s | req per proxy CPU-second | CPU efficiency vs nginx |"
echo "|---|---|---|---|---|"
for c in h2 grpc; do
  echo "| $c | direct (upstream alone$([ $c = h2 ] && echo ', HTTP/1.1')) | ${RPS[direct.$c]} | - | - |"
  for p in ringside nginx; do
    echo "| $c | $p | ${RPS[$p.$c]} | ${CPS[$p.$c]} | $(ratio "${CPS[$p.$c]}" "${CPS[nginx.$c]}") |"
  done
done
