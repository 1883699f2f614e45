//! The HTTP clients that talk to backends: keep-alive connections, http and https (rustls,
//! `ring`), certificates verified unless `--insecure`. Towards the replicas they also take the
//! TLS part of Prometheus's `http_config` ([`TlsOptions`]: a CA file, a client certificate, a
//! server name); discovery (Marathon, the DC/OS login) uses the plain one. Probes and
//! discovery use hyper-util's pooled client ([`HttpClient`]); proxied requests use
//! [`pool::Pool`], one per serving thread, made over the same [`Connector`].

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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use cert::ClientCert;

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
#[derive(Debug, thiserror::Error)]
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

/// Builds the client for discovery: `insecure` turns certificate verification off;
/// `max_idle_per_replica` bounds the idle connections kept to one host (more would only
/// exceed what `--max-backend-connections` lets be used at once).
pub fn build(insecure: bool, max_idle_per_replica: u32) -> anyhow::Result<HttpClient> {
    build_with(&TlsOptions { insecure, ..TlsOptions::default() }, max_idle_per_replica)
}

/// Builds the client for the replicas, with `options`' CA, client certificate and server name.
pub fn build_with(options: &TlsOptions, max_idle_per_replica: u32) -> anyhow::Result<HttpClient> {
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(pool::IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_replica as usize)
        .build(connector(options)?))
}

/// The connector for the replicas, with `options`' CA, client certificate and server name.
pub fn connector(options: &TlsOptions) -> anyhow::Result<Connector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if options.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let roots = match &options.ca_file {
            Some(file) => ca_roots(file)?,
            None => root_store(),
        };
        builder.with_root_certificates(roots)
    };
    let tls = match &options.client_cert {
        Some((cert_file, key_file)) => {
            let client_cert = ClientCert::load(cert_file, key_file, builder.crypto_provider().clone())?;
            builder.with_client_cert_resolver(Arc::new(client_cert))
        }
        None => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let mut connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if let Some(name) = &options.server_name {
        connector = connector.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name.clone()));
    }
    Ok(connector.enable_http1().wrap_connector(http))
}

/// The certificates of `--backend-ca-file`, the only roots trusted then (as Prometheus's
/// `ca_file`).
fn ca_roots(file: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let problem = |problem: String| TlsFileError { flag: "--backend-ca-file", path: file.to_path_buf(), problem };
    let pem = std::fs::read(file).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("not a PEM certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    if roots.add_parsable_certificates(certs).0 == 0 {
        return Err(problem("holds no usable CA certificate".into()));
    }
    Ok(roots)
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
