#!/usr/bin/env python3
"""Istio's in-band TCP metadata exchange (ALPN `istio-peer-exchange`) in istio-proxy's
wire format, checked against peers written here with Python's ssl and protobuf:

- as the server's sidecar (an INBOUND chain with istio_authn, the exchange, istio.stats
  and tcp_proxy, mutual TLS offering istio-peer-exchange), Ringside must answer a client
  that sends istio-proxy's frame with its own frame first — byte for byte what istio-proxy
  would send for its node — then carry the application's bytes both ways untouched;
- as the client's sidecar (a cluster with the exchange filter and Istio's ALPN), it must
  send its frame before the application's bytes and take the server's frame off what
  comes back;
- a client that negotiates the protocol but sends no frame gets its bytes through;
- both sides report `istio_tcp_*` with the peer the frame named.

Usage: istio_tcp_exchange.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import datetime
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from istio_exchange import workload, NODE_ID, sample  # the pure-Python protobuf is set there
from envoy_parity import free_port, start
from google.protobuf import any_pb2, struct_pb2

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAGIC = 0x3D230467
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
RATINGS = "spiffe://cluster.local/ns/bookinfo/sa/ratings"
DB = "spiffe://cluster.local/ns/default/sa/db"

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}
node:
  id: NODE_ID
  metadata:
    NAME: productpage-v1-abc12
    NAMESPACE: default
    WORKLOAD_NAME: productpage-v1
    CLUSTER_ID: Kubernetes
    OWNER: kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1
    ISTIO_VERSION: 1.24.0
    LABELS: {app: productpage, version: v1, service.istio.io/canonical-name: productpage, service.istio.io/canonical-revision: v1}
static_resources:
  listeners:
  - name: tcp_in
    traffic_direction: INBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_IN}}
    filter_chains:
    - filters:
      - name: istio_authn
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config}
      - name: istio.metadata_exchange
        typed_config: {"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange}
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/stats.PluginConfig}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: in, cluster: "inbound|5432||"}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{certificate_chain: {filename: DIR/me.pem}, private_key: {filename: DIR/me.key}}]
            validation_context: {trusted_ca: {filename: DIR/ca.pem}}
            alpn_protocols: [istio-peer-exchange, h2, http/1.1]
  - name: tcp_out
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_OUT}}
    # The chain depends on the first bytes: the listener reads them before the chain runs.
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains:
    - filter_chain_match: {transport_protocol: raw_buffer}
      filters:
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {}}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: out, cluster: "outbound|5432||db.default.svc.cluster.local"}
  # The same without sniffing (a server-speaks-first protocol cannot be sniffed).
  - name: tcp_out_first
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_FIRST}}
    filter_chains:
    - filters:
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/stats.PluginConfig}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: first, cluster: "outbound|5432||db.default.svc.cluster.local"}
  clusters:
  - name: "inbound|5432||"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {services: [{host: productpage.default.svc.cluster.local, name: productpage, namespace: default}]}}}
    load_assignment: {cluster_name: in, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_ECHO}}}}]}]}
  - name: "outbound|5432||db.default.svc.cluster.local"
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {services: [{host: db.default.svc.cluster.local, name: db, namespace: default}]}}}
    filters:
    - name: istio.metadata_exchange
      typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: {protocol: istio-peer-exchange}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.5432_._.db.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{certificate_chain: {filename: DIR/me.pem}, private_key: {filename: DIR/me.key}}]
          validation_context: {trusted_ca: {filename: DIR/ca.pem}, match_subject_alt_names: [{exact: "DB_SAN"}]}
    load_assignment: {cluster_name: out, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT_DB}}}}]}]}
"""


def pki(tmp):
    """A mesh CA and leaf certificates with SPIFFE URI SANs; returns their file paths."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("mesh")).issuer_name(name("mesh"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(file, spiffe, serial):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(file)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe),
                                                            x509.DNSName("localhost")]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        with open(os.path.join(tmp, file + ".pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.path.join(tmp, file + ".key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    with open(os.path.join(tmp, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    leaf("me", PRODUCTPAGE, 2)
    leaf("ratings", RATINGS, 3)
    leaf("db", DB, 4)


def frame(md, node_id):
    """istio-proxy's frame for a workload: magic, length, Any of a Struct."""
    s = struct_pb2.Struct()
    s["x-envoy-peer-metadata"] = md
    s["x-envoy-peer-metadata-id"] = node_id
    a = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct",
                    value=s.SerializeToString(deterministic=True))
    payload = a.SerializeToString(deterministic=True)
    return struct.pack(">II", MAGIC, len(payload)) + payload


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        d = sock.recv(n - len(out))
        if not d:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += d
    return out


