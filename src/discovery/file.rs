//! Endpoints file discovery: one backend URL or DNS name ([`super::dns`]) per line, blank
//! lines and `#` comments ignored. The file is re-read every selection round and as soon as it
//! changes (inotify on its directory, so an atomic replace by rename is seen too); its DNS
//! names are looked up every round too, and again when the earliest TTL runs out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::future::BoxFuture;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::dns::{DnsName, Resolver};
use super::{DiscoveryError, Source};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::reload::Reloads;

/// The flag that chooses this kind, for messages.
pub const CHOSEN_BY: &str = "--endpoints-file";

/// The endpoints file's flag.
#[derive(Debug, Clone, clap::Args)]
pub struct FileFlags {
    /// A file path containing a list of endpoints to use, one per line. This file is re-read at
    /// every selection interval and whenever it changes
    #[arg(long, env = "MPP_ENDPOINTS_FILE", value_name = "PATH")]
    pub endpoints_file: Option<PathBuf>,

    /// The DNS server that looks up the endpoints file's dns+ and dnssrv+ names, as IP or
    /// IP:PORT (port 53 if none), instead of those of /etc/resolv.conf
    #[arg(long, env = "MPP_DNS_SERVER", value_name = "ADDR", value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,
}

impl FileFlags {
    /// The file to read, if this kind is chosen (any path is valid until it is read).
    pub fn config(self) -> Option<FileConfig> {
        Some(FileConfig { path: self.endpoints_file?, dns_server: self.dns_server })
    }
}

/// The endpoints file, and who looks its DNS names up.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The file.
    pub path: PathBuf,
    /// `--dns-server`: the DNS server to ask instead of the system's.
    pub dns_server: Option<SocketAddr>,
}

/// `--dns-server`: an IP address, with or without a port.
fn parse_dns_server(value: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    let ip = value.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{value}' is not an IP address or IP:PORT"))
}

/// Reads candidates from a file.
pub struct FileDiscovery {
    path: PathBuf,
    /// Kept alive: dropping it stops the change notifications.
    _watcher: Option<notify::RecommendedWatcher>,
    /// The text read last, so that invalid lines are logged when the file changes, not on
    /// every round.
    last_text: Option<String>,
    /// Looks the file's DNS names up.
    resolver: Resolver,
    /// What this round's lookups found wrong.
    problems: Vec<String>,
    /// Signalled when the earliest TTL runs out.
    changed: mpsc::Sender<()>,
    /// The task that signals it.
    refresh: Option<tokio::task::JoinHandle<()>>,
    /// Where each read is accounted for (`mpp_config_last_reload_successful`), and whether a
    /// SIGHUP asked for it.
    reloads: Reloads,
    asked: tokio::sync::watch::Receiver<u64>,
}

/// The file's name in the reload account.
const SOURCE: &str = "endpoints file";

impl FileDiscovery {
    /// Checks that the file can be read and starts watching it. A file that cannot be watched
    /// is still read every round; that is logged, not fatal.
    pub fn start(config: FileConfig, changed: mpsc::Sender<()>, metrics: &Metrics) -> Result<Self, DiscoveryError> {
        let FileConfig { path, dns_server } = config;
        std::fs::read_to_string(&path).map_err(|source| DiscoveryError::Read { path: path.clone(), source })?;
        let watcher = match watch(&path, changed.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "changes will be seen at the next selection interval only");
                None
            }
        };
        Ok(FileDiscovery {
            path,
            _watcher: watcher,
            last_text: None,
            resolver: Resolver::new(dns_server, metrics.dns_lookups.clone()),
            problems: Vec::new(),
            changed,
            refresh: None,
            reloads: metrics.reloads.clone(),
            asked: metrics.reloads.asked(),
        })
    }

    /// Reads the file: every valid line is a candidate; invalid ones are logged with their
    /// line number (once per change of the file) and skipped.
    async fn read(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        let asked = self.asked.has_changed().unwrap_or(false);
        self.asked.mark_unchanged();
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(source) => {
                self.reloads.report(SOURCE, false, asked);
                return Err(DiscoveryError::Read { path: self.path.clone(), source });
            }
        };
        let (endpoints, problems) = parse_endpoints(&text);
        let changed = self.last_text.as_deref() != Some(text.as_str());
        self.reloads.report(SOURCE, !endpoints.is_empty(), changed || asked);
        if changed {
            for (line, problem) in &problems {
                tracing::warn!(file = %self.path.display(), line, "skipping invalid endpoint: {problem}");
            }
            self.last_text = Some(text);
        }
        if endpoints.is_empty() {
            return Err(DiscoveryError::Empty { path: self.path.clone() });
        }
        let names: Vec<DnsName> = endpoints
            .iter()
            .filter_map(|e| match e {
                Line::Dns(name) => Some(name.clone()),
                Line::Url(_) => None,
            })
            .collect();
        let mut resolved = self.resolver.resolve(&names).await;
        self.problems = std::mem::take(&mut resolved.problems);
        if let Some(at) = resolved.refresh_at {
            self.refresh_at(at);
        }
        // In the file's order: each URL, each name's addresses.
        let mut found = resolved.backends.into_iter();
        let mut backends: Vec<Backend> = Vec::new();
        for endpoint in endpoints {
            let listed = match endpoint {
                Line::Url(backend) => vec![backend],
                Line::Dns(_) => found.next().unwrap_or_default(),
            };
            for backend in listed {
                if !backends.contains(&backend) {
                    backends.push(backend);
                }
            }
        }
        Ok(backends)
    }

    /// Signals a round at `at` (when a DNS answer's TTL runs out), instead of any signal
    /// planned before.
    fn refresh_at(&mut self, at: Instant) {
        if let Some(planned) = self.refresh.take() {
            planned.abort();
        }
        let changed = self.changed.clone();
        self.refresh = Some(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = changed.try_send(());
        }));
    }
}

