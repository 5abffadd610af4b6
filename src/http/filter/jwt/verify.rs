//! Requirement evaluation as Envoy's `jwt_authn` verifiers do it (`verifier.cc`,
//! `authenticator.cc`): tokens are extracted from the locations of the providers a
//! requirement names, and each is parsed, matched to its issuer, checked for time,
//! audience, subject and lifetime, then its signature against the provider's keys.
//!
//! Evaluation has no side effects until it ends: when a remote key set is missing it stops
//! with [`Need`], the caller waits for the fetch and evaluates again from the start.

use std::sync::Arc;

use serde_json::Value;

use crate::jwt::jwks::verify;
use crate::jwt::remote::RemoteJwks;
use crate::jwt::token::{normalize_audience, Jwt};
use crate::jwt::Status;
use crate::model::jwt::{JwksSource, JwtAuthn, Location, Provider, Requirement};

/// A remote key set to fetch before the evaluation can go on (and its provider's index).
pub(super) struct Need(pub Arc<RemoteJwks>, pub usize);

/// A token found in the request.
pub(super) struct Found {
    pub location: Location,
    pub token: String,
    /// The providers that look there (their issuers may use it).
    pub providers: u64,
}

/// A token that passed, with the provider that checked it.
pub(super) struct Good {
    pub provider: usize,
    pub location: Location,
    pub jwt: Jwt,
}

/// The end of an evaluation.
pub(super) struct Verdict {
    pub status: Status,
    pub good: Vec<Good>,
    /// The last token that failed and its provider (`failed_status_in_metadata`).
    pub failed: Option<(usize, Status)>,
}

impl Verdict {
    fn ok(good: Vec<Good>) -> Verdict {
        Verdict {
            status: Status::Ok,
            good,
            failed: None,
        }
    }
    fn fail(s: Status, failed: Option<(usize, Status)>) -> Verdict {
        Verdict {
            status: s,
            good: Vec::new(),
            failed,
        }
    }
    pub fn status(&self) -> Status {
        self.status
    }
}

/// What an evaluation reads of the request.
pub(super) trait Tokens {
    /// Every token at the locations of the providers in `mask`, in the order Envoy's
    /// authenticator checks them (cookies, then query parameters, then headers).
    fn find(&self, f: &JwtAuthn, mask: u64) -> Vec<Found>;
}

pub(super) struct Eval<'a, T: Tokens> {
    pub f: &'a JwtAuthn,
    pub tokens: &'a T,
    /// Seconds since the epoch.
    pub now: u64,
    /// Providers whose remote key set was fetched for this request already.
    pub fetched: u64,
    /// Providers whose locations the evaluation read (their output headers are
    /// sanitised).
    pub touched: u64,
    /// Tokens looked up in Envoy's JWT cache (`jwt_cache_miss`: Ringside keeps none).
    pub lookups: u64,
    /// The metadata of every token that passed, in the order they did (Envoy writes it
    /// whatever the requirement's end).
    pub metadata: serde_json::Map<String, Value>,
}

/// The providers a requirement can read tokens for (all of them for the bare
/// allow-missing forms): their output headers are taken from the client before it runs.
pub(super) fn providers_of(r: &Requirement, n: usize) -> u64 {
    match r {
        Requirement::Provider(i, _) => bit(*i),
        Requirement::Any(l) | Requirement::All(l) => {
            l.iter().fold(0, |m, q| m | providers_of(q, n))
        }
        Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
            if n >= 64 {
                u64::MAX
            } else {
                bit(n) - 1
            }
        }
        Requirement::Empty => 0,
    }
}

pub(super) fn bit(i: usize) -> u64 {
    1u64 << i.min(63)
}

