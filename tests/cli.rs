//! The `mpp` binary's command line: the original's flags and defaults, one clear line and
//! exit status 2 for every bad input, and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const MPP: &str = env!("CARGO_BIN_EXE_mpp");

/// Runs mpp with `args` (and no MPP_* variables) and returns (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(MPP);
    command.args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MPP_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run mpp");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_flag_and_value() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let f = file.path().to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--endpoints-file", f, "--routing-strategy", "fastest"], &["--routing-strategy", "fastest"]),
        (&["--endpoints-file", f, "--routing-strategy", "minimum-history"], &["--routing-strategy", "minimum-history"]),
        (&["--endpoints-file", f, "--routing-strategy", "minimum-history:soon"], &["--routing-strategy", "soon"]),
        (&["--endpoints-file", f, "--selection-interval", "10"], &["--selection-interval", "10"]),
        (&["--endpoints-file", f, "--selection-interval", "-1s"], &["--selection-interval", "-1s"]),
        (&["--endpoints-file", f, "--affinity-options", "cookies,stickers"], &["--affinity-options", "stickers"]),
        (&["--endpoints-file", f, "--port", "70000"], &["--port", "70000"]),
        (&["--endpoints-file", f, "--port", "0"], &["--port", "0"]),
        (&["--endpoints-file", f, "--max-request-body", "lots"], &["--max-request-body", "lots"]),
        (&[], &["no discovery configured", "--endpoints-file"]),
        (&["--marathon-url", "http://marathon:8080"], &["--marathon-url", "--marathon-apps"]),
        (&["--endpoints-file", f, "--kube-port", "Not_A_Port"], &["--kube-port", "Not_A_Port"]),
        (&["--kube-pod-label-selector", "app in (a,"], &["--kube-pod-label-selector", "app in (a,"]),
        (&["--kube-service-name", "Prometheus_A"], &["--kube-service-name", "Prometheus_A"]),
        (&["--endpoints-file", f, "--no-such-flag"], &["--no-such-flag"]),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = run(args, &[]);
        assert_eq!(code, 2, "{args:?} exited {code}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} printed more than one line: {stderr}");
        for word in *expected {
            assert!(stderr.contains(word), "{args:?}: '{stderr}' does not mention {word}");
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    }
}

