//! The web config file's format, as Prometheus's exporter-toolkit defines it, read strictly
//! (an unknown or repeated field is an error, as with Go's `yaml.UnmarshalStrict`) and
//! validated into [`WebConfig`]. Paths are relative to the file's folder. This module only
//! parses and checks; reading the certificate files and building TLS is [`super::tls`]'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

/// Something wrong with the web config file: the file, the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("web config file {}: {field}{}{problem}", file.display(), if field.is_empty() { "" } else { ": " })]
pub struct WebConfigError {
    /// The web config file.
    pub file: PathBuf,
    /// The field, as a YAML path (`tls_server_config.cert_file`), or empty for the whole file.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl WebConfigError {
    pub(crate) fn new(file: &Path, field: &str, problem: impl Into<String>) -> Self {
        WebConfigError { file: file.to_path_buf(), field: field.into(), problem: problem.into() }
    }
}

/// A string that is never printed: a bcrypt hash or an inline private key.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// The file as written. Field names and defaults are exporter-toolkit's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    // Options, so that a section left empty (every field commented out) reads as absent,
    // as in Go, rather than as a type error.
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    rate_limit: Option<RawRateLimit>,
    basic_auth_users: Option<BTreeMap<String, Secret>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<String>,
    key: Option<Secret>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    http2: bool,
    headers: Option<BTreeMap<String, String>>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp { http2: true, headers: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    burst: u32,
    interval: Option<String>,
}

/// The validated web config: what the listener enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// TLS, when any TLS field is set (otherwise the listener speaks plain HTTP).
    pub tls: Option<TlsSettings>,
    /// Whether HTTP/2 is offered over TLS (ALPN `h2`).
    pub http2: bool,
    /// Headers added to every answer.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name to bcrypt hash; empty means no basic auth.
    pub users: BTreeMap<String, Secret>,
    /// At most `burst` requests at once, refilled one per `interval` (429 beyond).
    pub rate_limit: Option<RateLimit>,
}

/// `rate_limit`: a token bucket over all requests, as exporter-toolkit's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// How many requests may come at once.
    pub burst: u32,
    /// One more request is allowed per interval.
    pub interval: Duration,
}

/// Where a PEM document comes from: a file, or the config itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Pem {
    /// A file (made absolute against the web config's folder).
    File(PathBuf),
    /// Written inline in the web config.
    Inline(Secret),
}

/// `client_auth_type`, with Go's `crypto/tls` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for.
    NoClientCert,
    /// A certificate is asked for, not required, not verified.
    RequestClientCert,
    /// A certificate is required, not verified.
    RequireAnyClientCert,
    /// A certificate, if given, must verify against the client CA.
    VerifyClientCertIfGiven,
    /// A certificate is required and must verify against the client CA.
    RequireAndVerifyClientCert,
}

/// A TLS protocol version, as the file names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

/// `tls_server_config`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// The certificate chain (`cert_file`, else `cert`).
    pub cert: Pem,
    /// The private key (`key_file`, else `key`).
    pub key: Pem,
    /// The CA that client certificates are verified against (`client_ca_file`, else `client_ca`).
    pub client_ca: Option<Pem>,
    /// Whether and how client certificates are asked for and checked.
    pub client_auth: ClientAuth,
    /// The lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// The highest TLS version accepted.
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher suites by Go name, in order; `None` keeps the defaults.
    pub cipher_suites: Option<Vec<String>>,
    /// Key exchange groups by Go name, in order; `None` keeps the defaults.
    pub curve_preferences: Option<Vec<String>>,
    /// Whether the server's cipher suite order wins over the client's.
    pub prefer_server_cipher_suites: bool,
    /// A verified client certificate must name one of these (DNS name, IP address or URI).
    pub client_allowed_sans: Option<Vec<String>>,
}

/// Headers a web config may set, and the values allowed where they are an enumeration
/// (exporter-toolkit keeps this list closed, for consistency across the ecosystem).
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Go's names for the TLS cipher suites it accepts in `cipher_suites` (`tls.CipherSuites()`).
pub(crate) const GO_CIPHER_SUITES: [&str; 17] = [
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's names for the curves accepted in `curve_preferences`.
pub(crate) const GO_CURVES: [&str; 4] = ["CurveP256", "CurveP384", "CurveP521", "X25519"];

impl WebConfig {
    /// Parses and validates the text of the web config file at `file`.
    pub fn parse(file: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        // An empty file is a valid, empty configuration, as in Go.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| WebConfigError::new(file, "", e.to_string()))?
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let tls = tls_settings(file, dir, raw.tls_server_config.unwrap_or_default())?;
        let http = raw.http_server_config.unwrap_or_default();
        let headers = headers(file, http.headers.unwrap_or_default())?;
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_bcrypt_hash(hash.expose())
                .map_err(|problem| WebConfigError::new(file, &format!("basic_auth_users.{user}"), problem))?;
        }
        let rate_limit = rate_limit(file, raw.rate_limit.unwrap_or_default())?;
        Ok(WebConfig { tls, http2: http.http2, headers, users, rate_limit })
    }
}

