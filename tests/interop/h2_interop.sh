#!/usr/bin/env bash
# HTTP/2 interop with nghttp2's tools and curl: h2c with prior knowledge (curl, nghttp),
# HTTP/2 to an HTTP/1.1 upstream, HTTP/2 end to end to nghttpd, HTTP/1.1 to an HTTP/2
# upstream, and h2load driving multiplexed load through the proxy without errors.
set -euo pipefail
bin=${1:-target/debug/ringside}
dir=$(mktemp -d)
mkdir -p "$dir/www"
head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 > "$dir/www/1k.txt"
head -c 300000 /dev/urandom > "$dir/www/big.bin"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
h1=$(free_port); h2=$(free_port); px=$(free_port); adm=$(free_port)
python3 -m http.server "$h1" --bind 127.0.0.1 --directory "$dir/www" >"$dir/h1.log" 2>&1 &
pids=$!
nghttpd --no-tls --echo-upload -d "$dir/www" "$h2" >"$dir/h2.log" 2>&1 &
pids="$pids $!"
cat >"$dir/ringside.yaml" <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $adm}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $px}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h2i
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /h2/}
                route: {cluster: nghttpd, prefix_rewrite: /}
              - match: {prefix: /}
                route: {cluster: python}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: python
    load_assignment: {cluster_name: python, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $h1}}}}]}]}
  - name: nghttpd
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment: {cluster_name: nghttpd, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $h2}}}}]}]}
YAML
"$bin" -c "$dir/ringside.yaml" --concurrency 1 -l warn >"$dir/access.log" 2>"$dir/ringside.log" &
pids="$pids $!"
trap 'kill $pids 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$adm/ready" && curl -s -o /dev/null "http://127.0.0.1:$h1/1k.txt" && break; sleep 0.1; done
base="http://127.0.0.1:$px"
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $1"; fi; }
# h2load prints "requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, ..."
load_ok() {
  h2load "$@" >"$dir/h2load.out" 2>&1 || true
  if grep -Eq "requests: ([0-9]+) total, \1 started, \1 done, \1 succeeded, 0 failed, 0 errored" "$dir/h2load.out"; then return 0; fi
  cat "$dir/h2load.out"; return 1
}

check "curl h2c prior knowledge to an HTTP/1.1 upstream" \
  'cmp -s <(curl -sf --http2-prior-knowledge "$base/1k.txt") "$dir/www/1k.txt"'
check "curl reports HTTP/2" '[ "$(curl -s -o /dev/null -w "%{http_version}" --http2-prior-knowledge "$base/1k.txt")" = 2 ]'
check "curl h2c end to end to nghttpd (300 kB)" \
  'cmp -s <(curl -sf --http2-prior-knowledge "$base/h2/big.bin") "$dir/www/big.bin"'
check "curl HTTP/1.1 to the HTTP/2 upstream" \
  'cmp -s <(curl -sf --http1.1 "$base/h2/big.bin") "$dir/www/big.bin"'
check "curl h2c POST of 300 kB echoed end to end over HTTP/2" \
  'cmp -s <(curl -sf --http2-prior-knowledge --data-binary @"$dir/www/big.bin" "$base/h2/echo") "$dir/www/big.bin"'
check "curl HTTP/1.1 chunked POST echoed by the HTTP/2 upstream" \
  'cmp -s <(curl -sf --http1.1 -H "transfer-encoding: chunked" --data-binary @"$dir/www/big.bin" "$base/h2/echo") "$dir/www/big.bin"'
check "nghttp GET with prior knowledge" \
  'nghttp -n -v "$base/1k.txt" 2>&1 | grep -q ":status: 200"'
check "nghttp fetches several streams at once" \
  'nghttp -n -s -m 20 "$base/h2/1k.txt" >/dev/null 2>&1'
check "h2load: 4 connections x 10 streams to the HTTP/1.1 upstream" \
  'load_ok -n 4000 -c 4 -m 10 "$base/1k.txt"'
check "h2load: 4 connections x 10 streams end to end over HTTP/2" \
  'load_ok -n 4000 -c 4 -m 10 "$base/h2/1k.txt"'
check "h2load over HTTP/1.1 (--h1) to the HTTP/2 upstream" \
  'load_ok --h1 -n 2000 -c 4 "$base/h2/1k.txt"'
check "stats count HTTP/2 connections" \
  '[ "$(curl -s "http://127.0.0.1:$adm/stats" | sed -n "s/^http.h2i.downstream_cx_http2_total: //p")" -ge 10 ]'
check "the HTTP/2 upstream is reached over few connections" \
  '[ "$(curl -s "http://127.0.0.1:$adm/stats" | sed -n "s/^cluster.nghttpd.upstream_cx_http2_total: //p")" -le 4 ]'
if [ "$failed" -ne 0 ]; then tail -n 20 "$dir/ringside.log" || true; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
