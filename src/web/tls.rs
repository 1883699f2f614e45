//! TLS for the listener: the validated `tls_server_config` and the PEM documents it names,
//! turned into a rustls [`ServerConfig`] (on `ring`). Go's `crypto/tls` semantics are kept
//! where rustls can: client certificate policies, versions, cipher suites and curves by Go
//! name, ALPN for HTTP/2. What rustls cannot do (TLS 1.0 and 1.1, CBC suites, P-521) is
//! refused or, in a list, skipped with a warning.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::config::{ClientAuth, Pem, TlsSettings, TlsVersion, WebConfigError};

/// The PEM documents a [`TlsSettings`] names, read (from their files, or inline).
pub(crate) struct Material {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl Material {
    /// Reads every document `settings` names; an error names the field and the file.
    pub fn read(file: &Path, settings: &TlsSettings) -> Result<Material, WebConfigError> {
        Ok(Material {
            cert: read_pem(file, "cert_file", &settings.cert)?,
            key: read_pem(file, "key_file", &settings.key)?,
            client_ca: settings.client_ca.as_ref().map(|ca| read_pem(file, "client_ca_file", ca)).transpose()?,
        })
    }
}

fn read_pem(file: &Path, field: &str, pem: &Pem) -> Result<Vec<u8>, WebConfigError> {
    match pem {
        Pem::Inline(text) => Ok(text.expose().as_bytes().to_vec()),
        Pem::File(path) => std::fs::read(path).map_err(|e| {
            WebConfigError::new(
                file,
                &format!("tls_server_config.{field}"),
                format!("cannot read {}: {e}", path.display()),
            )
        }),
    }
}

/// Builds the server's TLS configuration. `http2` offers `h2` by ALPN beside `http/1.1`.
pub(crate) fn server_config(
    file: &Path,
    settings: &TlsSettings,
    material: &Material,
    http2: bool,
) -> Result<Arc<ServerConfig>, WebConfigError> {
    let err = |field: &str, problem: String| WebConfigError::new(file, &format!("tls_server_config.{field}"), problem);
    let (cert_field, key_field) = (field_name(&settings.cert, "cert"), field_name(&settings.key, "key"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&material.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_field, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err(cert_field, "holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| err(key_field, format!("not a PEM private key (PKCS#1, PKCS#8 or SEC1): {e}")))?;
    let provider = Arc::new(provider(file, settings)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
            .map(|(_, version)| version)
            .collect();
    let verifier = client_verifier(file, settings, material, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| err("cipher_suites", format!("no usable cipher suite or curve for these TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err(key_field, format!("does not go with the certificate: {e}")))?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

fn field_name(pem: &Pem, inline: &'static str) -> &'static str {
    match (pem, inline) {
        (Pem::Inline(_), name) => name,
        (Pem::File(_), "cert") => "cert_file",
        (Pem::File(_), _) => "key_file",
    }
}

/// The `ring` provider narrowed to the configured cipher suites and curves. TLS 1.3 suites
/// stay as they are: Go does not let them be configured either.
fn provider(file: &Path, settings: &TlsSettings) -> Result<CryptoProvider, WebConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(wanted) = &settings.cipher_suites {
        let mut suites: Vec<_> = provider.cipher_suites.iter().filter(|s| s.tls13().is_some()).copied().collect();
        for name in wanted {
            match provider.cipher_suites.iter().find(|s| format!("{:?}", s.suite()) == *name) {
                Some(suite) => suites.push(*suite),
                None if name.starts_with("TLS_AES_") || name.starts_with("TLS_CHACHA20_") => {} // TLS 1.3
                None => {
                    tracing::warn!(file = %file.display(), cipher = %name, "cipher suite not available in mpp (rustls); skipped")
                }
            }
        }
        let tls12_left = suites.iter().any(|s| s.tls13().is_none());
        if !tls12_left && settings.min_version <= TlsVersion::Tls12 && settings.max_version == TlsVersion::Tls12 {
            return Err(WebConfigError::new(
                file,
                "tls_server_config.cipher_suites",
                "none of these cipher suites is available in mpp (rustls supports ECDHE with AES-GCM or ChaCha20-Poly1305)",
            ));
        }
        provider.cipher_suites = suites;
    }
    if let Some(wanted) = &settings.curve_preferences {
        use rustls::crypto::ring::kx_group;
        let mut groups = Vec::new();
        for name in wanted {
            match name.as_str() {
                "X25519" => groups.push(kx_group::X25519),
                "CurveP256" => groups.push(kx_group::SECP256R1),
                "CurveP384" => groups.push(kx_group::SECP384R1),
                _ => {
                    tracing::warn!(file = %file.display(), curve = %name, "curve not available in mpp (rustls); skipped")
                }
            }
        }
        if groups.is_empty() {
            return Err(WebConfigError::new(
                file,
                "tls_server_config.curve_preferences",
                "none of these curves is available in mpp (X25519, CurveP256, CurveP384 are)",
            ));
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

fn client_verifier(
    file: &Path,
    settings: &TlsSettings,
    material: &Material,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    let ca_field = match settings.client_ca {
        Some(Pem::Inline(_)) => "tls_server_config.client_ca",
        _ => "tls_server_config.client_ca_file",
    };
    let roots = || -> Result<Arc<RootCertStore>, WebConfigError> {
        let Some(pem) = &material.client_ca else {
            // Go verifies against the system's roots when no client CA is given.
            return Ok(Arc::new(crate::client::root_store()));
        };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WebConfigError::new(file, ca_field, format!("not a PEM certificate: {e}")))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(WebConfigError::new(file, ca_field, "holds no usable CA certificate"));
        }
        Ok(Arc::new(roots))
    };
    let verifying = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone());
        if optional {
            builder = builder.allow_unauthenticated();
        }
        builder.build().map_err(|e| WebConfigError::new(file, ca_field, format!("cannot verify clients with it: {e}")))
    };
    let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
        ClientAuth::NoClientCert => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => Arc::new(AnyClientCert { mandatory: false, provider: provider.clone() }),
        ClientAuth::RequireAnyClientCert => Arc::new(AnyClientCert { mandatory: true, provider: provider.clone() }),
        ClientAuth::VerifyClientCertIfGiven => verifying(true)?,
        ClientAuth::RequireAndVerifyClientCert => verifying(false)?,
    };
    Ok(match &settings.client_allowed_sans {
        Some(sans) => Arc::new(AllowedSans { inner: verifier, sans: sans.clone() }),
        None => verifier,
    })
}

/// `RequestClientCert` and `RequireAnyClientCert`: any certificate is taken without checking
/// who issued it (the handshake still proves the client holds its key).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: after the policy's own check, the certificate must name one of
/// the allowed DNS names, IP addresses or URIs in its subject alternative names.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<String>,
}

impl AllowedSans {
    fn allows(&self, end_entity: &CertificateDer<'_>) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else { return false };
        let named = |san: &str| cert.valid_dns_names().chain(cert.valid_uri_names()).any(|name| name == san);
        self.sans.iter().any(|san| {
            named(san)
                || san
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| cert.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into())).is_ok())
        })
    }
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Always: a client with no certificate names no allowed SAN (rustls would otherwise
    /// never call `verify_client_cert`, and admit it), and Go refuses it too.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if !self.allows(end_entity) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::config::WebConfig;

    fn pem_pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// Builds the server config for `extra` TLS settings over a fresh certificate.
    fn build(extra: &str, adjust: impl FnOnce(&mut Material)) -> Result<Arc<ServerConfig>, String> {
        let file = Path::new("/etc/mpp/web.yml");
        let text = format!("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n{extra}");
        let config = WebConfig::parse(file, &text).map_err(|e| e.to_string())?;
        let settings = config.tls.expect("TLS is on");
        let (cert, key) = pem_pair("mpp");
        let mut material = Material { cert: cert.into_bytes(), key: key.into_bytes(), client_ca: None };
        adjust(&mut material);
        server_config(file, &settings, &material, config.http2).map_err(|e| e.to_string())
    }

    #[test]
    fn alpn_offers_http2_unless_turned_off() {
        assert_eq!(build("", |_| {}).unwrap().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let config = build("http_server_config:\n  http2: false\n", |_| {}).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_key_file() {
        let e = build("", |m| m.key = pem_pair("other").1.into_bytes()).unwrap_err();
        assert!(e.contains("tls_server_config.key_file: does not go with the certificate"), "{e}");
        let e = build("", |m| m.key = b"not a key".to_vec()).unwrap_err();
        assert!(e.contains("tls_server_config.key_file: not a PEM private key"), "{e}");
        let e = build("", |m| m.cert = b"".to_vec()).unwrap_err();
        assert!(e.contains("tls_server_config.cert_file: holds no PEM certificate"), "{e}");
    }

    #[test]
    fn a_client_ca_without_certificates_is_refused() {
        let extra = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";
        let e = build(extra, |m| m.client_ca = Some(b"# empty\n".to_vec())).unwrap_err();
        assert!(e.contains("tls_server_config.client_ca_file: holds no usable CA certificate"), "{e}");
        let ca = pem_pair("ca").0.into_bytes();
        assert!(build(extra, |m| m.client_ca = Some(ca)).is_ok());
    }

    #[test]
    fn suites_and_curves_rustls_lacks_are_skipped_but_not_all_of_them() {
        let config =
            build("  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n", |_| {})
                .unwrap();
        let tls12: Vec<String> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(tls12, ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        let e = build("  max_version: TLS12\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", |_| {}).unwrap_err();
        assert!(e.contains("tls_server_config.cipher_suites: none of these cipher suites"), "{e}");
        let e = build("  curve_preferences: [CurveP521]\n", |_| {}).unwrap_err();
        assert!(e.contains("tls_server_config.curve_preferences: none of these curves"), "{e}");
        assert!(build("  curve_preferences: [CurveP521, X25519]\n", |_| {}).is_ok());
    }
}
