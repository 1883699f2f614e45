//! When the certificates mpp presents run out: the listener's (from the web config) and the
//! one it shows the replicas (`--backend-cert-file`), as
//! `mpp_certificate_expiry_timestamp_seconds{use}`, read at each scrape so that a rotated
//! certificate shows at once. The alert on it is in `deploy/monitoring/`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

/// The end of the validity of the first certificate in `pem`, in Unix seconds.
pub fn not_after(pem: &[u8]) -> Option<f64> {
    let (_, document) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let certificate = document.parse_x509().ok()?;
    Some(certificate.validity().not_after.timestamp() as f64)
}

/// The expiry of the certificate in the PEM file at `path`, read at a scrape: only a regular
/// file of at most 1 MiB, opened without blocking (a FIFO put there never holds the scrape).
pub fn not_after_of_file(path: &std::path::Path) -> Option<f64> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    const MAX: u64 = 1 << 20;
    // O_NONBLOCK, on Linux.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(0o4000).open(path).ok()?;
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() || metadata.len() > MAX {
        return None;
    }
    let mut pem = Vec::new();
    file.take(MAX).read_to_end(&mut pem).ok()?;
    not_after(&pem)
}

/// Where a certificate's expiry is found when scraped: `None` when there is none now.
pub type Source = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// The collector of `mpp_certificate_expiry_timestamp_seconds`, one series per `use`.
pub struct ExpiryCollector {
    certificates: Vec<(&'static str, Source)>,
}

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uses: Vec<&str> = self.certificates.iter().map(|(name, _)| *name).collect();
        f.debug_struct("ExpiryCollector").field("uses", &uses).finish()
    }
}

impl ExpiryCollector {
    /// The certificates named by their use (`listener`, `backends`) and where to read them.
    pub fn new(certificates: Vec<(&'static str, Source)>) -> Self {
        ExpiryCollector { certificates }
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let found: Vec<(&str, f64)> =
            self.certificates.iter().filter_map(|(name, source)| source().map(|at| (*name, at))).collect();
        if found.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "mpp_certificate_expiry_timestamp_seconds",
            "When a certificate mpp presents stops being valid (its notAfter), by use",
            None,
            MetricType::Gauge,
        )?;
        for (name, at) in found {
            ConstGauge::new(at).encode(metric.encode_family(&[("use", name)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_end_is_read_and_anything_else_is_none() {
        let mut params = rcgen::CertificateParams::new(vec!["mpp.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        // 2031-05-06T00:00:00Z.
        assert_eq!(not_after(pem.as_bytes()), Some(1_935_792_000.0));
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(not_after(key.serialize_pem().as_bytes()), None, "a key is not a certificate");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, &pem).unwrap();
        assert_eq!(not_after_of_file(&file), Some(1_935_792_000.0));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        assert_eq!(not_after_of_file(&fifo), None, "a FIFO is not read (nor waited on)");
        assert_eq!(not_after_of_file(std::path::Path::new("/dev/zero")), None, "nor a device");
    }

    #[test]
    fn each_use_is_a_series_and_a_missing_one_is_left_out() {
        let collector = ExpiryCollector::new(vec![
            ("listener", Arc::new(|| Some(1_935_878_400.0)) as Source),
            ("backends", Arc::new(|| None) as Source),
        ]);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("mpp_certificate_expiry_timestamp_seconds{use=\"listener\"} 1935878400.0"), "{text}");
        assert!(!text.contains("backends"), "{text}");
    }
}
