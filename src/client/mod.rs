//! The HTTP clients that talk to backends: keep-alive connections, http and https (rustls,
//! `ring`), certificates verified unless `--insecure`. Towards the replicas they also take the
//! TLS part of Prometheus's `http_config` ([`TlsOptions`]: a CA file, a client certificate, a
//! server name); discovery (Marathon, the DC/OS login) uses the plain one. Probes and
//! discovery use hyper-util's pooled client ([`HttpClient`]); proxied requests use
//! [`pool::Pool`], one per serving thread, made over the same [`Connector`].

mod ca;
mod cert;
pub mod pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use ca::CaFile;
use cert::ClientCert;

use crate::reload::{Reloads, Reread};

/// The client type used for every call to a backend. Request bodies are buffered
/// (`Full<Bytes>`) so that a request can be replayed on another replica.
pub type HttpClient = Client<Connector, Full<Bytes>>;

/// How connections to backends are opened: TCP (`TCP_NODELAY`, keepalive, a connect
/// timeout), then TLS for https URLs.
pub type Connector = HttpsConnector<HttpConnector>;

/// How long a TCP (and TLS) connection to a backend may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How mpp's https connections to the replicas are made (`--backend-*` flags, `-k`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Accept any server certificate (`--insecure`).
    pub insecure: bool,
    /// Verify servers against this CA instead of the system's roots (`--backend-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Present this certificate and key (`--backend-cert-file`, `--backend-key-file`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Expect (and send as SNI) this name instead of the URL's host (`--backend-server-name`).
    pub server_name: Option<ServerName<'static>>,
}

/// A TLS file for the replicas that cannot be used, named by its flag and path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {}: {problem}", path.display())]
pub struct TlsFileError {
    flag: &'static str,
    path: PathBuf,
    problem: String,
}

impl TlsFileError {
    pub(crate) fn new(flag: &'static str, path: &Path, problem: String) -> Self {
        TlsFileError { flag, path: path.to_path_buf(), problem }
    }
}

/// How often the TLS files for the replicas are read again (besides at once on SIGHUP).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The TLS set-up towards the replicas: [`TlsOptions`] and the files they name (the CA, the
/// client certificate and key), kept current by [`BackendTls::watch`]. Every connector made
/// from one `BackendTls` uses the files' latest good contents for its new connections.
#[derive(Debug)]
pub struct BackendTls {
    options: TlsOptions,
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: Option<Arc<CaFile>>,
    client_cert: Option<Arc<ClientCert>>,
}

impl BackendTls {
    /// Reads the files `options` name; an error names the flag and the file.
    pub fn load(options: &TlsOptions) -> Result<BackendTls, TlsFileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = match &options.ca_file {
            Some(file) if !options.insecure => Some(Arc::new(CaFile::load(file, provider.clone())?)),
            _ => None,
        };
        let client_cert = match &options.client_cert {
            Some((cert_file, key_file)) => Some(Arc::new(ClientCert::load(cert_file, key_file, provider.clone())?)),
            None => None,
        };
        Ok(BackendTls { options: options.clone(), provider, ca, client_cert })
    }

    /// Whether it reads any file (and [`BackendTls::watch`] has something to do).
    pub fn reads_files(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some()
    }

    /// A connector with these settings; its handshakes use what the files hold at the time.
    pub fn connector(&self) -> anyhow::Result<Connector> {
        let builder =
            rustls::ClientConfig::builder_with_provider(self.provider.clone()).with_safe_default_protocol_versions()?;
        let builder = if self.options.insecure {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(self.provider.clone())))
        } else if let Some(ca) = &self.ca {
            builder.dangerous().with_custom_certificate_verifier(ca.clone())
        } else {
            builder.with_root_certificates(root_store())
        };
        let mut tls = match &self.client_cert {
            Some(client_cert) => builder.with_client_cert_resolver(client_cert.clone()),
            None => builder.with_no_client_auth(),
        };
        if self.reads_files() {
            // A resumed session skips the certificates: a CA or client certificate read again
            // must hold for every new connection.
            tls.resumption = rustls::client::Resumption::disabled();
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        let mut connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        if let Some(name) = &self.options.server_name {
            connector = connector.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name.clone()));
        }
        Ok(connector.enable_http1().wrap_connector(http))
    }

    /// Reads the files again every [`RELOAD_INTERVAL`] and at once when `reloads` is asked
    /// (SIGHUP), forever; run it as a task. A file that fails leaves the last good contents in
    /// use and fails `mpp_config_last_reload_successful` until it reads well again.
    pub async fn watch(self: Arc<Self>, reloads: Reloads) {
        crate::reload::every(
            RELOAD_INTERVAL,
            &reloads,
            "backend TLS files",
            || self.reread(),
            |reread| match reread {
                Reread::Read { changed: true, .. } => {
                    tracing::info!(files = %self.describe(), "TLS files for the replicas changed; new connections use them");
                }
                Reread::Read { .. } => {}
                Reread::Failed(error) => {
                    tracing::error!(%error, "TLS file for the replicas unusable; the last good one stays in use");
                }
            },
        )
        .await
    }

    /// Reads every file again; `Ok(true)` if any brought something new. Every file is read
    /// even when an earlier one fails, so that each takes what it can.
    fn reread(&self) -> Result<bool, TlsFileError> {
        let ca = self.ca.as_ref().map_or(Ok(false), |ca| ca.reread());
        let cert = self.client_cert.as_ref().map_or(Ok(false), |cert| cert.reread());
        Ok(ca? | cert?)
    }

    /// The files read, for the log.
    fn describe(&self) -> String {
        let ca = self.ca.as_ref().map(|ca| ca.file().display().to_string());
        let cert = self.client_cert.as_ref().map(|cert| cert.cert_file().display().to_string());
        ca.into_iter().chain(cert).collect::<Vec<_>>().join(", ")
    }
}

/// Builds the client for discovery: `insecure` turns certificate verification off;
/// `max_idle_per_replica` bounds the idle connections kept to one host (more would only
/// exceed what `--max-backend-connections` lets be used at once).
pub fn build(insecure: bool, max_idle_per_replica: u32) -> anyhow::Result<HttpClient> {
    build_with(&BackendTls::load(&TlsOptions { insecure, ..TlsOptions::default() })?, max_idle_per_replica)
}

/// Builds the client for the replicas, with `tls`' CA, client certificate and server name.
pub fn build_with(tls: &BackendTls, max_idle_per_replica: u32) -> anyhow::Result<HttpClient> {
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(pool::IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_replica as usize)
        .build(tls.connector()?))
}

/// The system's trusted roots, or the Mozilla set where the system has none.
pub(crate) fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system certificate");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::info!("no system CA certificates found; using the built-in Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// Accepts any certificate (`--insecure`); signatures are still checked so that the
/// handshake itself stays sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
