//! A JWT as jwt_verify_lib parses it (`Jwt::parseFromString`): three base64url sections,
//! a JSON header with a supported `alg`, a JSON payload whose registered claims have the
//! types RFC 7519 gives them, and the signature.

use serde_json::{Map, Value};

use super::status::Status;

/// The signature algorithms jwt_verify_lib accepts in a header (`none` is not one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Es256,
    Es384,
    Es512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A parsed token. Nothing here is trusted until its signature is verified.
#[derive(Debug)]
pub struct Jwt {
    pub alg: Alg,
    /// `kid` (empty: none).
    pub kid: String,
    pub iss: Option<String>,
    pub sub: String,
    pub aud: Vec<String>,
    /// Seconds since the epoch; 0: absent.
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// The payload section as it came (`forward_payload_header`).
    pub payload_b64: String,
    /// `header.payload`: what the signature signs.
    pub signed: String,
    pub signature: Vec<u8>,
}

/// Base64url with or without padding, as absl's `WebSafeBase64Unescape` reads it.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    ENGINE.decode(s.as_bytes()).ok()
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Jwt, Status> {
        // Split on '.', skipping empty sections, as absl::StrSplit(SkipEmpty) does.
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [h64, p64, s64] = parts[..] else {
            return Err(Status::JwtBadFormat);
        };
        let header_bytes = b64url(h64).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::parse(a).ok_or(Status::JwtHeaderNotImplementedAlg)?,
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        let kid = match header.get("kid") {
            None => String::new(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(Status::JwtHeaderBadKid),
        };
        let payload_bytes = b64url(p64).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
        let payload: Map<String, Value> = serde_json::from_slice(&payload_bytes)
            .map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
        let string = |name: &str, bad: Status| -> Result<Option<String>, Status> {
            match payload.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad),
            }
        };
        let iss = string("iss", Status::JwtPayloadParseErrorIssNotString)?;
        let sub = string("sub", Status::JwtPayloadParseErrorSubNotString)?.unwrap_or_default();
        let time = |name: &str, not_int: Status, range: Status| -> Result<u64, Status> {
            match payload.get(name) {
                None => Ok(0),
                Some(Value::Number(n)) => {
                    let f = n.as_f64().ok_or(range)?;
                    if !(0.0..18_446_744_073_709_551_616.0).contains(&f) {
                        return Err(range);
                    }
                    Ok(f as u64)
                }
                Some(_) => Err(not_int),
            }
        };
        let iat = time(
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = time(
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = time(
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string("jti", Status::JwtPayloadParseErrorJtiNotString)?;
        let aud = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => {
                let mut v = Vec::with_capacity(list.len());
                for a in list {
                    match a {
                        Value::String(s) => v.push(s.clone()),
                        _ => return Err(Status::JwtPayloadParseErrorAudNotString),
                    }
                }
                v
            }
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = b64url(s64).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Jwt {
            alg,
            kid,
            iss,
            sub,
            aud,
            exp,
            nbf,
            iat,
            header,
            payload,
            payload_b64: p64.to_string(),
            signed: format!("{h64}.{p64}"),
            signature,
        })
    }

    /// `verifyTimeConstraint`: `nbf` and `exp` against `now` with `skew` seconds either way.
    pub fn check_time(&self, now: u64, skew: u64) -> Status {
        if now.saturating_add(skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }
}

/// An audience as `CheckAudience` compares it: without an `http://` or `https://` scheme
/// and one trailing slash.
pub fn normalize_audience(a: &str) -> &str {
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn enc(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", enc(header), enc(payload), enc("sig"))
    }

    #[test]
    fn parses_what_jwt_verify_lib_parses() {
        let t = token(
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":10.7,"nbf":1}"#,
        );
        let j = Jwt::parse(&t).unwrap();
        assert_eq!((j.alg, j.kid.as_str()), (Alg::Rs256, "k1"));
        assert_eq!((j.iss.as_deref(), j.sub.as_str()), (Some("i"), "s"));
        assert_eq!(j.aud, ["a", "b"]);
        assert_eq!((j.exp, j.nbf, j.iat), (10, 1, 0));
        assert_eq!(j.signature, b"sig");
        // Empty sections are skipped: a leading dot still parses, a doubled one does not.
        assert!(Jwt::parse(&format!(".{t}")).is_ok());
        assert!(Jwt::parse(&format!("{t}.")).is_ok());
        assert_eq!(Jwt::parse("e30..e30").unwrap_err(), Status::JwtBadFormat);
    }

    #[test]
    fn refuses_with_jwt_verify_lib_s_status() {
        let bad = |h: &str, p: &str| Jwt::parse(&token(h, p)).unwrap_err();
        assert_eq!(Jwt::parse("a.b").unwrap_err(), Status::JwtBadFormat);
        assert_eq!(Jwt::parse("a.b.c.d").unwrap_err(), Status::JwtBadFormat);
        assert_eq!(
            Jwt::parse("!!.e30.e30").unwrap_err(),
            Status::JwtHeaderParseErrorBadBase64
        );
        assert_eq!(bad("[1]", "{}"), Status::JwtHeaderParseErrorBadJson);
        assert_eq!(bad("{}", "{}"), Status::JwtHeaderBadAlg);
        assert_eq!(
            bad(r#"{"alg":"none"}"#, "{}"),
            Status::JwtHeaderNotImplementedAlg
        );
        assert_eq!(
            bad(r#"{"alg":"RS256","kid":1}"#, "{}"),
            Status::JwtHeaderBadKid
        );
        let rs = r#"{"alg":"RS256"}"#;
        assert_eq!(bad(rs, "nope"), Status::JwtPayloadParseErrorBadJson);
        assert_eq!(
            bad(rs, r#"{"iss":1}"#),
            Status::JwtPayloadParseErrorIssNotString
        );
        assert_eq!(
            bad(rs, r#"{"exp":"1"}"#),
            Status::JwtPayloadParseErrorExpNotInteger
        );
        assert_eq!(
            bad(rs, r#"{"exp":-1}"#),
            Status::JwtPayloadParseErrorExpOutOfRange
        );
        assert_eq!(
            bad(rs, r#"{"aud":[1]}"#),
            Status::JwtPayloadParseErrorAudNotString
        );
        assert_eq!(
            bad(rs, r#"{"jti":{}}"#),
            Status::JwtPayloadParseErrorJtiNotString
        );
    }

    #[test]
    fn time_and_audience_rules() {
        let j = Jwt::parse(&token(r#"{"alg":"RS256"}"#, r#"{"nbf":100,"exp":200}"#)).unwrap();
        assert_eq!(j.check_time(39, 60), Status::JwtNotYetValid);
        assert_eq!(j.check_time(40, 60), Status::Ok);
        assert_eq!(j.check_time(260, 60), Status::Ok);
        assert_eq!(j.check_time(261, 60), Status::JwtExpired);
        assert_eq!(normalize_audience("https://a.example/"), "a.example");
        assert_eq!(normalize_audience("http://a"), "a");
        assert_eq!(normalize_audience("ftp://a//"), "ftp://a/");
    }
}
