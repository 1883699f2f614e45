//! Test support: real Prometheus servers on loopback, mpp started in-process on port 0, a
//! small HTTP client and waiting with deadlines. Every process a test starts is stopped by
//! a guard's `Drop`, even when the test fails.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod dns;
pub mod kubernetes;
pub mod load;
pub mod marathon;
pub mod otlp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Waits until `check` returns true, polling every 50 ms; panics with `what` at the deadline.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of a tool from Debian's `prometheus` package; fails the test, saying how to
/// install it, when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed; these tests run real Prometheus servers: apt-get install -y prometheus")
    })
}

/// Whether a plain-HTTP Prometheus on `port` says it is ready (for [`Prometheus::start_custom`]).
pub fn ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
}

/// A real Prometheus server on loopback, scraping itself every second, with its data in a
/// temporary folder. Killed when dropped.
pub struct Prometheus {
    child: Option<Child>,
    dir: TempDir,
    /// The loopback address it listens on (127.0.0.1 unless [`Prometheus::start_at`]).
    host: String,
    port: u16,
    extra_targets: Vec<String>,
    /// Replica mode ([`Prometheus::start_replica`]): these targets' `/metrics` only, no
    /// self-scrape, and these extra flags.
    replica_of: Option<(Vec<String>, Vec<String>)>,
    /// Where it writes what it scrapes (`remote_write`), or reads from as well as its own
    /// data (`remote_read`), if anywhere.
    remote: Option<(Remote, String)>,
    /// Rule groups (YAML) it evaluates, if any.
    rules: Option<String>,
    /// A configuration of the test's own ([`Prometheus::start_custom`]), if any.
    custom: Option<Custom>,
    unready_answers: usize,
}

/// A test's own configuration, with its `{port}` replaced by the port it listens on, the
/// flags it adds, and how its readiness is asked (for a replica that asks for TLS).
struct Custom {
    config: String,
    flags: Vec<String>,
    ready: Box<dyn Fn(u16) -> bool + Send + Sync>,
}

impl Prometheus {
    /// Starts a replica and waits until it is ready.
    pub async fn start() -> Prometheus {
        Self::start_with(&[], None).await
    }

    /// Starts a replica listening on `host` (a loopback address such as `127.0.0.2`, or
    /// `[::1]`) at `port`, and waits until it is ready.
    pub async fn start_at(host: &str, port: u16) -> Prometheus {
        let mut prometheus = Self::unstarted();
        prometheus.host = host.to_string();
        prometheus.port = port;
        prometheus.started().await
    }

    /// Starts a replica that also scrapes `targets` (`host:port`, metrics at `/mpp/metrics`)
    /// and, if `history` is given, holds backfilled `up` samples reaching that far back.
    pub async fn start_with(targets: &[String], history: Option<Duration>) -> Prometheus {
        let mut prometheus = Self::unstarted();
        if let Some(history) = history {
            backfill_up(prometheus.dir.path(), history);
        }
        prometheus.extra_targets = targets.to_vec();
        prometheus.started().await
    }

    /// Starts one of a set of identical replicas: it scrapes `targets` (`host:port`, their
    /// `/metrics`, job `node`) every second and nothing else, with `flags` added (such as
    /// `--query.lookback-delta=2s`).
    pub async fn start_replica(targets: &[String], flags: &[&str]) -> Prometheus {
        let mut prometheus = Self::unstarted();
        prometheus.replica_of = Some((targets.to_vec(), flags.iter().map(|f| f.to_string()).collect()));
        prometheus.started().await
    }

    /// Starts a replica as [`Prometheus::start_replica`] does that also evaluates `rules` (a
    /// rule file's YAML) every second.
    pub async fn start_replica_with_rules(targets: &[String], flags: &[&str], rules: &str) -> Prometheus {
        let mut prometheus = Self::unstarted();
        prometheus.replica_of = Some((targets.to_vec(), flags.iter().map(|f| f.to_string()).collect()));
        prometheus.rules = Some(rules.to_string());
        prometheus.started().await
    }

