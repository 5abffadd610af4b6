//! The `CheckRequest`: what the authorization service is told about a request.

use super::super::FilterHost;
use super::current_path;
use crate::model::filter::ExtAuthz;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::service::auth::v3 as auth;

/// The `CheckRequest` describing the request, as Envoy's `CheckRequestUtils` fills it.
pub(super) fn check_request<E: FilterHost>(
    x: &E,
    f: &ExtAuthz,
    extensions: &[(String, String)],
    // The body's start, whether it is partial, and whether it goes as bytes.
    body: Option<(Vec<u8>, bool, bool)>,
) -> auth::CheckRequest {
    use auth::attribute_context::{HttpRequest, Peer, Request, TlsSession};
    let buf = x.buf();
    let method = sanitize(x.bytes(&x.head().method));
    let path = sanitize(current_path(x));
    let host = sanitize(x.bytes(&x.log().authority));
    let scheme = String::from_utf8_lossy(crate::http::exchange::forwarded_proto(x)).into_owned();
    let keep = |name: &str| {
        (f.allowed_headers.is_empty()
            || f.allowed_headers.iter().any(|m| m.matches(name.as_bytes())))
            && !f
                .disallowed_headers
                .iter()
                .any(|m| m.matches(name.as_bytes()))
    };
    let mut headers = std::collections::HashMap::new();
    for (name, value) in [
        (":authority", &host),
        (":method", &method),
        (":path", &path),
        (":scheme", &scheme),
    ] {
        if keep(name) {
            headers.insert(name.to_string(), value.clone());
        }
    }
    // The request's headers as Envoy's connection manager leaves them for the filters:
    // hop-by-hop headers gone, what it strips from external requests gone, and what it
    // writes itself (x-forwarded-*, x-envoy-internal / -external-address, x-request-id).
    let hcm = x.hcm();
    let internal = x.internal();
    let edge = hcm.use_remote_address;
    let xfcc = crate::http::xfcc::action(hcm.xfcc.0, x.client_cert());
    for (n, v) in &x.head().headers {
        let raw = &buf[n.clone()];
        let name = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let dropped = name == "host"
            || crate::model::headers::is_hop_by_hop(raw)
            || (x.head().nominates && nominated(buf, &x.head().headers, raw))
            || (!internal && crate::http::trust::stripped_from_external(raw, edge))
            || name == "x-envoy-internal"
            || (edge && (name == "x-forwarded-proto" || name == "x-envoy-external-address"))
            || (name == "x-forwarded-client-cert"
                && matches!(
                    xfcc,
                    crate::http::xfcc::Action::Remove | crate::http::xfcc::Action::Set(_)
                ))
            || (name == "x-request-id" && x.log().request_id.is_some());
        if dropped || !keep(&name) {
            continue;
        }
        let value = sanitize(&buf[v.clone()]);
        headers
            .entry(name)
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(&value);
            })
            .or_insert_with(|| value);
    }
    let hcm_sets =
        |headers: &mut std::collections::HashMap<String, String>, name: &str, value: String| {
            if keep(name) {
                headers.insert(name.to_string(), value);
            }
        };
    if edge {
        hcm_sets(&mut headers, "x-forwarded-proto", scheme.clone());
        if !hcm.skip_xff_append {
            let hop = crate::http::trust::forwarded_for_address(x.peer().ip(), x.local_ip());
            let xff = match headers.get("x-forwarded-for") {
                Some(v) => format!("{v},{hop}"),
                None => hop.to_string(),
            };
            hcm_sets(&mut headers, "x-forwarded-for", xff);
        }
        if !internal {
            hcm_sets(
                &mut headers,
                "x-envoy-external-address",
                x.peer().ip().to_string(),
            );
        }
    } else if !headers.contains_key("x-forwarded-proto") {
        hcm_sets(&mut headers, "x-forwarded-proto", scheme.clone());
    }
    if internal {
        hcm_sets(&mut headers, "x-envoy-internal", "true".into());
    }
    match xfcc {
        crate::http::xfcc::Action::Set(e) => {
            hcm_sets(&mut headers, "x-forwarded-client-cert", e.to_string())
        }
        crate::http::xfcc::Action::Append(e) => {
            let v = match headers.get("x-forwarded-client-cert") {
                Some(v) => format!("{v},{e}"),
                None => e.to_string(),
            };
            hcm_sets(&mut headers, "x-forwarded-client-cert", v);
        }
        _ => {}
    }
    if let Some(id) = &x.log().request_id {
        hcm_sets(&mut headers, "x-request-id", sanitize(id));
    }
    for (n, v) in x.filter_state().added_headers() {
        if keep(n) {
            headers.insert(n.to_string(), sanitize(v));
        }
    }
    let addr = |a: std::net::SocketAddr| core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    };
    let authn = x.authn();
    let principal = authn.and_then(|a| a.peer.as_ref()).map(|p| {
        p.uri_sans
            .first()
            .or(p.dns_sans.first())
            .cloned()
            .unwrap_or_else(|| p.subject.clone())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Envoy says whether the body is whole only when there is one.
    if let Some((_, partial, _)) = body.as_ref().filter(|b| !b.0.is_empty()) {
        headers.insert(
            "x-envoy-auth-partial-body".into(),
            if *partial { "true" } else { "false" }.into(),
        );
    }
    let (text, raw) = match body {
        Some((data, _, true)) => (String::new(), data),
        Some((data, _, false)) => (sanitize(&data), Vec::new()),
        None => (String::new(), Vec::new()),
    };
    let http = HttpRequest {
        body: text,
        raw_body: raw,
        // Envoy's stream id (a random number), not the x-request-id.
        id: fastrand::u64(..).to_string(),
        method,
        headers,
        path,
        host,
        scheme,
        size: x.head().content_length.map_or(-1, |n| n as i64),
        protocol: String::from_utf8_lossy(x.protocol()).into_owned(),
        ..Default::default()
    };
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(Peer {
                address: Some(addr(x.peer())),
                principal: principal.unwrap_or_default(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(addr(x.local())),
                principal: authn
                    .and_then(|a| a.local_principal.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(prost_types::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http),
            }),
            context_extensions: extensions.iter().cloned().collect(),
            tls_session: (f.include_tls_session && x.downstream_tls()).then(|| TlsSession {
                sni: authn.map(|a| a.sni.to_string()).unwrap_or_default(),
            }),
            ..Default::default()
        }),
    }
}

/// `bytes` as text the way Envoy's `sanitizeUtf8String` makes it: each byte of an
/// invalid sequence becomes `!`, so the length stays the same.
pub(super) fn sanitize(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                out.extend(std::iter::repeat_n('!', n));
                rest = &bad[n..];
            }
        }
    }
}

/// Whether a `Connection` header names `name` (a hop-by-hop header Envoy removes before
/// the filters).
fn nominated(
    buf: &[u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    name: &[u8],
) -> bool {
    headers.iter().any(|(n, v)| {
        buf[n.clone()].eq_ignore_ascii_case(b"connection")
            && buf[v.clone()]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}
