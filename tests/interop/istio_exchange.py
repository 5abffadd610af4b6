#!/usr/bin/env python3
"""Istio's HTTP peer metadata exchange in istio-proxy's wire format, checked against an
independent encoder: Python's protobuf (`google.protobuf.Struct`, serialized
deterministically as istio-proxy's C++ does) and base64.

A Ringside sidecar with a pod's node metadata runs an OUTBOUND listener (as the client's
sidecar) and an INBOUND one (as the server's), both to a Python peer that answers as an
istio-proxy would. Checked:
- what Ringside sends upstream decodes to the Struct istio-proxy sends for the same node
  (only NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, OWNER and the four LABELS Istio
  exchanges) and is byte for byte the deterministic serialization; `-id` is the node id;
- a peer's headers (built here) are consumed: neither the application nor the client sees
  them, and the peer's workload lands in `istio_requests_total`'s labels;
- the inbound side answers in kind (its headers only to a client that sent them), and an
  undecodable value is removed and reported as an unknown peer.

Usage: istio_exchange.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import base64
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# The pure-Python encoder orders a deterministic map's keys as C++'s protobuf (istio-proxy)
# does (std::less: "NAME" before "NAMESPACE"); upb, Python's default, puts a key after the
# longer keys it prefixes.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
from google.protobuf import struct_pb2  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

assert api_implementation.Type() == "python", api_implementation.Type()

from envoy_parity import free_port, start

NODE_ID = "sidecar~10.0.0.1~productpage-v1-abc12.default~default.svc.cluster.local"

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}
node:
  id: NODE_ID
  cluster: productpage.default
  metadata:
    NAME: productpage-v1-abc12
    NAMESPACE: default
    WORKLOAD_NAME: productpage-v1
    CLUSTER_ID: Kubernetes
    OWNER: kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1
    ISTIO_VERSION: 1.24.0
    MESH_ID: cluster.local
    INSTANCE_IPS: 10.0.0.1
    LABELS:
      app: productpage
      version: v1
      pod-template-hash: abc12
      security.istio.io/tlsMode: istio
      service.istio.io/canonical-name: productpage
      service.istio.io/canonical-revision: v1
static_resources:
  listeners:
  - name: out
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_OUT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: out
          route_config:
            virtual_hosts: [{name: a, domains: ['*'], routes: [
              {match: {prefix: /external}, route: {cluster: "outbound|443||api.example.com"}},
              {match: {prefix: /nomx}, route: {cluster: "outbound|9090||nomx.default.svc.cluster.local"}},
              {match: {prefix: /}, route: {cluster: "outbound|9080||reviews.default.svc.cluster.local"}}]}]
          http_filters:
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                upstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]
                upstream_propagation: [{istio_headers: {skip_external_clusters: true}}]
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/stats.PluginConfig
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: in
    traffic_direction: INBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_IN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts: [{name: a, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: "inbound|9080||"}}]}]
          http_filters:
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                downstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]
                downstream_propagation: [{istio_headers: {}}]
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/stats.PluginConfig
              value: {disable_host_header_fallback: true}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: "outbound|9080||reviews.default.svc.cluster.local"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {services: [{host: reviews.default.svc.cluster.local, name: reviews, namespace: default}]}}}
    load_assignment:
      cluster_name: out
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_PEER}}}}]}]
  - name: "outbound|443||api.example.com"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {external: true, services: [{host: api.example.com, name: api.example.com, namespace: default}]}}}
    load_assignment:
      cluster_name: ext
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_PEER}}}}]}]
  - name: "outbound|9090||nomx.default.svc.cluster.local"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {disable_mx: true}}}
    load_assignment:
      cluster_name: nomx
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_PEER}}}}]}]
  - name: "inbound|9080||"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {services: [{host: productpage.default.svc.cluster.local, name: productpage, namespace: default}]}}}
    load_assignment:
      cluster_name: in
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_PEER}}}}]}]
"""


def workload(name, namespace, workload_name, app, version, owner=None):
    """The Struct istio-proxy sends for a pod (the keys it exchanges)."""
    s = struct_pb2.Struct()
    s.update({"NAME": name, "NAMESPACE": namespace, "WORKLOAD_NAME": workload_name,
              "CLUSTER_ID": "Kubernetes",
              "LABELS": {"app": app, "version": version,
                         "service.istio.io/canonical-name": app,
                         "service.istio.io/canonical-revision": version}})
    if owner:
        s["OWNER"] = owner
    return s


def encode(s):
    return base64.b64encode(s.SerializeToString(deterministic=True)).decode()


REVIEWS = workload("reviews-v2-xyz", "default", "reviews-v2", "reviews", "v2")
RATINGS = workload("ratings-v1-xyz", "bookinfo", "ratings-v1", "ratings", "v1")