    /// Starts a server with `config` (its `{port}` replaced by the port it listens on) and
    /// `flags`; waits until `ready(port)` holds (for a server whose `/-/ready` asks for TLS
    /// or credentials).
    pub async fn start_custom(
        config: &str,
        flags: &[String],
        ready: impl Fn(u16) -> bool + Send + Sync + 'static,
    ) -> Prometheus {
        let mut prometheus = Self::unstarted();
        prometheus.custom = Some(Custom { config: config.to_string(), flags: flags.to_vec(), ready: Box::new(ready) });
        prometheus.started().await
    }

    /// Starts a server that scrapes itself every second and sends what it scrapes by remote
    /// write to `url` (or reads from `url` by remote read), and waits until it is ready.
    pub async fn start_remote(remote: Remote, url: &str) -> Prometheus {
        let mut prometheus = Self::unstarted();
        prometheus.remote = Some((remote, url.to_string()));
        prometheus.started().await
    }

    /// A server scraping itself, in a new temporary folder, not started yet.
    pub fn unstarted() -> Prometheus {
        Prometheus {
            child: None,
            dir: tempfile::tempdir().expect("temporary folder"),
            host: "127.0.0.1".to_string(),
            port: 0,
            extra_targets: Vec::new(),
            replica_of: None,
            remote: None,
            rules: None,
            custom: None,
            unready_answers: 0,
        }
    }

    /// Launches it and waits until it is ready.
    async fn started(mut self) -> Prometheus {
        self.launch().await;
        self
    }

    /// Stops it the way a rollout does (SIGTERM, so that it writes out what it holds), and
    /// waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (after a stop), and waits until it is ready.
    pub async fn start_after_stop(&mut self) {
        self.launch().await;
    }

