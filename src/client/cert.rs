//! The client certificate mpp presents to the replicas (`--backend-cert-file`,
//! `--backend-key-file`), read again when its files change, as Prometheus does. The files
//! are read by [`super::BackendTls::watch`] in the background (every second, and at once on
//! SIGHUP); a handshake only loads the certificate in use (the connections already open keep
//! the one they started with). Files that no longer read or match leave the last good
//! certificate in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsFileError;

/// The client certificate, kept current from its files. `Debug` names the files only: the
/// state holds the private key.
pub(crate) struct ClientCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes when last read well, to tell whether they changed; only the reread
    /// takes it.
    read: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

impl ClientCert {
    /// Reads the files; an error names the flag and the file, never what it holds.
    pub fn load(cert_file: &Path, key_file: &Path, provider: Arc<CryptoProvider>) -> Result<ClientCert, TlsFileError> {
        let read = read_files(cert_file, key_file)?;
        let current = ArcSwap::from_pointee(certified_key(cert_file, key_file, &read, &provider)?);
        Ok(ClientCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current,
            read: Mutex::new(read),
        })
    }

    /// Reads the files again and puts what they hold in use if it changed: `Ok(true)` then.
    /// Files that fail leave the last good certificate in use.
    pub fn reread(&self) -> Result<bool, TlsFileError> {
        let mut before = self.read.lock().expect("the client certificate lock is never poisoned");
        let read = read_files(&self.cert_file, &self.key_file)?;
        if read == *before {
            return Ok(false);
        }
        let key = certified_key(&self.cert_file, &self.key_file, &read, &self.provider)?;
        self.current.store(Arc::new(key));
        *before = read;
        Ok(true)
    }

    /// The certificate file, for the log.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
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
        let in_use = || client_cert.resolve(&[], &[]).unwrap().cert.clone();
        let first = in_use();
        assert!(!client_cert.reread().unwrap(), "nothing changed");

        issue(dir.path(), "second");
        assert_eq!(in_use(), first, "not looked at before the reread");
        assert!(client_cert.reread().unwrap());
        let second = in_use();
        assert_ne!(second, first);

        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n").unwrap();
        let error = client_cert.reread().unwrap_err().to_string();
        assert!(error.starts_with("--backend-key-file "), "{error}");
        assert_eq!(in_use(), second);
        std::fs::remove_file(&cert).unwrap();
        assert!(client_cert.reread().unwrap_err().to_string().starts_with("--backend-cert-file "));
        assert_eq!(in_use(), second);
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