SEEN = []  # request headers the peer saw, in order


class Peer(http.server.BaseHTTPRequestHandler):
    """Answers as the application behind an inbound sidecar would, and as an inbound
    istio-proxy does to a client that sent its metadata (its own in the response)."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        SEEN.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        # (`/as-peer-always`: an application that sends such headers itself.)
        if self.path.startswith("/as-peer") and (
                self.headers.get("x-envoy-peer-metadata") or self.path.startswith("/as-peer-always")):
            self.send_header("x-envoy-peer-metadata", encode(REVIEWS))
            self.send_header("x-envoy-peer-metadata-id", "sidecar~10.0.0.2~reviews-v2-xyz.default~default.svc.cluster.local")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def get(port, path, headers=()):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=dict(headers))
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()
        # Repeated headers are joined, so a second copy shows.
        out = {}
        for k, v in r.headers.items():
            k = k.lower()
            out[k] = f"{out[k]}, {v}" if k in out else v
        return r.status, out


def prometheus(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        return r.read().decode()


def sample(text, metric, labels):
    head = metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "} "
    for line in text.splitlines():
        if line.startswith(head):
            return int(line[len(head):])
    return None


def main():
    ringside = os.path.abspath(sys.argv[1])
    passed, failed = 0, 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {name}: {detail}")

    peer_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", peer_port), Peer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = {"ADMIN": free_port(), "PORT_OUT": free_port(), "PORT_IN": free_port(), "PORT_PEER": peer_port}
    text = CONFIG.replace("NODE_ID", NODE_ID)
    for k, v in ports.items():
        text = text.replace(k, str(v))
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "ringside.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    log = open(os.path.join(tmp, "ringside.log"), "w")
    proc = start([ringside, "-c", cfg, "--concurrency", "1", "-l", "warn"], ports["PORT_IN"], log)
    try:
        out, inn, admin = ports["PORT_OUT"], ports["PORT_IN"], ports["ADMIN"]

        # The client's sidecar: this node's metadata, exactly as istio-proxy encodes it.
        status, headers = get(out, "/as-peer")
        check("outbound answers", status == 200, status)
        sent = SEEN[-1]
        value = sent.get("x-envoy-peer-metadata", "")
        check("outbound sends -id", sent.get("x-envoy-peer-metadata-id") == NODE_ID, sent)
        raw = base64.b64decode(value)
        got = struct_pb2.Struct.FromString(raw)
        want = workload("productpage-v1-abc12", "default", "productpage-v1", "productpage", "v1",
                        owner="kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1")
        check("the struct has the keys istio-proxy exchanges", got == want, f"{got} != {want}")
        check("deterministic bytes", raw == want.SerializeToString(deterministic=True),
              f"{raw.hex()} != {want.SerializeToString(deterministic=True).hex()}")
        check("standard padded base64", value == encode(want), value)
        for h in ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id"):
            check(f"the client never sees {h}", h not in headers, headers)

        # An application's own copies are replaced, not appended to.
        get(out, "/as-peer", [("x-envoy-peer-metadata", "forged"), ("x-envoy-peer-metadata-id", "forged")])
        check("app's copies replaced", SEEN[-1].get("x-envoy-peer-metadata") == value
              and SEEN[-1].get("x-envoy-peer-metadata-id") == NODE_ID, SEEN[-1])

        # No exchange towards external services (skip_external_clusters) or clusters that
        # disable it; an application's own copies are still not sent as the proxy's.
        for path in ("/external", "/nomx"):
            get(out, path)
            check(f"no exchange to {path}",
                  not any(k.startswith("x-envoy-peer-metadata") for k in SEEN[-1]), SEEN[-1])

        # The server's sidecar: a client's metadata (encoded here) is consumed.
        status, headers = get(inn, "/hello", [("x-envoy-peer-metadata", encode(RATINGS)),
                                              ("x-envoy-peer-metadata-id", "sidecar~10.0.0.3~ratings")])
        check("inbound answers", status == 200, status)
        check("the app never sees the exchange",
              not any(k.startswith("x-envoy-peer-metadata") for k in SEEN[-1]), SEEN[-1])
        check("inbound answers in kind", headers.get("x-envoy-peer-metadata") == value
              and headers.get("x-envoy-peer-metadata-id") == NODE_ID, headers)
        # The application's own copies are replaced by the sidecar's, never passed along.
        status, headers = get(inn, "/as-peer-always", [("x-envoy-peer-metadata", encode(RATINGS)),
                                                ("x-envoy-peer-metadata-id", "sidecar~10.0.0.3~ratings")])
        check("the app cannot speak for the sidecar", headers.get("x-envoy-peer-metadata") == value
              and headers.get("x-envoy-peer-metadata-id") == NODE_ID, headers)
        # Only what the client sent is answered.
        status, headers = get(inn, "/hello", [("x-envoy-peer-metadata-id", "sidecar~10.0.0.3~ratings")])
        check("inbound answers only the headers sent",
              "x-envoy-peer-metadata" not in headers and headers.get("x-envoy-peer-metadata-id") == NODE_ID,
              headers)
        status, headers = get(inn, "/hello")
        check("no exchange, no headers", not any(k.startswith("x-envoy-peer-metadata") for k in headers), headers)
        # Unpadded base64 (as some encoders send it) is read too; garbage is an unknown peer.
        get(inn, "/hello", [("x-envoy-peer-metadata", encode(RATINGS).rstrip("="))])
        get(inn, "/garbage", [("x-envoy-peer-metadata", "%%%not-base64%%%")])
        check("garbage is removed", "x-envoy-peer-metadata" not in SEEN[-1], SEEN[-1])

        time.sleep(0.3)
        prom = prometheus(admin)
        # The whole exposition through Prometheus' own parser (prometheus_client), as a
        # scraper reads it: Istio's families with their types and samples.
        from prometheus_client.parser import text_string_to_metric_families
        families = {f.name: f for f in text_string_to_metric_families(prom)}
        fam = families.get("istio_requests")  # the parser drops a counter's _total
        check("Prometheus parses istio_requests_total as a counter",
              fam is not None and fam.type == "counter", sorted(families)[:20])
        hist = families.get("istio_request_duration_milliseconds")
        check("Prometheus parses the duration histogram",
              hist is not None and hist.type == "histogram"
              and any(s.name.endswith("_bucket") and s.labels.get("le") == "+Inf" for s in hist.samples))
        parsed = [s for s in fam.samples if s.labels.get("reporter") == "source"] if fam else []
        check("parsed labels are Istio's, in its order",
              bool(parsed) and list(parsed[0].labels)[:3] == ["reporter", "source_workload", "source_canonical_service"],
              parsed[:1])
        client_side = [
            ("reporter", "source"), ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage"), ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "default"), ("source_principal", "unknown"),
            ("source_app", "productpage"), ("source_version", "v1"), ("source_cluster", "Kubernetes"),
            ("destination_workload", "reviews-v2"), ("destination_workload_namespace", "default"),
            ("destination_principal", "unknown"), ("destination_app", "reviews"),
            ("destination_version", "v2"), ("destination_service", "reviews.default.svc.cluster.local"),
            ("destination_canonical_service", "reviews"), ("destination_canonical_revision", "v2"),
            ("destination_service_name", "reviews"), ("destination_service_namespace", "default"),
            ("destination_cluster", "Kubernetes"), ("request_protocol", "http"),
            ("response_code", "200"), ("grpc_response_status", ""), ("response_flags", "-"),
            ("connection_security_policy", "unknown")]
        n = sample(prom, "istio_requests_total", client_side)
        check("the client's sidecar reports the peer it was told of", n == 2, f"{n}\n{prom}")

        def server_side(workload_name, namespace, app, version, cluster, revision):
            return [
                ("reporter", "destination"), ("source_workload", workload_name),
                ("source_canonical_service", app), ("source_canonical_revision", revision),
                ("source_workload_namespace", namespace), ("source_principal", "unknown"),
                ("source_app", app), ("source_version", version), ("source_cluster", cluster),
                ("destination_workload", "productpage-v1"), ("destination_workload_namespace", "default"),
                ("destination_principal", "unknown"), ("destination_app", "productpage"),
                ("destination_version", "v1"), ("destination_service", "productpage.default.svc.cluster.local"),
                ("destination_canonical_service", "productpage"), ("destination_canonical_revision", "v1"),
                ("destination_service_name", "productpage"), ("destination_service_namespace", "default"),
                ("destination_cluster", "Kubernetes"), ("request_protocol", "http"),
                ("response_code", "200"), ("grpc_response_status", ""), ("response_flags", "-"),
                ("connection_security_policy", "none")]
        n = sample(prom, "istio_requests_total", server_side("ratings-v1", "bookinfo", "ratings", "v1", "Kubernetes", "v1"))
        check("the server's sidecar reports its client", n == 3, f"{n}\n{prom}")
        n = sample(prom, "istio_requests_total", server_side("unknown", "unknown", "unknown", "unknown", "unknown", "latest"))
        check("no or bad metadata: an unknown client", n == 3, f"{n}\n{prom}")
    finally:
        proc.kill()
        server.shutdown()
    print(f"{passed} passed, {failed} failed")
    if failed:
        print(open(os.path.join(tmp, "ringside.log")).read()[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
