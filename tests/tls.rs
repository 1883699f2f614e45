//! mpp's listener secured by a Prometheus web config file: TLS with client certificates,
//! basic auth, headers, certificate rotation without a restart, and the same file checked
//! by `promtool check web-config`. Clients are real: curl, and a Prometheus federating
//! through mpp with its own `basic_auth` and `tls_config`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tls::{Issued, Pki, SecuredReplica, Usage, curl, write_atomically};
use common::{Mpp, Prometheus, endpoints_file, get, tool, wait_until};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

/// Certificates for one test: mpp's server certificate from one CA, client certificates
/// from another, and a stranger CA whose certificates mpp must refuse.
struct Certs {
    servers: Pki,
    server: Issued,
    clients: Pki,
    client: Issued,
    expired_client: Issued,
    stranger: Issued,
}

impl Certs {
    fn new(dir: &Path) -> Certs {
        let servers = Pki::new(dir, "servers");
        let clients = Pki::new(dir, "clients");
        let strangers = Pki::new(dir, "strangers");
        Certs {
            server: servers.issue("mpp", Usage::Server),
            client: clients.issue("grafana", Usage::Client),
            expired_client: clients.issue_expired("old-grafana", Usage::Client),
            stranger: strangers.issue("mallory", Usage::Client),
            servers,
            clients,
        }
    }

