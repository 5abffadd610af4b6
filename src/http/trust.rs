//! The trust boundary, as Envoy 1.40's connection manager draws it: which requests are
//! internal, which `x-envoy-*` headers an external client may not send, and the address
//! the proxy appends to `x-forwarded-for`.
//!
//! A request is internal only when `internal_address_config` lists its address (Envoy
//! 1.40's default lists none). The address is the peer's at the edge
//! (`use_remote_address`), else the last `x-forwarded-for` entry, or the peer's when there
//! is none.

use std::net::IpAddr;
use std::ops::Range;

use crate::model::HttpConnectionManager;

/// Request headers that steer the proxy itself: removed from every external request
/// (Envoy's `cleanInternalHeaders`), edge or not.
const EXTERNAL_STRIPPED: [&[u8]; 15] = [
    b"x-envoy-internal",
    b"x-envoy-retry-on",
    b"x-envoy-retry-grpc-on",
    b"x-envoy-max-retries",
    b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-expected-rq-timeout-ms",
    b"x-envoy-force-trace",
    b"x-envoy-ip-tags",
    b"x-envoy-original-url",
    b"x-envoy-retriable-status-codes",
    b"x-envoy-retriable-header-names",
    b"x-envoy-hedge-on-per-try-timeout",
    b"x-envoy-upstream-alt-stat-name",
];

/// Also removed from external requests at the edge (`use_remote_address`): what only a
/// proxy inside the mesh may say about the request.
const EDGE_STRIPPED: [&[u8]; 6] = [
    b"x-envoy-decorator-operation",
    b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node",
    b"x-envoy-original-path",
    b"x-envoy-original-host",
    b"x-envoy-external-address",
];

/// The client's address as Envoy's connection manager settles it: at the edge
/// (`use_remote_address`) the peer, or with `xff_num_trusted_hops` N > 0 the Nth
/// `x-forwarded-for` entry from the right; elsewhere the (N+1)th from the right. Without
/// that many entries, the peer.
pub fn downstream_remote(
    hcm: &HttpConnectionManager,
    peer: IpAddr,
    buf: &[u8],
    headers: &[(Range<usize>, Range<usize>)],
) -> IpAddr {
    forwarded_remote(hcm, buf, headers).unwrap_or(peer)
}

/// [`downstream_remote`] when it comes from `x-forwarded-for` (not the peer).
pub fn forwarded_remote(
    hcm: &HttpConnectionManager,
    buf: &[u8],
    headers: &[(Range<usize>, Range<usize>)],
) -> Option<IpAddr> {
    let skip = match (hcm.use_remote_address, hcm.xff_num_trusted_hops) {
        (true, 0) => return None,
        (true, n) => n - 1,
        (false, n) => n,
    };
    // Every x-forwarded-for line, as one list.
    let mut entries: Vec<&[u8]> = Vec::new();
    for (n, v) in headers {
        if buf[n.clone()].eq_ignore_ascii_case(b"x-forwarded-for") {
            entries.extend(buf[v.clone()].split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    let i = entries.len().checked_sub(1 + skip as usize)?;
    std::str::from_utf8(entries[i]).ok()?.parse().ok()
}

/// Whether a request from `peer` (with these request headers) is internal.
pub fn is_internal(
    hcm: &HttpConnectionManager,
    peer: IpAddr,
    buf: &[u8],
    headers: &[(Range<usize>, Range<usize>)],
) -> bool {
    if hcm.internal.is_empty() {
        return false;
    }
    let ip = if hcm.use_remote_address {
        Some(peer)
    } else {
        match last_forwarded_for(buf, headers) {
            Some(last) => std::str::from_utf8(last).ok().and_then(|s| s.parse().ok()),
            None => Some(peer),
        }
    };
    ip.is_some_and(|ip| hcm.internal.iter().any(|c| c.contains(ip)))
}

/// The last address in the request's `x-forwarded-for` headers.
fn last_forwarded_for<'a>(
    buf: &'a [u8],
    headers: &[(Range<usize>, Range<usize>)],
) -> Option<&'a [u8]> {
    let (_, v) = headers
        .iter()
        .rev()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"x-forwarded-for"))?;
    let v = &buf[v.clone()];
    v.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii)
}

/// Whether the client's header `name` is removed from an external request.
pub fn stripped_from_external(name: &[u8], edge: bool) -> bool {
    const PREFIX: &[u8] = b"x-envoy-";
    if name.len() <= PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    EXTERNAL_STRIPPED
        .iter()
        .chain(if edge { &EDGE_STRIPPED[..] } else { &[] })
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// The address appended to `x-forwarded-for` for a peer: the peer's own, or for a
/// loopback peer the host's address (Envoy's local address: its first non-loopback
/// address), so the next hop never sees a loopback hop.
pub fn forwarded_for_address(peer: IpAddr, local: IpAddr) -> IpAddr {
    let loopback = match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback {
        local
    } else {
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x_envoy_headers_envoy_strips_are_stripped() {
        assert!(stripped_from_external(b"X-Envoy-Retry-On", false));
        assert!(stripped_from_external(b"x-envoy-internal", false));
        assert!(!stripped_from_external(
            b"x-envoy-decorator-operation",
            false
        ));
        assert!(stripped_from_external(b"x-envoy-decorator-operation", true));
        assert!(!stripped_from_external(b"x-envoy-attempt-count", true));
        assert!(!stripped_from_external(b"x-envoy-foo", true));
        assert!(!stripped_from_external(b"x-envoy-", true));
        assert!(!stripped_from_external(b"x-request-id", true));
    }

    #[test]
    fn a_loopback_peer_is_recorded_as_the_host() {
        let local: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            forwarded_for_address("127.0.0.1".parse().unwrap(), local),
            local
        );
        assert_eq!(forwarded_for_address("::1".parse().unwrap(), local), local);
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(forwarded_for_address(peer, local), peer);
    }
}
