#!/usr/bin/env python3
"""Outlier detection and panic mode, Ringside against the official Envoy 1.40.

Each scenario runs the same configuration through both (one worker each, the same
upstreams), sends the same requests, and compares what the clients got, the
`cluster.c.outlier_detection.*` and `lb_healthy_panic` stats, `/clusters` while a host is
ejected (every line Ringside prints must be one Envoy prints), and the outlier event log
(`cluster_manager.outlier_detection.event_log_path`) event by event, timestamps aside.

    tests/interop/outlier_parity.py RINGSIDE
"""
import http.server
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import FAILS, check, fetch, report, same  # noqa: E402
from envoy_parity import free_port, start_pair, stats  # noqa: E402

def backend(status):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = b"x"
            self.send_response(status)
            self.send_header("content-length", "1")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def config(log, ports, hosts, cluster_extra):
    """`hosts`: [(port, extra fields)] in one locality, or {priority: [(port, extra)]}."""
    def eps_of(hs):
        return ", ".join(
            f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}{h}}}"
            for p, h in hs)
    if isinstance(hosts, dict):
        localities = ", ".join(
            f"{{priority: {prio}, locality: {{region: r, zone: z{prio}}}, lb_endpoints: [{eps_of(hs)}]}}"
            for prio, hs in sorted(hosts.items()))
    else:
        localities = f"{{lb_endpoints: [{eps_of(hosts)}]}}"
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
cluster_manager: {{outlier_detection: {{event_log_path: {log}}}}}
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
  - {{name: c, connect_timeout: 1s, {cluster_extra} load_assignment: {{cluster_name: c, endpoints: [{localities}]}}}}
