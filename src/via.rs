//! This mpp's pseudonym in `Via` headers (RFC 9110, section 7.6.3): forwarded requests and
//! probes carry it, and a request that comes back with it has looped. Its own module
//! because the request path, the probes and the listener all use it.

use http::header;

/// This mpp's pseudonym in `Via` headers (RFC 9110, section 7.6.3), random per process, so
/// that a request that comes back to the same mpp is recognised (and refused with 508)
/// while a chain of different mpp instances still works.
#[derive(Debug, Clone)]
pub struct Pseudonym {
    token: String,
    /// `1.1 mpp-…`: what this mpp appends to `Via` (requests to replicas are HTTP/1.1).
    via: http::HeaderValue,
}

impl Pseudonym {
    /// A new random pseudonym.
    pub fn random() -> Self {
        use rand::RngExt;
        Self::from_token(format!("mpp-{:016x}", rand::rng().random::<u64>()))
    }

    /// The pseudonym with this token (for tests).
    pub fn from_token(token: String) -> Self {
        let via = http::HeaderValue::from_str(&format!("1.1 {token}")).expect("a pseudonym is a valid header value");
        Pseudonym { token, via }
    }

    /// The random token, `mpp-` and 16 hex digits.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `Via` entry this mpp adds.
    pub fn via(&self) -> &http::HeaderValue {
        &self.via
    }

    /// Whether any `Via` entry of `headers` is this mpp's.
    pub fn seen_in(&self, headers: &http::HeaderMap) -> bool {
        headers.get_all(header::VIA).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|entry| {
            // `received-protocol received-by [comment]`
            entry.split_whitespace().nth(1) == Some(self.token.as_str())
        })
    }
}
