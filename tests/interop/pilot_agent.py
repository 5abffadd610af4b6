#!/usr/bin/env python3
"""Ringside as pilot-agent runs it, end to end.

This plays pilot-agent and istiod around one pod:
  - a pod and a peer host: two network namespaces joined by a veth pair, with the pod's
    traffic captured by `ringside iptables` (istio-iptables' rules);
  - the real bootstrap from ../shared/compat/istio-bootstrap-default.json, with only its
    XDS socket moved into a temporary directory (the SDS socket is the relative path the
    bootstrap names, under the proxy's working directory);
  - Ringside started as uid 1337 with pilot-agent's exact command line;
  - istiod's side: delta ADS on the XDS Unix socket serving the compat corpus's sidecar
    listeners in one response (as istiod sends them), an istiod outbound cluster from the
    corpus, its endpoints and route configuration; pilot-agent's side: the `default` and
    `ROOTCA` secrets over SDS on its own Unix socket, and the agent's readiness endpoint on
    127.0.0.1:15020 (which reads Envoy's admin stats as pilot-agent does).
Then it checks: readiness through 15021 from outside the pod, outbound HTTP and TCP through
the capture, inbound traffic judged by the corpus's AuthorizationPolicy (403) and served once
the policy is removed, Prometheus on 15090, /config_dump decoding with Envoy's official
protos, `POST /drain_listeners?inboundonly&graceful` (in-flight inbound request finishes,
outbound keeps serving, inbound stops after the drain time), and SIGTERM with a request in
flight: it completes, and the proxy exits 0.

    tests/interop/pilot_agent.py RINGSIDE

Needs root, iproute2, iptables, util-linux (setpriv), curl, grpcio, xds-protos and
cryptography; elsewhere it prints SKIPPED and exits 0.
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
SAN = "spiffe://cluster.local/ns/default/sa/httpbin"
PRODUCTPAGE = "outbound|9080|v1|productpage.default.svc.cluster.local"


# ---------------------------------------------------------------- helpers run inside a namespace

def serve_http(ip, port, name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/slow"):
                time.sleep(1.5)
            body = f"{name} {self.path}".encode()
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


def pki():
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("cluster.local")).issuer_name(name("cluster.local"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("httpbin")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SAN)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    default = secret_pb2.Secret(name="default")
    default.tls_certificate.certificate_chain.inline_bytes = leaf.public_bytes(pem)
    default.tls_certificate.private_key.inline_bytes = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = ca.public_bytes(pem)
    return {"default": default, "ROOTCA": root}


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


def istiod_resources(pool):
    """The corpus's sidecar listeners, and the one outbound service they reach here: the
    corpus's istiod cluster for productpage v1 (EDS), its endpoint on the peer host, and
    route configuration `9080` as istiod builds it (retry policy, decorator, allow_any)."""
    res = {LISTENER: corpus_listeners(pool)}
    path = os.path.join(COMPAT, "istio-configdump-ingressgateway-routes-clusters.json")
    ensure_types(json.load(open(path)), pool)
    for type_url, body in corpus_resources(path):
        if type_url == CLUSTER and body["name"] == PRODUCTPAGE:
            msg = MESSAGES[CLUSTER]()
            body = dict(body)
            body.pop("@type", None)
            json_format.ParseDict(body, msg, ignore_unknown_fields=True, descriptor_pool=pool)
            res[CLUSTER] = {PRODUCTPAGE: msg}
    blackhole = {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}
    passthrough = {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
                   "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": {"thresholds": [
                       {"max_connections": 4294967295, "max_pending_requests": 4294967295,
                        "max_requests": 4294967295, "max_retries": 4294967295, "track_remaining": True}]}}
    inbound = lambda name: {  # noqa: E731 (istiod's inbound clusters)
        "name": name, "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": passthrough["circuit_breakers"],
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        "common_lb_config": {}, "cleanup_interval": "60s"}
    for c in (blackhole, passthrough, inbound("InboundPassthroughClusterIpv4"), inbound("inbound|80||")):
        msg = MESSAGES[CLUSTER]()
        json_format.ParseDict(c, msg, descriptor_pool=pool)
        res[CLUSTER][c["name"]] = msg
    cla = MESSAGES[ENDPOINT]()
    json_format.ParseDict({"cluster_name": PRODUCTPAGE, "endpoints": [{"locality": {}, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": PEER_IP, "port_value": 9080}}},
         "metadata": {"filter_metadata": {"istio": {"workload": "productpage-v1;default;productpage;v1;Kubernetes"}}},
         "load_balancing_weight": 1}], "load_balancing_weight": 1}]}, cla)
    res[ENDPOINT] = {PRODUCTPAGE: cla}
    retry = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
             "num_retries": 2, "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
             "host_selection_retry_max_attempts": "5", "retriable_status_codes": [503]}
    route = MESSAGES[ROUTE]()
    json_format.ParseDict({"name": "9080", "validate_clusters": False, "ignore_port_in_host_matching": True,
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
                                            "route": {"cluster": "PassthroughCluster", "timeout": "0s",
                                                      "max_grpc_timeout": "0s"}}],
                                "include_request_attempt_count": True}]}, route)
    res[ROUTE] = {"9080": route}
    return res


def stat(name):
    """A stat's value, or what the stats around it are (to say why it is missing)."""
    code, body = curl(POD, f"http://127.0.0.1:15000/stats?filter=^{name}$")
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    near = name.rsplit(".", 1)[0]
    return code, body, curl(POD, f"http://127.0.0.1:15000/stats?usedonly&filter={near}")


