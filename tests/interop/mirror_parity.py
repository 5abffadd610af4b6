#!/usr/bin/env python3
"""Request mirroring (`request_mirror_policies`), Ringside against the official Envoy 1.40.

Both proxies run the same configuration (one worker each), each with its own primary and
mirror upstreams that record every request. The same requests go to both; what each
mirror upstream received (method, path, headers, body) must be the same, request ids and
the proxy's own address aside, and so must the clusters' request stats.

    tests/interop/mirror_parity.py RINGSIDE
"""
import http.server
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import check, report, same  # noqa: E402
from envoy_parity import start_pair, stats  # noqa: E402

def recorder(name):
    """An HTTP/1.1 upstream recording (method, path, headers, body) of each request."""
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def body(self):
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("content-length", "0"))
            return self.rfile.read(n) if n else b""

        def handle_any(self):
            body = self.body()
            seen.append((self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()], body))
            answer = f"{name} {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = handle_any

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1], seen


def config(ports, up):
    """`up`: this proxy's upstream ports by cluster name."""
    clusters = "\n".join(
        f"  - {{name: {c}, connect_timeout: 1s, load_assignment: {{cluster_name: {c}, endpoints: "
        f"[{{lb_endpoints: [{{endpoint: {{hostname: {c}.internal, address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}]}}]}}}}"
        for c, p in up.items())
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
          route_config:
            request_mirror_policies: [{{cluster: m3}}]
            virtual_hosts:
            - name: a
              domains: ['*']
              request_headers_to_add: [{{header: {{key: x-vhost, value: v}}}}]
              routes:
              - match: {{prefix: /plain}}
                route: {{cluster: primary, timeout: 7s, request_mirror_policies: [{{cluster: m1}}]}}
              - match: {{prefix: /some}}
                route:
                  cluster: primary
                  request_mirror_policies:
                  - {{cluster: m1, runtime_fraction: {{default_value: {{numerator: 0}}}}}}
                  - {{cluster_header: x-mirror-to}}
                  - {{cluster: m2, host_rewrite_literal: other.example, disable_shadow_host_suffix_append: true}}
              - match: {{prefix: /rewritten}}
                route: {{cluster: primary, host_rewrite_literal: up.example, prefix_rewrite: /r/, request_mirror_policies: [{{cluster: m1}}]}}
                request_headers_to_add: [{{header: {{key: x-route, value: r}}}}]
              - match: {{prefix: /auto}}
                route: {{cluster: primary, auto_host_rewrite: true, request_mirror_policies: [{{cluster: m1}}]}}
              - match: {{prefix: /inherited}}
                route: {{cluster: primary}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  - name: traced
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['traced']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: traced
          tracing:
            provider:
              name: envoy.tracers.zipkin
              typed_config: {{"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: zipkin, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON}}
          route_config:
            virtual_hosts:
            - name: t
              domains: ['*']
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: primary
                  request_mirror_policies: [{{cluster: m5}}, {{cluster: m6, trace_sampled: false}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters:
{clusters}
"""


def send(port, raw):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(raw)
    s.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data or not complete(data):
            d = s.recv(65536)
            if not d:
                break
            data += d
    except socket.timeout:
        pass
    s.close()
    return data


def complete(data):
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


# Values that differ between the two runs by nature.
MASKED = {"x-request-id", "x-forwarded-for", "date", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid"}


def shown(rec):
    method, path, headers, body = rec
    # Header order aside (Envoy's header map moves some headers when it rewrites them).
    hs = sorted((k, "<masked>" if k in MASKED else v) for k, v in headers)
    return (method, path, hs, len(body), body[:16])


def main():
    ringside = sys.argv[1]
    ups = {}
    for proxy in ("envoy", "ringside"):
        ups[proxy] = {c: recorder(f"{proxy}-{c}") for c in ("primary", "m1", "m2", "m3", "m4", "m5", "m6", "zipkin")}
    ports = {p: {c: port for c, (port, _) in u.items()} for p, u in ups.items()}
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, 120, lambda log, lp: config(lp, ports[next(it)]), listeners=("main", "traced"),
                      ext="yaml")
    if pair is None:
        return 1
    try:
        requests = [
            b"GET /plain/a?b=c HTTP/1.1\r\nhost: svc.example:8080\r\nx-forwarded-for: 10.1.2.3\r\nconnection: close\r\n\r\n",
            b"GET /plain/b HTTP/1.1\r\nhost: svc.example\r\nconnection: close\r\n\r\n",
            b"GET /plain/v6 HTTP/1.1\r\nhost: [::1]:80\r\nconnection: close\r\n\r\n",
            b"POST /plain/len HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
            b"POST /plain/chunked HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"POST /plain/big HTTP/1.1\r\nhost: a\r\ncontent-length: 200000\r\nconnection: close\r\n\r\n" + b"b" * 200000,
            b"GET /some/x HTTP/1.1\r\nhost: s\r\nx-mirror-to: m4\r\nconnection: close\r\n\r\n",
            b"GET /some/y HTTP/1.1\r\nhost: s\r\nx-mirror-to: nowhere\r\nconnection: close\r\n\r\n",
            b"GET /some/z HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n",
            b"GET /rewritten/q HTTP/1.1\r\nhost: s\r\nx-envoy-internal: false\r\nconnection: close\r\n\r\n",
            b"GET /auto/a HTTP/1.1\r\nhost: svc.example\r\nconnection: close\r\n\r\n",
            b"GET /inherited/i HTTP/1.1\r\nhost: i.example\r\nconnection: close\r\n\r\n",
            b"HEAD /plain/head HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
        ]
        for raw in requests:
            answers = {}
            for proxy in ("envoy", "ringside"):
                answers[proxy] = send(pair.ports[proxy]["main"], raw).split(b"\r\n")[0]
            same(f"{raw.split(b' ')[1].decode()}: status line", answers["envoy"], answers["ringside"])
        traced = [
            b"GET /t/1 HTTP/1.1\r\nhost: t\r\nx-b3-traceid: 0000000000000001000000000000000a\r\n"
            b"x-b3-spanid: 000000000000000b\r\nx-b3-sampled: 1\r\nconnection: close\r\n\r\n",
            b"GET /t/2 HTTP/1.1\r\nhost: t\r\nx-b3-traceid: 0000000000000001000000000000000a\r\n"
            b"x-b3-spanid: 000000000000000b\r\nx-b3-sampled: 0\r\nconnection: close\r\n\r\n",
            b"GET /t/3 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        ]
        for raw in traced:
            for proxy in ("envoy", "ringside"):
                send(pair.ports[proxy]["traced"], raw)
        time.sleep(1.0)
        # The mirrors' trace context: a child of the request's span, sampled as the
        # request is, or as trace_sampled says.
        for path in ("/t/1", "/t/2", "/t/3"):
            shape = {}
            for p in ("envoy", "ringside"):
                h = {c: dict(next((r[2] for r in ups[p][c][1] if r[1] == path), [])) for c in ("primary", "m5", "m6")}
                b3 = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")
                shape[p] = {
                    c: {k: h[c].get(k) == h["primary"].get(k) if k in ("x-b3-traceid", "x-b3-parentspanid", "x-b3-spanid")
                        else h[c].get(k) for k in b3}
                    for c in ("m5", "m6")}
                for c in ("m5", "m6"):
                    shape[p][c]["parent is the request's span"] = h[c].get("x-b3-parentspanid") == h["primary"].get("x-b3-spanid")
                    shape[p][c]["present"] = sorted(k for k in h[c] if k.startswith("x-b3") or k in ("b3", "traceparent"))
            same(f"{path}: the mirrors' trace context", shape["envoy"], shape["ringside"])
        # The mirrors' own spans (Zipkin flushes each second): m5's, sampled as the
        # request is; m6's not (trace_sampled: false).
        time.sleep(1.5)
        spans = {}
        for p in ("envoy", "ringside"):
            got = [sp for r in ups[p]["zipkin"][1] for sp in json.loads(r[3])]
            ids = {sp["id"]: sp for sp in got}
            spans[p] = sorted(
                (sp["name"], sp["kind"], ids.get(sp.get("parentId"), {}).get("tags", {}).get("http.url"),
                 sorted((k, v) for k, v in sp["tags"].items() if k not in ("peer.address", "upstream_address")))
                for sp in got if sp["name"] == "mirror")
            check(all(sp["tags"].get("upstream_address") == f"127.0.0.1:{ports[p]['m5']}"
                      for sp in got if sp["name"] == "mirror"), f"{p}: mirror spans' upstream_address")
        same("the mirrors' spans", spans["envoy"], spans["ringside"])
        for c in ("primary", "m1", "m2", "m3", "m4", "m5", "m6"):
            got = {p: sorted((shown(r) for r in ups[p][c][1]), key=lambda r: r[1]) for p in ("envoy", "ringside")}
            same(f"cluster {c}: the requests it received", got["envoy"], got["ringside"])
        # The mirror's x-forwarded-for ends with the proxy's own address, after the client's.
        for p in ("envoy", "ringside"):
            m1 = [r for r in ups[p]["m1"][1] if r[1] == "/plain/a?b=c"]
            xff = dict(m1[0][2]).get("x-forwarded-for", "") if m1 else ""
            check(xff.startswith("10.1.2.3,") and len(xff) > len("10.1.2.3,"), f"{p}: mirror x-forwarded-for {xff!r}")
        # Envoy's internal./external. split of the request stats is not kept by Ringside.
        keep = lambda n: n.startswith("cluster.") and ".internal." not in n and ".external." not in n and any(  # noqa: E731
            n.endswith(s) for s in (".upstream_rq_total", ".upstream_rq_200", ".upstream_rq_2xx",
                                    ".upstream_rq_completed", ".retry_or_shadow_abandoned",
                                    ))
        values = {n: stats(p, keep) for n, p in pair.admins.items()}
        same("cluster request stats", values["envoy"], values["ringside"])
    finally:
        pair.stop()
    return report()


if __name__ == "__main__":
    sys.exit(main())
