#!/usr/bin/env python3
"""Upstream connection options and failure accounting, Ringside against the official
Envoy 1.40: the typed HttpProtocolOptions' common options istiod writes
(`max_headers_count`, `max_connection_duration`, `idle_timeout`,
`max_requests_per_connection`) over HTTP/1.1 and HTTP/2 upstreams, and how an
upstream's failure (connect refused, timeout, no endpoint, a reset, a protocol error) is
charged to its cluster. The same configuration through both (one worker each, their own
upstreams), the same requests; the same answers, upstream connections and counters.

    tests/interop/pool_parity.py RINGSIDE
"""
import os
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import check, fetch, report, same  # noqa: E402
from envoy_parity import free_port, start_pair, static_http_listener, stats  # noqa: E402


def number(path):
    try:
        return int(path.rsplit("/", 1)[1])
    except ValueError:
        return 0


class Upstream:
    """A plain TCP server on its own thread per connection; counts connections."""

    def __init__(self, serve):
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            c, _ = self.sock.accept()
            self.accepted += 1
            threading.Thread(target=self.guard, args=(c,), daemon=True).start()

    def guard(self, c):
        try:
            self.serve(c)
        except OSError:
            pass
        finally:
            c.close()


def h1(c):
    """`/headers/N`: exactly N header lines (the last is content-length); `/sleep/MS`."""
    buf = b""
    while True:
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if "/sleep/" in path:
                time.sleep(number(path) / 1000)
            n = number(path) if "/headers/" in path else 1
            lines = "".join(f"x-h{i}: v\r\n" for i in range(max(n - 1, 0)))
            c.sendall(f"HTTP/1.1 200 OK\r\n{lines}content-length: 2\r\n\r\nok".encode())
        d = c.recv(65536)
        if not d:
            return
        buf += d


def h2c(c):
    """HTTP/2: `/headers/N`: N headers besides `:status`; `/sleep/MS`."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    c.sendall(conn.data_to_send())
    lock = threading.Lock()

    def answer(sid, path):
        if "/sleep/" in path:
            time.sleep(number(path) / 1000)
        n = number(path) if "/headers/" in path else 0
        with lock:
            conn.send_headers(sid, [(":status", "200")] + [(f"x-h{i}", "v") for i in range(n)])
            conn.send_data(sid, b"ok", end_stream=True)
            c.sendall(conn.data_to_send())

    while True:
        d = c.recv(65536)
        if not d:
            return
        with lock:
            events = conn.receive_data(d)
            c.sendall(conn.data_to_send())
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[b":path"].decode()
                threading.Thread(target=answer, args=(ev.stream_id, path), daemon=True).start()


def typed(common, http2):
    explicit = "http2_protocol_options" if http2 else "http_protocol_options"
    return ("typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: "
            "{'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, "
            f"common_http_protocol_options: {{{common}}}, explicit_http_config: {{{explicit}: {{}}}}}}}},")


# name: (upstream kind, cluster options, route options)
CLUSTERS = {
    "h1lim": ("h1", typed("max_headers_count: 3", False), ""),
    "h2lim": ("h2", typed("max_headers_count: 3", True), ""),
    "aged": ("h1", typed("max_connection_duration: 1s", False), ""),
    "aged2": ("h2", typed("max_connection_duration: 1s", True), ""),
    "idle2": ("h2", typed("idle_timeout: 1s", True), ""),
    "maxrq": ("h1", typed("max_requests_per_connection: 2", False), ""),
    "conc": ("h2", "http2_protocol_options: {max_concurrent_streams: 1},", ""),
    "refused": ("closed", "", ""),
    "slow": ("h1", "", "timeout: 0.3s,"),
    "none": (None, "", ""),
}


def config(ports, ups):
    routes = ", ".join(
        f"{{match: {{prefix: /{c}/}}, route: {{cluster: {c}, {r}}}}}" for c, (_, _, r) in CLUSTERS.items())
    clusters = []
    for c, (kind, extra, _) in CLUSTERS.items():
        eps = ""
        if kind:
            eps = (f"{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, "
                   f"port_value: {ups[kind]}}}}}}}}}]}}")
        clusters.append(f"  - {{name: {c}, connect_timeout: 1s, {extra} load_assignment: "
                        f"{{cluster_name: {c}, endpoints: [{eps}]}}}}")
    clusters = "\n".join(clusters)
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
{static_http_listener(ports['main'], routes)}  clusters:
{clusters}
"""


