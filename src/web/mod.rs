//! The listener's security, by Prometheus's web config file (`--web.config.file`): TLS and
//! client certificates ([`tls`]), basic auth with bcrypt ([`auth`]), a rate limit ([`rate`])
//! and extra response headers, in exporter-toolkit's format ([`config`]).
//!
//! The file, and every file it names, is read again every [`RELOAD_INTERVAL`]; when any of
//! them changed, the new configuration is built and swapped in for the next connections and
//! requests (so certificates rotate without a restart). A file that no longer reads or
//! validates is logged and the last good configuration stays in force. Whether the listener
//! speaks TLS at all is fixed at start-up, as in Prometheus.
//!
//! This module does not serve connections ([`crate::server`] does); it answers three
//! questions for it: which TLS acceptor a new connection gets, whether a request is let in,
//! and which headers every answer carries.

pub mod config;

mod auth;
mod rate;
mod tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::metrics::gauge::Gauge;
use tokio_rustls::TlsAcceptor;

use crate::reload::Reread;

pub(crate) use auth::basic_credentials;
pub use config::{WebConfig, WebConfigError};

/// How often the web config file and the files it names are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Paths that `--web.health-without-auth` leaves open without basic auth.
pub const OPEN_HEALTH_PATHS: [&str; 2] = ["/mpp/health", "/mpp/ready"];

/// The listener's security as read from the web config file, kept current.
pub struct Web {
    file: PathBuf,
    open_health: bool,
    serves_tls: bool,
    in_force: ArcSwap<InForce>,
    verifier: Arc<auth::Verifier>,
}

/// One successful read of the web config file and the files it names.
struct InForce {
    config: WebConfig,
    acceptor: Option<TlsAcceptor>,
    /// When the listener's certificate runs out (Unix seconds), with TLS on.
    not_after: Option<f64>,
    rate: Option<rate::Bucket>,
    /// A digest of every byte read, to tell whether anything changed since.
    fingerprint: [u8; 32],
}

impl Web {
    /// Reads the web config file; an error names the file, the field and what is wrong.
    /// `open_health` leaves [`OPEN_HEALTH_PATHS`] open without basic auth (for load balancers' and
    /// Kubernetes' probes).
    pub fn load(file: &Path, open_health: bool) -> Result<Web, WebConfigError> {
        let in_force = InForce::read(file)?;
        Ok(Web {
            file: file.to_path_buf(),
            open_health,
            serves_tls: in_force.acceptor.is_some(),
            in_force: ArcSwap::from_pointee(in_force),
            verifier: auth::Verifier::new(checkers()),
        })
    }