/// Go's `bcrypt.Cost` check: a `$2a$`/`$2b$`/`$2y$` hash of 60 characters, cost 4 to 31.
fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash.parse().map_err(|e: bcrypt::BcryptError| format!("not a bcrypt hash ({e})"))?;
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!("bcrypt cost {} is outside 4 to 31", parts.get_cost()));
    }
    Ok(())
}

fn tls_settings(file: &Path, dir: &Path, raw: RawTls) -> Result<Option<TlsSettings>, WebConfigError> {
    let err = |field: &str, problem: &str| WebConfigError::new(file, &format!("tls_server_config.{field}"), problem);
    let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let enabled = set(&raw.cert)
        || raw.key.as_ref().is_some_and(|k| !k.0.is_empty())
        || set(&raw.client_ca)
        || set(&raw.cert_file)
        || set(&raw.key_file)
        || set(&raw.client_ca_file)
        || set(&raw.client_auth_type);
    // The remaining fields alone do not turn TLS on, as in exporter-toolkit; they are still
    // checked, so that a typo is found before TLS is turned on.
    let min_version = version(raw.min_version.as_deref()).map_err(|p| err("min_version", &p))?;
    let max_version = version(raw.max_version.as_deref()).map_err(|p| err("max_version", &p))?;
    let min_version = min_version.unwrap_or(TlsVersion::Tls12);
    let max_version = max_version.unwrap_or(TlsVersion::Tls13);
    for suite in raw.cipher_suites.iter().flatten() {
        if !GO_CIPHER_SUITES.contains(&suite.as_str()) {
            return Err(err("cipher_suites", &format!("unknown cipher: {suite}")));
        }
    }
    for curve in raw.curve_preferences.iter().flatten() {
        if !GO_CURVES.contains(&curve.as_str()) {
            return Err(err("curve_preferences", &format!("unknown curve: {curve}")));
        }
    }
    let client_auth = match raw.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // The second name is kept by exporter-toolkit for backwards compatibility.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(err(
                "client_auth_type",
                &format!(
                    "invalid ClientAuth: '{other}'; expected NoClientCert, RequestClientCert, RequireAnyClientCert, \
                     VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    if !enabled {
        return Ok(None);
    }
    // A file wins over inline text, as in exporter-toolkit.
    let pem = |path: Option<String>, inline: Option<Secret>| match (path.filter(|p| !p.is_empty()), inline) {
        (Some(path), _) => Some(Pem::File(dir.join(path))),
        (None, Some(text)) if !text.0.is_empty() => Some(Pem::Inline(text)),
        _ => None,
    };
    let cert =
        pem(raw.cert_file, raw.cert.map(Secret)).ok_or_else(|| err("cert_file", "missing one of cert or cert_file"))?;
    let key = pem(raw.key_file, raw.key).ok_or_else(|| err("key_file", "missing one of key or key_file"))?;
    let client_ca = pem(raw.client_ca_file, raw.client_ca.map(Secret));
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(err(
            "client_ca_file",
            "client CA's have been configured without a Client Auth Policy (client_auth_type)",
        ));
    }
    if max_version < TlsVersion::Tls12 {
        return Err(err("max_version", "mpp serves TLS 1.2 and 1.3 only; TLS 1.0 and 1.1 are not available"));
    }
    if min_version > max_version {
        return Err(err("min_version", "is above max_version"));
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites: raw.cipher_suites.filter(|s| !s.is_empty()),
        curve_preferences: raw.curve_preferences.filter(|c| !c.is_empty()),
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
        client_allowed_sans: raw.client_allowed_sans,
    }))
}

fn version(name: Option<&str>) -> Result<Option<TlsVersion>, String> {
    Ok(Some(match name {
        None => return Ok(None),
        Some("TLS10") => TlsVersion::Tls10,
        Some("TLS11") => TlsVersion::Tls11,
        Some("TLS12") => TlsVersion::Tls12,
        Some("TLS13") => TlsVersion::Tls13,
        Some(other) => return Err(format!("unknown TLS version: {other} (expected TLS10, TLS11, TLS12 or TLS13)")),
    }))
}

fn headers(file: &Path, wanted: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    let mut headers = Vec::with_capacity(wanted.len());
    for (name, value) in wanted {
        let field = format!("http_server_config.headers.{name}");
        // Names match exactly, as Go looks them up in its map.
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(allowed, _)| *allowed == name) else {
            return Err(WebConfigError::new(file, &field, format!("HTTP header {name:?} can not be configured")));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(WebConfigError::new(
                file,
                &field,
                format!("invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"),
            ));
        }
        let header_value = HeaderValue::from_str(&value)
            .map_err(|_| WebConfigError::new(file, &field, "the value holds characters a header cannot"))?;
        let header_name = HeaderName::from_bytes(name.as_bytes()).expect("every allowed header name is valid");
        headers.push((header_name, header_value));
    }
    Ok(headers)
}

fn rate_limit(file: &Path, raw: RawRateLimit) -> Result<Option<RateLimit>, WebConfigError> {
    let interval = match raw.interval.as_deref().map(str::trim) {
        None | Some("" | "0" | "0s") => return Ok(None),
        Some(text) => crate::units::parse_duration(text)
            .map_err(|problem| WebConfigError::new(file, "rate_limit.interval", problem))?,
    };
    Ok((!interval.is_zero()).then_some(RateLimit { burst: raw.burst, interval }))
}

#[cfg(test)]
mod tests;