#[test]
fn bad_marathon_secrets_are_start_up_errors_that_never_print_the_secret() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\\nSECRETSTUFF\\n-----END RSA PRIVATE KEY-----";
    let cases = [
        (r#"{"uid": "mpp", "private_key": "SECRETSTUFF"#.to_string(), "not valid JSON"),
        (r#"{"private_key": "SECRETSTUFF", "login_endpoint": "http://l"}"#.to_string(), "lacks the field 'uid'"),
        (r#"{"uid": "mpp", "login_endpoint": "http://l", "x": "SECRETSTUFF"}"#.to_string(), "'private_key'"),
        (
            format!(r#"{{"uid": "mpp", "private_key": "{key}", "login_endpoint": "http://l"}}"#),
            "not a PEM RSA private key",
        ),
        (r#"{"uid": "mpp", "password": "SECRETSTUFF"}"#.to_string(), "login_endpoint"),
    ];
    for (secret, expected) in cases {
        let args = ["--marathon-url", "http://m:8080", "--marathon-apps", "/prometheus"];
        let (code, _, stderr) = run(&args, &[("MPP_MARATHON_PRINCIPAL_SECRET", &secret)]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("--marathon-principal-secret") && stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("SECRETSTUFF"), "the secret was printed: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn environment_variables_are_read_and_validated_like_flags() {
    let (code, _, stderr) = run(&[], &[("MPP_ENDPOINTS_FILE", "/x"), ("MPP_ROUTING_STRATEGY", "bogus")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("bogus"), "{stderr}");
    // The second name of the service-name variable is read too: outside a cluster, and with
    // no kubeconfig, that is a start-up error.
    let (code, _, stderr) = run(&["--listen-address", "127.0.0.1:0"], &[("MPP_KUBE_SERVICE_NAME", "prometheus")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in-cluster configuration"), "{stderr}");
}

#[test]
fn a_kubeconfig_that_cannot_be_read_or_parsed_is_a_start_up_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let broken = common::kubernetes::broken_kubeconfig(dir.path());
    for path in ["/nonexistent/kubeconfig", broken.to_str().unwrap()] {
        let args = ["--kubeconfig", path, "--kube-service-name", "prometheus", "--listen-address", "127.0.0.1:0"];
        let (code, _, stderr) = run(&args, &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(path) && stderr.contains("kubeconfig"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_missing_endpoints_file_is_a_start_up_error_naming_the_path() {
    let (code, _, stderr) =
        run(&["--endpoints-file", "/nonexistent/endpoints", "--listen-address", "127.0.0.1:0"], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/endpoints"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn version_and_help_flags_match_the_original() {
    for flag in ["-v", "--version"] {
        let (code, stdout, _) = run(&[flag], &[]);
        assert_eq!(code, 0);
        assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
        // The facts of mpp_build_info, as Prometheus's own --version gives them.
        assert!(stdout.contains("(branch: ") && stdout.contains(", revision: "), "{stdout}");
        assert!(stdout.contains("rustc: ") && stdout.contains("platform: linux/"), "{stdout}");
    }
    let (code, stdout, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--kubeconfig",
        "--kube-service-name",
        "--kube-pod-label-selector",
        "--kube-namespace",
        "--kube-port",
        "--marathon-url",
        "--marathon-apps",
        "--insecure",
        "--marathon-principal-secret",
        "--marathon-auth-endpoint",
        "--endpoints-file",
        "--routing-strategy",
        "--selection-interval",
        "--affinity-options",
        "--port",
        "--verbose",
        "MPP_SERVICE_NAME",
        "MPP_INSECURE_CERTS",
        "[default: 9090]",
        "[default: single-most-data]",
        "[default: 10s]",
        "[default: cookies]",
        "[default: default]",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn the_allocator_is_built_with_the_larger_per_thread_cache() {
    // .cargo/config.toml builds jemalloc with it (BENCHMARKS.md, "Eighth round"); a build that
    // misses that file, or a jemalloc that no longer knows the option, shows here.
    let (code, _, stderr) = run(&["--version"], &[("_RJEM_MALLOC_CONF", "stats_print:true")]);
    assert_eq!(code, 0);
    assert!(stderr.contains("config.malloc_conf: \"tcache_nslots_small_min:64\""), "{stderr}");
    assert!(stderr.contains("opt.tcache_nslots_small_min: 64"), "{stderr}");
}

/// A real replica, and an endpoints file naming it in a temporary folder (kept while the
/// folder is).
async fn one_replica() -> (common::Prometheus, tempfile::TempDir, std::path::PathBuf) {
    let replica = common::Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::endpoints_file(dir.path(), &[replica.url()]);
    (replica, dir, file)
}

/// The mpp binary running with an endpoints file, its log at `info` read line by line.
struct Running {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
    /// Every address it listens on, as its start-up line gives them.
    addrs: Vec<String>,
}

impl Running {
    /// Starts mpp with `args` and waits for its start-up line (which carries the addresses
    /// the kernel gave).
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(MPP)
            .args(args)
            .env("MPP_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listen = loop {
            let line = lines.next().expect("mpp exited before starting").unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        Running { child, lines, addrs: listen.split(',').map(String::from).collect() }
    }

    fn signal(&self, signal: &str) {
        Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
    }

    /// Kills it; returns the rest of its log.
    fn kill(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.by_ref().map_while(Result::ok).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_exits_0() {
    let (_replica, _dir, file) = one_replica().await;
    let mut mpp = Running::start(&["--endpoints-file", file.to_str().unwrap(), "--listen-address", "127.0.0.1:0"]);
    let answer = common::get(&format!("http://{}/api/v1/query?query=up", mpp.addrs[0])).await.unwrap();
    assert_eq!(answer.status, 200);

    mpp.signal("TERM");
    let rest: Vec<String> = mpp.lines.by_ref().map_while(Result::ok).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = mpp.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "mpp did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("SIGTERM received")), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_listen_address_repeats_and_every_address_serves() {
    let (_replica, _dir, file) = one_replica().await;
    let mpp = Running::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--web.listen-address",
        "127.0.0.1:0",
        "--listen-address=127.0.0.2:0",
    ]);
    assert_eq!(mpp.addrs.len(), 2, "{:?}", mpp.addrs);
    assert!(mpp.addrs[0].starts_with("127.0.0.1:") && mpp.addrs[1].starts_with("127.0.0.2:"), "{:?}", mpp.addrs);
    for addr in &mpp.addrs {
        let answer = common::get(&format!("http://{addr}/api/v1/query?query=up")).await.unwrap();
        assert_eq!(answer.status, 200, "through {addr}");
        assert!(answer.text().contains("\"status\":\"success\""), "through {addr}: {}", answer.text());
    }
}

/// One gauge of mpp's own metrics at `addr`.
async fn gauge(addr: &str, name: &str) -> f64 {
    let text = common::get(&format!("http://{addr}/mpp/metrics")).await.expect("GET /mpp/metrics").text();
    let samples = mpp::fuzzing::exposition::parse(&text).expect("mpp's metrics parse");
    mpp::fuzzing::exposition::sum(&samples, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_every_file_again_and_the_reload_gauges_say_how_it_went() {
    let (replica, _dir, file) = one_replica().await;
    let mut mpp = Running::start(&["--endpoints-file", file.to_str().unwrap(), "--web.listen-address", "127.0.0.1:0"]);
    let addr = mpp.addrs[0].clone();
    const OK: &str = "mpp_config_last_reload_successful";
    const AT: &str = "mpp_config_last_reload_success_timestamp_seconds";
    assert_eq!(gauge(&addr, OK).await, 1.0);
    let started = gauge(&addr, AT).await;
    assert!(started > 1e9, "the start is the first successful load: {started}");

    // Nothing changed, but asked: a reload, and a new success time.
    std::thread::sleep(Duration::from_millis(20));
    mpp.signal("HUP");
    common::wait_until("the SIGHUP's reload to be recorded", Duration::from_secs(10), || async {
        gauge(&addr, AT).await > started
    })
    .await;
    assert_eq!(gauge(&addr, OK).await, 1.0);

    // A file that no longer reads (no endpoint left) fails the reload; the last good
    // replicas keep serving; a good file again and the gauge recovers.
    std::fs::write(&file, "# nothing\n").unwrap();
    mpp.signal("HUP");
    common::wait_until("the broken file to be seen", Duration::from_secs(10), || async {
        gauge(&addr, OK).await == 0.0
    })
    .await;
    let answer = common::get(&format!("http://{addr}/api/v1/query?query=up")).await.unwrap();
    assert_eq!(answer.status, 200, "the last good replicas serve");
    std::fs::write(&file, format!("{}\n", replica.url())).unwrap();
    mpp.signal("HUP");
    common::wait_until("the mended file to be read", Duration::from_secs(10), || async {
        gauge(&addr, OK).await == 1.0
    })
    .await;
    let log = mpp.kill();
    assert!(log.iter().any(|l| l.contains("SIGHUP received")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_logfmt_by_default_and_json_objects_with_log_format_json() {
    let (_replica, _dir, file) = one_replica().await;
    for format in ["logfmt", "json"] {
        let mut command = Command::new(MPP);
        command.args(["--endpoints-file", file.to_str().unwrap(), "--listen-address", "127.0.0.1:0"]);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MPP_")) {
            command.env_remove(key);
        }
        if format == "json" {
            command.args(["--log.format", "json", "--log.level", "info"]);
        }
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // The start-up line, and the first selection's.
        let seen: Vec<String> = (0..2).map(|_| lines.next().expect("a log line").unwrap()).collect();
        let _ = child.kill();
        let _ = child.wait();
        for line in &seen {
            if format == "json" {
                let object: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(object["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')), "{line}");
                assert!(object["level"].is_string() && object["msg"].is_string(), "{line}");
            } else {
                assert!(line.starts_with("ts=") && line.contains(" level=") && line.contains(" msg="), "{line}");
            }
        }
        assert!(seen.iter().any(|l| l.contains("listen")), "the start-up line names the address: {seen:?}");
        if format == "json" {
            let mut fields = seen.iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
            assert!(
                fields.any(|o| o["listen"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:"))),
                "the event's fields are keys of the object: {seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_the_facts_of_mpp_build_info() {
    let (_replica, _dir, file) = one_replica().await;
    let mpp = Running::start(&["--endpoints-file", file.to_str().unwrap(), "--web.listen-address", "127.0.0.1:0"]);
    let metrics = common::get(&format!("http://{}/mpp/metrics", mpp.addrs[0])).await.unwrap().text();
    let info = metrics.lines().find(|l| l.starts_with("mpp_build_info{")).unwrap_or_else(|| panic!("{metrics}"));
    let (_, version_text, _) = run(&["--version"], &[]);
    for label in ["version", "revision", "branch", "rustc"] {
        let value = info
            .split(&format!("{label}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no {label} in {info}"));
        assert!(!value.is_empty(), "{label} in {info}");
        assert!(version_text.contains(value), "--version lacks {label} {value}: {version_text}");
    }
}

/// mpp's log, run with `args` and `env` until it has answered a query, then killed.
async fn log_of_a_query(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(MPP);
    command.args(args).args(["--web.listen-address", &listen]);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MPP_")) {
        command.env_remove(key);
    }
    let mut child = command.envs(env.iter().copied()).stderr(Stdio::piped()).spawn().unwrap();
    let query = format!("http://{listen}/api/v1/query?query=up");
    common::wait_until("a query answered", Duration::from_secs(15), || async {
        common::get(&query).await.is_ok_and(|answer| answer.status == 200)
    })
    .await;
    // Stopped as a service manager stops it, so that its log thread writes what it holds.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let _ = child.wait();
    BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_hides_the_lines_below_it_and_mpp_log_wins_over_it() {
    let (_replica, _dir, file) = one_replica().await;
    let args = ["--endpoints-file", file.to_str().unwrap(), "--log.level", "warn"];
    let quiet = log_of_a_query(&args, &[]).await;
    assert!(quiet.iter().all(|l| !l.contains("level=info") && !l.contains("level=debug")), "{quiet:#?}");
    let told = log_of_a_query(&args, &[("MPP_LOG", "info")]).await;
    assert!(told.iter().any(|l| l.contains("level=info") && l.contains("listen=")), "{told:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_logged_at_warn_without_a_query_log_file() {
    let (_replica, _dir, file) = one_replica().await;
    let slow = |lines: &[String]| lines.iter().any(|l| l.contains("level=warn") && l.contains("msg=\"slow query\""));
    for (threshold, logged) in [("1ns", true), ("1h", false)] {
        let args = ["--endpoints-file", file.to_str().unwrap(), "--slow-query-threshold", threshold];
        let lines = log_of_a_query(&args, &[]).await;
        assert_eq!(slow(&lines), logged, "threshold {threshold}: {lines:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_error_nobody_reads_holds_no_request() {
    let (_replica, _dir, file) = one_replica().await;
    let listen = format!("127.0.0.1:{}", common::free_port());
    // A line per query (the slow-query log at a threshold of 1 ns) into a pipe never read:
    // the pipe's 64 KiB fill after a few hundred lines.
    let mut child = Command::new(MPP)
        .args(["--endpoints-file", file.to_str().unwrap(), "--web.listen-address", &listen])
        .args(["--slow-query-threshold", "1ns"])
        .env_remove("MPP_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let query = format!("http://{listen}/api/v1/query?query=up");
    common::wait_until("a query answered", Duration::from_secs(15), || async {
        common::get(&query).await.is_ok_and(|answer| answer.status == 200)
    })
    .await;
    for n in 0..2_000 {
        let answer = tokio::time::timeout(Duration::from_secs(10), common::get(&query)).await;
        let answer = answer.unwrap_or_else(|_| panic!("query {n} held for 10 s")).unwrap();
        assert_eq!(answer.status, 200, "query {n}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn in_json_mode_the_reason_mpp_cannot_start_is_a_json_line_too() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(MPP)
        .args(["--endpoints-file", "/dev/null", "--web.listen-address", &address, "--log.format", "json"])
        .env_remove("MPP_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let last = lines.last().unwrap_or_else(|| panic!("no line: {stderr}"));
    assert_eq!(last["level"], "error", "{last}");
    assert!(last["error"].as_str().is_some_and(|e| e.contains(&address)), "names the address: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_logged_at_warn_and_the_query_log_is_reopened_on_sighup() {
    let (_replica, dir, file) = one_replica().await;
    let log = dir.path().join("queries.log");
    let mut mpp = Running::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--web.listen-address",
        "127.0.0.1:0",
        "--query-log-file",
        log.to_str().unwrap(),
        "--slow-query-threshold",
        "1ns",
    ]);
    let query = |expr: &'static str| {
        let url = format!("http://{}/api/v1/query?query={expr}", mpp.addrs[0]);
        async move { assert_eq!(common::get(&url).await.unwrap().status, 200) }
    };
    let count = |path: &std::path::Path, expr: &str| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().filter(|l| l.contains(&format!("\"query\":\"{expr}\""))).count()
    };
    query("vector(1)").await;
    common::wait_until("the first line", Duration::from_secs(10), || async { count(&log, "vector(1)") == 1 }).await;
    // Rotated as logrotate does: renamed, then mpp told to open the file again.
    let rotated = dir.path().join("queries.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    mpp.signal("HUP");
    common::wait_until("the reopened file's line", Duration::from_secs(10), || async {
        query("vector(2)").await;
        count(&log, "vector(2)") > 0
    })
    .await;
    assert_eq!(count(&rotated, "vector(1)"), 1, "the old file keeps its line");
    assert_eq!(count(&log, "vector(1)"), 0);

    let lines = mpp.kill();
    let slow = lines.iter().find(|l| l.contains("msg=\"slow query\"")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(slow.contains("level=warn") && slow.contains("vector(1)"), "{slow}");
}