def wait(cond, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    check(False, f"{what} (timed out)")
    return None


binary = os.path.abspath(sys.argv[1])
tag = str(os.getpid() % 100000)
POD, PEER = f"pa-pod-{tag}", f"pa-peer-{tag}"
tmp = tempfile.mkdtemp(prefix="ringside-pilot-agent-")
procs = []
try:
    for cmd in [f"ip netns add {POD}", f"ip netns add {PEER}",
                f"ip link add pap{tag} type veth peer name paq{tag}",
                f"ip link set pap{tag} netns {POD}", f"ip link set paq{tag} netns {PEER}",
                f"ip -n {POD} addr add {POD_IP}/24 dev pap{tag}",
                f"ip -n {PEER} addr add {PEER_IP}/24 dev paq{tag}",
                f"ip -n {POD} link set pap{tag} up", f"ip -n {PEER} link set paq{tag} up",
                f"ip -n {POD} link set lo up", f"ip -n {PEER} link set lo up",
                f"ip -n {POD} route add default via {PEER_IP}"]:
        sh(cmd)
    # istio-init's rules (pilot-agent's defaults: its own ports excluded from inbound capture).
    sh(f"ip netns exec {POD} {binary} iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*' -d 15090,15021,15020")

    # pilot-agent's files: the bootstrap (XDS socket moved here), the SDS socket where the
    # bootstrap names it, relative to the proxy's working directory.
    os.chmod(tmp, 0o755)
    text = open(os.path.join(COMPAT, "istio-bootstrap-default.json")).read()
    check('"/tmp/XDS"' in text, "the bootstrap names pilot-agent's XDS socket /tmp/XDS")
    xds_path = os.path.join(tmp, "XDS")
    bootstrap = os.path.join(tmp, "envoy-rev.json")
    with open(bootstrap, "w") as f:
        f.write(text.replace('"/tmp/XDS"', json.dumps(xds_path)))
    sds_dir = os.path.join(tmp, "var/run/secrets/workload-spiffe-uds")
    os.makedirs(sds_dir)
    for d in (os.path.join(tmp, "var"), os.path.join(tmp, "var/run"), os.path.join(tmp, "var/run/secrets"), sds_dir):
        os.chmod(d, 0o755)

    pool = symbol_database.Default().pool
    ads = Ads()
    xds = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8),
                      options=[("grpc.max_send_message_length", 1 << 30)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, xds)
    xds.add_insecure_port("unix:" + xds_path)
    xds.start()
    sds = Sds(pki())
    sds_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(sds, sds_server)
    sds_server.add_insecure_port("unix:" + os.path.join(sds_dir, "test.sock"))
    sds_server.start()
    for p in (xds_path, os.path.join(sds_dir, "test.sock")):
        os.chmod(p, 0o777)
    resources = istiod_resources(pool)
    istiod = Istiod(ads, resources)

    # The pod's app (HTTP on 80), the peer's productpage (9080) and a TCP echo (7000).
    procs.append(spawn_in(POD, "--serve-http", "0.0.0.0", "80", "app"))
    procs.append(spawn_in(PEER, "--serve-http", PEER_IP, "9080", "productpage"))
    procs.append(spawn_in(PEER, "--serve-echo", PEER_IP, "7000"))
    procs.append(spawn_in(POD, "--serve-agent", "15000"))

    # pilot-agent's command line (pkg/envoy/proxy.go), unchanged but for the drain time. The
    # log format is the bootstrap's `application_log_config` (a --log-format as well would be
    # refused, as Envoy refuses it).
    log = open(os.path.join(tmp, "stderr"), "w")
    cmd = ["ip", "netns", "exec", POD, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
           binary, "-c", bootstrap, "--drain-time-s", "2", "--drain-strategy", "immediate",
           "--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000",
           "--disable-hot-restart", "--allow-unknown-static-fields",
           "-l", "warning", "--component-log-level", "misc:error", "--concurrency", "2"]
    proxy = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=log)

    def stderr():
        log.flush()
        return open(os.path.join(tmp, "stderr")).read()[-3000:]

    # Readiness, as the kubelet asks it: 15021 from outside the pod, which Ringside routes to
    # the agent, which reads Ringside's admin stats.
    ok = wait(lambda: curl(PEER, f"http://{POD_IP}:15021/healthz/ready")[0] == 200, "the pod became ready", 30)
    check(ok is not None, "readiness: 15021/healthz/ready answers 200 through the proxy once configured")
    if not ok:
        print(stderr())
        raise SystemExit(1)
    check(proxy.poll() is None, "pilot-agent's command line is accepted")

    # istiod's listeners in one response: those Ringside cannot serve (HBONE's internal
    # listeners) are NACKed by name, the others are applied.
    lds_nacks = wait(lambda: istiod.nacked(LISTENER), "LDS answered", 10) or []
    text = "\n".join(lds_nacks)
    refused = sorted({n for n in resources[LISTENER] if f"listener '{n}'" in text})
    print(f"     LDS NACK names {len(refused)} of {len(resources[LISTENER])} listeners: {refused}")
    check(set(refused) <= {"connect_originate", "main_internal", "connect_terminate",
                           "outbound_tunnel_lis_spiffe://cluster.local/ns/default/sa/httpbin"} | {
        n for n in resources[LISTENER] if "internal" in n or "tunnel" in n or "connect" in n},
        "only HBONE listeners are refused")
    check("internal_listener" in text, "the NACK names the unsupported field")
    check(not istiod.nacked(CLUSTER) and not istiod.nacked(ROUTE) and not istiod.nacked(ENDPOINT),
          f"CDS, RDS and EDS are ACKed: {istiod.nacks}")
    check(sds.asked >= {"default", "ROOTCA"}, f"secrets asked over SDS: {sorted(sds.asked)}")

    # Outbound HTTP: the app calls productpage's service address; captured to 15001, handed
    # to 0.0.0.0_9080, routed by RDS `9080` to the EDS endpoint on the peer.
    code, body = curl(POD, f"http://{VIP}:9080/out", uid=1000, host="productpage:9080")
    check((code, body) == (200, "productpage /out"), f"outbound HTTP through the capture: {code} {body!r}")
    # Istio's stats_matcher (the bootstrap's inclusion list) keeps the connection manager's
    # own stats from existing, as in Envoy; its istio_* metrics and the xDS counters stay.
    code, body = curl(POD, "http://127.0.0.1:15000/stats?filter=outbound_0.0.0.0_9080")
    check(code == 200 and "downstream_rq" not in body,
          f"stats the bootstrap's stats_matcher excludes do not exist: {body[:300]!r}")
    check(stat("listener_manager.lds.update_rejected") == 1 and stat("cluster_manager.cds.update_success") == 1,
          "the partly refused LDS response counts as rejected, CDS as a success")
    # Outbound TCP to a port no listener has: the catch-all passthrough chain.
    r = in_ns(POD, [sys.executable, "-c",
                    f"import socket;s=socket.create_connection(('{PEER_IP}',7000),5);s.sendall(b'opaque');"
                    "import sys;sys.stdout.write(s.recv(100).decode())"], uid=1000)
    check(r.stdout == "opaquebye", f"outbound TCP passthrough: {r.stdout!r} {r.stderr[-200:]}")

    # Inbound: the corpus's AuthorizationPolicy admits only mTLS peers with a JWT.
    code, body = curl(PEER, f"http://{POD_IP}:80/info")
    check((code, body) == (403, "RBAC: access denied"), f"inbound denied by the policy: {code} {body!r}")
    # The policy is deleted: istiod sends virtualInbound without its RBAC filters.
    vi = copy.deepcopy(resources[LISTENER]["virtualInbound"])
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2  # noqa: F401
    for chain in vi.filter_chains:
        for f in chain.filters:
            if f.name == "envoy.filters.network.http_connection_manager":
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                keep = [x for x in h.http_filters if x.name not in ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz")]
                del h.http_filters[:]
                h.http_filters.extend(keep)
                f.typed_config.Pack(h)
        keep = [f for f in chain.filters if f.name != "envoy.filters.network.rbac"]
        del chain.filters[:]
        chain.filters.extend(keep)
    resources[LISTENER]["virtualInbound"] = vi
    nonce = istiod.push(LISTENER, ["virtualInbound"], version="2")
    wait(lambda: any(n == nonce for _, n, _ in istiod.acks + istiod.nacks), "virtualInbound update answered", 10)
    check(not any(n == nonce for _, n, _ in istiod.nacks), "virtualInbound without its policy is ACKed")
    code, body = wait(lambda: (lambda r: r if r[0] == 200 else None)(curl(PEER, f"http://{POD_IP}:80/info")),
                      "inbound served", 10) or (0, "")
    check((code, body) == (200, "app /info"), f"inbound HTTP to the app through inbound|80||: {code} {body!r}")

    # Prometheus on 15090, from outside the pod, as a scraper.
    code, body = curl(PEER, f"http://{POD_IP}:15090/stats/prometheus")
    lines = body.splitlines()

    def metric(name, *labels):
        return [l for l in lines if l.startswith(name + "{") and all(x in l for x in labels)]
    out_http = metric("istio_requests_total", 'reporter="source"', 'response_code="200"',
                      'destination_service_name="productpage"')
    check(code == 200 and len(out_http) == 1 and out_http[0].endswith(" 1"),
          f"15090: the outbound request in istio_requests_total (reporter=source): {out_http}")
    denied = metric("istio_requests_total", 'reporter="destination"', 'response_code="403"')
    served = metric("istio_requests_total", 'reporter="destination"', 'response_code="200"')
    check(len(denied) == 1 and len(served) == 1, f"15090: the inbound requests (reporter=destination): {denied + served}")
    tcp = metric("istio_tcp_connections_opened_total", 'destination_service_name="PassthroughCluster"')
    check(len(tcp) == 1, f"15090: the passthrough TCP connection: {tcp}")
    check("envoy_server_state" in body and "envoy_cluster_upstream_rq{" not in body,
          "15090: envoy_* limited to what the stats_matcher includes")

    # /config_dump with the endpoints decodes with Envoy's official protos.
    code, body = curl(POD, "http://127.0.0.1:15000/config_dump?include_eds")
    dump = json.loads(body)
    ensure_types(dump, pool)
    try:
        json_format.ParseDict(dump, config_dump_pb2.ConfigDump(), descriptor_pool=pool)
        check(True, "/config_dump?include_eds decodes with the official protos")
    except Exception as e:
        check(False, f"/config_dump decodes with the official protos: {e}")

    # pilot-agent on pod termination: inbound drains (in-flight requests finish), outbound
    # keeps serving; after the drain time the inbound listener stops.
    slow = concurrent.futures.ThreadPoolExecutor(2)
    inflight = slow.submit(curl, PEER, f"http://{POD_IP}:80/slow-in")
    time.sleep(0.3)
    code, body = curl(POD, "http://127.0.0.1:15000/drain_listeners?inboundonly&graceful", method="POST")
    check((code, body) == (200, "OK\n"), f"POST /drain_listeners?inboundonly&graceful: {code} {body!r}")
    check(inflight.result() == (200, "app /slow-in"), f"the in-flight inbound request finished: {inflight.result()}")
    time.sleep(2.5)
    code, body = curl(POD, f"http://{VIP}:9080/after-drain", uid=1000, host="productpage:9080")
    check((code, body) == (200, "productpage /after-drain"), f"outbound still serves after the inbound drain: {code}")
    code, _ = curl(PEER, f"http://{POD_IP}:80/late", timeout=3)
    check(code != 200, f"inbound no longer accepted after the drain time: {code}")

    # SIGTERM with an outbound request in flight: it completes, the proxy exits 0.
    inflight = slow.submit(curl, POD, f"http://{VIP}:9080/slow-out", 1000, "productpage:9080")
    time.sleep(0.3)
    proxy.send_signal(signal.SIGTERM)
    check(inflight.result() == (200, "productpage /slow-out"), f"in-flight outbound request finished: {inflight.result()}")
    try:
        rc = proxy.wait(15)
    except subprocess.TimeoutExpired:
        proxy.kill()
        rc = "hung"
    check(rc == 0, f"exit status after SIGTERM: {rc}")
    if FAILS:
        print(stderr())
finally:
    for p in procs:
        p.kill()
    for ns in (POD, PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)

print(f"pilot_agent: {'FAIL' if FAILS else 'ok'} ({len(FAILS)} failed)")
sys.exit(1 if FAILS else 0)
