#!/usr/bin/env python3
"""A big mesh pushed to one sidecar over delta ADS, Ringside against Envoy 1.40.

For 100, 1,000 and 10,000 services, shaped as istiod sends them to a sidecar without a
Sidecar scope: per service an EDS cluster `outbound|80||svc-I.ns-J.svc.cluster.local`
(istiod's circuit breakers, metadata and protocol options) and its load assignment (one
endpoint with istiod's workload and tlsMode metadata, a locality), one route
configuration `80` with a virtual host per service (istiod's domains, default route with
its retry policy, timeout and decorator) plus `allow_any`, the outbound HTTP listener
`0.0.0.0_80` on RDS, and the PassthroughCluster. (Istio's mutual TLS and its own Wasm-less
extensions are left out: the official Envoy build has no Istio filters, and both proxies
get the same resources.)

Both proxies start from the same bootstrap (delta ADS over gRPC, two workers as Istio's
default `concurrency`) and are measured in turn, size by size:
- full push -> ACK: from pushing the clusters to the route configuration's ACK (CDS, EDS,
  LDS and RDS, each pushed once its request came);
- that the last service routes: a request for its host reaches the backend;
- RSS once applied (1 s after the last service routes), and the peak (VmHWM: the
  push and start-up included);
- a one-route change -> ACK: the route configuration pushed again with one virtual host's
  route changed (a response header), the median of 5; each change is checked to be served;
- a one-endpoint change -> ACK: one service's load assignment alone, its endpoint's port
  changed (a pod replaced, as delta EDS sends it), the median of 5 (no target in issue 25:
  shown because it is istiod's most frequent push); the last service still routes after.

Prints one table and the ratio lines against issue 25's targets.

    perf/mesh_scale.py RINGSIDE_BINARY [--sizes 100,1000,10000] [--changes 5]
                       [--only ringside|envoy] [--hold]  (--hold: keep each proxy running,
                       its pid printed, until Enter: for profiling)
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
from xds_interop import CLUSTER, ENDPOINT, LISTENER, ROUTE, backend, start_ads  # noqa: E402
from envoy_parity import free_port  # noqa: E402

from google.protobuf import any_pb2, json_format  # noqa: E402
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: E402,F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: E402,F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: E402,F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: E402,F401
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: E402,F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: E402,F401
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

BOOTSTRAP = """
node: {id: "sidecar~10.0.0.9~client-1.default~default.svc.cluster.local", cluster: client.default}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}}
dynamic_resources:
  lds_config: {ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}
  cds_config: {ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT}}}}]}]
