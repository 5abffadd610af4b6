//! A JSON Web Key Set as jwt_verify_lib reads it (`Jwks::createFrom`), and signature
//! verification with its key selection (`verifyJwtWithoutTimeChecking`). The cryptography
//! is the `jsonwebtoken` crate's (ring underneath).
//!
//! Keys that do not parse are skipped; the set is refused only when none does. ES512
//! (P-521) keys are refused as unsupported: ring has no P-521.

use jsonwebtoken::{crypto, Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::status::Status;
use super::token::{b64url, Alg, Jwt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kty {
    /// P-256 or P-384.
    Ec,
    Rsa,
    Oct,
    Okp,
}

/// One usable key.
pub struct Jwk {
    /// Empty: none (matches any token's `kid`).
    pub kid: String,
    /// Empty: none (any token `alg`).
    pub alg: String,
    kty: Kty,
    key: DecodingKey,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.kty)
            .finish()
    }
}

/// A key set with at least one usable key.
#[derive(Debug)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`): the status of the first key that failed
    /// when none parsed.
    pub fn parse(text: &[u8]) -> Result<Jwks, Status> {
        let doc: Value = serde_json::from_slice(text).map_err(|_| Status::JwksParseError)?;
        let Value::Object(doc) = doc else {
            return Err(Status::JwksParseError);
        };
        let keys = match doc.get("keys") {
            None => return Err(Status::JwksNoKeys),
            Some(Value::Array(k)) => k,
            Some(_) => return Err(Status::JwksBadKeys),
        };
        let mut out = Vec::new();
        let mut first_error = None;
        for k in keys {
            let Value::Object(k) = k else { continue };
            match jwk(k) {
                Ok(j) => out.push(j),
                Err(s) => {
                    first_error.get_or_insert(s);
                }
            }
        }
        if out.is_empty() {
            return Err(first_error.unwrap_or(Status::JwksNoValidKeys));
        }
        Ok(Jwks { keys: out })
    }
}

fn str_field<'a>(
    k: &'a Map<String, Value>,
    name: &str,
    missing: Status,
    bad: Status,
) -> Result<&'a str, Status> {
    match k.get(name) {
        None => Err(missing),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad),
    }
}

fn opt_str<'a>(k: &'a Map<String, Value>, name: &str) -> &'a str {
    match k.get(name) {
        Some(Value::String(s)) => s,
        _ => "",
    }
}