impl<T: Tokens> Eval<'_, T> {
    pub fn requirement(&mut self, r: &Requirement) -> Result<Verdict, Need> {
        match r {
            Requirement::Empty => Ok(Verdict::ok(Vec::new())),
            Requirement::Provider(i, auds) => self.provider(*i, auds.as_deref()),
            Requirement::All(list) => {
                let mut good = Vec::new();
                for q in list {
                    let v = self.requirement(q)?;
                    if v.status() != Status::Ok {
                        return Ok(v);
                    }
                    good.extend(v.good);
                }
                Ok(Verdict::ok(good))
            }
            // Only allow_missing(_or_failed) entries: Envoy checks every provider's
            // tokens as the bare requirement would.
            Requirement::Any(list)
                if list.iter().all(|q| {
                    matches!(
                        q,
                        Requirement::AllowMissing | Requirement::AllowMissingOrFailed
                    )
                }) =>
            {
                let or_failed = list
                    .iter()
                    .any(|q| matches!(q, Requirement::AllowMissingOrFailed));
                self.any_provider(or_failed)
            }
            Requirement::Any(list) => {
                let mut status = Status::JwtMissed;
                let (mut allow_missing, mut allow_failed) = (false, false);
                let mut failed = None;
                for q in list {
                    match q {
                        Requirement::AllowMissing => allow_missing = true,
                        Requirement::AllowMissingOrFailed => allow_failed = true,
                        _ => {
                            let v = self.requirement(q)?;
                            let s = v.status();
                            if s == Status::Ok {
                                return Ok(v);
                            }
                            if v.failed.is_some() {
                                failed = v.failed;
                            }
                            if s == Status::JwtUnknownIssuer {
                                if status == Status::JwtMissed {
                                    status = s;
                                }
                            } else if s != Status::JwtMissed {
                                status = s;
                            }
                        }
                    }
                }
                if allow_failed || (allow_missing && status == Status::JwtMissed) {
                    return Ok(Verdict {
                        status: Status::Ok,
                        good: Vec::new(),
                        failed,
                    });
                }
                Ok(Verdict::fail(status, failed))
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                self.any_provider(matches!(r, Requirement::AllowMissingOrFailed))
            }
        }
    }

    /// `provider_name` / `provider_and_audiences`: every token at the provider's locations
    /// must pass; the first that fails decides.
    fn provider(&mut self, i: usize, auds: Option<&[String]>) -> Result<Verdict, Need> {
        self.touched |= bit(i);
        let found = self.tokens.find(self.f, bit(i));
        if found.is_empty() {
            return Ok(Verdict::fail(Status::JwtMissed, None));
        }
        let p = &self.f.providers[i];
        let mut good = Vec::with_capacity(found.len());
        for t in found {
            self.lookups += 1;
            let jwt = match Jwt::parse(&t.token) {
                Ok(j) => j,
                Err(s) => return Ok(Verdict::fail(s, Some((i, s)))),
            };
            if !p.takes_issuer(jwt.iss.as_deref()) {
                let s = Status::JwtUnknownIssuer;
                return Ok(Verdict::fail(s, Some((i, s))));
            }
            match self.check(i, p, &jwt, auds)? {
                Status::Ok => good.push(self.passed(Good {
                    provider: i,
                    location: t.location,
                    jwt,
                })),
                s => return Ok(Verdict::fail(s, Some((i, s)))),
            }
        }
        Ok(Verdict::ok(good))
    }

    /// `allow_missing` / `allow_missing_or_failed` on their own: every provider's tokens,
    /// each checked by the provider its issuer names; the last token's status decides.
    fn any_provider(&mut self, or_failed: bool) -> Result<Verdict, Need> {
        let all = if self.f.providers.len() >= 64 {
            u64::MAX
        } else {
            bit(self.f.providers.len()) - 1
        };
        self.touched |= all;
        let found = self.tokens.find(self.f, all);
        let mut last = Status::Ok;
        let mut good = Vec::new();
        let mut failed = None;
        for t in found {
            let s = match Jwt::parse(&t.token) {
                Err(s) => s,
                Ok(jwt) => match self.by_issuer(jwt.iss.as_deref(), t.providers) {
                    None => Status::JwtUnknownIssuer,
                    Some(i) => {
                        let s = self.check(i, &self.f.providers[i], &jwt, None)?;
                        if s == Status::Ok {
                            good.push(self.passed(Good {
                                provider: i,
                                location: t.location,
                                jwt,
                            }));
                        } else {
                            failed = Some((i, s));
                        }
                        s
                    }
                },
            };
            last = s;
        }
        let status = if or_failed { Status::Ok } else { last };
        Ok(Verdict {
            status,
            good: if status == Status::Ok {
                good
            } else {
                Vec::new()
            },
            failed,
        })
    }

    /// Records a token that passed: its payload (and header) in the metadata.
    fn passed(&mut self, g: Good) -> Good {
        let p = &self.f.providers[g.provider];
        if let Some(k) = &p.payload_in_metadata {
            self.metadata.insert(
                k.to_string(),
                metadata_payload(&g.jwt.payload, &p.space_delimited_claims),
            );
        }
        if let Some(k) = &p.header_in_metadata {
            self.metadata
                .insert(k.to_string(), metadata_payload(&g.jwt.header, &[]));
        }
        g
    }

    /// The provider for issuer `iss`: the one with that issuer, else the first without
    /// one; it must look where the token was found.
    fn by_issuer(&self, iss: Option<&str>, at: u64) -> Option<usize> {
        let ps = &self.f.providers;
        let i = ps
            .iter()
            .position(|p| !p.issuer.is_empty() && Some(&*p.issuer) == iss)
            .or_else(|| ps.iter().position(|p| p.issuer.is_empty()))?;
        (at & bit(i) != 0).then_some(i)
    }

    /// Time, audience, subject, lifetime, then the signature.
    fn check(
        &self,
        i: usize,
        p: &Provider,
        jwt: &Jwt,
        auds: Option<&[String]>,
    ) -> Result<Status, Need> {
        let s = jwt.check_time(self.now, p.clock_skew);
        if s != Status::Ok {
            return Ok(s);
        }
        let allowed = auds.unwrap_or(&p.audiences);
        if !allowed.is_empty()
            && !jwt
                .aud
                .iter()
                .any(|a| allowed.iter().any(|x| x == normalize_audience(a)))
        {
            return Ok(Status::JwtAudienceNotAllowed);
        }
        if let Some(m) = &p.subjects {
            if !m.matches(jwt.sub.as_bytes()) {
                return Ok(Status::JwtVerificationFail);
            }
        }
        if let Some(max) = p.max_lifetime {
            if jwt.exp == 0 {
                return Ok(Status::JwtVerificationFail);
            }
            let left = jwt.exp.saturating_sub(self.now);
            if max != std::time::Duration::MAX && u128::from(left) * 1000 >= max.as_millis() {
                return Ok(Status::JwtVerificationFail);
            }
        }
        let keys = match &p.jwks {
            JwksSource::Local(k) => k.clone(),
            JwksSource::Remote(r) => match r.keys() {
                Some(k) => k,
                None if self.fetched & bit(i) != 0 => return Ok(Status::JwksFetchFail),
                None => return Err(Need(r.clone(), i)),
            },
        };
        Ok(verify(jwt, &keys))
    }
}

