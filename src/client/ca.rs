//! The CA the replicas' certificates are verified against (`--backend-ca-file`, as
//! Prometheus's `ca_file`), read again when the file changes: a rotated CA bundle is taken
//! without a restart. The file is read by [`super::BackendTls::watch`] in the background;
//! a handshake only loads the verifier in use. A file that no longer reads, or holds no
//! usable certificate, leaves the last good CA in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::TlsFileError;

const FLAG: &str = "--backend-ca-file";

/// Verifies the replicas' certificates against the CA file's certificates only, kept current
/// from the file.
#[derive(Debug)]
pub(crate) struct CaFile {
    file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<WebPkiServerVerifier>,
    /// The file's bytes when last read well; only the reread takes it.
    read: Mutex<Vec<u8>>,
}

impl CaFile {
    /// Reads the file; an error names the flag and the file.
    pub fn load(file: &Path, provider: Arc<CryptoProvider>) -> Result<CaFile, TlsFileError> {
        let read = std::fs::read(file).map_err(|e| problem(file, format!("cannot read it: {e}")))?;
        let verifier = verifier(file, &read, &provider)?;
        Ok(CaFile { file: file.to_path_buf(), provider, current: ArcSwap::new(verifier), read: Mutex::new(read) })
    }

    /// Reads the file again and puts what it holds in use if it changed: `Ok(true)` then.
    pub fn reread(&self) -> Result<bool, TlsFileError> {
        let mut before = self.read.lock().expect("the CA file lock is never poisoned");
        let read = std::fs::read(&self.file).map_err(|e| problem(&self.file, format!("cannot read it: {e}")))?;
        if read == *before {
            return Ok(false);
        }
        self.current.store(verifier(&self.file, &read, &self.provider)?);
        *before = read;
        Ok(true)
    }

    /// The file, for the log.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

fn problem(file: &Path, problem: String) -> TlsFileError {
    TlsFileError::new(FLAG, file, problem)
}

/// A verifier trusting the PEM certificates in `pem`, and only them.
fn verifier(
    file: &Path,
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(file, format!("not a PEM certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    if roots.add_parsable_certificates(certs).0 == 0 {
        return Err(problem(file, "holds no usable CA certificate".into()));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| problem(file, format!("cannot verify with it: {e}")))
}

impl ServerCertVerifier for CaFile {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current.load().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        // The hints would borrow from a verifier that a reread may replace; they are optional.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA in `dir/name.pem` and a server certificate for `localhost` it issued.
    fn ca_and_server(dir: &Path, name: &str) -> (PathBuf, CertificateDer<'static>) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let server = server.signed_by(&server_key, &ca).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, ca.pem()).unwrap();
        (file, server.der().clone())
    }

    fn verifies(ca: &CaFile, server: &CertificateDer<'_>) -> bool {
        let name = ServerName::try_from("localhost").unwrap();
        ca.verify_server_cert(server, &[], &name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn a_changed_file_is_trusted_from_its_reread_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let (old_file, old_server) = ca_and_server(dir.path(), "old");
        let (new_file, new_server) = ca_and_server(dir.path(), "new");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = CaFile::load(&old_file, provider).unwrap();
        assert!(verifies(&ca, &old_server) && !verifies(&ca, &new_server));
        assert!(!ca.reread().unwrap(), "nothing changed");

        std::fs::copy(&new_file, &old_file).unwrap();
        assert!(verifies(&ca, &old_server), "not looked at before the reread");
        assert!(ca.reread().unwrap());
        assert!(verifies(&ca, &new_server) && !verifies(&ca, &old_server));

        std::fs::write(&old_file, "not a certificate\n").unwrap();
        let error = ca.reread().unwrap_err().to_string();
        assert!(error.starts_with("--backend-ca-file ") && error.contains("no usable CA certificate"), "{error}");
        assert!(verifies(&ca, &new_server), "the last good CA stays in use");
    }
}