"""

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def host(i):
    return f"svc-{i}.ns-{i % 50}.svc.cluster.local"


def cluster_name(i):
    return f"outbound|80||{host(i)}"


def parse(msg, d):
    return json_format.ParseDict(d, msg)


def cluster(i):
    return parse(cluster_pb2.Cluster(), {
        "name": cluster_name(i), "type": "EDS",
        "eds_cluster_config": {"service_name": cluster_name(i),
                               "eds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                              "resource_api_version": "V3"}},
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                             "max_requests": 4294967295, "max_retries": 4294967295,
                                             "track_remaining": True}]},
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": host(i), "name": f"svc-{i}", "namespace": f"ns-{i % 50}"}],
            "default_original_port": 80}}},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": "3600s"},
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}},
    })


def assignment(i, port, other_port=8080):
    live = port is not None
    return parse(endpoint_pb2.ClusterLoadAssignment(), {
        "cluster_name": cluster_name(i),
        "endpoints": [{"locality": {"region": "r1", "zone": "z1"}, "lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1" if live else f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                "port_value": port if live else other_port}}},
            "metadata": {"filter_metadata": {
                "istio": {"workload": f"svc-{i}-v1;ns-{i % 50};svc-{i};v1;Kubernetes"},
                "envoy.transport_socket_match": {"tlsMode": "istio"}}},
            "load_balancing_weight": 1}],
            "load_balancing_weight": 1}]})


def vhost(i, version=None):
    h, short, ns = host(i), f"svc-{i}", f"ns-{i % 50}"
    ip = f"10.96.{(i >> 8) & 255}.{i & 255}"
    domains = [h, f"{h}:80", short, f"{short}:80", f"{short}.{ns}", f"{short}.{ns}:80",
               f"{short}.{ns}.svc", f"{short}.{ns}.svc:80", ip, f"{ip}:80"]
    route = {"name": "default", "match": {"prefix": "/"},
             "route": {"cluster": cluster_name(i), "timeout": "0s", "max_grpc_timeout": "0s",
                       "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                                        "num_retries": 2, "retry_host_predicate": [{
                                            "name": "envoy.retry_host_predicates.previous_hosts",
                                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                        "host_selection_retry_max_attempts": "5",
                                        "retriable_status_codes": [503]}},
             "decorator": {"operation": f"{h}:80/*"}}
    if version is not None:
        route["response_headers_to_add"] = [{"header": {"key": "x-mesh-version", "value": str(version)}}]
    return {"name": f"{h}:80", "domains": domains, "routes": [route], "include_request_attempt_count": True}


def route_configuration(n, changed=None):
    vhosts = [vhost(i, changed[1] if changed and changed[0] == i else None) for i in range(n)]
    vhosts.append({"name": "allow_any", "domains": ["*"], "routes": [
        {"name": "allow_any", "match": {"prefix": "/"},
         "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}],
        "include_request_attempt_count": True})
    return parse(route_pb2.RouteConfiguration(), {"name": "80", "virtual_hosts": vhosts,
                                                  "validate_clusters": False})


def listener(port):
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "outbound_0.0.0.0_80",
           "rds": {"route_config_name": "80", "config_source": {"ads": {}, "initial_fetch_timeout": "0s",
                                                                "resource_api_version": "V3"}},
           "http_filters": [
               {"name": "envoy.filters.http.cors", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
               {"name": "envoy.filters.http.fault", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
               ROUTER],
           "use_remote_address": False, "normalize_path": True,
           "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
           "request_id_extension": {"typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
               "use_request_id_for_trace_sampling": True}}}
    return parse(listener_pb2.Listener(), {
        "name": "0.0.0.0_80", "traffic_direction": "OUTBOUND",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]})


def passthrough():
    return parse(cluster_pb2.Cluster(), {
        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                             "max_requests": 4294967295, "max_retries": 4294967295}]}})


def resources(msgs, name):
    out = []
    for m in msgs:
        a = any_pb2.Any()
        a.Pack(m)
        out.append(discovery_pb2.Resource(name=name(m), version="1", resource=a))
    return out


def push(ads, type_url, rs):
    ads.nonce += 1
    nonce = f"d{ads.nonce}"
    ads.out.put(discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=nonce, resources=rs, type_url=type_url, nonce=nonce))
    return nonce


def acked(ads, type_url, nonce):
    while True:
        r = ads.next(type_url, timeout=300)
        if r.response_nonce == nonce:
            if r.HasField("error_detail"):
                raise SystemExit(f"{type_url} NACKed: {r.error_detail.message[:500]}")
            return


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(port, h, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/x", headers={"host": h})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("x-mesh-version")
    except Exception as e:
        return getattr(e, "code", None), None


def wait_routes(port, h, version=None, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, v = get(port, h)
        if code == 200 and (version is None or v == str(version)):
            return True
        time.sleep(0.01)
    return False


def measure(proxy, binary, n, up, changes, prebuilt, hold=False):
    ads, server, port = start_ads()
    d = tempfile.mkdtemp(prefix=f"mesh-{proxy}-")
    cfg = os.path.join(d, "bootstrap.yaml")
    with open(cfg, "w") as f:
        f.write(BOOTSTRAP.replace("PORT", str(port)).replace("ADMIN", str(free_port())))
    args = [binary, "-c", cfg, "--concurrency", os.environ.get("MESH_CONCURRENCY", "2"), "-l", os.environ.get("MESH_LOG", "error")]
    if proxy == "envoy":
        args += ["--base-id", str(os.getpid() % 1000), "--disable-hot-restart"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr"), "w"))
    lport = free_port()
    try:
        clusters, cla, rc = prebuilt
        ads.next(CLUSTER, timeout=60)
        t0 = time.perf_counter()
        acked(ads, CLUSTER, push(ads, CLUSTER, clusters))
        ads.next(ENDPOINT, timeout=300)
        acked(ads, ENDPOINT, push(ads, ENDPOINT, cla))
        acked(ads, LISTENER, push(ads, LISTENER, resources([listener(lport)], lambda m: m.name)))
        ads.next(ROUTE, timeout=300)
        acked(ads, ROUTE, push(ads, ROUTE, rc))
        full = time.perf_counter() - t0
        routes = wait_routes(lport, host(n - 1))
        time.sleep(1)
        rss, peak = status(proc.pid, "VmRSS"), status(proc.pid, "VmHWM")
        one = []
        for k in range(changes):
            # The change is built before the clock starts: what is timed is the proxy.
            rs = resources([route_configuration(n, (n - 1, k))], lambda m: m.name)
            t0 = time.perf_counter()
            acked(ads, ROUTE, push(ads, ROUTE, rs))
            one.append(time.perf_counter() - t0)
            routes = routes and wait_routes(lport, host(n - 1), version=k)
        # One service's endpoint moves (istiod's most frequent push: a pod replaced), sent
        # as delta EDS sends it, that one load assignment alone.
        eds = []
        for k in range(changes):
            rs = resources([assignment(k, None, 8081 + k)], lambda m: m.cluster_name)
            t0 = time.perf_counter()
            acked(ads, ENDPOINT, push(ads, ENDPOINT, rs))
            eds.append(time.perf_counter() - t0)
        routes = routes and wait_routes(lport, host(n - 1))
        if hold:
            print(f"{proxy} pid {proc.pid} holds {n} services; Enter to go on", file=sys.stderr, flush=True)
            sys.stdin.readline()
        return {"full": full, "one": statistics.median(one), "eds": statistics.median(eds),
                "rss": rss, "peak": peak, "routes": routes}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.stop(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringside")
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--only", choices=("ringside", "envoy"))
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args()
    up = backend("app")
    proxies = {p: b for p, b in {"ringside": a.ringside, "envoy": "envoy"}.items() if a.only in (None, p)}
    rows = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        prebuilt = (
            resources([cluster(i) for i in range(n)] + [passthrough()], lambda m: m.name),
            resources([assignment(i, up if i == n - 1 else None) for i in range(n)], lambda m: m.cluster_name),
            resources([route_configuration(n)], lambda m: m.name),
        )
        for proxy, binary in proxies.items():
            rows[(n, proxy)] = measure(proxy, binary, n, up, a.changes, prebuilt, a.hold)
            print(f"  {proxy} {n}: {rows[(n, proxy)]}", file=sys.stderr, flush=True)
    print("| services | proxy | full push → ACK ms | one-route change → ACK ms | one-endpoint change → ACK ms "
          "| RSS MB | peak RSS MB | last service routes |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for (n, proxy), r in rows.items():
        print(f"| {n:,} | {proxy} | {r['full'] * 1e3:,.0f} | {r['one'] * 1e3:,.1f} | {r['eds'] * 1e3:,.1f} | {r['rss']:.1f} | "
              f"{r['peak']:.1f} | {'yes' if r['routes'] else 'NO'} |")
    print()
    print("Ringside / Envoy (target: at most)")
    for n in sorted({n for n, _ in rows}):
        if (n, "envoy") not in rows or (n, "ringside") not in rows:
            continue
        rs, en = rows[(n, "ringside")], rows[(n, "envoy")]
        checks = [("full push → ACK", rs["full"] / en["full"], 0.1)]
        if n >= 1000:
            checks.append(("one-route change → ACK", rs["one"] / en["one"], 0.2))
        if n >= 10000:
            checks.append(("RSS", rs["rss"] / en["rss"], 1 / 15))
            checks.append(("peak RSS", rs["peak"] / en["peak"], 1 / 15))
        for what, ratio, target in checks:
            print(f"- {n:,} services: {what}: {ratio:.2f}x (target {target:.2f}x) "
                  f"{'holds' if ratio <= target else 'MISSES'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