    async fn launch(&mut self) {
        for _ in 0..5 {
            let port = if self.port == 0 { free_port() } else { self.port };
            self.write_config(port);
            let log = std::fs::File::create(self.dir.path().join("prometheus.log")).expect("log file");
            let flags = match (&self.replica_of, &self.custom) {
                (Some((_, flags)), _) | (_, Some(Custom { flags, .. })) => flags.clone(),
                _ => Vec::new(),
            };
            let child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", self.dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", self.dir.path().join("data").display()))
                .arg(format!("--web.listen-address={}:{port}", self.host))
                .arg("--log.level=warn")
                .args(flags)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            self.child = Some(child);
            if self.wait_ready(port).await {
                self.port = port;
                return;
            }
            self.kill();
            if self.port != 0 {
                break;
            }
        }
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("prometheus did not become ready; its log:\n{log}");
    }

    async fn wait_ready(&mut self, port: u16) -> bool {
        let url = format!("http://{}:{port}/-/ready", self.host);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: the port was taken, most likely
            }
            if let Some(custom) = &self.custom {
                if (custom.ready)(port) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match get(&url).await {
                Ok(a) if a.status == StatusCode::OK => return true,
                Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE => self.unready_answers += 1,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// How many times it answered 503 while starting (up to now, restarts included).
    pub fn unready_answers(&self) -> usize {
        self.unready_answers
    }

    fn write_config(&self, port: u16) {
        if let Some(custom) = &self.custom {
            let config = custom.config.replace("{port}", &port.to_string());
            std::fs::write(self.dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
            return;
        }
        if let Some((targets, _)) = &self.replica_of {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            let mut config = format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            );
            if let Some(rules) = &self.rules {
                let file = self.dir.path().join("rules.yml");
                std::fs::write(&file, rules).expect("write rules.yml");
                config.push_str(&format!("rule_files: ['{}']\n", file.display()));
            }
            std::fs::write(self.dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
            return;
        }
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: prometheus\n    static_configs: [{{targets: ['{}:{port}']}}]\n",
            self.host
        );
        if !self.extra_targets.is_empty() {
            let targets: Vec<String> = self.extra_targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: mpp\n    metrics_path: /mpp/metrics\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ));
        }
        match &self.remote {
            // Sent at once rather than batched for 5 s, so that the tests see it soon.
            Some((Remote::Write, url)) => config.push_str(&format!(
                "remote_write:\n  - url: '{url}'\n    queue_config: {{batch_send_deadline: 200ms, min_backoff: 50ms, max_backoff: 500ms}}\n"
            )),
            // Every range read remotely, the recent one too.
            Some((Remote::Read, url)) => {
                config.push_str(&format!("remote_read:\n  - url: '{url}'\n    read_recent: true\n"))
            }
            None => {}
        }
        std::fs::write(self.dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (after a kill), and waits until it is ready.
    pub async fn start_again(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
            assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
        }
    }

    /// Its samples-appended counter, read from its own `/metrics`.
    pub async fn samples(&self) -> f64 {
        let answer = get(&format!("{}/metrics", self.url())).await.expect("read /metrics");
        let samples = mpp::fuzzing::exposition::parse(&answer.text()).expect("parse /metrics");
        mpp::fuzzing::exposition::sum(&samples, mpp::fuzzing::SAMPLES_METRIC).unwrap_or(0.0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die promptly of SIGKILL's reaping.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
        self.kill();
    }
}

/// Writes `up` samples every 30 s from `history` ago until 10 minutes ago into a TSDB block
/// in `dir/data`, with promtool's backfilling.
fn backfill_up(dir: &Path, history: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (from, to) = (now - history.as_secs(), now - 600);
    let mut text = String::from("# HELP up backfilled\n# TYPE up gauge\n");
    let mut t = from;
    while t < to {
        text.push_str(&format!("up{{job=\"backfill\",instance=\"old\"}} 1 {t}\n"));
        t += 30;
    }
    text.push_str("# EOF\n");
    let input = dir.join("backfill.om");
    std::fs::write(&input, text).expect("write backfill input");
    let output = Command::new(tool("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(dir.join("data"))
        .output()
        .expect("run promtool");
    assert!(output.status.success(), "promtool backfill failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// How a server of [`Prometheus::start_remote`] uses its remote URL.
#[derive(Debug, Clone, Copy)]
pub enum Remote {
    /// `remote_write`: it sends what it scrapes there.
    Write,
    /// `remote_read`: its queries read from there too.
    Read,
}

/// mpp running in-process on a loopback port, stopped (gracefully) when dropped.
pub struct Mpp {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Mpp {
    /// Starts mpp with these flags, listening on `127.0.0.1:0`.
    pub async fn start(args: &[&str]) -> Mpp {
        Self::start_on("127.0.0.1:0", args).await
    }

    /// Starts mpp with these flags, listening on `listen` (e.g. `[::1]:0`).
    pub async fn start_on(listen: &str, args: &[&str]) -> Mpp {
        // MPP_TEST_LOG=mpp=debug shows mpp's log while debugging a test.
        if let Ok(filter) = std::env::var("MPP_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        // Two serving threads whatever the machine's CPUs (the default leaves one CPU out), so
        // that connections are always handed between threads as on a bigger machine.
        let threads: &[&str] =
            if args.iter().any(|a| a.starts_with("--serving-threads")) { &[] } else { &["--serving-threads", "2"] };
        let argv = ["mpp", "--listen-address", listen].into_iter().chain(threads.iter().chain(args).copied());
        let config = mpp::Config::parse_from(argv).expect("valid test command line");
        let listeners = mpp::bind(&config).await.expect("bind");
        let addr = listeners[0].local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mpp::run(config, listeners, async {
            let _ = stopped.await;
        }));
        Mpp { addr, stop: Some(stop), task: Some(task) }
    }

    /// The URL of `path` through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `/mpp/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let answer = send(Request::get(self.url("/mpp/status")).header("accept", "application/json"), Bytes::new())
            .await
            .expect("GET /mpp/status");
        serde_json::from_slice(&answer.body).expect("status is JSON")
    }

    /// The URLs of the selected replicas, from `/mpp/status`.
    pub async fn selected(&self) -> Vec<String> {
        self.candidates_where("selected").await
    }

    /// The URLs of the candidates whose boolean `field` is true, from `/mpp/status`.
    pub async fn candidates_where(&self, field: &str) -> Vec<String> {
        let status = self.status().await;
        status["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .filter(|c| c[field].as_bool() == Some(true))
            .map(|c| c["url"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until exactly `urls` are selected (in any order).
    pub async fn wait_selected(&self, urls: &[&str]) {
        let mut want: Vec<String> = urls.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(&format!("selection {want:?}"), Duration::from_secs(20), || {
            let want = want.clone();
            async move {
                let mut got = self.selected().await;
                got.sort();
                got == want
            }
        })
        .await;
    }

    /// Waits until `/mpp/status` shows `count` candidates, each with a hole, all closed.
    pub async fn wait_for_closed_holes(&self, count: usize) {
        wait_until("every replica's closed hole on /mpp/status", Duration::from_secs(30), || async {
            let status = self.status().await;
            let candidates = status["candidates"].as_array().cloned().unwrap_or_default();
            candidates.len() == count
                && candidates.iter().all(|c| {
                    let holes = c["coverage"]["holes"].as_array().cloned().unwrap_or_default();
                    !holes.is_empty() && holes.iter().all(|h| h["open"] == false)
                })
        })
        .await;
    }

    /// Stops mpp and waits for it to finish draining.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().unwrap().await.expect("mpp task panicked")
    }
}

impl Drop for Mpp {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The replica named by `MPP.ServedBy`.
    pub fn served_by(&self) -> Option<String> {
        self.headers.get("mpp.servedby").map(|v| v.to_str().unwrap().to_string())
    }

    /// The value `Set-Cookie` gives `MPP.Route`, if any.
    pub fn route_cookie(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("MPP.Route="))
            .map(|v| v.split(';').next().unwrap().to_string())
    }
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

thread_local! {
    /// One pooled client per thread: each test runs on threads of its own (its runtime's), so
    /// no pooled connection outlives the runtime that drives it, as one static client's would
    /// under `cargo test`, where a binary's tests share the process.
    static CLIENT: TestClient =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(5)).build_http();
}

fn client() -> TestClient {
    CLIENT.with(TestClient::clone)
}

/// Sends a request and reads the whole answer (10 s at most).
pub async fn send(request: http::request::Builder, body: Bytes) -> Result<Answer, String> {
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let work = async {
        let response = client().request(request).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "no answer within 10s".to_string())?
}

/// GET `url`.
pub async fn get(url: &str) -> Result<Answer, String> {
    send(Request::get(url), Bytes::new()).await
}

/// POST a form to `url`.
pub async fn post_form(url: &str, form: &str) -> Result<Answer, String> {
    let request = Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    send(request, Bytes::from(form.to_string())).await
}

/// Writes an endpoints file listing `urls` into `dir` and returns its path.
pub fn endpoints_file(dir: &Path, urls: &[String]) -> PathBuf {
    let path = dir.join("endpoints");
    std::fs::write(&path, urls.join("\n") + "\n").expect("write endpoints file");
    path
}

/// One real replica behind mpp (started with `args` besides the endpoints file), once it is
/// selected. The folder holds the endpoints file; keep it as long as mpp runs.
pub async fn one_replica(args: &[&str]) -> (Prometheus, Mpp, TempDir) {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let mut all = vec!["--endpoints-file", file.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let mpp = Mpp::start(&all).await;
    mpp.wait_selected(&[&replica.url()]).await;
    (replica, mpp, dir)
}
