//! A *backend*: one Prometheus replica's base URL, as discovery found it, with the stable
//! opaque id that affinity cookies carry instead of the address. Plain data: what happens to
//! a replica (its health, its metrics) lives in the [`registry`](crate::registry).

use std::fmt;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// One Prometheus replica's identity. Compared and hashed by URL.
#[derive(Debug, Clone)]
pub struct Backend {
    url: Arc<str>,
    id: String,
    /// The hash the id shows, for rendezvous hashing.
    key: u64,
    scheme: Scheme,
    authority: Authority,
    /// A path prefix such as `/prometheus` (no trailing slash), or empty.
    prefix: String,
    /// The `MPP.ServedBy` value, made once rather than per answer.
    served_by: http::HeaderValue,
    /// The same as a header line.
    served_by_line: bytes::Bytes,
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for Backend {}

impl std::hash::Hash for Backend {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.url.hash(state);
    }
}

impl Backend {
    /// Parses a base URL: `http://host:port`, `https://host/prefix`, or a bare `host:port`
    /// (taken as http). A query, fragment or user info is refused.
    pub fn parse(text: &str) -> Result<Backend, String> {
        let text = text.trim();
        let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
        let uri: Uri = with_scheme.parse().map_err(|e| format!("'{text}' is not a URL ({e})"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("'{text}' has no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("'{text}' is not http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("'{text}' has no host"))?;
        if authority.as_str().contains('@') {
            // The message never repeats the credentials.
            let host = authority.as_str().rsplit_once('@').map_or("", |(_, host)| host);
            return Err(format!("'{scheme}://***@{host}' carries user info; credentials in URLs are not supported"));
        }
        if let Some((_, port)) = authority.as_str().rsplit_once(':').filter(|_| !authority.as_str().ends_with(']')) {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(format!("'{text}' has an invalid port '{port}'"));
            }
        }
        if authority.host().is_empty() {
            return Err(format!("'{text}' has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("'{text}' has a query; give the base URL only"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        let url: Arc<str> = format!("{scheme}://{authority}{prefix}").into();
        let key = fnv1a(url.as_bytes());
        let id = format!("{key:016x}");
        let served_by =
            http::HeaderValue::from_str(&url).map_err(|_| format!("'{text}' is not a valid header value"))?;
        let served_by_line = bytes::Bytes::from(format!("mpp.servedby: {url}\r\n"));
        Ok(Backend { url, id, key, scheme, authority, prefix, served_by, served_by_line })
    }

    /// The normalized base URL, as shown in logs, metrics and the `MPP.ServedBy` header.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL as a shared string, for metric labels (no copy per request).
    pub fn url_label(&self) -> Arc<str> {
        self.url.clone()
    }

    /// The stable opaque id: the same for the same URL on every mpp instance and restart,
    /// so that any mpp replica behind a load balancer honours another's cookie.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id as a number: the same on every mpp instance, for hashing a client onto a
    /// replica.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The path prefix requests get in front of their path (no trailing slash), or empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The URL as a header value, for `MPP.ServedBy`.
    pub fn served_by(&self) -> &http::HeaderValue {
        &self.served_by
    }

    /// The `MPP.ServedBy` header line, as written after a replica's own lines
    /// ([`crate::http1::lines::HeaderLines::add`]).
    pub fn served_by_line(&self) -> &bytes::Bytes {
        &self.served_by_line
    }

    /// The URL of `path_and_query` on this backend (the prefix, if any, is prepended).
    pub fn uri(&self, path_and_query: &PathAndQuery) -> Result<Uri, http::Error> {
        let builder = Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone());
        if self.prefix.is_empty() {
            builder.path_and_query(path_and_query.clone()).build()
        } else {
            builder.path_and_query(format!("{}{}", self.prefix, path_and_query)).build()
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// FNV-1a, 64 bits: stable across Rust releases and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_keeps_prefixes() {
        let b = Backend::parse("http://10.0.0.1:9090/prom/").unwrap();
        assert_eq!(b.url(), "http://10.0.0.1:9090/prom");
        let pq: PathAndQuery = "/api/v1/query?query=up".parse().unwrap();
        assert_eq!(b.uri(&pq).unwrap().to_string(), "http://10.0.0.1:9090/prom/api/v1/query?query=up");
        assert_eq!(Backend::parse("127.0.0.1:9090").unwrap().url(), "http://127.0.0.1:9090");
        assert_eq!(Backend::parse("https://[::1]:9443").unwrap().url(), "https://[::1]:9443");
    }

    #[test]
    fn ids_are_stable_and_opaque() {
        let a = Backend::parse("http://a:9090").unwrap();
        assert_eq!(a.id(), Backend::parse("http://a:9090/").unwrap().id());
        assert_ne!(a.id(), Backend::parse("http://b:9090").unwrap().id());
        assert!(!a.id().contains("9090"));
        assert_eq!(a.id().len(), 16);
    }

    #[test]
    fn refuses_what_is_not_a_base_url() {
        assert!(!Backend::parse("http://u:secret@x:1").unwrap_err().contains("secret"));
        for bad in ["ftp://x:1", "http://", "http://u:p@x:1", "http://x:1/?q=1", "http://x:99999", "not a url"] {
            assert!(Backend::parse(bad).is_err(), "{bad}");
        }
    }
}
