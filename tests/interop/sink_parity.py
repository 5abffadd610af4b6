#!/usr/bin/env python3
"""Stat sinks, Ringside against the official Envoy 1.40: the same bootstrap (a statsd sink
over UDP and a metrics service sink over gRPC, flushed every half second) through both, the
same requests, and what each collector receives compared: the metrics service's stream
(the node in its first message only; the families each proxy sends, by name and type, with
Ringside's a subset of Envoy's; counter values; histogram samples summed over the
intervals), and statsd's datagrams (one metric each, counters' changes summing to the
count).

    tests/interop/sink_parity.py RINGSIDE
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
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from envoy.config.core.v3 import base_pb2  # noqa: F401  (registers Node)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import check, fetch, report, same  # noqa: E402
from envoy_parity import start_pair, static_http_listener  # noqa: E402

NODE = "sidecar~10.0.0.9~app.ns~ns.svc.cluster.local"
REQUESTS = 4


def metrics_message_class():
    """StreamMetricsMessage from Envoy's and Prometheus' field numbers (xds-protos has
    neither the service nor the client model)."""
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.Default()

    def field(m, name, num, typ, label=F.LABEL_OPTIONAL, type_name=None):
        f = m.field.add(name=name, number=num, type=typ, label=label)
        if type_name:
            f.type_name = type_name

    p = descriptor_pb2.FileDescriptorProto(name="parity/prometheus.proto", package="parity.prom", syntax="proto2")
    e = p.enum_type.add(name="MetricType")
    for n, v in [("COUNTER", 0), ("GAUGE", 1), ("SUMMARY", 2), ("UNTYPED", 3), ("HISTOGRAM", 4)]:
        e.value.add(name=n, number=v)
    for name in ("Gauge", "Counter"):
        field(p.message_type.add(name=name), "value", 1, F.TYPE_DOUBLE)
    m = p.message_type.add(name="LabelPair")
    field(m, "name", 1, F.TYPE_STRING)
    field(m, "value", 2, F.TYPE_STRING)
    m = p.message_type.add(name="Quantile")
    field(m, "quantile", 1, F.TYPE_DOUBLE)
    field(m, "value", 2, F.TYPE_DOUBLE)
    m = p.message_type.add(name="Summary")
    field(m, "sample_count", 1, F.TYPE_UINT64)
    field(m, "sample_sum", 2, F.TYPE_DOUBLE)
    field(m, "quantile", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".parity.prom.Quantile")
    m = p.message_type.add(name="Bucket")
    field(m, "cumulative_count", 1, F.TYPE_UINT64)
    field(m, "upper_bound", 2, F.TYPE_DOUBLE)
    m = p.message_type.add(name="Histogram")
    field(m, "sample_count", 1, F.TYPE_UINT64)
    field(m, "sample_sum", 2, F.TYPE_DOUBLE)
    field(m, "bucket", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".parity.prom.Bucket")
    m = p.message_type.add(name="Metric")
    field(m, "label", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".parity.prom.LabelPair")
    for n, num in (("gauge", 2), ("counter", 3), ("summary", 4), ("histogram", 7)):
        field(m, n, num, F.TYPE_MESSAGE, type_name=".parity.prom." + n.capitalize())
    field(m, "timestamp_ms", 6, F.TYPE_INT64)
    m = p.message_type.add(name="MetricFamily")
    field(m, "name", 1, F.TYPE_STRING)
    field(m, "type", 3, F.TYPE_ENUM, type_name=".parity.prom.MetricType")
    field(m, "metric", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".parity.prom.Metric")
    pool.Add(p)
    s = descriptor_pb2.FileDescriptorProto(name="parity/metrics_service.proto", package="parity.ms", syntax="proto3",
                                           dependency=["envoy/config/core/v3/base.proto", "parity/prometheus.proto"])
    m = s.message_type.add(name="StreamMetricsMessage")
    ident = m.nested_type.add(name="Identifier")
    field(ident, "node", 1, F.TYPE_MESSAGE, type_name=".envoy.config.core.v3.Node")
    field(m, "identifier", 1, F.TYPE_MESSAGE, type_name=".parity.ms.StreamMetricsMessage.Identifier")
    field(m, "envoy_metrics", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".parity.prom.MetricFamily")
    pool.Add(s)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("parity.ms.StreamMetricsMessage"))


Message = metrics_message_class()


class Collector:
    """A MetricsService (gRPC) and a statsd socket (UDP), recording what arrives."""

    def __init__(self):
        self.messages = []  # (stream number, message)
        self.datagrams = []
        self.streams = 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        threading.Thread(target=self.read_udp, daemon=True).start()
        handler = grpc.method_handlers_generic_handler("envoy.service.metrics.v3.MetricsService", {
            "StreamMetrics": grpc.stream_unary_rpc_method_handler(
                self.stream, request_deserializer=lambda b: b, response_serializer=lambda b: b)})
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((handler,))
        self.grpc_port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def read_udp(self):
        while True:
            d, _ = self.udp.recvfrom(70000)
            self.datagrams.append(d.decode(errors="replace"))

    def stream(self, requests, _ctx):
        self.streams += 1
        n = self.streams
        for raw in requests:
            self.messages.append((n, Message.FromString(raw)))
        return b""


class Up(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def config(ports, up, c):
    return f"""
