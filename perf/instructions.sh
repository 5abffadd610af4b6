#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable for the
# same binary whatever else the machine is doing, so it can show a change the noisy
# wall-clock columns of compare.sh cannot. Ringside runs under valgrind with one core,
# the nginx backend answers 1 KiB, wrk (-c4) warms it up, the counters are zeroed, wrk runs
# again (-c$CONNS, default 4; CONNS=1 measures one request at a time, the fixed-rate path),
# and the count is dumped and divided by wrk's request count. H2=1 measures HTTP/2 instead:
# h2load over h2c (-c$CONNS -m10, $H2_REQUESTS requests, default 20000) through the same
# route to the same HTTP/1.1 backend.
# Usage: [CONNS=N] [H2=1] perf/instructions.sh [ringside binary] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need valgrind:valgrind wrk:wrk nginx:nginx-light curl:curl h2load:nghttp2-client
bin=${1:-}
secs=${2:-8}
if [ -z "$bin" ]; then
  cargo build --release -q
  bin=target/release/ringside
fi
TMP=$(mktemp -d)
one_route_setup "$TMP"
nginx -c "$TMP/backend.conf" -p "$TMP" >/dev/null 2>&1 &
nginx_pid=$!
valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" "$bin" -c "$TMP/ringside.yaml" \
  --concurrency 1 -l warn >"$TMP/ringside.log" 2>&1 &
proxy_pid=$!
trap 'kill -9 $proxy_pid 2>/dev/null; kill $nginx_pid 2>/dev/null; true' EXIT
for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.2; done
if [ -n "${H2:-}" ]; then
  n=${H2_REQUESTS:-20000}
  h2load -n 5000 -c4 -m10 "http://127.0.0.1:$proxy/" >/dev/null
  sleep 1
  callgrind_control -z "$proxy_pid" >/dev/null
  h2load -n "$n" -c"${CONNS:-4}" -m10 "http://127.0.0.1:$proxy/" >"$TMP/h2load.txt"
  callgrind_control -d "$proxy_pid" >/dev/null
  sleep 1
  reqs=$(awk '/^requests:/ {print $8}' "$TMP/h2load.txt")
else
  wrk -t1 -c4 -d3s "http://127.0.0.1:$proxy/" >/dev/null
  sleep 1
  callgrind_control -z "$proxy_pid" >/dev/null
  wrk -t1 -c"${CONNS:-4}" -d"${secs}s" "http://127.0.0.1:$proxy/" >"$TMP/wrk.txt"
  callgrind_control -d "$proxy_pid" >/dev/null
  sleep 1
  reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
fi
dump=$(ls -t "$TMP"/cg.out.* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests: $reqs, instructions: $ir, per request: $((ir / reqs))"
mkdir -p perf/out
cp "$dump" perf/out/callgrind.out
echo "profile: perf/out/callgrind.out (callgrind_annotate --inclusive=yes perf/out/callgrind.out)"
