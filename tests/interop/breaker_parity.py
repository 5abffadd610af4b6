#!/usr/bin/env python3
"""Circuit breakers' retry budgets and per-host connection limits, Ringside against the
official Envoy 1.40: the same configuration through both (one worker each, their own
upstreams), the same requests, and the same answers and counters.

    tests/interop/breaker_parity.py RINGSIDE
"""
import http.server
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import check, fetch, report, same  # noqa: E402
from envoy_parity import start_pair, static_http_listener, stats  # noqa: E402


def upstream():
    """`/sleep` answers after half a second; `/flaky/N` answers 503 to its first request
    and 200 after; anything else 200."""
    seen = set()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if "/sleep" in self.path:
                time.sleep(0.5)
            status = 200
            if "/flaky/" in self.path and self.path not in seen:
                seen.add(self.path)
                status = 503
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


CLUSTERS = {
    "perhost": "circuit_breakers: {per_host_thresholds: [{max_connections: 1}]},",
    "nobudget": "circuit_breakers: {thresholds: [{max_retries: 0, retry_budget: {budget_percent: {value: 0}, min_retry_concurrency: 0}}]},",
    "budget": "circuit_breakers: {thresholds: [{max_retries: 0, retry_budget: {budget_percent: {value: 0}, min_retry_concurrency: 1}, track_remaining: true}]},",
}


def config(ports, up):
    routes = ", ".join(
        f"{{match: {{prefix: /{c}/}}, route: {{cluster: {c}, retry_policy: {{retry_on: 5xx, num_retries: 2}}}}}}"
        for c in CLUSTERS)
    clusters = "\n".join(
        f"  - {{name: {c}, connect_timeout: 1s, {extra} load_assignment: {{cluster_name: {c}, endpoints: "
        f"[{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]}}}}"
        for c, extra in CLUSTERS.items())
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
{static_http_listener(ports['main'], routes)}  clusters:
{clusters}
"""


def get(port, path):
    data = fetch(port, f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
    return data.split(b"\r\n")[0].decode()


def main():
    ringside = sys.argv[1]
    ups = {p: upstream() for p in ("envoy", "ringside")}
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, 150, lambda log, lp: config(lp, ups[next(it)]), ext="yaml")
    if pair is None:
        return 1
    try:
        got = {}
        for p in ("envoy", "ringside"):
            port = pair.ports[p]["main"]
            answers = [get(port, "/nobudget/flaky/1"), get(port, "/budget/flaky/2")]
            # A slow request holds the host's one connection; the next waits for it.
            slow = []
            t = threading.Thread(target=lambda: slow.append(get(port, "/perhost/sleep")))
            t.start()
            time.sleep(0.15)
            answers.append(get(port, "/perhost/x"))
            t.join()
            answers += slow
            got[p] = answers
        same("answers (no budget, a budget of one, a wait at the per-host limit)", got["envoy"], got["ringside"])
        check(got["ringside"] == ["HTTP/1.1 503 Service Unavailable", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
              f"ringside's answers: {got['ringside']}")
        time.sleep(0.3)
        names = ("upstream_rq_retry", "upstream_rq_retry_overflow", "upstream_cx_overflow",
                 "upstream_rq_pending_overflow", "circuit_breakers.default.remaining_retries")
        keep = lambda n: any(n == f"cluster.{c}.{x}" for c in CLUSTERS for x in names)  # noqa: E731
        values = {p: stats(pair.admins[p], keep) for p in ("envoy", "ringside")}
        same("the counters", values["envoy"], values["ringside"])
    finally:
        pair.stop()
    return report()


if __name__ == "__main__":
    sys.exit(main())