node: {{id: "{NODE}", cluster: app.ns}}
stats_flush_interval: 0.5s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config: {{"@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, address: {{socket_address: {{address: 127.0.0.1, port_value: {c.udp_port}}}}}, prefix: px}}
- name: envoy.stat_sinks.metrics_service
  typed_config: {{"@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V3, grpc_service: {{envoy_grpc: {{cluster_name: ms}}}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
{static_http_listener(ports['main'], "{match: {prefix: /}, route: {cluster: up}}")}  clusters:
  - {{name: up, connect_timeout: 1s, load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]}}}}
  - {{name: ms, connect_timeout: 1s, http2_protocol_options: {{}}, load_assignment: {{cluster_name: ms, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {c.grpc_port}}}}}}}}}]}}]}}}}
"""


def families(msg, ports):
    """name -> (type, metric) of one message, the listener's port named, not numbered."""
    out = {}
    for f in msg.envoy_metrics:
        name = re.sub(r"127\.0\.0\.1_(\d+)", lambda m: "127.0.0.1_" + ports.get(m.group(1), "?"), f.name)
        out[(name, f.type)] = f.metric[0]
    return out


def main():
    ringside = sys.argv[1]
    cs = {p: Collector() for p in ("envoy", "ringside")}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Up)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    it = iter(("envoy", "ringside"))
    pair = start_pair(ringside, 190, lambda log, lp: config(lp, srv.server_address[1], cs[next(it)]), ext="yaml")
    if pair is None:
        return 1
    try:
        for p in ("envoy", "ringside"):
            for _ in range(REQUESTS):
                fetch(pair.ports[p]["main"], b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        time.sleep(2.5)
    finally:
        pair.stop()
    names = {p: {str(v): "main" for v in pair.ports[p].values()} for p in cs}
    for p, c in cs.items():
        check(len(c.messages) >= 3, f"{p}: {len(c.messages)} metrics service messages")
        check(len(c.datagrams) > 0, f"{p}: no statsd datagram")
    if any(len(c.messages) < 3 for c in cs.values()):
        return report()
    # The stream: one, the node first and only there.
    for p, c in cs.items():
        first = c.messages[0][1]
        check(first.HasField("identifier") and first.identifier.node.id == NODE,
              f"{p}: the first message names the node")
        check(not any(m.HasField("identifier") for _, m in c.messages[1:]), f"{p}: the node only once")
        check({n for n, _ in c.messages} == {1}, f"{p}: one stream")
    # The families of the last flush: Ringside's are Envoy's (by name and type), each with
    # one metric; the counters the requests moved agree.
    last = {p: families(c.messages[-1][1], names[p]) for p, c in cs.items()}
    extra = sorted(k for k in last["ringside"] if k not in last["envoy"])
    check(not extra, f"families Envoy does not send: {extra[:10]}")
    check(all(len(f.metric) == 1 for _, m in cs["ringside"].messages for f in m.envoy_metrics),
          "one metric per family")
    for name in ("http.main.downstream_rq_total", "http.main.downstream_rq_2xx", "cluster.up.upstream_rq_total",
                 "cluster.up.upstream_rq_200", "cluster.up.upstream_rq_completed"):
        got = {p: last[p].get((name, 0)) for p in cs}
        same(f"counter {name}", *(g.counter.value if g else None for g in (got["envoy"], got["ringside"])))
    gauge = {p: last[p].get(("cluster.up.upstream_cx_active", 1)) for p in cs}
    same("gauge cluster.up.upstream_cx_active", *(g.gauge.value if g else None for g in gauge.values()))
    # Histograms: each interval's samples, summed over the flushes, are the requests.
    for name in ("cluster.up.upstream_rq_time", "http.main.downstream_rq_time"):
        for kind, part in ((2, "summary"), (4, "histogram")):
            total = {p: sum(getattr(families(m, names[p]).get((name, kind)), part).sample_count
                            for _, m in c.messages if (name, kind) in families(m, names[p]))
                     for p, c in cs.items()}
            same(f"{name} {part} samples over the flushes", total["envoy"], total["ringside"])
        buckets = {p: [b.upper_bound for b in last[p][(name, 4)].histogram.bucket] for p in cs}
        same(f"{name} bucket bounds", buckets["envoy"], buckets["ringside"])
        quantiles = {p: [q.quantile for q in last[p][(name, 2)].summary.quantile] for p in cs}
        same(f"{name} quantiles", quantiles["envoy"], quantiles["ringside"])
    # statsd: one metric per datagram under the prefix; counters' changes sum to the count.
    for p, c in cs.items():
        bad = [d for d in c.datagrams if not re.fullmatch(r"px\.[^:\n]+:[0-9.]+\|(c|g|ms)(\|@[0-9.e-]+)?", d)]
        check(not bad, f"{p}: datagrams not in statsd's form: {bad[:5]}")
    sums = {}
    for p, c in cs.items():
        s = {}
        for d in c.datagrams:
            name, _, rest = d.partition(":")
            if rest.endswith("|c"):
                s[name] = s.get(name, 0) + int(rest[:-2])
        sums[p] = s
    for name in ("px.http.main.downstream_rq_total", "px.cluster.up.upstream_rq_200"):
        same(f"statsd {name} summed", sums["envoy"].get(name), sums["ringside"].get(name))
    check(sums["ringside"].get("px.cluster.up.upstream_rq_200") == REQUESTS, f"ringside's statsd: {sums['ringside']}")
    print(json.dumps({"messages": {p: len(c.messages) for p, c in cs.items()},
                      "datagrams": {p: len(c.datagrams) for p, c in cs.items()}}))
    return report()


if __name__ == "__main__":
    sys.exit(main())