/// A claim as `claim_to_headers` writes it: strings as they are, whole non-negative
/// numbers as integers, other numbers as C++'s `std::to_string(double)`, booleans as
/// words, objects and lists as base64 of their JSON. `None`: no header (absent, empty).
pub(super) fn claim_header(
    payload: &serde_json::Map<String, Value>,
    claim: &str,
) -> Option<String> {
    let v = nested(payload, claim).or_else(|| payload.get(claim))?;
    use base64::Engine as _;
    match v {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 {
                Some((f as u64).to_string())
            } else {
                Some(format!("{f:.6}"))
            }
        }
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(_) | Value::Array(_) => {
            Some(base64::engine::general_purpose::STANDARD.encode(v.to_string()))
        }
        Value::Null => None,
    }
}

/// A claim by a dotted path through nested objects.
fn nested<'a>(payload: &'a serde_json::Map<String, Value>, claim: &str) -> Option<&'a Value> {
    let mut parts = claim.split('.');
    let mut v = payload.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// The payload as `payload_in_metadata` stores it: numbers as doubles (a protobuf
/// `Struct`), `space_delimited_claims` split into lists.
pub(super) fn metadata_payload(
    payload: &serde_json::Map<String, Value>,
    space_delimited: &[String],
) -> Value {
    let mut out = serde_json::Map::with_capacity(payload.len());
    for (k, v) in payload {
        let v = match v {
            Value::String(s) if space_delimited.iter().any(|c| c == k) => Value::Array(
                s.split(' ')
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_string()))
                    .collect(),
            ),
            v => as_struct(v),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn as_struct(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(as_struct).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), as_struct(v))).collect())
        }
        v => v.clone(),
    }
}
