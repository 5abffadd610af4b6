#!/usr/bin/env bash
# Heap allocations per proxied request on the steady-state keep-alive path: a release
# build with the count-allocs feature, nginx as the backend, wrk with 8 keep-alive
# connections (CONNS=1: one request at a time, the direct-send path); server.heap_allocations
# and downstream_rq_total are read around the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
cargo build --release -q --features count-allocs --target-dir target/count-allocs
bin=target/count-allocs/release/ringside
dir=$(mktemp -d)
one_route_setup "$dir"
nginx -c "$dir/backend.conf" -p "$dir" >/dev/null 2>&1 &
nginx_pid=$!
"$bin" -c "$dir/ringside.yaml" --concurrency 1 -l warn >"$dir/ringside.log" 2>&1 &
proxy_pid=$!
trap 'kill $nginx_pid $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
stat() { curl -s "http://127.0.0.1:$admin/stats" | sed -n "s/^$1: //p"; }
wrk -t1 -c8 -d1s "http://127.0.0.1:$proxy/" >/dev/null   # warm: pools, buffers, timer wheel
a0=$(stat server.heap_allocations); r0=$(stat http.perf.downstream_rq_total)
wrk -t1 -c"${CONNS:-8}" -d5s "http://127.0.0.1:$proxy/" >/dev/null
a1=$(stat server.heap_allocations); r1=$(stat http.perf.downstream_rq_total)
# The admin request that reads the counter allocates too; measure and subtract it.
a2=$(stat server.heap_allocations)
admin_cost=$((a2 - a1))
python3 -c "
reqs = $r1 - $r0
allocs = $a1 - $a0 - $admin_cost
print(f'{reqs} requests, {allocs} heap allocations: {allocs / reqs:.4f} per request')"