impl Drop for FileDiscovery {
    fn drop(&mut self) {
        if let Some(planned) = self.refresh.take() {
            planned.abort();
        }
    }
}

impl Source for FileDiscovery {
    fn candidates(&mut self) -> BoxFuture<'_, Result<Vec<Backend>, DiscoveryError>> {
        Box::pin(self.read())
    }

    fn describe(&self) -> String {
        format!("endpoints file {}", self.path.display())
    }

    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }
}

/// A valid line of the endpoints file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A replica's URL.
    Url(Backend),
    /// A DNS name whose records list replicas.
    Dns(DnsName),
}

/// Parses an endpoints file: the valid lines (duplicates dropped, file order kept) and the
/// invalid ones as `(line number, what is wrong)`.
pub fn parse_endpoints(text: &str) -> (Vec<Line>, Vec<(usize, String)>) {
    let mut endpoints: Vec<Line> = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let endpoint = match DnsName::parse(line) {
            Some(name) => name.map(Line::Dns),
            None => Backend::parse(line).map(Line::Url),
        };
        match endpoint {
            Ok(e) if !endpoints.contains(&e) => endpoints.push(e),
            Ok(_) => {}
            Err(e) => problems.push((index + 1, e)),
        }
    }
    (endpoints, problems)
}

/// Watches the file's directory (a rename over the file replaces its inode, which a watch on
/// the file itself would lose) and signals `changed` on any event that names the file.
fn watch(path: &Path, changed: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher, DiscoveryError> {
    let err = |detail: String| DiscoveryError::Watch { path: path.to_path_buf(), detail };
    let name = path.file_name().ok_or_else(|| err("the path names no file".into()))?.to_os_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file ourselves raises access events; only changes count.
        let changes = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_));
        if changes && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
            // A full channel means a round is already due; that round reads the change.
            let _ = changed.try_send(());
        }
    })
    .map_err(|e| err(e.to_string()))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| err(e.to_string()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_blanks_and_bad_lines_with_their_numbers() {
        let text = "# replicas\nhttp://a:9090\n\n  http://b:9090  # second\nftp://c:1\nhttp://a:9090/\nnot a url\n";
        let (endpoints, problems) = parse_endpoints(text);
        let urls: Vec<&str> = endpoints
            .iter()
            .map(|e| match e {
                Line::Url(b) => b.url(),
                Line::Dns(name) => name.text(),
            })
            .collect();
        assert_eq!(urls, ["http://a:9090", "http://b:9090"]);
        let lines: Vec<usize> = problems.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [5, 7]);
        let (endpoints, problems) = parse_endpoints("dns+http://prom:9090\nhttp://a:9090\ndns+http://prom\n");
        assert!(matches!(&endpoints[0], Line::Dns(name) if name.text() == "dns+http://prom:9090"));
        assert_eq!(endpoints.len(), 2);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("needs a port"), "{problems:?}");
    }

    #[test]
    fn dns_servers_are_addresses_with_or_without_a_port() {
        assert_eq!(parse_dns_server("127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_dns_server("10.0.0.2").unwrap(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(parse_dns_server("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(parse_dns_server("[::1]:5353").unwrap(), "[::1]:5353".parse().unwrap());
        assert!(parse_dns_server("dns.example").unwrap_err().contains("'dns.example'"));
    }
}
