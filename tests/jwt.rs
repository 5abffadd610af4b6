//! `envoy.filters.http.jwt_authn` as istiod programs it for a RequestAuthentication, with
//! tokens signed at test time (ES256 and EdDSA keys from rcgen): valid, expired, not yet
//! valid, wrong issuer, wrong audience, bad signature, unknown key id; a key set fetched
//! from a local JWKS server (a slow fetch the request waits for, a rotation, a server that
//! fails); the payload in dynamic metadata read by RBAC; HTTP/1.1 and HTTP/2 clients; both
//! drivers. (RSA, PS, HMAC, every requirement kind and Envoy's exact words are compared
//! with Envoy 1.40 in tests/interop/jwt_parity.py.)

// The JWKS server is a test peer on tokio threads, not a proxy core.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its JWK.
struct Key {
    kid: &'static str,
    alg: jsonwebtoken::Algorithm,
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

impl Key {
    fn es256(kid: &'static str) -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        Key {
            kid,
            alg: jsonwebtoken::Algorithm::ES256,
            encoding: jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    fn ed25519(kid: &'static str) -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Key {
            kid,
            alg: jsonwebtoken::Algorithm::EdDSA,
            encoding: jsonwebtoken::EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": b64(kp.public_key_raw())}),
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&Key]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn claims(iss: &str, sub: &str) -> serde_json::Value {
    serde_json::json!({"iss": iss, "sub": sub, "aud": ["bookinfo.com"], "exp": now() + 3600,
        "scope": "read write", "groups": ["dev"]})
}

/// A JWKS server: answers every GET with the current document (status 200, or `status`),
/// after `delay`; counts requests.
#[derive(Clone, Default)]
struct JwksServer {
    doc: Arc<Mutex<(u16, String, Duration)>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    /// Answers 503 while this is above 0 (counting down).
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(doc: String) -> (JwksServer, SocketAddr) {
        let server = JwksServer::default();
        *server.doc.lock().unwrap() = (200, doc, Duration::ZERO);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    s.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (mut status, body, delay) = s.doc.lock().unwrap().clone();
                    let failing = s
                        .failures
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |n| n.checked_sub(1),
                        )
                        .is_ok();
                    if failing {
                        status = 503;
                    }
                    tokio::time::sleep(delay).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (server, addr)
    }

    fn set(&self, status: u16, doc: String, delay: Duration) {
        *self.doc.lock().unwrap() = (status, doc, delay);
    }
}

const ISS: &str = "https://issuer.example";

/// istiod's jwt_authn for one RequestAuthentication rule (a token is optional, but if
/// present it must be valid), then an AuthorizationPolicy requiring `sub` = alice on
/// /secure and the `write` scope on /write.
fn bootstrap(local: &str, remote: SocketAddr, backend: SocketAddr, cache: &str) -> String {
    let local = serde_json::to_string(local).unwrap();
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config: {{virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origins-0:
                  issuer: {ISS}
                  audiences: [bookinfo.com]
                  local_jwks: {{inline_string: {local}}}
                  payload_in_metadata: payload
                  normalize_payload_in_metadata: {{space_delimited_claims: [permission, scope]}}
                  forward_payload_header: x-jwt-payload
                  claim_to_headers: [{{header_name: x-jwt-sub, claim_name: sub}}]
                origins-1:
                  issuer: https://remote.example
                  from_headers: [{{name: x-remote-token}}]
                  remote_jwks:
                    http_uri: {{uri: "http://jwks.example/keys", cluster: jwks, timeout: 2s}}
                    cache_duration: {cache}
                  payload_in_metadata: payload
              rules:
              - match: {{prefix: /remote}}
                requires: {{provider_name: origins-1}}
              - match: {{prefix: /}}
                requires: {{requires_any: {{requirements: [{{provider_name: origins-0}}, {{allow_missing: {{}}}}]}}}}
              bypass_cors_preflight: true
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  secure:
                    permissions: [{{url_path: {{path: {{prefix: /secure}}}}}}]
                    principals: [{{and_ids: {{ids: [{{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: iss}}], value: {{string_match: {{exact: '{ISS}'}}}}}}}}, {{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: sub}}], value: {{string_match: {{exact: alice}}}}}}}}]}}}}]
                  write:
                    permissions: [{{url_path: {{path: {{prefix: /write}}}}}}]
                    principals: [{{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: scope}}], value: {{list_match: {{one_of: {{string_match: {{exact: write}}}}}}}}}}}}]
                  rest:
                    permissions: [{{not_rule: {{or_rules: {{rules: [{{url_path: {{path: {{prefix: /secure}}}}}}, {{url_path: {{path: {{prefix: /write}}}}}}]}}}}}}]
                    principals: [{{any: true}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters: [{}, {}]
"#,
        cluster("backend", &[backend], ""),
        cluster("jwks", &[remote], "")
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_as_istiod_configures_it() {
    let es = Key::es256("es-1");
    let ed = Key::ed25519("ed-1");
    let stranger = Key::es256("es-1");
    let (_jwks, jwks_addr) = JwksServer::start(jwks(&[])).await;
    let backend = Backend::start("b").await;
    for driver in drivers() {
        let p = Proxy::start(
            &bootstrap(&jwks(&[&es, &ed]), jwks_addr, backend.addr, "300s"),
            &one_core(driver),
        )
        .await;
        let addr = p.addr();
        let alice = es.sign(&claims(ISS, "alice"));
        let bob = ed.sign(&claims(ISS, "bob"));
        for h2 in [false, true] {
            let case = format!("{driver}, HTTP/2 {h2}");
            let call = |path: &'static str, token: Option<String>| {
                let auth = token.map(|t| bearer(&t));
                async move {
                    let headers: Vec<(&str, &str)> = auth
                        .as_deref()
                        .map(|a| vec![("authorization", a)])
                        .unwrap_or_default();
                    send(addr, h2, "GET", path, &headers).await
                }
            };
            // No token: allowed by `allow_missing`, but the policy needs a principal.
            assert_eq!(call("/open", None).await.0, 200, "{case}");
            let (status, _, body) = call("/secure", None).await;
            assert_eq!(
                (status, &body[..]),
                (403, &b"RBAC: access denied"[..]),
                "{case}"
            );
            // A valid token: the upstream gets its payload and claim, not the token.
            let (status, _, _) = call("/secure", Some(alice.clone())).await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(backend.seen.header("x-jwt-sub").as_deref(), Some("alice"));
            assert!(backend.seen.header("authorization").is_none(), "{case}");
            let payload = backend.seen.header("x-jwt-payload").unwrap();
            assert_eq!(payload, alice.split('.').nth(1).unwrap(), "{case}");
            // EdDSA works too; bob is authenticated but not alice.
            assert_eq!(call("/open", Some(bob.clone())).await.0, 200, "{case}");
            assert_eq!(call("/secure", Some(bob.clone())).await.0, 403, "{case}");
            // The space-delimited scope is a list in the metadata.
            assert_eq!(call("/write", Some(bob.clone())).await.0, 200, "{case}");
            // Invalid tokens are refused even though a token is optional.
            let expired = es.sign(&serde_json::json!({"iss": ISS, "sub": "alice",
                "aud": "bookinfo.com", "exp": now() - 600}));
            let early = es.sign(&serde_json::json!({"iss": ISS, "sub": "alice",
                "aud": "bookinfo.com", "nbf": now() + 600, "exp": now() + 1200}));
            let other_iss = es.sign(&claims("https://evil.example", "alice"));
            let other_aud = es.sign(&serde_json::json!({"iss": ISS, "sub": "alice",
                "aud": "elsewhere", "exp": now() + 60}));
            let forged = stranger.sign(&claims(ISS, "alice"));
            let unknown_kid = Key::es256("es-9").sign(&claims(ISS, "alice"));
            for (token, status, words) in [
                (expired, 401, "Jwt is expired"),
                (early, 401, "Jwt not yet valid"),
                (other_iss, 401, "Jwt issuer is not configured"),
                (other_aud, 403, "Audiences in Jwt are not allowed"),
                (forged, 401, "Jwt verification fails"),
                (
                    unknown_kid,
                    401,
                    "Jwks doesn't have key to match kid or alg from Jwt",
                ),
                ("not-a-jwt".to_string(), 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
            ] {
                let (s, headers, body) = call("/open", Some(token)).await;
                assert_eq!(
                    (s, String::from_utf8_lossy(&body).into_owned()),
                    (status, words.to_string()),
                    "{case}"
                );
                assert_eq!(
                    header(&headers, "www-authenticate"),
                    Some("Bearer realm=\"http://example.com/open\", error=\"invalid_token\""),
                    "{case}: {words}"
                );
            }
        }
        // 2 × (4 allowed without a token or with a valid one... ) as counted by Envoy.
        assert_eq!(p.stat("http.inbound.jwt_authn.denied").await, 14);
        assert_eq!(p.stat("http.inbound.jwt_authn.allowed").await, 12);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_key_sets_are_fetched_cached_and_rotated() {
    let old = Key::es256("old");
    let new = Key::ed25519("new");
    let (jwks_server, jwks_addr) = JwksServer::start(jwks(&[&old])).await;
    let backend = Backend::start("b").await;
    for driver in drivers() {
        jwks_server.set(200, jwks(&[&old]), Duration::from_millis(300));
        let hits_before = jwks_server.hits.load(std::sync::atomic::Ordering::SeqCst);
        let p = Proxy::start(
            &bootstrap(
                &jwks(&[&Key::es256("local")]),
                jwks_addr,
                backend.addr,
                "1s",
            ),
            &one_core(driver),
        )
        .await;
        let addr = p.addr();
        let token = |k: &Key, sub: &str| k.sign(&claims("https://remote.example", sub));
        let call = |t: String, h2: bool| async move {
            send(addr, h2, "GET", "/remote", &[("x-remote-token", &t)]).await
        };
        // The first request waits for the (slow) fetch; both codecs.
        let (s, _, body) = call(token(&old, "a"), false).await;
        assert_eq!(s, 200, "{driver}: {}", String::from_utf8_lossy(&body));
        assert_eq!(call(token(&old, "b"), true).await.0, 200, "{driver}");
        assert_eq!(p.stat("http.inbound.jwt_authn.jwks_fetch_success").await, 1);
        // Rotation: the new key is unknown until the cached set expires.
        jwks_server.set(200, jwks(&[&new]), Duration::ZERO);
        let (s, _, body) = call(token(&new, "c"), false).await;
        assert_eq!(
            (s, String::from_utf8_lossy(&body).into_owned()),
            (
                401,
                "Jwks doesn't have key to match kid or alg from Jwt".into()
            ),
            "{driver}"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(call(token(&new, "d"), true).await.0, 200, "{driver}");
        assert_eq!(call(token(&old, "e"), false).await.0, 401, "{driver}");
        assert_eq!(p.stat("http.inbound.jwt_authn.jwks_fetch_success").await, 2);
        // A server that fails: nothing is cached, every request is refused.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        jwks_server.set(503, String::new(), Duration::ZERO);
        let (s, _, body) = call(token(&new, "f"), false).await;
        assert_eq!(
            (s, String::from_utf8_lossy(&body).into_owned()),
            (401, "Jwks remote fetch is failed".into()),
            "{driver}"
        );
        assert_eq!(p.stat("http.inbound.jwt_authn.jwks_fetch_failed").await, 1);
        // No token at all never fetches.
        let (s, _, body) = send(addr, false, "GET", "/remote", &[]).await;
        assert_eq!((s, &body[..]), (401, &b"Jwt is missing"[..]), "{driver}");
        assert_eq!(
            jwks_server.hits.load(std::sync::atomic::Ordering::SeqCst) - hits_before,
            3,
            "{driver}: one fetch per cache period, and the failed one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_fetch_gets_the_keys_before_any_request_retrying_as_configured() {
    let key = Key::es256("k");
    let (jwks_server, jwks_addr) = JwksServer::start(jwks(&[&key])).await;
    let backend = Backend::start("b").await;
    for driver in drivers() {
        jwks_server
            .failures
            .store(2, std::sync::atomic::Ordering::SeqCst);
        let hits = jwks_server.hits.load(std::sync::atomic::Ordering::SeqCst);
        let yaml = bootstrap(&jwks(&[&Key::es256("local")]), jwks_addr, backend.addr, "300s")
            .replace(
                "cache_duration: 300s",
                "cache_duration: 300s\n                    async_fetch: {}\n                    retry_policy: {num_retries: 3, retry_back_off: {base_interval: 0.05s, max_interval: 0.1s}}",
            );
        let p = Proxy::start(&yaml, &one_core(driver)).await;
        // Fetched at start, after two failed attempts, with no request asking.
        assert_eq!(
            p.stat_reaching("http.inbound.jwt_authn.jwks_fetch_success", 1)
                .await,
            1,
            "{driver}"
        );
        assert_eq!(
            jwks_server.hits.load(std::sync::atomic::Ordering::SeqCst) - hits,
            3,
            "{driver}: two refused attempts, then the keys"
        );
        let token = key.sign(&claims("https://remote.example", "a"));
        let (s, _, _) = send(
            p.addr(),
            false,
            "GET",
            "/remote",
            &[("x-remote-token", &token)],
        )
        .await;
        assert_eq!(s, 200, "{driver}");
        assert_eq!(
            jwks_server.hits.load(std::sync::atomic::Ordering::SeqCst) - hits,
            3,
            "{driver}: the request did not fetch"
        );
        assert_eq!(p.stat("http.inbound.jwt_authn.jwks_fetch_failed").await, 0);
    }
}

#[test]
fn configuration_errors_name_the_provider_and_field() {
    let backend: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let good = bootstrap(&jwks(&[&Key::es256("k")]), backend, backend, "300s");
    let (ok, out) = validate("jwt-ok", &good, &[]);
    assert!(ok, "{out}");
    let bad_local = bootstrap("{\"keys\": []}", backend, backend, "300s");
    let (ok, out) = validate("jwt-bad-local", &bad_local, &[]);
    assert!(!ok);
    assert!(
        out.contains("Provider 'origins-0' in jwt_authn config has invalid local jwks: Jwks doesn't have any valid public key"),
        "{out}"
    );
    let unknown = good.replace("provider_name: origins-1", "provider_name: nobody");
    let (ok, out) = validate("jwt-unknown", &unknown, &[]);
    assert!(!ok);
    assert!(
        out.contains("Required provider ['nobody'] is not configured."),
        "{out}"
    );
    let state_rules = good.replace(
        "bypass_cors_preflight: true",
        "bypass_cors_preflight: true\n              filter_state_rules: {name: x}",
    );
    let (ok, out) = validate("jwt-fsr", &state_rules, &[]);
    assert!(!ok);
    assert!(out.contains("filter_state_rules"), "{out}");
}