def read_frame(sock):
    head = read_exact(sock, 8)
    magic, length = struct.unpack(">II", head)
    return head + read_exact(sock, length), magic


PRODUCTPAGE_MD = workload("productpage-v1-abc12", "default", "productpage-v1", "productpage", "v1",
                          owner="kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1")
RATINGS_MD = workload("ratings-v1-xyz", "bookinfo", "ratings-v1", "ratings", "v1")
DB_MD = workload("db-v1-xyz", "default", "db-v1", "db", "v1")


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

    tmp = tempfile.mkdtemp()
    pki(tmp)
    ports = {k: free_port() for k in ("ADMIN", "PORT_IN", "PORT_OUT", "PORT_FIRST", "PORT_ECHO", "PORT_DB")}

    # The application behind the inbound sidecar: an echo server.
    echo = socket.socket()
    echo.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    echo.bind(("127.0.0.1", ports["PORT_ECHO"]))
    echo.listen(16)

    def serve_echo():
        while True:
            c, _ = echo.accept()
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(65536), b"")] and c.close(),
                             daemon=True).start()
    threading.Thread(target=serve_echo, daemon=True).start()

    # An istio-proxy-like server sidecar for the outbound cluster: TLS selecting
    # istio-peer-exchange; it records the client's frame, answers with its own, echoes.
    # With `greet`, the application behind it speaks first ("hi", shorter than a frame's
    # header): istio-proxy writes its frame before those bytes, and the client's sidecar
    # must send its own on reading them, before its application wrote anything.
    seen = {}
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(tmp, "db.pem"), os.path.join(tmp, "db.key"))
    sctx.load_verify_locations(os.path.join(tmp, "ca.pem"))
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.set_alpn_protocols(["istio-peer-exchange"])
    db = socket.socket()
    db.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    db.bind(("127.0.0.1", ports["PORT_DB"]))
    db.listen(16)

    def serve_db():
        while True:
            raw, _ = db.accept()
            try:
                c = sctx.wrap_socket(raw, server_side=True)
                alpn = c.selected_alpn_protocol()
                mine = frame(DB_MD, "sidecar~10.0.0.9~db-v1-xyz.default~default.svc.cluster.local")
                if seen.get("greet"):
                    c.sendall(mine + b"hi")
                    seen["greet_frame"], _ = read_frame(c)
                else:
                    seen["alpn"] = alpn
                    seen["frame"], _ = read_frame(c)
                    c.sendall(mine)
                for d in iter(lambda: c.recv(65536), b""):
                    c.sendall(d)
                c.close()
            except Exception as e:  # noqa: BLE001 - reported by the checks
                seen["error"] = repr(e)
    threading.Thread(target=serve_db, daemon=True).start()

    text = CONFIG.replace("NODE_ID", NODE_ID).replace("DIR", tmp).replace("DB_SAN", DB)
    for k, v in ports.items():
        text = text.replace(k, str(v))
    cfg = os.path.join(tmp, "ringside.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    log = open(os.path.join(tmp, "ringside.log"), "w")
    proc = start([ringside, "-c", cfg, "--concurrency", "1", "-l", "warn"], ports["PORT_OUT"], log)
    mine = frame(PRODUCTPAGE_MD, NODE_ID)
    try:
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.check_hostname = False
        cctx.load_verify_locations(os.path.join(tmp, "ca.pem"))
        cctx.load_cert_chain(os.path.join(tmp, "ratings.pem"), os.path.join(tmp, "ratings.key"))
        cctx.set_alpn_protocols(["istio-peer-exchange", "istio"])

        # 1. Ringside as the server's sidecar, an istio-proxy client.
        c = cctx.wrap_socket(socket.create_connection(("127.0.0.1", ports["PORT_IN"])))
        check("inbound negotiates istio-peer-exchange", c.selected_alpn_protocol() == "istio-peer-exchange",
              c.selected_alpn_protocol())
        c.sendall(frame(RATINGS_MD, "sidecar~10.0.0.3~ratings-v1-xyz.bookinfo~bookinfo.svc.cluster.local") + b"ping")
        c.settimeout(5)
        got, magic = read_frame(c)
        check("inbound answers with its frame first", magic == MAGIC, hex(magic))
        check("inbound frame is istio-proxy's bytes for this node", got == mine, f"{got.hex()} != {mine.hex()}")
        check("the application's bytes come back untouched", read_exact(c, 4) == b"ping")
        c.close()

        # 2. The protocol negotiated but no frame sent: bytes pass through.
        c = cctx.wrap_socket(socket.create_connection(("127.0.0.1", ports["PORT_IN"])))
        c.sendall(b"\x00\x01plain bytes")
        c.settimeout(5)
        got, _ = read_frame(c)
        check("a frameless client still gets the frame", got == mine)
        check("a frameless client's bytes pass", read_exact(c, 13) == b"\x00\x01plain bytes")
        c.close()

        # 3. Ringside as the client's sidecar to an istio-proxy-like server.
        c = socket.create_connection(("127.0.0.1", ports["PORT_OUT"]))
        c.sendall(b"select 1")
        c.settimeout(5)
        check("outbound: the server's frame is taken off", read_exact(c, 8) == b"select 1")
        c.close()
        time.sleep(0.3)
        check("outbound negotiated istio-peer-exchange", seen.get("alpn") == "istio-peer-exchange", seen)
        check("outbound sent istio-proxy's frame for this node", seen.get("frame") == mine,
              f"{seen.get('frame', b'').hex()} != {mine.hex()} {seen.get('error')}")

        # 4. A server that speaks first, with fewer bytes than a frame's header.
        seen["greet"] = True
        c = socket.create_connection(("127.0.0.1", ports["PORT_FIRST"]))
        c.settimeout(5)
        check("server-first: the greeting arrives alone", read_exact(c, 2) == b"hi")
        c.sendall(b"ok")
        check("server-first: then the bytes flow", read_exact(c, 2) == b"ok")
        c.close()
        time.sleep(0.2)
        check("server-first: the client's sidecar sent its frame on the greeting",
              seen.get("greet_frame") == mine, seen.get("error"))

        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['ADMIN']}/stats/prometheus", timeout=5) as r:
            prom = r.read().decode()
        if os.environ.get("DUMP"):
            print("\n".join(l for l in prom.splitlines() if l.startswith("istio_tcp_connections_opened")))
        dest = [
            ("reporter", "destination"), ("source_workload", "ratings-v1"),
            ("source_canonical_service", "ratings"), ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "bookinfo"), ("source_principal", RATINGS),
            ("source_app", "ratings"), ("source_version", "v1"), ("source_cluster", "Kubernetes"),
            ("destination_workload", "productpage-v1"), ("destination_workload_namespace", "default"),
            ("destination_principal", PRODUCTPAGE), ("destination_app", "productpage"),
            ("destination_version", "v1"), ("destination_service", "productpage.default.svc.cluster.local"),
            ("destination_canonical_service", "productpage"), ("destination_canonical_revision", "v1"),
            ("destination_service_name", "productpage"), ("destination_service_namespace", "default"),
            ("destination_cluster", "Kubernetes"), ("request_protocol", "tcp"), ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls")]
        n = sample(prom, "istio_tcp_connections_opened_total", dest)
        check("inbound reports the client the frame named", n == 1, f"{n}\n{prom}")
        n = sample(prom, "istio_tcp_received_bytes_total", dest)
        check("inbound counts the application's bytes only", n == 4, n)
        source = [
            ("reporter", "source"), ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage"), ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "default"), ("source_principal", PRODUCTPAGE),
            ("source_app", "productpage"), ("source_version", "v1"), ("source_cluster", "Kubernetes"),
            ("destination_workload", "db-v1"), ("destination_workload_namespace", "default"),
            ("destination_principal", DB), ("destination_app", "db"),
            ("destination_version", "v1"), ("destination_service", "db.default.svc.cluster.local"),
            ("destination_canonical_service", "db"), ("destination_canonical_revision", "v1"),
            ("destination_service_name", "db"), ("destination_service_namespace", "default"),
            ("destination_cluster", "Kubernetes"), ("request_protocol", "tcp"), ("response_flags", "-"),
            ("connection_security_policy", "unknown")]
        n = sample(prom, "istio_tcp_sent_bytes_total", source)
        check("outbound reports the server the frame named", n == 8 + 4, f"{n}\n{prom}")
    finally:
        proc.kill()
    print(f"{passed} passed, {failed} failed")
    if failed:
        print(open(os.path.join(tmp, "ringside.log")).read()[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