def get(port, path):
    """The status line and the body."""
    data = fetch(port, f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode() + " | " + body.decode(errors="replace")


def main():
    ringside = sys.argv[1]
    ups = {}
    for p in ("envoy", "ringside"):
        ups[p] = {"h1": Upstream(h1), "h2": Upstream(h2c)}
    ports = {p: {k: u.port for k, u in ups[p].items()} for p in ups}
    for p in ports:
        ports[p]["closed"] = free_port()
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, 170, lambda log, lp: config(lp, ports[next(it)]), ext="yaml")
    if pair is None:
        return 1
    try:
        answers = {p: [] for p in ports}
        conns = {p: [] for p in ports}
        for p in ("envoy", "ringside"):
            port, a = pair.ports[p]["main"], answers[p]
            for path in ("/h1lim/headers/3", "/h1lim/headers/4", "/h2lim/headers/2", "/h2lim/headers/3",
                         "/refused/x", "/slow/sleep/1000", "/none/x"):
                a.append(get(port, path))
            before = ups[p]["h1"].accepted
            a += [get(port, "/maxrq/x") for _ in range(5)]
            conns[p].append(("max_requests_per_connection 2, 5 requests", ups[p]["h1"].accepted - before))
            # Two at once on a cluster that allows one stream per connection.
            before = ups[p]["h2"].accepted
            both = []
            ts = [threading.Thread(target=lambda: both.append(get(port, "/conc/sleep/400"))) for _ in range(2)]
            for t in ts:
                t.start()
                time.sleep(0.1)
            for t in ts:
                t.join()
            a += both
            conns[p].append(("max_concurrent_streams 1, 2 at once", ups[p]["h2"].accepted - before))
        # Connections age and idle out in both at once.
        before = {p: (ups[p]["h1"].accepted, ups[p]["h2"].accepted) for p in ports}
        for p in ports:
            port = pair.ports[p]["main"]
            for path in ("/aged/x", "/aged/x", "/aged2/x", "/aged2/x", "/idle2/x"):
                answers[p].append(get(port, path))
        time.sleep(2.5)
        for p in ports:
            port = pair.ports[p]["main"]
            for path in ("/aged/x", "/aged2/x", "/idle2/x"):
                answers[p].append(get(port, path))
            conns[p].append(("aged, idled: new connections", (ups[p]["h1"].accepted - before[p][0],
                                                             ups[p]["h2"].accepted - before[p][1])))
        same("answers", answers["envoy"], answers["ringside"])
        same("upstream connections opened", conns["envoy"], conns["ringside"])
        check(answers["ringside"][1].startswith("HTTP/1.1 502"), f"ringside's answers: {answers['ringside']}")
        time.sleep(0.5)
        names = ("upstream_cx_max_duration_reached", "upstream_cx_idle_timeout", "upstream_cx_max_requests",
                 "upstream_cx_protocol_error", "upstream_rq_rx_reset", "upstream_rq_completed",
                 "upstream_rq_5xx", "upstream_rq_2xx", "upstream_rq_502", "upstream_rq_503", "upstream_rq_504",
                 "upstream_rq_timeout", "upstream_cx_total", "upstream_cx_http1_total",
                 "upstream_cx_http2_total", "upstream_cx_none_healthy")
        keep = lambda n: any(n == f"cluster.{c}.{x}" for c in CLUSTERS for x in names)  # noqa: E731
        values = {p: stats(pair.admins[p], keep) for p in ("envoy", "ringside")}
        for name in sorted(set(values["envoy"]) | set(values["ringside"])):
            same(name, values["envoy"].get(name), values["ringside"].get(name))
    finally:
        pair.stop()
    return report()


if __name__ == "__main__":
    sys.exit(main())
