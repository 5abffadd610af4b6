#!/usr/bin/env bash
# Heap allocations per proxied request on the steady-state keep-alive path: a release
# build with the count-allocs feature, nginx as the backend, wrk with 8 keep-alive
# connections (CONNS=1: one request at a time, the direct-send path); server.heap_allocations
# and downstream_rq_total are read around the run.
# H2=1: HTTP/2 downstream instead (h2load over h2c, -c$CONNS -m10, default 4 connections),
# to the same HTTP/1.1 backend. UPSTREAM_H2=1 (with H2=1): HTTP/2 upstream too, to nghttpd
# (h2c), the h2 -> h2 path.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
cargo build --release -q --features count-allocs --target-dir target/count-allocs
bin=target/count-allocs/release/ringside
dir=$(mktemp -d)
one_route_setup "$dir"
if [ -n "${UPSTREAM_H2:-}" ]; then
  need nghttpd:nghttp2-server
  sed -i 's|^    connect_timeout: 1s$|    connect_timeout: 1s\n    http2_protocol_options: {}|' "$dir/ringside.yaml"
  mkdir -p "$dir/www" && python3 -c "print('a'*1024, end='')" >"$dir/www/index.html"
  nghttpd --no-tls -d "$dir/www" "$backend" >/dev/null 2>&1 &
else
  nginx -c "$dir/backend.conf" -p "$dir" >/dev/null 2>&1 &
fi
nginx_pid=$!
"$bin" -c "$dir/ringside.yaml" --concurrency 1 -l warn >"$dir/ringside.log" 2>&1 &
proxy_pid=$!
trap 'kill $nginx_pid $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
stat() { curl -s "http://127.0.0.1:$admin/stats" | sed -n "s/^$1: //p"; }
if [ -n "${H2:-}" ]; then
  need h2load:nghttp2-client
  h2load -n 5000 -c4 -m10 "http://127.0.0.1:$proxy/" >/dev/null   # warm
  a0=$(stat server.heap_allocations); r0=$(stat http.perf.downstream_rq_total)
  h2load -n 50000 -c"${CONNS:-4}" -m10 "http://127.0.0.1:$proxy/" >"$dir/h2load.txt"
  grep -q "50000 succeeded" "$dir/h2load.txt" || { cat "$dir/h2load.txt"; exit 1; }
else
  wrk -t1 -c8 -d1s "http://127.0.0.1:$proxy/" >/dev/null   # warm: pools, buffers, timer wheel
  a0=$(stat server.heap_allocations); r0=$(stat http.perf.downstream_rq_total)
  wrk -t1 -c"${CONNS:-8}" -d5s "http://127.0.0.1:$proxy/" >/dev/null
fi
a1=$(stat server.heap_allocations); r1=$(stat http.perf.downstream_rq_total)
# The admin request that reads the counter allocates too; measure and subtract it.
a2=$(stat server.heap_allocations)
admin_cost=$((a2 - a1))
python3 -c "
reqs = $r1 - $r0
allocs = $a1 - $a0 - $admin_cost
print(f'{reqs} requests, {allocs} heap allocations: {allocs / reqs:.4f} per request')"