fn jwk(k: &Map<String, Value>) -> Result<Jwk, Status> {
    let kty = match k.get("kty") {
        None => return Err(Status::JwksMissingKty),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Status::JwksBadKty),
    };
    let kid = opt_str(k, "kid").to_string();
    let alg = opt_str(k, "alg").to_string();
    let (kty, key) = match kty {
        "RSA" => {
            if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
                return Err(Status::JwksRsaKeyBadAlg);
            }
            let n = str_field(k, "n", Status::JwksRsaKeyMissingN, Status::JwksRsaKeyBadN)?;
            let e = str_field(k, "e", Status::JwksRsaKeyMissingE, Status::JwksRsaKeyBadE)?;
            let n = b64url(n)
                .filter(|n| !n.is_empty())
                .ok_or(Status::JwksRsaParseError)?;
            let e = b64url(e).ok_or(Status::JwksRsaParseError)?;
            // BoringSSL's RSA_check_key as jwt_verify_lib calls it: e is 3 or 65537.
            let ev = e
                .iter()
                .fold(0u64, |a, &b| a.saturating_mul(256) | u64::from(b));
            if ev != 3 && ev != 65537 {
                return Err(Status::JwksRsaParseError);
            }
            (Kty::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return Err(Status::JwksEcKeyBadAlg);
            }
            let crv = match k.get("crv") {
                None => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(Status::JwksEcKeyBadCrv),
            };
            let by_alg = match alg.as_str() {
                "" => None,
                "ES256" => Some("P-256"),
                "ES384" => Some("P-384"),
                "ES512" => Some("P-521"),
                _ => return Err(Status::JwksEcKeyAlgOrCrvUnsupported),
            };
            let curve = match (crv, by_alg) {
                ("", None) => "P-256",
                ("", Some(c)) => c,
                (c, None) => c,
                (c, Some(a)) if c == a => c,
                _ => return Err(Status::JwksEcKeyAlgNotCompatibleWithCrv),
            };
            let len = match curve {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Err(Status::JwksEcKeyAlgOrCrvUnsupported),
            };
            let x = str_field(k, "x", Status::JwksEcKeyMissingX, Status::JwksEcKeyBadX)?;
            let y = str_field(k, "y", Status::JwksEcKeyMissingY, Status::JwksEcKeyBadY)?;
            let (Some(x), Some(y)) = (b64url(x), b64url(y)) else {
                return Err(Status::JwksEcXorYBadBase64);
            };
            if x.len() != len || y.len() != len {
                return Err(Status::JwksEcParseError);
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Kty::Ec, DecodingKey::from_ec_der(&point))
        }
        "oct" => {
            if !alg.is_empty() && !alg.starts_with("HS") {
                return Err(Status::JwksHmacKeyBadAlg);
            }
            let secret = str_field(k, "k", Status::JwksHmacKeyMissingK, Status::JwksHmacKeyBadK)?;
            let secret = b64url(secret)
                .filter(|s| !s.is_empty())
                .ok_or(Status::JwksOctBadBase64)?;
            (Kty::Oct, DecodingKey::from_secret(&secret))
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err(Status::JwksOkpKeyBadAlg);
            }
            let crv = str_field(
                k,
                "crv",
                Status::JwksOkpKeyMissingCrv,
                Status::JwksOkpKeyBadCrv,
            )?;
            if crv != "Ed25519" {
                return Err(Status::JwksOkpKeyCrvUnsupported);
            }
            let x = str_field(k, "x", Status::JwksOkpKeyMissingX, Status::JwksOkpKeyBadX)?;
            let x = b64url(x).ok_or(Status::JwksOkpXBadBase64)?;
            if x.len() != 32 {
                return Err(Status::JwksOkpXWrongLength);
            }
            (Kty::Okp, DecodingKey::from_ed_der(&x))
        }
        _ => return Err(Status::JwksNotImplementedKty),
    };
    Ok(Jwk { kid, alg, kty, key })
}

/// Verifies `jwt`'s signature with the first key of `jwks` that fits it: a key whose
/// `kid` differs from the token's (both set) or whose `alg` differs (set) is passed over.
/// `JwksKidAlgMismatch` when no key fits, `JwtVerificationFail` when none that fits
/// verifies.
pub fn verify(jwt: &Jwt, jwks: &Jwks) -> Status {
    // The signature as jsonwebtoken reads it: canonical base64url.
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&jwt.signature);
    let mut fitted = false;
    for k in &jwks.keys {
        if !jwt.kid.is_empty() && !k.kid.is_empty() && k.kid != jwt.kid {
            continue;
        }
        if !k.alg.is_empty() && k.alg != jwt.alg.name() {
            continue;
        }
        fitted = true;
        let alg = match (k.kty, jwt.alg) {
            (Kty::Ec, Alg::Es384) => Algorithm::ES384,
            (Kty::Ec, Alg::Es512) => continue,
            (Kty::Ec, _) => Algorithm::ES256,
            (Kty::Rsa, Alg::Rs256) => Algorithm::RS256,
            (Kty::Rsa, Alg::Rs384) => Algorithm::RS384,
            (Kty::Rsa, Alg::Rs512) => Algorithm::RS512,
            (Kty::Rsa, Alg::Ps256) => Algorithm::PS256,
            (Kty::Rsa, Alg::Ps384) => Algorithm::PS384,
            (Kty::Rsa, Alg::Ps512) => Algorithm::PS512,
            (Kty::Rsa, _) => continue,
            (Kty::Oct, Alg::Hs384) => Algorithm::HS384,
            (Kty::Oct, Alg::Hs512) => Algorithm::HS512,
            (Kty::Oct, _) => Algorithm::HS256,
            (Kty::Okp, _) => {
                if jwt.signature.len() != 64 {
                    return Status::JwtEd25519SignatureWrongLength;
                }
                Algorithm::EdDSA
            }
        };
        if crypto::verify(&sig, jwt.signed.as_bytes(), &k.key, alg).unwrap_or(false) {
            return Status::Ok;
        }
    }
    if fitted {
        Status::JwtVerificationFail
    } else {
        Status::JwksKidAlgMismatch
    }
}
