//! DNS names among the endpoints file's lines, as Thanos and vmauth take them:
//!
//! - `dns+http://NAME:PORT[/PREFIX]`: every A and AAAA record of `NAME` is a candidate, at
//!   `PORT` (`https` too);
//! - `dnssrv+http://_SERVICE._PROTO.NAME[/PREFIX]`: every SRV record's target, each of the
//!   target's addresses at the record's port.
//!
//! Each candidate is the address's URL (`http://10.0.0.5:9090`), so that two mpp instances
//! that see the same records have the same candidates, with the same ids.
//!
//! Names are looked up every selection round (the resolver caches each answer for its TTL)
//! and again when the earliest TTL runs out. A name whose lookup fails (a timeout, a server
//! failure, a CNAME loop) keeps its last good addresses; a name that does not exist or has no
//! address has no candidates. Both are reported: a line of the status page, and
//! `mpp_dns_lookups_total{name,result}`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::backend::Backend;
use crate::metrics::DnsLabels;

/// How long one lookup waits for the server before it tries again (twice in all).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The soonest a record's TTL running out brings a round of its own (a TTL of 0 would
/// otherwise bring one after another).
const MIN_REFRESH: Duration = Duration::from_secs(5);

/// How a name gives its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Records {
    /// A and AAAA records, all at this port.
    Address { port: u16 },
    /// SRV records, each naming its target and port.
    Service,
}

/// A line of the endpoints file that names replicas through DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName {
    /// The line as written: how messages and the metric name it.
    text: String,
    records: Records,
    /// `http` or `https`.
    scheme: &'static str,
    /// The name looked up.
    host: String,
    /// The path prefix every candidate gets (no trailing slash), or empty.
    prefix: String,
}

impl DnsName {
    /// Parses a `dns+` or `dnssrv+` line; `None` when the line is neither (a plain URL).
    pub fn parse(line: &str) -> Option<Result<DnsName, String>> {
        let (records, rest) = if let Some(rest) = line.strip_prefix("dns+") {
            (Records::Address { port: 0 }, rest)
        } else if let Some(rest) = line.strip_prefix("dnssrv+") {
            (Records::Service, rest)
        } else {
            return None;
        };
        Some(DnsName::parse_url(line, records, rest))
    }

    fn parse_url(line: &str, records: Records, url: &str) -> Result<DnsName, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("'{line}' is not a URL after its DNS prefix ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ => return Err(format!("'{line}' must name http:// or https:// after its DNS prefix")),
        };
        let authority = uri.authority().ok_or_else(|| format!("'{line}' has no name to look up"))?;
        if let Some((_, host)) = authority.as_str().rsplit_once('@') {
            // The message never repeats the credentials.
            let prefix = &line[..line.len() - url.len()];
            return Err(format!(
                "'{prefix}{scheme}://***@{host}' carries user info; credentials in URLs are not supported"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("'{line}' has a query; give the base URL only"));
        }
        let host = authority.host().to_string();
        if host.is_empty() || host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
            return Err(format!("'{line}' names an address, not a DNS name; list the address as a plain URL"));
        }
        Name::from_ascii(&host).map_err(|e| format!("'{line}': '{host}' is not a DNS name ({e})"))?;
        let records = match (records, authority.port_u16()) {
            (Records::Address { .. }, Some(port)) if port > 0 => Records::Address { port },
            (Records::Address { .. }, _) => {
                return Err(format!(
                    "'{line}' needs a port (1-65535): a dns+ name's addresses are all used at one port"
                ));
            }
            (Records::Service, None) => Records::Service,
            (Records::Service, Some(_)) => {
                return Err(format!(
                    "'{line}' has a port; a dnssrv+ name takes each target's port from its SRV record"
                ));
            }
        };
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(DnsName { text: line.to_string(), records, scheme, host, prefix })
    }

    /// The line as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The candidate at `address` and `port`.
    fn backend(&self, address: IpAddr, port: u16) -> Option<Backend> {
        let url = match address {
            IpAddr::V4(v4) => format!("{}://{v4}:{port}{}", self.scheme, self.prefix),
            IpAddr::V6(v6) => format!("{}://[{v6}]:{port}{}", self.scheme, self.prefix),
        };
        Backend::parse(&url).ok()
    }
}

/// What the names gave this round.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Each name's candidates, in the order of the names given.
    pub backends: Vec<Vec<Backend>>,
    /// What went wrong, a line per name (and per SRV record) that did not resolve as it should.
    pub problems: Vec<String>,
    /// When the earliest answer's TTL runs out (not before [`MIN_REFRESH`] from now).
    pub refresh_at: Option<Instant>,
}

/// One name's lookup.
enum Outcome {
    /// Its addresses (maybe none, when an SRV record's targets have none), with what was
    /// wrong with some of its records.
    Found { backends: Vec<Backend>, problems: Vec<String>, valid_until: Instant },
    /// The name does not exist, or has no record of the kind asked.
    Nothing(String),
    /// The lookup failed: the last good answer stays.
    Failed(String),
}

