//! The client certificate mpp presents to the replicas (`--backend-cert-file`,
//! `--backend-key-file`), read again when its files change, as Prometheus does: a new
//! connection's handshake looks at the files at most once per [`CHECK_INTERVAL`] (the
//! connections already open keep the certificate they started with). Files that no longer
//! read or match leave the last good certificate in use, and are logged once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsFileError;

/// How often, at most, the files are looked at again.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The client certificate, kept current from its files. `Debug` names the files only: the
/// state holds the private key.
pub(crate) struct ClientCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

struct State {
    current: Arc<CertifiedKey>,
    /// The files' bytes when last read, to tell whether they changed.
    read: (Vec<u8>, Vec<u8>),
    checked: Instant,
    last_error: Option<String>,
}

impl ClientCert {
    /// Reads the files; an error names the flag and the file, never what it holds.
    pub fn load(cert_file: &Path, key_file: &Path, provider: Arc<CryptoProvider>) -> Result<ClientCert, TlsFileError> {
        let read = read_files(cert_file, key_file)?;
        let current = Arc::new(certified_key(cert_file, key_file, &read, &provider)?);
        Ok(ClientCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            state: Mutex::new(State { current, read, checked: Instant::now(), last_error: None }),
        })
    }

    /// The certificate to present now, after looking at the files if they are due.
    fn current_at(&self, now: Instant) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().expect("the client certificate lock is never poisoned");
        if now.saturating_duration_since(state.checked) >= CHECK_INTERVAL {
            state.checked = now;
            match self.reread(&state.read) {
                Ok(None) => state.last_error = None,
                Ok(Some((read, key))) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "client certificate for the replicas changed; now in use");
                    (state.read, state.current, state.last_error) = (read, Arc::new(key), None);
                }
                Err(error) => {
                    let error = error.to_string();
                    if state.last_error.as_ref() != Some(&error) {
                        tracing::error!(%error, "client certificate for the replicas unusable; the last good one stays in use");
                        state.last_error = Some(error);
                    }
                }
            }
        }
        state.current.clone()
    }

    /// What the files hold now, if it differs from `before`.
    #[allow(clippy::type_complexity)]
    fn reread(&self, before: &(Vec<u8>, Vec<u8>)) -> Result<Option<((Vec<u8>, Vec<u8>), CertifiedKey)>, TlsFileError> {
        let read = read_files(&self.cert_file, &self.key_file)?;
        if read == *before {
            return Ok(None);
        }
        let key = certified_key(&self.cert_file, &self.key_file, &read, &self.provider)?;
        Ok(Some((read, key)))
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current_at(Instant::now()))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_files(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsFileError> {
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|e| TlsFileError::new(flag, path, format!("cannot read it: {e}")))
    };
    Ok((read("--backend-cert-file", cert_file)?, read("--backend-key-file", key_file)?))
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let cert_problem = |problem: String| TlsFileError::new("--backend-cert-file", cert_file, problem);
    let key_problem = |problem: String| TlsFileError::new("--backend-key-file", key_file, problem);
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_problem(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(cert_problem("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| key_problem(format!("not a PEM private key (PKCS#1, PKCS#8 or SEC1): {e}")))?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| key_problem(format!("does not go with --backend-cert-file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(dir: &Path, cn: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    }

    #[test]
    fn changed_files_are_used_and_broken_ones_keep_the_last_good_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        issue(dir.path(), "first");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_cert = ClientCert::load(&cert, &key, provider).unwrap();
        let start = Instant::now();
        let first = client_cert.current_at(start);

        issue(dir.path(), "second");
        assert_eq!(client_cert.current_at(start).cert, first.cert, "not looked at before the interval");
        let later = start + CHECK_INTERVAL;
        let second = client_cert.current_at(later);
        assert_ne!(second.cert, first.cert);

        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
        assert_eq!(client_cert.current_at(later + CHECK_INTERVAL).cert, second.cert);
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(client_cert.current_at(later + CHECK_INTERVAL * 2).cert, second.cert);
    }

    #[test]
    fn a_key_for_another_certificate_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        issue(dir.path(), "one");
        let other = tempfile::tempdir().unwrap();
        issue(other.path(), "two");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let error =
            ClientCert::load(&dir.path().join("cert.pem"), &other.path().join("key.pem"), provider).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("--backend-key-file ") && message.contains("does not go with"), "{message}");
    }
}
