#!/usr/bin/env python3
"""Load balancing as DestinationRule tunes it, Ringside against the official Envoy 1.40:
locality weights (`locality_weighted_lb_config`) with each locality's availability, a
locality without a weight, panic, and least request over unequal weights with its
`active_request_bias`. Each scenario runs the same configuration through both (one worker
each, their own named upstreams), sends the same sequential requests, and compares how
many each upstream took, within a tolerance (Envoy's schedulers are deterministic,
Ringside's weighted picks for least request are random draws).

    tests/interop/lb_parity.py RINGSIDE
"""
import http.server
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import FAILS, check, fetch, report  # noqa: E402
from envoy_parity import start_pair  # noqa: E402

def named(name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def config(ports, cluster):
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['main']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: c}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
  - {cluster}
"""


def ep(port, healthy=True, weight=None):
    w = f", load_balancing_weight: {weight}" if weight else ""
    status = "HEALTHY" if healthy else "UNHEALTHY"
    return (f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}, "
            f"health_status: {status}{w}}}")


def localities(ls):
    out = []
    for i, (weight, eps) in enumerate(ls):
        w = f"load_balancing_weight: {weight}, " if weight is not None else ""
        out.append(f"{{locality: {{zone: z{i}}}, {w}lb_endpoints: [{', '.join(eps)}]}}")
    return ", ".join(out)


def counts(port, n):
    got = {}
    for _ in range(n):
        data = fetch(port, b"GET / HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n")
        name = data.partition(b"\r\n\r\n")[2].decode() or data.split(b"\r\n")[0].decode()
        got[name] = got.get(name, 0) + 1
    return got


def scenario(ringside, base, label, n, tolerance, build):
    """`build(names)` makes the cluster from {name: port} upstreams of one proxy."""
    ports = {}
    for proxy in ("envoy", "ringside"):
        ports[proxy] = {k: named(k) for k in ("a", "a2", "b", "z")}
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, base, lambda log, lp: config(lp, build(ports[next(it)])), ext="yaml")
    if pair is None:
        FAILS.append("envoy")
        return
    try:
        got = {p: counts(pair.ports[p]["main"], n) for p in ("envoy", "ringside")}
    finally:
        pair.stop()
    keys = sorted(set(got["envoy"]) | set(got["ringside"]))
    e = {k: got["envoy"].get(k, 0) for k in keys}
    r = {k: got["ringside"].get(k, 0) for k in keys}
    ok = all(abs(e[k] - r[k]) <= tolerance for k in keys)
    check(ok, f"{label} ({n} requests, ±{tolerance}):\n  envoy:    {e}\n  ringside: {r}")


def main():
    ringside = sys.argv[1]
    lw = "common_lb_config: {locality_weighted_lb_config: {}},"

    def cluster(extra, body):
        return f"{{name: c, connect_timeout: 1s, {extra} load_assignment: {{cluster_name: c, endpoints: [{body}]}}}}"

    scenario(ringside, 130, "locality weights 1:3, one locality without a weight", 200, 6,
             lambda p: cluster(lw, localities([(1, [ep(p["a"])]), (3, [ep(p["b"])]), (None, [ep(p["z"])])])))
    scenario(ringside, 131, "a locality at half health (0.7 of its weight)", 170, 8,
             lambda p: cluster(lw, localities([(1, [ep(p["a"]), ep(p["a2"], healthy=False)]), (1, [ep(p["b"])])])))
    scenario(ringside, 132, "two hosts in a locality: round robin within it", 120, 6,
             lambda p: cluster(lw, localities([(2, [ep(p["a"]), ep(p["a2"])]), (1, [ep(p["b"])])])))
    scenario(ringside, 133, "panic: localities not weighed", 60, 4,
             lambda p: cluster(lw, localities([(1, [ep(p["a"], healthy=False)]), (9, [ep(p["b"], healthy=False)])])))
    scenario(ringside, 134, "no weight anywhere: every healthy host", 60, 4,
             lambda p: cluster(lw, localities([(None, [ep(p["a"])]), (None, [ep(p["b"])])])))
    scenario(ringside, 135, "least request, weights 1:3, default bias", 300, 30,
             lambda p: cluster("lb_policy: LEAST_REQUEST,",
                               localities([(None, [ep(p["a"], weight=1), ep(p["b"], weight=3)])])))
    scenario(ringside, 136, "least request, weights 1:3, bias 0", 300, 30,
             lambda p: cluster("lb_policy: LEAST_REQUEST, least_request_lb_config: {active_request_bias: {default_value: 0}},",
                               localities([(None, [ep(p["a"], weight=1), ep(p["b"], weight=3)])])))
    # Both draw at random here (Envoy's two choices too): 200 requests, and a tolerance of
    # four standard deviations of the difference of two fair draws (10), so that only a
    # proxy that leans to one host fails.
    scenario(ringside, 137, "least request, equal weights, two hosts (two choices, drawn with replacement)", 200, 40,
             lambda p: cluster("lb_policy: LEAST_REQUEST,", localities([(None, [ep(p["a"]), ep(p["b"])])])))
    scenario(ringside, 138, "round robin with slow start (every host new together)", 120, 10,
             lambda p: cluster("round_robin_lb_config: {slow_start_config: {slow_start_window: 60s}},",
                               localities([(None, [ep(p["a"]), ep(p["b"]), ep(p["a2"])])])))
    return report()


if __name__ == "__main__":
    sys.exit(main())