/// Looks the endpoints file's DNS names up, and keeps each one's last good answer.
pub struct Resolver {
    /// Made at the first name to look up (from `/etc/resolv.conf`, or `--dns-server`).
    resolver: Option<TokioResolver>,
    server: Option<SocketAddr>,
    last_good: HashMap<DnsName, Vec<Backend>>,
    /// The names looked up so far, whose lookups' series go when the file drops them.
    counted: HashSet<String>,
    lookups: Family<DnsLabels, Counter>,
}

impl Resolver {
    /// A resolver asking `server` (the system's resolvers without one), counting lookups in
    /// `lookups`.
    pub fn new(server: Option<SocketAddr>, lookups: Family<DnsLabels, Counter>) -> Self {
        Resolver { resolver: None, server, last_good: HashMap::new(), counted: HashSet::new(), lookups }
    }

    fn resolver(&mut self) -> Result<&TokioResolver, String> {
        if self.resolver.is_none() {
            let builder = match self.server {
                Some(server) => {
                    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut name_server.connections {
                        connection.port = server.port();
                    }
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_parts(None, Vec::new(), vec![name_server]),
                        TokioRuntimeProvider::default(),
                    )
                }
                None => TokioResolver::builder_tokio()
                    .map_err(|e| format!("cannot read the system's DNS configuration (/etc/resolv.conf): {e}"))?,
            };
            let mut options = ResolverOpts::default();
            options.timeout = LOOKUP_TIMEOUT;
            options.attempts = 2;
            let resolver =
                builder.with_options(options).build().map_err(|e| format!("cannot set up DNS resolution: {e}"))?;
            self.resolver = Some(resolver);
        }
        Ok(self.resolver.as_ref().expect("made above"))
    }

    /// Looks every name up at once.
    pub async fn resolve(&mut self, names: &[DnsName]) -> Resolved {
        self.last_good.retain(|name, _| names.contains(name));
        let listed: HashSet<&str> = names.iter().map(|n| n.text.as_str()).collect();
        for gone in self.counted.iter().filter(|text| !listed.contains(text.as_str())) {
            for result in ["ok", "empty", "error"] {
                self.lookups.remove(&DnsLabels { name: gone.clone(), result });
            }
        }
        self.counted.retain(|text| listed.contains(text.as_str()));
        self.counted.extend(listed.iter().map(|text| text.to_string()));
        let outcomes = match self.resolver() {
            Ok(resolver) => join_all(names.iter().map(|name| lookup(resolver, name))).await,
            Err(e) => names.iter().map(|_| Outcome::Failed(e.clone())).collect(),
        };
        let mut resolved = Resolved::default();
        let floor = Instant::now() + MIN_REFRESH;
        for (name, outcome) in names.iter().zip(outcomes) {
            let (result, backends) = match outcome {
                Outcome::Found { backends, problems, valid_until } => {
                    resolved.problems.extend(problems);
                    resolved.refresh_at = Some(resolved.refresh_at.map_or(valid_until, |at| at.min(valid_until)));
                    self.last_good.insert(name.clone(), backends.clone());
                    ("ok", backends)
                }
                Outcome::Nothing(why) => {
                    resolved.problems.push(format!("{}: {why}; it has no candidates", name.text));
                    self.last_good.remove(name);
                    ("empty", Vec::new())
                }
                Outcome::Failed(why) => {
                    let kept = self.last_good.get(name).cloned().unwrap_or_default();
                    resolved.problems.push(format!(
                        "{}: lookup failed ({why}); keeping its {} last known address{}",
                        name.text,
                        kept.len(),
                        if kept.len() == 1 { "" } else { "es" }
                    ));
                    tracing::warn!(name = %name.text, error = %why, kept = kept.len(), "DNS lookup failed");
                    ("error", kept)
                }
            };
            self.lookups.get_or_create(&DnsLabels { name: name.text.clone(), result }).inc();
            resolved.backends.push(backends);
        }
        resolved.refresh_at = resolved.refresh_at.map(|at| at.max(floor));
        resolved
    }
}