"""


def get(port, n):
    """`n` requests, one connection each; the statuses in order."""
    out = []
    for _ in range(n):
        data = fetch(port, b"GET /x HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n")
        out.append(int(data.split(b" ")[1]) if data.count(b" ") else 0)
    return out


def admin(pair, name, path):
    addr = open(pair.admins[name]).read().strip()
    return urllib.request.urlopen(f"http://{addr}{path}", timeout=5).read().decode()


def od_stats(pair):
    keep = lambda n: n.startswith("cluster.c.outlier_detection.") or n == "cluster.c.lb_healthy_panic"  # noqa: E731
    return {n: stats(p, keep) for n, p in pair.admins.items()}


def events(pair, name):
    out = []
    try:
        for line in open(pair.logs[name]):
            e = json.loads(line)
            e.pop("timestamp", None)
            out.append(e)
    except FileNotFoundError:
        pass
    return out


def scenario(ringside, label, hosts, extra, steps, base):
    pair = start_pair(ringside, base, lambda log, ports: config(log, ports, hosts, extra), ext="yaml")
    if pair is None:
        FAILS.append("envoy")
        return
    try:
        steps(pair)
    finally:
        pair.stop()


def main():
    ringside = sys.argv[1]
    good1, good2, good3, good4 = (backend(200) for _ in range(4))
    bad503, bad502, bad500 = backend(503), backend(502), backend(500)
    refused = free_port()

    def consecutive(pair):
        got = {n: get(pair.ports[n]["main"], 9) for n in ("envoy", "ringside")}
        same("consecutive_5xx: the first 9 answers (sorted)", sorted(got["envoy"]), sorted(got["ringside"]))
        time.sleep(0.3)
        got = {n: get(pair.ports[n]["main"], 12) for n in ("envoy", "ringside")}
        same("consecutive_5xx: while ejected", got["envoy"], got["ringside"])
        check(got["ringside"] == [200] * 12, f"consecutive_5xx: all 200 while ejected: {got['ringside']}")
        s = od_stats(pair)
        same("consecutive_5xx: stats while ejected", s["envoy"], s["ringside"])
        lines = {n: set(admin(pair, n, "/clusters").splitlines()) for n in ("envoy", "ringside")}
        extra = sorted(l for l in lines["ringside"] if l not in lines["envoy"])
        check(not extra, f"consecutive_5xx: /clusters lines Envoy does not print: {extra}")
        flag = f"c::127.0.0.1:{bad503}::health_flags::/failed_outlier_check"
        check(flag in lines["envoy"] and flag in lines["ringside"], f"consecutive_5xx: {flag}")
        time.sleep(1.8)
        s = od_stats(pair)
        same("consecutive_5xx: stats once unejected", s["envoy"], s["ringside"])
        same("consecutive_5xx: event log", events(pair, "envoy"), events(pair, "ringside"))

    scenario(ringside, "consecutive", [(good1, ""), (good2, ""), (bad503, "")],
             "outlier_detection: {consecutive_5xx: 3, interval: 0.5s, base_ejection_time: 1s, max_ejection_percent: 100},",
             consecutive, 100)

    def simple(name, n, wait=0.5):
        def run(pair):
            got = {k: get(pair.ports[k]["main"], n) for k in ("envoy", "ringside")}
            same(f"{name}: answers (sorted)", sorted(got["envoy"]), sorted(got["ringside"]))
            time.sleep(wait)
            s = od_stats(pair)
            same(f"{name}: stats", s["envoy"], s["ringside"])
            same(f"{name}: event log", events(pair, "envoy"), events(pair, "ringside"))
        return run

    scenario(ringside, "gateway", [(good1, ""), (bad502, "")],
             "outlier_detection: {consecutive_5xx: 1000, consecutive_gateway_failure: 2, interval: 0.5s, max_ejection_percent: 100},",
             simple("gateway failures, not enforced", 4), 101)
    scenario(ringside, "gateway-enforced", [(good1, ""), (bad502, "")],
             "outlier_detection: {consecutive_5xx: 1000, consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, interval: 0.5s, max_ejection_percent: 100},",
             simple("gateway failures, enforced", 4), 102)
    scenario(ringside, "overflow", [(good1, ""), (good2, ""), (bad500, "")],
             "outlier_detection: {consecutive_5xx: 2, interval: 0.5s},",
             simple("max_ejection_percent overflow", 6), 103)
    scenario(ringside, "local", [(good1, ""), (refused, "")],
             "outlier_detection: {split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, interval: 0.5s, max_ejection_percent: 100},",
             simple("local-origin failures (split)", 4), 104)
    five = [(good1, ""), (good2, ""), (good3, ""), (good4, ""), (bad500, "")]
    scenario(ringside, "success-rate", five,
             "outlier_detection: {enforcing_consecutive_5xx: 0, success_rate_request_volume: 10, success_rate_stdev_factor: 1000, interval: 3s, max_ejection_percent: 100},",
             simple("success rate", 100, wait=3.5), 105)
    scenario(ringside, "failure-percentage", five,
             "outlier_detection: {enforcing_consecutive_5xx: 0, enforcing_success_rate: 0, enforcing_failure_percentage: 100, failure_percentage_request_volume: 10, interval: 3s, max_ejection_percent: 100},",
             simple("failure percentage", 100, wait=3.5), 106)
    unhealthy = [(good1, ", health_status: UNHEALTHY"), (good2, ", health_status: UNHEALTHY")]
    scenario(ringside, "panic", unhealthy, "", simple("panic mode (all unhealthy)", 4), 107)
    scenario(ringside, "no-panic", unhealthy, "common_lb_config: {healthy_panic_threshold: {value: 0}},",
             simple("healthy_panic_threshold 0", 4), 108)
    # Priorities: failover when P0 is down, and an ejection failing over (Istio's
    # locality failover with outlier detection). /clusters' priority and locality lines
    # must be Envoy's.
    def clusters_lines(name):
        def run(pair):
            simple(name, 8)(pair)
            lines = {n: set(admin(pair, n, "/clusters").splitlines()) for n in ("envoy", "ringside")}
            extra = sorted(l for l in lines["ringside"] if l not in lines["envoy"])
            check(not extra, f"{name}: /clusters lines Envoy does not print: {extra}")
            hosts = {n: [(h["address"]["socket_address"]["port_value"], h.get("priority"), h.get("locality"))
                         for c in json.loads(admin(pair, n, "/clusters?format=json"))["cluster_statuses"]
                         for h in c.get("host_statuses", [])] for n in ("envoy", "ringside")}
            same(f"{name}: /clusters?format=json priorities and localities", hosts["envoy"], hosts["ringside"])
        return run

    scenario(ringside, "failover", {0: [(good1, ", health_status: UNHEALTHY")], 1: [(good2, "")]}, "",
             clusters_lines("P0 unhealthy: all to P1"), 109)
    scenario(ringside, "outlier-failover", {0: [(bad503, "")], 1: [(good1, "")]},
             "outlier_detection: {consecutive_5xx: 2, interval: 0.5s, base_ejection_time: 30s, max_ejection_percent: 100}, common_lb_config: {healthy_panic_threshold: {value: 0}},",
             simple("an ejection fails over to P1", 10), 110)
    scenario(ringside, "total-panic", {0: [(good1, ", health_status: UNHEALTHY")], 1: [(good2, ", health_status: UNHEALTHY")]},
             "", simple("total panic over two priorities", 6), 111)
    return report()


if __name__ == "__main__":
    sys.exit(main())
