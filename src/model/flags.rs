//! Envoy's response flags (`%RESPONSE_FLAGS%`): why a request ended the way it did, set
//! where the decision is made and read by the access log, the stats and local replies.

use std::fmt;

/// A set of Envoy's response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

/// Envoy 1.40's flags in its own order (`CoreResponseFlag`), which is also the order they
/// are printed in, comma-separated.
const NAMES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

macro_rules! flags {
    ($($name:ident = $bit:literal, $doc:literal;)*) => {
        impl ResponseFlags {
            $(#[doc = $doc] pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
        }
        #[cfg(test)]
        const ALL: &[(ResponseFlags, &str)] = &[$((ResponseFlags::$name, stringify!($name))),*];
    };
}

flags! {
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH: the upstream failed its local health check.";
    NO_HEALTHY_UPSTREAM = 1, "UH: no healthy upstream host.";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT: the upstream request timed out.";
    LOCAL_RESET = 3, "LR: the proxy reset the connection.";
    UPSTREAM_REMOTE_RESET = 4, "UR: the upstream reset the connection.";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF: connecting upstream failed.";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC: the upstream connection ended.";
    UPSTREAM_OVERFLOW = 7, "UO: a circuit breaker refused the request.";
    NO_ROUTE_FOUND = 8, "NR: no route matched.";
    DELAY_INJECTED = 9, "DI: the fault filter delayed the request.";
    FAULT_INJECTED = 10, "FI: the fault filter aborted the request.";
    RATE_LIMITED = 11, "RL: a rate limit refused the request.";
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX: external authorization denied it.";
    RATE_LIMIT_SERVICE_ERROR = 13, "RLSE: the rate limit service failed.";
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC: the client went away.";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX: the retry limit was reached.";
    STREAM_IDLE_TIMEOUT = 16, "SI: the stream idle timeout passed.";
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH: an x-envoy-* request header was invalid.";
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE: the client broke the protocol.";
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR: the upstream stream lasted too long.";
    RESPONSE_FROM_CACHE_FILTER = 20, "RFCF: the cache filter answered.";
    NO_FILTER_CONFIG_FOUND = 21, "NFCF: a filter's configuration is missing.";
    DURATION_TIMEOUT = 22, "DT: the request's maximum duration passed.";
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE: the upstream broke the protocol.";
    NO_CLUSTER_FOUND = 24, "NC: the route's cluster does not exist.";
    OVERLOAD_MANAGER = 25, "OM: the overload manager refused it.";
    DNS_RESOLUTION_FAILED = 26, "DF: resolving the upstream failed.";
    DROP_OVERLOAD = 27, "DO: dropped by the cluster's drop_overload.";
    DOWNSTREAM_REMOTE_RESET = 28, "DR: the client reset the stream.";
    UNCONDITIONAL_DROP_OVERLOAD = 29, "UDO: dropped unconditionally.";
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// Adds `f` to the set.
    pub fn set(&mut self, f: ResponseFlags) {
        self.0 |= f.0;
    }

    pub fn contains(self, f: ResponseFlags) -> bool {
        self.0 & f.0 == f.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flag Envoy names `short` (`UF`, `URX`…).
    pub fn from_name(short: &str) -> Option<ResponseFlags> {
        NAMES
            .iter()
            .position(|n| *n == short)
            .map(|bit| ResponseFlags(1 << bit))
    }

    /// Whether the two sets share a flag.
    pub fn intersects(self, other: ResponseFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Appends the flags as `%RESPONSE_FLAGS%` prints them: `-` for none, else their short
    /// names in Envoy's order, comma-separated.
    pub fn write(self, out: &mut Vec<u8>) {
        if self.is_empty() {
            out.push(b'-');
            return;
        }
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                first = false;
            }
        }
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_as_envoy_prints_them() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        let mut f = ResponseFlags::NONE;
        f.set(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
        f.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
        assert_eq!(f.to_string(), "UH,UPE");
        assert!(f.contains(ResponseFlags::NO_HEALTHY_UPSTREAM));
        assert!(!f.contains(ResponseFlags::NO_ROUTE_FOUND));
        // Each flag is its own bit, named by its short form.
        for (i, (flag, _)) in ALL.iter().enumerate() {
            assert_eq!(flag.0, 1 << i);
            assert_eq!(flag.to_string(), NAMES[i]);
        }
        assert_eq!(ALL.len(), NAMES.len());
    }
}
