# Shared by the perf scripts (sourced): tool installation, nginx configs, process CPU.

# need CMD:PACKAGE ...: installs the Debian packages whose commands are missing.
need() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# nginx_conf PATH NAME HTTP_BLOCK: a one-worker nginx config, pid and error log in $TMP/NAME.*
nginx_conf() {
  cat >"$1" <<CONF
worker_processes 1;
daemon off;
pid $TMP/$2.pid;
error_log $TMP/$2.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
$3
}
CONF
}

HZ=$(getconf CLK_TCK)
# ticks PID...: utime+stime of the processes, in clock ticks.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

# free_port: a TCP port nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# one_route_setup DIR: picks ports (sets backend, proxy, admin) and renders the 1 KiB nginx
# backend (DIR/backend.conf) and the one-route Ringside config (DIR/ringside.yaml) that
# compare.py measures. ISTIO_FILTERS=1 puts istiod's default HTTP filters (grpc_stats,
# an empty fault filter, cors) before the router, as on every sidecar listener.
# ISTIO_TELEMETRY=1 adds istiod's outbound telemetry filters (the HTTP metadata exchange and
# istio.stats) with a pod's node metadata; ISTIO_DIMENSIONS=1 gives istio_requests_total two
# tag overrides (request_host, destination_port: CEL expressions, as a Telemetry resource's). ISTIO_BREAKERS=1 gives the cluster istiod's default circuit breakers (limits of 2^32-1,
# track_remaining), which Ringside does not count. ISTIO_RETRY=1 gives the route istiod's
# default retry policy (and max_grpc_timeout), as on every outbound route. ACCESS_LOG=istio
# or ACCESS_LOG=default adds a file access log (istiod's format, or Envoy's default).
# OUTLIER=1 gives the cluster what istiod makes of a DestinationRule's outlierDetection
# (consecutive 5xx and gateway errors enforced, panic threshold 0).
one_route_setup() {
  local dir=$1 body
  backend=$(free_port); proxy=$(free_port); admin=$(free_port)
  body=$(python3 -c "print('a'*1024)")
  sed "s|__DIR__|$dir|g; s|__BACKEND_PORT__|$backend|; s|__BODY__|$body|" perf/backend-nginx.conf > "$dir/backend.conf"
  sed "s|__ADMIN_PORT__|$admin|; s|__PROXY_PORT__|$proxy|; s|__BACKEND_PORT__|$backend|" perf/ringside.yaml > "$dir/ringside.yaml"
  if [ -n "${ISTIO_FILTERS:-}" ]; then
    python3 - "$dir/ringside.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
router = "          - name: envoy.filters.http.router\n"
istio = (
    "          - name: envoy.filters.http.grpc_stats\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true, stats_for_all_methods: false}\n"
    "          - name: envoy.filters.http.fault\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}\n"
    "          - name: envoy.filters.http.cors\n"
    "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}\n"
)
open(p, "w").write(s.replace(router, istio + router))
PY
  fi
  if [ -n "${ISTIO_TELEMETRY:-}" ]; then
    # istiod's telemetry on an outbound listener: the HTTP metadata exchange and
    # istio.stats, a node as pilot-agent describes a pod, the cluster's service metadata.
    python3 - "$dir/ringside.yaml" <<'PY'
import os, sys
p = sys.argv[1]
s = open(p).read()
router = "          - name: envoy.filters.http.router\n"
telemetry = (
    "          - name: istio.metadata_exchange\n"
    "            typed_config: {\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.http.peer_metadata.Config, value: {upstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}], upstream_propagation: [{istio_headers: {}}]}}\n"
    "          - name: istio.stats\n"
    "            typed_config: {\"@type\": type.googleapis.com/stats.PluginConfig%s}\n"
    % (", metrics: [{name: requests_total, dimensions: {request_host: request.host, destination_port: 'string(destination.port)'}}]"
       if os.environ.get("ISTIO_DIMENSIONS") else "")
)
s = s.replace(router, telemetry + router)
s = s.replace("  - name: perf\n", "  - name: perf\n    traffic_direction: OUTBOUND\n")
s = s.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n    metadata: {filter_metadata: {istio: {services: [{host: backend.default.svc.cluster.local, name: backend, namespace: default}]}}}\n", 1)
node = ("node:\n  id: sidecar~10.0.0.1~perf-abc12.default~default.svc.cluster.local\n  metadata:\n"
        "    NAME: perf-abc12\n    NAMESPACE: default\n    WORKLOAD_NAME: perf\n    CLUSTER_ID: Kubernetes\n"
        "    LABELS: {app: perf, version: v1, service.istio.io/canonical-name: perf, service.istio.io/canonical-revision: v1}\n")
s = s.replace("static_resources:\n", node + "static_resources:\n", 1)
open(p, "w").write(s)
PY
  fi
  if [ -n "${ACCESS_LOG:-}" ]; then
    # A file access log on the connection manager: ACCESS_LOG=istio writes istiod's text
    # format (as with meshConfig.accessLogFile), ACCESS_LOG=default Envoy's default one.
    python3 - "$dir/ringside.yaml" "$dir/access.log" "$ACCESS_LOG" <<'PY'
import json, sys
p, path, kind = sys.argv[1:4]
istio = ('[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
         '%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
         '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
         '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
         '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
         '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
         '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')
cfg = {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": path}
if kind == "istio":
    cfg["log_format"] = {"text_format_source": {"inline_string": istio}}
log = "          access_log: [{name: envoy.access_loggers.file, typed_config: %s}]\n" % json.dumps(cfg)
s = open(p).read()
s = s.replace("          http_filters:\n", log + "          http_filters:\n", 1)
open(p, "w").write(s)
PY
  fi
  if [ -n "${TRACING:-}" ]; then
    # The connection manager's tracing as istiod writes it (1% sampling, client 100%,
    # a route decorator): TRACING=istio decides only (no provider, the default mesh);
    # TRACING=zipkin adds Istio's Zipkin provider (spans to the backend, which refuses
    # them: the exports still cost what they cost).
    python3 - "$dir/ringside.yaml" "$TRACING" "$backend" <<'PY'
import re, sys
p, kind, backend = sys.argv[1:4]
s = open(p).read()
tracing = "          tracing: {client_sampling: {value: 100}, random_sampling: {value: 1}, overall_sampling: {value: 100}"
if kind == "zipkin":
    tracing += (", provider: {name: envoy.tracers.zipkin, typed_config: {'@type': type.googleapis.com/envoy.config.trace.v3.ZipkinConfig,"
                " collector_cluster: zipkin, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON, trace_id_128bit: true, shared_span_context: false}}")
s = s.replace("          http_filters:\n", tracing + "}\n          http_filters:\n", 1)
s = re.sub(r"(?m)^( *)route: \{cluster: backend\}$", r"\g<0>\n\1decorator: {operation: 'backend.default.svc.cluster.local:80/*'}", s)
if kind == "zipkin":
    s = s.replace("  clusters:\n", "  clusters:\n  - name: zipkin\n    connect_timeout: 1s\n    load_assignment: {cluster_name: zipkin, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]}\n" % backend, 1)
open(p, "w").write(s)
PY
  fi
  if [ -n "${ISTIO_BREAKERS:-}" ]; then
    sed -i 's|^    connect_timeout: 1s$|    connect_timeout: 1s\n    circuit_breakers: {thresholds: [{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true}]}|' "$dir/ringside.yaml"
  fi
  if [ -n "${OUTLIER:-}" ]; then
    sed -i 's|^    connect_timeout: 1s$|    connect_timeout: 1s\n    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, enforcing_consecutive_gateway_failure: 100, enforcing_success_rate: 0, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100}\n    common_lb_config: {healthy_panic_threshold: {value: 0}}|' "$dir/ringside.yaml"
  fi
  if [ -n "${ISTIO_RETRY:-}" ]; then
    sed -i "s|route: {cluster: backend}|route: {cluster: backend, max_grpc_timeout: 0s, retry_policy: {retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes', num_retries: 2, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 5, retriable_status_codes: [503]}}|" "$dir/ringside.yaml"
  fi
}
