#!/usr/bin/env bash
# What a CPU profile on demand costs (admin's /debug/pprof/profile): Ringside pinned to
# core 0 with one worker, nginx and wrk on core 1, HTTP/1.1 keep-alive, 1 KiB responses.
# wrk runs the same number of seconds three times, interleaved: no profile, a profile at
# 99 Hz (the default) and one at 999 Hz taken over the whole run. Prints requests/s of
# each, the ratio to the run without a profile, how long the profile's answer took past
# its sampling time (symbolization, off the cores), its size, and the proxy's peak RSS.
# Usage: perf/profile_overhead.sh [ringside binary] [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need wrk:wrk nginx:nginx-light curl:curl
bin=${1:-}
secs=${2:-10}
rounds=${3:-2}
if [ -z "$bin" ]; then
  cargo build --release -q
  bin=target/release/ringside
fi
dir=$(mktemp -d)
one_route_setup "$dir"
taskset -c 1 nginx -c "$dir/backend.conf" -p "$dir" >/dev/null 2>&1 &
nginx_pid=$!
taskset -c 0 "$bin" -c "$dir/ringside.yaml" --concurrency 1 -l warn >"$dir/ringside.log" 2>&1 &
proxy_pid=$!
trap 'kill $nginx_pid $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy/" && break; sleep 0.1; done
# Warm up.
taskset -c 1 wrk -t1 -c32 -d2s "http://127.0.0.1:$proxy/" >/dev/null
run() {
  local hz=$1 rps curl_pid=""
  if [ "$hz" != 0 ]; then
    curl -s -o "$dir/profile.$hz" -w "%{time_total} %{size_download}\n" \
      "http://127.0.0.1:$admin/debug/pprof/profile?seconds=$secs&hz=$hz" > "$dir/curl.$hz" &
    curl_pid=$!
  fi
  rps=$(taskset -c 1 wrk -t1 -c32 -d${secs}s "http://127.0.0.1:$proxy/" | awk '/Requests\/sec/ {print $2}')
  if [ -n "$curl_pid" ]; then wait "$curl_pid"; fi
  echo "$rps"
}
declare -A total
for r in $(seq "$rounds"); do
  for hz in 0 99 999; do
    rps=$(run "$hz")
    total[$hz]=$(python3 -c "print(${total[$hz]:-0} + ${rps:-0})")
    extra=""
    if [ "$hz" != 0 ]; then
      read -r t size < "$dir/curl.$hz"
      extra=$(python3 -c "print(f'answered {float(\"$t\") - $secs:.2f} s after sampling, {int($size)//1024} KiB')")
    fi
    echo "round $r, profile at ${hz} Hz: $rps req/s $extra"
  done
done
for hz in 99 999; do
  python3 -c "print(f'profile at $hz Hz: {${total[$hz]} / ${total[0]}:.3f} of the requests/s without one')"
done
grep VmHWM "/proc/$proxy_pid/status"