    /// Whether the listener speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.serves_tls
    }

    /// A short description for the start-up log (never a secret).
    pub fn describe(&self) -> String {
        let in_force = self.in_force.load();
        let config = &in_force.config;
        let tls = match &config.tls {
            Some(tls) => format!("TLS (client certificates: {:?}, http2: {})", tls.client_auth, config.http2),
            None => "no TLS".into(),
        };
        let auth = if config.users.is_empty() {
            "no basic auth".into()
        } else {
            format!("basic auth ({} users)", config.users.len())
        };
        format!("{}: {tls}, {auth}", self.file.display())
    }

    /// The TLS acceptor for a new connection (the configuration in force now), if TLS is on.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.in_force.load().acceptor.clone()
    }

    /// Lets a request from `client` in, or answers it: 429 past the rate limit, 401 without
    /// valid basic auth credentials (when users are configured), 429 or 503 with `Retry-After`
    /// when its password cannot be checked now (too many checks waiting; see [`auth`]). `Ok(true)`: basic auth is configured,
    /// so the request's `Authorization` is mpp's, decided by the same configuration that
    /// admitted it (a reload in between cannot change the answer).
    pub async fn admit<B>(&self, request: &Request<B>, client: IpAddr) -> Result<bool, Response<Full<Bytes>>> {
        let in_force = self.in_force.load_full();
        if in_force.rate.as_ref().is_some_and(|bucket| !bucket.allow()) {
            return Err(refusal(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n"));
        }
        let users = &in_force.config.users;
        if users.is_empty() {
            return Ok(false);
        }
        if self.open_health && OPEN_HEALTH_PATHS.contains(&request.uri().path()) {
            return Ok(true);
        }
        match self.verifier.admits(users, request.headers(), client).await {
            auth::Verdict::Admitted => Ok(true),
            auth::Verdict::Refused => {
                let mut refused = refusal(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                refused.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                Err(refused)
            }
            // Overload is never a wrong password: the client is told to come back.
            auth::Verdict::Busy { per_client } => {
                let (status, body) = if per_client {
                    (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests: too many password checks from this address\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable: too many password checks waiting\n")
                };
                let mut busy = refusal(status, body);
                busy.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(busy)
            }
        }
    }

    /// When the listener's certificate in force runs out (Unix seconds), with TLS on.
    pub fn certificate_expiry(&self) -> Option<f64> {
        self.in_force.load().not_after
    }

    /// Adds the configured headers to an answer (replacing any a replica sent).
    pub fn decorate<B: crate::http1::lines::CarriesLines>(&self, response: &mut http::Response<B>) {
        let in_force = self.in_force.load();
        if in_force.config.headers.is_empty() {
            return;
        }
        // They replace the replica's of the same names.
        crate::http1::lines::unpack(response);
        for (name, value) in &in_force.config.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }

    /// Reads the files again every [`RELOAD_INTERVAL`], forever; run it as a task. `healthy`
    /// is set to 0 while they are broken (`mpp_web_config_last_reload_successful`).
    pub async fn watch(self: Arc<Self>, healthy: Gauge, reloads: crate::reload::Reloads) {
        crate::reload::every(
            RELOAD_INTERVAL,
            &reloads,
            "web config file",
            || self.reload(),
            |reread| match reread {
                Reread::Read { changed, recovered } => {
                    if changed || recovered {
                        tracing::info!(web_config = %self.describe(), "web config file read again; now in force");
                    }
                    healthy.set(1);
                }
                Reread::Failed(error) => {
                    tracing::error!(%error, "web config file no longer valid; the last good one stays in force");
                    healthy.set(0);
                }
            },
        )
        .await
    }

    /// Reads the files; swaps in what they say if anything changed. `Ok(true)` on a change.
    fn reload(&self) -> Result<bool, WebConfigError> {
        let (config, material, fingerprint) = read(&self.file)?;
        if fingerprint == self.in_force.load().fingerprint {
            return Ok(false);
        }
        let in_force = InForce::build(&self.file, config, material, fingerprint)?;
        if in_force.acceptor.is_some() != self.serves_tls {
            return Err(WebConfigError::new(
                &self.file,
                "tls_server_config",
                "turning TLS on or off takes a restart of mpp",
            ));
        }
        self.in_force.store(Arc::new(in_force));
        Ok(true)
    }
}

impl InForce {
    fn read(file: &Path) -> Result<InForce, WebConfigError> {
        let (config, material, fingerprint) = read(file)?;
        InForce::build(file, config, material, fingerprint)
    }

    fn build(
        file: &Path,
        config: WebConfig,
        material: Option<tls::Material>,
        fingerprint: [u8; 32],
    ) -> Result<InForce, WebConfigError> {
        let acceptor = match (&config.tls, &material) {
            (Some(settings), Some(material)) => {
                Some(TlsAcceptor::from(tls::server_config(file, settings, material, config.http2)?))
            }
            _ => None,
        };
        let rate = config.rate_limit.map(rate::Bucket::new);
        let not_after = material.as_ref().and_then(|m| crate::expiry::not_after(&m.cert));
        Ok(InForce { config, acceptor, rate, fingerprint, not_after })
    }
}

/// Reads the web config file and the PEM documents it names, with a digest of all of it.
fn read(file: &Path) -> Result<(WebConfig, Option<tls::Material>, [u8; 32]), WebConfigError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| WebConfigError::new(file, "", format!("cannot read it: {e}")))?;
    let config = WebConfig::parse(file, &text)?;
    let material = config.tls.as_ref().map(|settings| tls::Material::read(file, settings)).transpose()?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let parts = material.iter().flat_map(|m| [&m.cert[..], &m.key[..], m.client_ca.as_deref().unwrap_or_default()]);
    for part in std::iter::once(text.as_bytes()).chain(parts) {
        digest.update(&(part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    let fingerprint = digest.finish().as_ref().try_into().expect("SHA-256 digests are 32 bytes");
    Ok((config, material, fingerprint))
}

/// How many password checks run at a time: one per core mpp may use (bcrypt is CPU-bound).
fn checkers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn refusal(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
