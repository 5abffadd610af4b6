#!/usr/bin/env bash
# Runs examples/envoy-demo.yaml (Envoy's getting-started config, cluster pointed at a local
# backend on localhost:8080, upstream TLS removed) and checks with curl that it proxies;
# then examples/envoy-demo-tls.yaml (the same config with its upstream TLS block, pointed at
# openssl s_server on localhost:8443, which refuses any SNI but www.envoyproxy.io).
set -euo pipefail
bin=${1:-target/debug/ringside}
dir=$(mktemp -d)
# The ports are fixed by Envoy's demo config: a process left from an earlier step (SO_REUSEPORT
# lets a second proxy share a port) would answer some requests. Wait until they are free.
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8080 8443 9901 10000; do
  for _ in $(seq 100); do busy $port || break; sleep 0.1; done
  if busy $port; then echo "port $port is already in use: $(ss -ltnp "sport = :$port" 2>/dev/null | tail -n +2)"; exit 1; fi
done
mkdir -p "$dir/www" && echo "hello from the demo backend" > "$dir/www/index.html"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$dir/www" >"$dir/backend.log" 2>&1 &
backend=$!
"$bin" -c examples/envoy-demo.yaml --concurrency 2 -l warn >"$dir/access.log" 2>"$dir/ringside.log" &
proxy=$!
trap 'kill $backend $proxy 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8080/ && curl -s -o /dev/null http://127.0.0.1:9901/ready && break; sleep 0.1; done
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $1"; fi; }
check "proxied through :10000" '[ "$(curl -s http://127.0.0.1:10000/index.html)" = "hello from the demo backend" ]'
check "host rewritten to www.envoyproxy.io" 'curl -s -o /dev/null http://127.0.0.1:10000/ && grep -q "www.envoyproxy.io" <(curl -s http://127.0.0.1:9901/config_dump)'
check "admin ready" '[ "$(curl -s http://127.0.0.1:9901/ready)" = "LIVE" ]'
check "stats count the requests" '[ "$(curl -s http://127.0.0.1:9901/stats | sed -n "s/^http.ingress_http.downstream_rq_2xx: //p")" -ge 2 ]'
kill -TERM $proxy
for _ in $(seq 100); do kill -0 $proxy 2>/dev/null || break; sleep 0.1; done
check "SIGTERM exits" '! kill -0 $proxy 2>/dev/null'
check "access log lines on stdout" 'grep -q "\"GET /index.html HTTP/1.1\" 200" "$dir/access.log"'
# The unmodified TLS block: upstream TLS with SNI www.envoyproxy.io, as Envoy ships it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=www.envoyproxy.io \
  -keyout "$dir/k.pem" -out "$dir/c.pem" >/dev/null 2>&1
openssl s_server -accept 8443 -cert "$dir/c.pem" -key "$dir/k.pem" -cert2 "$dir/c.pem" -key2 "$dir/k.pem" \
  -servername www.envoyproxy.io -servername_fatal -www -quiet >"$dir/s_server.log" 2>&1 &
tls_backend=$!
# s_server may take a while to listen on a busy 2-core machine: wait for its port, or a
# request would meet a refused connection (a 503) rather than the check it is meant for.
for _ in $(seq 100); do busy 8443 && break; sleep 0.1; done
"$bin" -c examples/envoy-demo-tls.yaml --concurrency 1 -l warn >/dev/null 2>"$dir/ringside-tls.log" &
proxy=$!
trap 'kill $backend $tls_backend $proxy 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:9901/ready && break; sleep 0.1; done
check "upstream TLS with the demo's SNI (the TLS block unmodified)" 'curl -s -D "$dir/tls.head" -o "$dir/tls.body" http://127.0.0.1:10000/; grep -q "Ciphers supported in s_server" "$dir/tls.body"'
check "counted as one upstream handshake" '[ "$(curl -s http://127.0.0.1:9901/stats | sed -n "s/^cluster.service_envoyproxy_io.ssl.handshake: //p")" = 1 ]'
echo "$passed passed, $failed failed"
if [ "$failed" -ne 0 ]; then
  for log in "$dir"/ringside*.log "$dir/s_server.log" "$dir/tls.head" "$dir/tls.body"; do echo "--- $log"; tail -20 "$log"; done
fi
[ "$failed" -eq 0 ]
