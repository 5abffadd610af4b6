//! What checking one JWT costs a core (jwt_authn has no token cache, as Envoy without
//! `jwt_cache_config`): parsing plus signature verification, per algorithm, against a key
//! set of three keys chosen by `kid`. RS256 is what most identity providers issue.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringside::jwt::jwks::{verify, Jwks};
use ringside::jwt::token::Jwt;

/// A throwaway RSA key for this benchmark only (generated with openssl; signs nothing else).
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCJt1NrqS0LXzjn
YiZn73Pa4h251My9h2Jzj6Nx+nqwWL/fAXWhtTzFL0oT3eUHhE45X/f94DCnevxc
gltgHvpRwV1bOsr3gGffQLKZjiPzV18v7KRFnPwXn+OVfTydSfL25pnYaAKaZrLR
7aeFt/QmJI53tuDQDXRsgW8KP7omcWZHTYe2Yo9iXDbfn9yxfDTgc12Qen49vFSA
o+h46ogCEaKiqNtDcmLsmb5Uuw7Xu0vACiVESYX28vAzZR5oJ9wXa6M32GkxRMlx
xqsbr5+69g7jxxEUg3xjcPe/nkX/7JrwEJ9FLtsjC1AzGTmTTllkv60h0vga+plM
cnvz2WqhAgMBAAECggEAAMUjmJyWkMKUjTYkjtX1vjiXMymNh4j7q1nkEZ2xR/AY
LLRTt90rHNMozcAJKTjdtT71RILkOBdDoZf/JZu3za72p0bxWiO/vb62zcDg/R45
OOeU+9d34jRVz8lzSnQAzkUJCbqu5U9UxVF6JzMQ/7O8ft/PYmlg2VmtiRO8amgT
Bod3+R3HrssArmG5XoVpgSwjMY44GveCABB9meBagy9dnOiAiXY5UDU1VbK97wRE
uRQM13Ln617kxD/n/pevev4Ux+V5sBZOPevg6+UBB88i/DM2sM1Wcfu33hm99j7t
Vrfjdv2LmfixLoogGelvYPpZXAZk86a+1vaVzgQ4nQKBgQDAjO0RbguAooKM9Ohl
P4xneLBPlpFY0dDBzHZAAXrKGIzvrFKI4gIO5R4Sf1wKtxb2ZMxzpbtR2xWDTdWi
s9eWanUdr8RSg6hpWxYSiGdqUceFsPNrab7qx9Q6ubBQzFGtu5bEkjkXUT7N8cSc
hG2WAZ7/PTyCZnWJVMvRRDXbfwKBgQC3GLXNMb1IAP1g26ur/fEWoCE+n9VzZBZN
MWP14+6D+XAF5mBNj/2MZ4U2NtZDBu7vfx6MG3LXkMuWAwkYcH9B/Rd3P/59oD/j
fiH3Ubc9RavQxozjpFJANe1RJuUcv6y6OYh9RPPcd5KDoVTRYLNu2h64b6JOFoez
Kzvy3qhJ3wKBgFGLnV7TVwW8TUO6+Kzgc+riPvEF2DpgaWOZ3r6Oodzy9sUOGsoj
xTFfsROuYmGbVps05y1XE/S/ruWz0fUc6wGlxkGzTZaQcYNk8v0YTYvGZJRm80Ab
QaKWzHeualBdp33HQzuunYUVgF6htF2A7BQqTZbU7UpgcAigI81VcOWrAoGBAJjw
vBOto5U8tmmstKaTFUo38e0Up8Cebv6F7iCcB0UYG5niCLlhOIKKijxx6+HLLdTC
E2snFnO4EEa7PGK8vaAKYAqNWu/m5tcJKigjivNUeiOHZnJUdRwLr7Mk0SaFeSuJ
GVjCOw0CmFD5dxb6Noe3DQg0v5eIvEtOJuJFWL9zAoGBAIPoqXgnaBNO5w4Wcpd8
+vSuZmgf8OQOftAxs1r1aH5yOxtGNnszfZKKaouoBpRCcfrJTiDTOIL8hhVlmpjX
uu22LHcmtDg8TCk1LprAOwhQJ/VsVzYDotzFLVwVSqYrAs8lnciu0obNfdFDdIRz
i7gu1UOAAT9Sc1woBMEk6web
-----END PRIVATE KEY-----";
const RSA_N: &str = "ibdTa6ktC18452ImZ-9z2uIdudTMvYdic4-jcfp6sFi_3wF1obU8xS9KE93lB4ROOV_3_eAwp3r8XIJbYB76UcFdWzrK94Bn30CymY4j81dfL-ykRZz8F5_jlX08nUny9uaZ2GgCmmay0e2nhbf0JiSOd7bg0A10bIFvCj-6JnFmR02HtmKPYlw235_csXw04HNdkHp-PbxUgKPoeOqIAhGioqjbQ3Ji7Jm-VLsO17tLwAolREmF9vLwM2UeaCfcF2ujN9hpMUTJccarG6-fuvYO48cRFIN8Y3D3v55F_-ya8BCfRS7bIwtQMxk5k05ZZL-tIdL4GvqZTHJ789lqoQ";
const RSA_E: &str = "AQAB";

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn token(alg: jsonwebtoken::Algorithm, kid: &str, key: &jsonwebtoken::EncodingKey) -> String {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.into());
    let claims = serde_json::json!({"iss": "https://issuer.example", "sub": "alice",
        "aud": "bookinfo.com", "exp": 4_000_000_000u64, "scope": "read write"});
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn checking(c: &mut Criterion) {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let raw = ec.public_key_raw();
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rs", "n": RSA_N, "e": RSA_E},
        {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key_raw())},
    ]});
    let jwks = Jwks::parse(jwks.to_string().as_bytes()).unwrap();
    let tokens = [
        (
            "RS256",
            token(
                jsonwebtoken::Algorithm::RS256,
                "rs",
                &jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
            ),
        ),
        (
            "ES256",
            token(
                jsonwebtoken::Algorithm::ES256,
                "es",
                &jsonwebtoken::EncodingKey::from_ec_der(&ec.serialize_der()),
            ),
        ),
        (
            "EdDSA",
            token(
                jsonwebtoken::Algorithm::EdDSA,
                "ed",
                &jsonwebtoken::EncodingKey::from_ed_der(&ed.serialize_der()),
            ),
        ),
    ];
    let mut g = c.benchmark_group("jwt_parse_and_verify");
    for (alg, t) in &tokens {
        g.bench_function(*alg, |b| {
            b.iter(|| {
                let jwt = Jwt::parse(black_box(t)).unwrap();
                assert_eq!(verify(&jwt, &jwks), ringside::jwt::Status::Ok);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, checking);
criterion_main!(benches);
