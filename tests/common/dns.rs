//! A real DNS server on loopback: Debian's `dnsmasq`, answering only for the names a test
//! writes (A and AAAA from a hosts file it re-reads on SIGHUP; SRV and any other record from
//! its command line, which a restart on the same port changes). Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tempfile::TempDir;

/// The name every server answers, so that a test can tell it is up.
const CANARY: &str = "canary.mpp.test";

/// `dnsmasq` on `127.0.0.1`, at a port of its own.
pub struct Dnsmasq {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    /// Records as dnsmasq options ([`srv`], [`cname`]).
    records: Vec<String>,
}

impl Dnsmasq {
    /// Starts a server answering A and AAAA records from `hosts` (hosts-file lines,
    /// `127.0.0.2 prom.test`) and `records` ([`srv`], [`cname`]), and waits until it answers.
    pub async fn start(hosts: &str, records: &[String]) -> Dnsmasq {
        let mut dns = Dnsmasq {
            child: None,
            dir: tempfile::tempdir().expect("temporary folder"),
            port: super::free_port(),
            records: records.to_vec(),
        };
        dns.write_hosts(hosts);
        dns.launch().await;
        dns
    }

    /// Its address, for `--dns-server`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, hosts: &str) {
        std::fs::write(self.hosts_file(), format!("127.0.0.1 {CANARY}\n{hosts}")).expect("write the hosts file");
    }

    /// Replaces the A and AAAA records, and waits until the server answers with them.
    pub async fn set_hosts(&self, hosts: &str) {
        self.write_hosts(hosts);
        let child = self.child.as_ref().expect("dnsmasq runs");
        let status = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -HUP dnsmasq failed");
        // SIGHUP is handled between queries: one answered after it has the new file.
        self.wait_answering().await;
    }

    /// Restarts the server on the same port with other records.
    pub async fn set_records(&mut self, records: &[String]) {
        self.kill();
        self.records = records.to_vec();
        self.launch().await;
    }

    /// Kills the server: lookups get no answer until it starts again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("dnsmasq.log")).expect("log file");
        let mut command = Command::new(dnsmasq());
        command
            .args(["-k", "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1"])
            // Names under .test are answered from what the test wrote, and only from it: a
            // name it did not write does not exist.
            .arg("--local=/test/")
            .arg(format!("--port={}", self.port))
            .arg(format!("--addn-hosts={}", self.hosts_file().display()))
            // Answers live one second, so that a change shows at the next selection round.
            .arg("--local-ttl=1")
            .arg("--log-facility=-")
            .arg(format!("--pid-file={}", self.dir.path().join("pid").display()));
        command.args(&self.records);
        self.child = Some(command.stdout(Stdio::null()).stderr(log).spawn().expect("start dnsmasq"));
        self.wait_answering().await;
    }

    async fn wait_answering(&self) {
        let mut server = NameServerConfig::udp_and_tcp("127.0.0.1".parse().unwrap());
        for connection in &mut server.connections {
            connection.port = self.port;
        }
        let mut options = ResolverOpts::default();
        options.cache_size = 0;
        options.timeout = Duration::from_millis(200);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), vec![server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .expect("a resolver");
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if resolver.lookup_ip(CANARY).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default();
        panic!("dnsmasq does not answer on port {}; its log:\n{log}", self.port);
    }
}

/// An SRV record: `service` (`_web._tcp.prom.test`) at `target` and `port`.
pub fn srv(service: &str, target: &str, port: &str) -> String {
    format!("--srv-host={service},{target},{port}")
}

/// A DNS server that answers every query for `loop1.<zone>` with a CNAME to `loop2.<zone>`
/// and back: what a misconfigured authoritative server sends, and dnsmasq refuses to serve.
/// Messages are read and written with hickory's wire format. Stopped when dropped.
pub struct CnameLoop {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl CnameLoop {
    /// Starts it on a free loopback UDP port.
    pub async fn start() -> CnameLoop {
        use hickory_resolver::proto::op::{Message, MessageType};
        use hickory_resolver::proto::rr::rdata::CNAME;
        use hickory_resolver::proto::rr::{Name, RData, Record};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind a UDP port");
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((length, from)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..length]) else { continue };
                let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
                answer.metadata.message_type = MessageType::Response;
                answer.metadata.authoritative = true;
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                for question in &query.queries {
                    let asked = question.name().to_ascii();
                    let other = if asked.starts_with("loop1.") {
                        asked.replacen("loop1.", "loop2.", 1)
                    } else {
                        asked.replacen("loop2.", "loop1.", 1)
                    };
                    let target = Name::from_ascii(&other).expect("a name");
                    answer.add_answer(Record::from_rdata(question.name().clone(), 1, RData::CNAME(CNAME(target))));
                    answer.add_query(question.clone());
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        CnameLoop { addr, task }
    }

    /// Its address, for dnsmasq's `--server=/zone/ADDR#PORT`.
    pub fn forward(&self, zone: &str) -> String {
        format!("--server=/{zone}/{}#{}", self.addr.ip(), self.addr.port())
    }
}

impl Drop for CnameLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian's `dnsmasq` (in `/usr/sbin`, often not on a user's `PATH`); fails the test, saying
/// how to install it, when it is missing.
fn dnsmasq() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/dnsmasq");
    if sbin.is_file() {
        return sbin;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`dnsmasq` is not installed; the DNS discovery tests run a real DNS server: apt-get install -y dnsmasq-base")
        })
}