/// One name's lookup: its addresses, or its SRV records' targets' addresses.
async fn lookup(resolver: &TokioResolver, name: &DnsName) -> Outcome {
    match name.records {
        Records::Address { port } => match resolver.lookup_ip(name.host.as_str()).await {
            Ok(found) => Outcome::Found {
                backends: found.iter().filter_map(|ip| name.backend(ip, port)).collect(),
                problems: Vec::new(),
                valid_until: found.valid_until(),
            },
            Err(e) => judge(&name.host, "A or AAAA", &e),
        },
        Records::Service => {
            let found = match resolver.srv_lookup(name.host.as_str()).await {
                Ok(found) => found,
                Err(e) => return judge(&name.host, "SRV", &e),
            };
            let mut valid_until = found.valid_until();
            let mut problems = Vec::new();
            let mut targets = Vec::new();
            for record in found.answers() {
                let RData::SRV(srv) = &record.data else { continue };
                let target = srv.target.to_ascii();
                if srv.target.is_root() {
                    // "." : the service is decidedly not available there.
                    continue;
                }
                if srv.port == 0 {
                    let shown = target.trim_end_matches('.');
                    problems.push(format!("{}: the SRV record for {shown} names port 0; skipped", name.text));
                    continue;
                }
                targets.push((target, srv.port));
            }
            let addresses = join_all(targets.iter().map(|(target, _)| resolver.lookup_ip(target.as_str()))).await;
            let mut backends = Vec::new();
            for ((target, port), addresses) in targets.iter().zip(addresses) {
                // Looked up as the record gives it (fully qualified), shown without the dot.
                let target = target.trim_end_matches('.');
                match addresses {
                    Ok(addresses) => {
                        valid_until = valid_until.min(addresses.valid_until());
                        backends.extend(addresses.iter().filter_map(|ip| name.backend(ip, *port)));
                    }
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                        problems.push(format!("{}: SRV target {target} has no address; skipped", name.text));
                    }
                    // One target that cannot be looked up now: the whole answer may be short,
                    // so the last good one stays.
                    Err(e) => return Outcome::Failed(format!("SRV target {target}: {e}")),
                }
            }
            Outcome::Found { backends, problems, valid_until }
        }
    }
}

/// A failed lookup of `host`'s `kind` records: no such name, or no such record (nothing
/// there; a CNAME chain that ends nowhere or loops is one too), or a failure.
fn judge(host: &str, kind: &str, error: &NetError) -> Outcome {
    if error.is_nx_domain() {
        Outcome::Nothing(format!("{host} does not exist"))
    } else if error.is_no_records_found() {
        Outcome::Nothing(format!("{host} has no {kind} record (nor a CNAME chain that ends in one)"))
    } else {
        Outcome::Failed(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<DnsName, String> {
        DnsName::parse(line).expect("a DNS line")
    }

    #[test]
    fn address_and_service_names_parse_with_their_ports_and_prefixes() {
        let name = parse("dns+http://prometheus.monitoring.svc:9090/prom/").unwrap();
        assert_eq!(
            (name.scheme, name.host.as_str(), name.prefix.as_str()),
            ("http", "prometheus.monitoring.svc", "/prom")
        );
        assert_eq!(name.records, Records::Address { port: 9090 });
        assert_eq!(name.backend("10.0.0.5".parse().unwrap(), 9090).unwrap().url(), "http://10.0.0.5:9090/prom");
        assert_eq!(name.backend("fd00::5".parse().unwrap(), 9090).unwrap().url(), "http://[fd00::5]:9090/prom");
        let name = parse("dnssrv+https://_web._tcp.prometheus.consul").unwrap();
        assert_eq!((name.scheme, name.records.clone()), ("https", Records::Service));
        assert!(DnsName::parse("http://prometheus:9090").is_none(), "a plain URL");
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_nothing_it_never_had_and_a_dropped_name_leaves_the_metrics() {
        let lookups: Family<DnsLabels, Counter> = Family::default();
        // Nothing listens on port 9: every lookup fails at once.
        let mut resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap()), lookups.clone());
        let name = parse("dns+http://prometheus.test:9090").unwrap();
        let resolved = resolver.resolve(std::slice::from_ref(&name)).await;
        assert_eq!(resolved.backends, vec![Vec::<Backend>::new()]);
        assert!(resolved.problems[0].contains("lookup failed") && resolved.problems[0].contains("0 last known"));
        let failed = DnsLabels { name: name.text.clone(), result: "error" };
        assert_eq!(lookups.get(&failed).map(|c| c.get()), Some(1));
        resolver.resolve(&[]).await;
        assert!(lookups.get(&failed).is_none(), "the series of a name no longer listed stays");
    }

    #[test]
    fn lines_that_cannot_be_looked_up_say_what_is_wrong() {
        let cases = [
            ("dns+http://prometheus", "needs a port"),
            ("dns+http://prometheus:0", "needs a port"),
            ("dnssrv+http://_web._tcp.prometheus:9090", "has a port"),
            ("dns+ftp://prometheus:21", "http:// or https://"),
            ("dns+prometheus:9090", "http:// or https://"),
            ("dns+http://u:secret@prometheus:9090", "user info"),
            ("dns+http://prometheus:9090/?x=1", "has a query"),
            ("dns+http://10.0.0.1:9090", "names an address"),
            ("dns+http://[::1]:9090", "names an address"),
            ("dns+http://bad..name:9090", "is not a DNS name"),
        ];
        for (line, wanted) in cases {
            let error = parse(line).unwrap_err();
            assert!(error.contains(wanted) && !error.contains("secret"), "{line}: {error}");
        }
    }
}
