#!/usr/bin/env python3
"""Active health checks, Ringside against the official Envoy 1.40: the same cluster with
an HTTP, TCP, h2c or gRPC check over healthy and failing hosts, run through both (one
worker each, their own upstreams); once the checks have settled, each host's
`/clusters` health flags, `cluster.c.health_check.healthy`, which of the check counters
moved, and which hosts the traffic then reaches must be the same.

    tests/interop/health_parity.py RINGSIDE
"""
import http.server
import os
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import FAILS, check, fetch, report, same  # noqa: E402
from envoy_parity import start_pair, stats  # noqa: E402

def http_upstream(name, health_status, immediate=False, healthy_first=0):
    """`/healthz` answers `health_status` (200 for its first `healthy_first` checks)."""
    checks = [0]

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            status = 200
            if self.path == "/healthz":
                checks[0] += 1
                status = 200 if checks[0] <= healthy_first else health_status
            body = name.encode()
            self.send_response(status)
            if immediate and self.path == "/healthz" and checks[0] > healthy_first:
                self.send_header("x-envoy-immediate-health-check-fail", "true")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def tcp_upstream(reply):
    """Answers `reply` to whatever comes (nothing: stays silent)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held = []

    def serve():
        while True:
            c, _ = s.accept()
            held.append(c)

            def one(c=c):
                try:
                    c.recv(1024)
                    if reply:
                        c.sendall(reply)
                except OSError:
                    pass
            threading.Thread(target=one, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def config(ports, ups, hc, threshold=2):
    eps = ", ".join(
        f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}" for p in ups)
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
  - name: c
    connect_timeout: 1s
    health_checks: [{{timeout: 0.5s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: {threshold}, healthy_threshold: 2, {hc}}}]
    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{eps}]}}]}}
"""


def flags(pair, name, ports):
    addr = open(pair.admins[name]).read().strip()
    text = urllib.request.urlopen(f"http://{addr}/clusters", timeout=5).read().decode()
    out = []
    for i, p in enumerate(ports):
        line = [l for l in text.splitlines() if l.startswith(f"c::127.0.0.1:{p}::health_flags::")]
        out.append((i, line[0].split("::")[-1] if line else None))
    return out


def reached(port, n):
    got = {}
    for _ in range(n):
        data = fetch(port, b"GET /x HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n")
        body = data.partition(b"\r\n\r\n")[2].decode()
        got[body.split("-")[-1]] = got.get(body.split("-")[-1], 0) + 1
    return sorted(got)


def scenario(ringside, base, label, hc, make, threshold=2):
    """`make(proxy)` starts that proxy's upstreams and returns their ports."""
    ups = {p: make(p) for p in ("envoy", "ringside")}
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, base, lambda log, lp: config(lp, ups[next(it)], hc, threshold), ext="yaml")
    if pair is None:
        FAILS.append("envoy")
        return
    try:
        time.sleep(1.5)
        same(f"{label}: each host's health flags",
             flags(pair, "envoy", ups["envoy"]), flags(pair, "ringside", ups["ringside"]))
        keep = lambda n: n.startswith("cluster.c.health_check.")  # noqa: E731
        s = {p: stats(pair.admins[p], keep) for p in ("envoy", "ringside")}
        shape = {p: {"healthy": v.get("cluster.c.health_check.healthy"),
                     "moved": sorted(k.rsplit(".", 1)[1] for k, x in v.items() if x and k != "cluster.c.health_check.healthy")}
                 for p, v in s.items()}
        same(f"{label}: health_check stats", shape["envoy"], shape["ringside"])
        same(f"{label}: which hosts take traffic",
             reached(pair.ports["envoy"]["main"], 12), reached(pair.ports["ringside"]["main"], 12))
    finally:
        pair.stop()


def main():
    ringside = sys.argv[1]
    scenario(ringside, 140, "HTTP: one host answers 503", "http_health_check: {path: /healthz}",
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-bad", 503)])
    scenario(ringside, 141, "HTTP: expected_statuses [200, 300) and a 202",
             "http_health_check: {path: /healthz, expected_statuses: [{start: 200, end: 300}]}",
             lambda p: [http_upstream(f"{p}-ok", 202), http_upstream(f"{p}-bad", 404)])
    scenario(ringside, 142, "HTTP: a closed port (network failures)", "http_health_check: {path: /healthz}",
             lambda p: [http_upstream(f"{p}-ok", 200), closed_port()])
    scenario(ringside, 145, "HTTP: x-envoy-immediate-health-check-fail", "http_health_check: {path: /healthz}",
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-bad", 200, immediate=True)])
    scenario(ringside, 146, "HTTP: x-envoy-immediate-health-check-fail on a 503", "http_health_check: {path: /healthz}",
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-bad", 503, immediate=True)])
    # retriable_statuses: a host that was healthy and then answers a retriable 503 stays
    # in below unhealthy_threshold (100), and goes out at once on a status that is not
    # retriable; the immediate-fail header on a retriable status.
    retriable = "http_health_check: {path: /healthz, retriable_statuses: [{start: 500, end: 504}]}"
    scenario(ringside, 147, "HTTP: retriable 503s below the threshold", retriable,
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-flaky", 503, healthy_first=2)],
             threshold=100)
    scenario(ringside, 148, "HTTP: retriable 503s reach the threshold", retriable,
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-flaky", 503, healthy_first=2)],
             threshold=3)
    scenario(ringside, 149, "HTTP: a 404 that is not retriable", retriable,
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-bad", 404, healthy_first=2)],
             threshold=100)
    scenario(ringside, 150, "HTTP: retriable 503 with x-envoy-immediate-health-check-fail", retriable,
             lambda p: [http_upstream(f"{p}-ok", 200), http_upstream(f"{p}-flaky", 503, immediate=True, healthy_first=2)],
             threshold=100)
    scenario(ringside, 143, "TCP: send and receive", "tcp_health_check: {send: {text: 70696e67}, receive: [{text: 706f6e67}]}",
             lambda p: [tcp_upstream(b"pong"), tcp_upstream(b"")])
    scenario(ringside, 144, "TCP: connect only", "tcp_health_check: {}",
             lambda p: [tcp_upstream(b""), closed_port()])
    return report()


def closed_port():
    """A port bound but never listening: connections are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    HOLD.append(s)
    return s.getsockname()[1]


HOLD = []

if __name__ == "__main__":
    sys.exit(main())
