//! The request's routing authority and path, as ranges of the connection's buffer:
//! origin form with Host (or HTTP/1.0's default host), absolute form, and CONNECT's
//! authority form; bytes the request did not carry live beside the buffer.

use crate::http::error::HttpError;

use super::*;

impl Connection {
    /// The routing authority and path, as ranges of `buf`.
    pub(super) fn authority_and_path(
        &mut self,
    ) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), HttpError> {
        self.synth.clear();
        let target = self.head.target.clone();
        let t = &self.buf[target.clone()];
        if self.buf[self.head.method.clone()] == *b"CONNECT" {
            // Authority form (`host:port`): the authority is the target; there is no path.
            if t.is_empty() || t.first() == Some(&b'/') {
                return Err(HttpError::InvalidPath);
            }
            let path = self.synthesize(b"");
            return Ok((target, path));
        }
        let host = self.head.host.map(|i| self.head.headers[i].1.clone());
        if t.first() == Some(&b'/') {
            let authority = match host.map(|h| self.strip_port(h)) {
                Some(h) => h,
                None if self.head.minor == 0 => {
                    // HTTP/1.0 without Host: Envoy's default_host_for_http_10.
                    let h = self
                        .hcm
                        .default_host_for_http_10
                        .clone()
                        .unwrap_or_default();
                    self.synthesize(h.as_bytes())
                }
                None => return Err(HttpError::MissingHost),
            };
            return Ok((authority, target));
        }
        // Absolute form: http://authority/path
        let lower = t.to_ascii_lowercase();
        let scheme_len = if lower.starts_with(b"http://") {
            7
        } else if lower.starts_with(b"https://") {
            8
        } else {
            return Err(HttpError::InvalidPath);
        };
        let rest = target.start + scheme_len;
        let slash = self.buf[rest..target.end]
            .iter()
            .position(|&b| b == b'/')
            .map_or(target.end, |i| rest + i);
        // Userinfo (`user:pass@`) is not part of the authority: dropped, as Envoy does.
        let rest = self.buf[rest..slash]
            .iter()
            .rposition(|&b| b == b'@')
            .map_or(rest, |at| rest + at + 1);
        if slash == rest {
            return Err(HttpError::InvalidPath);
        }
        let path = if slash == target.end {
            self.synthesize(b"/")
        } else {
            slash..target.end
        };
        Ok((self.strip_port(rest..slash), path))
    }

    /// Stores bytes the request did not carry (a default Host, an implied `/`) and returns a
    /// range for them that [`Connection::bytes`] resolves. They must not go into `buf`,
    /// where they would land among body bytes and pipelined requests.
    pub(super) fn synthesize(&mut self, bytes: &[u8]) -> std::ops::Range<usize> {
        let start = SYNTH + self.synth.len();
        self.synth.extend_from_slice(bytes);
        start..start + bytes.len()
    }

    /// The bytes of a range over the request: `buf`, or `synth` for synthesized ranges.
    pub(crate) fn bytes(&self, r: &std::ops::Range<usize>) -> &[u8] {
        if r.start >= SYNTH {
            &self.synth[r.start - SYNTH..r.end - SYNTH]
        } else {
            &self.buf[r.clone()]
        }
    }

    /// Applies `strip_matching_host_port` / `strip_any_host_port` to an authority range.
    pub(super) fn strip_port(&self, authority: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let keep = kept_authority(
            self.hcm.strip_port,
            self.local.port(),
            self.bytes(&authority),
        );
        authority.start..authority.start + keep
    }
}