    /// curl arguments that trust mpp's CA and present `client` (if any).
    fn curl_args(&self, client: Option<&Issued>) -> Vec<String> {
        let mut args = vec!["--cacert".to_string(), path(&self.servers.ca_file())];
        if let Some(client) = client {
            args.extend(["--cert".into(), path(&client.cert), "--key".into(), path(&client.key)]);
        }
        args
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// `args` followed by `more`.
fn plus(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// A web config requiring verified client certificates and basic auth, with only the fields
/// Prometheus 2.42 (exporter-toolkit 0.8) knows, so that its promtool can check it too.
fn secure_web_config(dir: &Path, certs: &Certs) -> PathBuf {
    let hash = bcrypt::hash(PASSWORD, 8).expect("bcrypt");
    let text = format!(
        "tls_server_config:
  cert_file: {cert}
  key_file: {key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {ca}
  min_version: TLS12
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
basic_auth_users:
  {USER}: {hash}
",
        cert = path(&certs.server.cert),
        key = path(&certs.server.key),
        ca = path(&certs.clients.ca_file()),
    );
    let file = dir.join("web.yml");
    std::fs::write(&file, text).expect("write the web config");
    file
}

fn https(mpp: &Mpp, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", mpp.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_needs_a_verified_client_certificate_and_the_password() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let web = secure_web_config(dir.path(), &certs);
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = Mpp::start(&[
        "--endpoints-file",
        &path(&endpoints),
        "--web.config.file",
        &path(&web),
        "--web.health-without-auth",
    ])
    .await;
    let query = https(&mpp, "/api/v1/query?query=up");
    let user = format!("{USER}:{PASSWORD}");
    let with_client = certs.curl_args(Some(&certs.client));

    let good = plus(with_client.clone(), &["--user", &user]);
    wait_until("a query through mpp's TLS listener", Duration::from_secs(20), || async {
        curl(&query, &good).status == 200
    })
    .await;
    let answer = curl(&query, &good);
    assert!(answer.output.contains(r#""status":"success""#), "{}", answer.output);
    assert_eq!(answer.http_version, "2", "curl and mpp agree on HTTP/2 by ALPN");
    assert_eq!(answer.header("mpp.servedby"), Some(replica.url()));
    assert_eq!(answer.header("x-frame-options").as_deref(), Some("deny"));
    assert_eq!(answer.header("x-content-type-options").as_deref(), Some("nosniff"));
    let http1 = plus(good.clone(), &["--http1.1"]);
    let answer = curl(&query, &http1);
    assert_eq!((answer.status, answer.http_version.as_str()), (200, "1.1"));

    let wrong_password = plus(with_client.clone(), &["--user", &format!("{USER}:wrong")]);
    let answer = curl(&query, &wrong_password);
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.header("www-authenticate").as_deref(), Some("Basic"));
    assert_eq!(answer.header("x-frame-options").as_deref(), Some("deny"), "refusals carry the headers too");
    assert!(answer.header("mpp.servedby").is_none(), "a refused request reaches no replica");
    let unknown_user = plus(with_client.clone(), &["--user", &format!("mallory:{PASSWORD}")]);
    assert_eq!(curl(&query, &unknown_user).status, 401);
    assert_eq!(curl(&query, &with_client).status, 401, "no password");

    for (what, client) in [
        ("no client certificate", None),
        ("an expired one", Some(&certs.expired_client)),
        ("a stranger's", Some(&certs.stranger)),
    ] {
        let refused = plus(certs.curl_args(client), &["--user", &user]);
        let answer = curl(&query, &refused);
        assert_eq!(answer.status, 0, "{what} must fail the TLS handshake: {answer:?}");
    }

    // --web.health-without-auth: health checks need the client certificate, not the password.
    let health = curl(&https(&mpp, "/mpp/health"), &with_client);
    assert_eq!((health.status, health.output.ends_with("OK")), (200, true), "{health:?}");
    assert_eq!(curl(&https(&mpp, "/mpp/status"), &with_client).status, 401);
    let plain = get(&format!("http://127.0.0.1:{}/mpp/health", mpp.addr.port())).await;
    assert!(plain.is_err(), "plain HTTP is not served on the TLS port: {plain:?}");
}

#[tokio::test]
async fn the_web_config_passes_promtool_and_broken_ones_fail_in_both() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let web = secure_web_config(dir.path(), &certs);
    let promtool = |file: &Path| {
        let output = Command::new(tool("promtool")).args(["check", "web-config"]).arg(file).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, stderr) = promtool(&web);
    assert!(ok, "promtool check web-config refused it: {stderr}");
    mpp::fuzzing::Web::load(&web, false).expect("mpp takes the same file");

    let good = std::fs::read_to_string(&web).unwrap();
    let missing_key = good.replace(&path(&certs.server.key), "/nonexistent/key.pem");
    for (what, text, field) in [
        ("an unknown field", good.replace("min_version", "minimum_version"), "minimum_version"),
        ("an unknown client auth type", good.replace("RequireAndVerifyClientCert", "Always"), "client_auth_type"),
        ("a password instead of a hash", good.replace(&format!("{USER}: $"), &format!("{USER}: plain$")), USER),
        ("a missing key file", missing_key, "key_file"),
        ("a header that cannot be set", good.replace("X-Frame-Options: deny", "Server: mpp"), "headers.Server"),
    ] {
        let broken = dir.path().join("broken.yml");
        std::fs::write(&broken, &text).unwrap();
        let (ok, _) = promtool(&broken);
        assert!(!ok, "promtool should refuse {what}");
        let error = mpp::fuzzing::Web::load(&broken, false).err().unwrap_or_else(|| panic!("mpp should refuse {what}"));
        let message = error.to_string();
        assert!(message.contains("broken.yml") && message.contains(field), "{what}: {message}");
        assert!(!message.contains(PASSWORD), "{message}");
    }
}

/// mpp's server certificate subject, as curl reports it.
fn served_subject(mpp: &Mpp, certs: &Certs) -> Option<String> {
    let verbose = plus(certs.curl_args(None), &["--verbose"]);
    let answer = curl(&https(mpp, "/mpp/health"), &verbose);
    answer.stderr.lines().find_map(|line| line.trim().strip_prefix("*  subject: ").map(str::to_string))
}

/// `mpp_web_config_last_reload_successful`, read over TLS.
fn reload_successful(mpp: &Mpp, certs: &Certs) -> Option<f64> {
    metric(mpp, certs, "mpp_web_config_last_reload_successful ")
}

/// The value of the series of mpp's metrics that starts with `series` (its name and labels),
/// read over TLS.
fn metric(mpp: &Mpp, certs: &Certs, series: &str) -> Option<f64> {
    let answer = curl(&https(mpp, "/mpp/metrics"), &certs.curl_args(None));
    answer.output.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart_and_a_broken_one_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let web = dir.path().join("web.yml");
    let tls_only = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        path(&certs.server.cert),
        path(&certs.server.key)
    );
    std::fs::write(&web, &tls_only).unwrap();
    let endpoints = endpoints_file(dir.path(), &["http://127.0.0.1:1".into()]);
    let mpp = Mpp::start(&["--endpoints-file", &path(&endpoints), "--web.config.file", &path(&web)]).await;
    assert_eq!(served_subject(&mpp, &certs).as_deref(), Some("CN=mpp"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let expiry = metric(&mpp, &certs, "mpp_certificate_expiry_timestamp_seconds{use=\"listener\"}");
    assert!(expiry.is_some_and(|at| at > now), "the listener certificate's expiry: {expiry:?}");

    // A new certificate and key replace the old ones (each by an atomic rename, as
    // cert-manager or certbot do); new connections get it within the reload interval.
    let rotate = |cn: &str| {
        let issued = certs.servers.issue(cn, Usage::Server);
        write_atomically(&certs.server.cert, &std::fs::read_to_string(&issued.cert).unwrap());
        write_atomically(&certs.server.key, &std::fs::read_to_string(&issued.key).unwrap());
    };
    rotate("mpp-rotated");
    wait_until("the rotated certificate is served", Duration::from_secs(10), || async {
        served_subject(&mpp, &certs).as_deref() == Some("CN=mpp-rotated")
    })
    .await;
    assert_eq!(reload_successful(&mpp, &certs), Some(1.0));

    // A broken key is reported and not taken: the last good certificate stays in force.
    write_atomically(&certs.server.key, "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n");
    wait_until("the broken key is reported", Duration::from_secs(10), || async {
        reload_successful(&mpp, &certs) == Some(0.0)
    })
    .await;
    assert_eq!(served_subject(&mpp, &certs).as_deref(), Some("CN=mpp-rotated"));

    rotate("mpp-repaired");
    wait_until("the repaired certificate is served", Duration::from_secs(10), || async {
        served_subject(&mpp, &certs).as_deref() == Some("CN=mpp-repaired")
            && reload_successful(&mpp, &certs) == Some(1.0)
    })
    .await;

    // The web config itself is read again too: basic auth and HTTP/1.1 only, from now on.
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let text = format!("{tls_only}http_server_config:\n  http2: false\nbasic_auth_users:\n  {USER}: {hash}\n");
    write_atomically(&web, &text);
    let health = https(&mpp, "/mpp/health");
    wait_until("basic auth is required", Duration::from_secs(10), || async {
        curl(&health, &certs.curl_args(None)).status == 401
    })
    .await;
    let user = format!("{USER}:{PASSWORD}");
    let authenticated = plus(certs.curl_args(None), &["--user", &user]);
    let answer = curl(&health, &authenticated);
    assert_eq!((answer.status, answer.http_version.as_str()), (200, "1.1"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_federates_through_mpp_from_a_secured_replica_each_hop_with_its_own_credentials() {
    // federator --(TLS, client cert, basic auth)--> mpp --(TLS, client cert, basic auth)--> replica
    let dir = tempfile::tempdir().unwrap();
    let replica = SecuredReplica::start(dir.path(), "replica password").await;
    let certs = Certs::new(dir.path());
    let web = secure_web_config(dir.path(), &certs);
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let mut flags = vec![format!("--endpoints-file={}", path(&endpoints)), format!("--web.config.file={}", path(&web))];
    flags.extend(replica.mpp_flags());
    let mpp = Mpp::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;

    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}
    honor_labels: true
    metrics_path: /federate
    params: {{'match[]': ['{{job=\"prometheus\"}}']}}
    scheme: https
    basic_auth: {{username: {USER}, password: '{password}'}}
    tls_config: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
",
            ca = path(&certs.servers.ca_file()),
            cert = path(&certs.client.cert),
            key = path(&certs.client.key),
            port = mpp.addr.port(),
        )
    };
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}{}",
        job("through-mpp", PASSWORD),
        job("wrong-password", "guess")
    );
    let federator = Prometheus::start_custom(&config, &[], |port| {
        let url = format!("http://127.0.0.1:{port}/-/ready");
        curl::<&str>(&url, &[]).status == 200
    })
    .await;

    let query = |promql: &str| {
        let url = format!("http://127.0.0.1:{}/api/v1/query", federator.port());
        curl(&url, &["--get", "--data-urlencode", &format!("query={promql}")]).output
    };
    wait_until("the federator scrapes the replica through mpp", Duration::from_secs(30), || async {
        query(r#"up{job="through-mpp"} == 1"#).contains(r#""value""#)
            && query(r#"prometheus_build_info{job="prometheus"}"#)
                .contains(&format!("\"instance\":\"127.0.0.1:{}\"", replica.prometheus.port()))
    })
    .await;
    wait_until("the wrong password is refused", Duration::from_secs(30), || async {
        query(r#"up{job="wrong-password"} == 0"#).contains(r#""value""#)
    })
    .await;
    drop(federator);
}

#[test]
fn a_broken_web_config_stops_mpp_at_start_with_one_line_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = endpoints_file(dir.path(), &["http://127.0.0.1:1".into()]);
    let web = dir.path().join("web.yml");
    std::fs::write(&web, "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing-key.pem\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mpp"))
        .args([
            "--listen-address",
            "127.0.0.1:0",
            "--endpoints-file",
            &path(&endpoints),
            "--web.config.file",
            &path(&web),
        ])
        .env_remove("MPP_WEB_CONFIG_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("mpp: error: web config file ") && line.contains("web.yml"), "{stderr}");
    assert!(line.contains("tls_server_config.cert_file") && line.contains("missing.pem"), "{stderr}");
}

/// mpp serving TLS only (no client certificates, no passwords) in front of a replica that is
/// never there, with `args` added; its certificates live in `dir`.
async fn tls_only(dir: &Path, args: &[&str]) -> (Mpp, Certs) {
    let certs = Certs::new(dir);
    let web = dir.join("web.yml");
    let text = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        path(&certs.server.cert),
        path(&certs.server.key)
    );
    std::fs::write(&web, text).unwrap();
    let endpoints = endpoints_file(dir, &["http://127.0.0.1:1".into()]);
    let (endpoints, web) = (path(&endpoints), path(&web));
    let mut all = vec!["--endpoints-file", &endpoints, "--web.config.file", &web];
    all.extend_from_slice(args);
    (Mpp::start(&all).await, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (mpp, _certs) = tls_only(dir.path(), &["--header-read-timeout", "1s"]).await;
    for (what, first_bytes) in
        [("silent", &b""[..]), ("half a ClientHello", &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..])]
    {
        let mut socket = tokio::net::TcpStream::connect(mpp.addr).await.unwrap();
        socket.write_all(first_bytes).await.unwrap();
        let started = std::time::Instant::now();
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{what}: the connection should be closed, got {read:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{what}: closed too early");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_auth_type_and_allowed_sans_admit_the_clients_go_would() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let other_client = certs.clients.issue("prometheus", Usage::Client);
    let endpoints = endpoints_file(dir.path(), &["http://127.0.0.1:1".into()]);
    let (grafana, stranger, expired) = (Some(&certs.client), Some(&certs.stranger), Some(&certs.expired_client));
    // (client_auth_type and extra lines, [(client certificate, admitted)])
    let cases = [
        ("RequestClientCert", vec![(None, true), (stranger, true), (grafana, true)]),
        ("RequireAnyClientCert", vec![(None, false), (stranger, true), (expired, true)]),
        ("VerifyClientCertIfGiven", vec![(None, true), (grafana, true), (stranger, false), (expired, false)]),
        (
            "RequireAndVerifyClientCert\n  client_allowed_sans: [grafana.clients.test]",
            vec![(grafana, true), (Some(&other_client), false), (None, false)],
        ),
    ];
    for (index, (auth, clients)) in cases.into_iter().enumerate() {
        let web = dir.path().join(format!("web-{index}.yml"));
        let ca = if auth.starts_with("Request") {
            String::new()
        } else {
            format!("  client_ca_file: {}\n", path(&certs.clients.ca_file()))
        };
        let text = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{ca}  client_auth_type: {auth}\n",
            path(&certs.server.cert),
            path(&certs.server.key),
        );
        std::fs::write(&web, text).unwrap();
        let mpp = Mpp::start(&["--endpoints-file", &path(&endpoints), "--web.config.file", &path(&web)]).await;
        for (client, admitted) in clients {
            let answer = curl(&https(&mpp, "/mpp/health"), &certs.curl_args(client));
            let who = client.map_or("no certificate".into(), |c| c.cert.display().to_string());
            assert_eq!(answer.status == 200, admitted, "{auth} with {who}: {answer:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_replicas_see_https_and_never_the_password_given_to_mpp() {
    let replica = common::tls::RecordingReplica::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let web = secure_web_config(dir.path(), &certs);
    let endpoints = endpoints_file(dir.path(), std::slice::from_ref(&replica.url));
    let mpp = Mpp::start(&["--endpoints-file", &path(&endpoints), "--web.config.file", &path(&web)]).await;
    let authenticated = plus(certs.curl_args(Some(&certs.client)), &["--user", &format!("{USER}:{PASSWORD}")]);
    let answer = curl(&https(&mpp, "/api/v1/labels"), &authenticated);
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = replica.requests_for("/api/v1/labels");
    let head = seen.last().expect("the replica got the request");
    assert_eq!(head["x-forwarded-proto"], "https");
    assert!(head.get("authorization").is_none(), "mpp's own credentials went on: {head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_is_bounded_in_number_and_time_and_others_are_served() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let (mpp, certs) = tls_only(dir.path(), &["--header-read-timeout", "2s", "--max-connections", "300"]).await;
    let half_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let mut flood = Vec::new();
    let open = |count: usize| {
        let addr = mpp.addr;
        async move {
            let mut sockets = Vec::new();
            for _ in 0..count {
                let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
                socket.write_all(half_hello).await.unwrap();
                sockets.push(socket);
            }
            sockets
        }
    };
    // Within the slots: other clients are served at once.
    flood.extend(open(250).await);
    let args = certs.curl_args(None);
    let url = https(&mpp, "/mpp/health");
    let started = std::time::Instant::now();
    let health = tokio::task::spawn_blocking({
        let (url, args) = (url.clone(), args.clone());
        move || curl(&url, &args)
    })
    .await
    .unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served in {:?} beside 250 unfinished handshakes",
        started.elapsed()
    );

    // Past the slots: the unfinished handshakes hold theirs no longer than the header
    // deadline, and the client waiting in the listen queue is served then.
    flood.extend(open(100).await);
    let started = std::time::Instant::now();
    let health = tokio::task::spawn_blocking(move || curl(&url, &args)).await.unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "served after {:?}", started.elapsed());
    drop(flood);
}
