//! Hostile and heavy clients: connections that never finish, Prometheus's own error answers,
//! floods of HTTP/2 streams with bodies, queries that outlive their time, malformed heads.
//! None of them may take mpp, or a healthy replica, out of service.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Mpp, Prometheus, endpoints_file, get, one_replica, wait_until};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A raw connection that has sent `bytes`.
fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

/// Reads until mpp closes the connection; what it sent, and how long that took (`None`
/// if it was still open after `patience`).
fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < patience {
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (received, Some(started.elapsed())),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (received, Some(started.elapsed())),
        }
    }
    (received, None)
}

/// Sends a raw request on a new connection and returns the answer's status line.
fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = open(addr, request);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unfinished_connection_phase_is_closed_at_its_deadline() {
    let (_replica, mpp, _dir) = one_replica(&["--header-read-timeout", "1s"]).await;
    let addr = mpp.addr;
    let phases = tokio::task::spawn_blocking(move || {
        let mut connections = [
            ("silent", open(addr, b"")),
            ("part of the HTTP/2 preface", open(addr, &PREFACE[..10])),
            ("HTTP/2 preface, then idle", open(addr, &[PREFACE, EMPTY_SETTINGS].concat())),
            ("part of an HTTP/1 head", open(addr, b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\n")),
            (
                "one byte of a declared body",
                open(addr, b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nq"),
            ),
        ];
        connections
            .iter_mut()
            .map(|(phase, stream)| {
                let (answer, closed_after) = read_until_closed(stream, Duration::from_secs(6));
                (phase.to_string(), String::from_utf8_lossy(&answer).into_owned(), closed_after)
            })
            .collect::<Vec<_>>()
    });
    for (phase, answer, closed_after) in phases.await.unwrap() {
        let closed_after = closed_after.unwrap_or_else(|| panic!("{phase}: still open after 6s"));
        assert!(closed_after < Duration::from_secs(4), "{phase}: closed only after {closed_after:?}");
        if phase.contains("body") {
            assert!(answer.starts_with("HTTP/1.1 408"), "{phase}: {answer}");
        }
    }
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(metrics.contains("mpp_connections_closed_total{reason=\"header_timeout\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_hold_every_slot() {
    // The default header timeout (10s): only the pressure on slots frees them quickly.
    let (_replica, mpp, _dir) = one_replica(&["--max-connections", "40"]).await;
    let addr = mpp.addr;
    // The test client's pooled connection from start-up holds a slot too; it is idle.
    let silent: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let checks = tokio::task::spawn_blocking(move || {
        // New connections, as a Kubernetes probe makes.
        let started = Instant::now();
        let health = status_line(addr, b"GET /mpp/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let took = started.elapsed();
        let query = status_line(addr, b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        (health, took, query)
    });
    let (health, took, query) = checks.await.unwrap();
    assert!(health.contains(" 200 "), "health while 40 silent sockets were open: {health:?}");
    assert!(took < Duration::from_secs(4), "health took {took:?}");
    assert!(query.contains(" 200 "), "{query}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_error_answers_reach_the_client_and_never_eject_the_replica() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap()]).await;
    wait_until("one replica selected", Duration::from_secs(20), || async { mpp.selected().await.len() == 1 }).await;
    let serving = mpp.selected().await[0].clone();

    // A timeout of a microsecond makes Prometheus answer 503 with errorType "timeout": for
    // certain with a range query of 3,601 steps (the engine looks at the deadline at each
    // step; an instant query on a fresh server can be done before it looks at all).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let timed_out = format!("/api/v1/query_range?query=up&start={}&end={now}&step=1&timeout=0.000001", now - 3600);
    for _ in 0..20 {
        let answer = get(&mpp.url(&timed_out)).await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text());
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["errorType"], "timeout", "Prometheus's own answer: {body}");
        assert_eq!(answer.served_by().as_deref(), Some(serving.as_str()), "not retried elsewhere");
        let bad = get(&mpp.url("/api/v1/query?query=sum(")).await.unwrap();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.served_by().as_deref(), Some(serving.as_str()));
    }
    for _ in 0..13 {
        let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        assert_eq!((answer.status, answer.served_by()), (StatusCode::OK, Some(serving.clone())));
    }
    assert_eq!(mpp.selected().await, vec![serving.clone()], "the replica stayed selected");
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(!metrics.contains("mpp_retries_total{"), "an API answer was retried: {metrics}");
}

/// A replica that passes every probe but never answers `/api/v1/query_range`: what a
/// replica with a frozen disk, or a query heavier than any timeout, looks like.
struct HangingReplica {
    addr: SocketAddr,
    hung: Arc<AtomicUsize>,
    /// Hung queries whose connection mpp dropped (so a real Prometheus would stop them).
    cancelled: Arc<AtomicUsize>,
    timeouts: Arc<std::sync::Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl HangingReplica {
    async fn start() -> HangingReplica {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hung = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let timeouts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (hung2, cancelled2, timeouts2) = (hung.clone(), cancelled.clone(), timeouts.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (hung, cancelled, timeouts) = (hung2.clone(), cancelled2.clone(), timeouts2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (hung, cancelled, timeouts) = (hung.clone(), cancelled.clone(), timeouts.clone());
                        async move {
                            let path = request.uri().path().to_string();
                            let query = request.uri().query().unwrap_or("").to_string();
                            let body = match path.as_str() {
                                "/-/ready" => "ready".to_string(),
                                "/metrics" => "prometheus_tsdb_head_samples_appended_total 10\n".to_string(),
                                "/api/v1/query_range" => {
                                    hung.fetch_add(1, Ordering::SeqCst);
                                    let timeout = query.split('&').find_map(|p| p.strip_prefix("timeout="));
                                    timeouts.lock().unwrap().push(timeout.unwrap_or("").to_string());
                                    // hyper drops this future when mpp closes the connection.
                                    let _cancelled = CountOnDrop(cancelled);
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                                _ => r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#.to_string(),
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HangingReplica { addr, hung, cancelled, timeouts, _server: server }
    }
}

impl HangingReplica {
    /// A hanging replica with mpp in front of it (`--request-timeout` as given), selected;
    /// and the replica's URL, and the directory of mpp's endpoints file.
    async fn behind_mpp(request_timeout: &str) -> (HangingReplica, Mpp, String, tempfile::TempDir) {
        let replica = HangingReplica::start().await;
        let url = format!("http://{}", replica.addr);
        let dir = tempfile::tempdir().unwrap();
        let file = endpoints_file(dir.path(), std::slice::from_ref(&url));
        let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--request-timeout", request_timeout]).await;
        mpp.wait_selected(&[&url]).await;
        (replica, mpp, url, dir)
    }
}

struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_query_at_the_replica() {
    // Grafana cancels a panel's query (a refresh, a closed dashboard) by closing its
    // HTTP/1.1 connection: the query must not go on running at the replica.
    let (replica, mpp, _url, _dir) = HangingReplica::behind_mpp("60s").await;
    let client = open(mpp.addr, b"GET /api/v1/query_range?query=up&start=0&end=60&step=15 HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_until("the query reaches the replica", Duration::from_secs(10), || async {
        replica.hung.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(replica.cancelled.load(Ordering::SeqCst), 0);
    drop(client);
    wait_until("the replica's query is cancelled", Duration::from_secs(5), || async {
        replica.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(replica.hung.load(Ordering::SeqCst), 1, "and not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_runs_out_of_time_gets_504_once_and_is_not_run_again() {
    let (replica, mpp, url, _dir) = HangingReplica::behind_mpp("2s").await;

    let started = Instant::now();
    let answer = get(&mpp.url("/api/v1/query_range?query=up&start=0&end=60&step=15")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{}", answer.text());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["errorType"], "timeout");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(replica.hung.load(Ordering::SeqCst), 1, "the query ran once");
    let timeouts = replica.timeouts.lock().unwrap().clone();
    let passed: f64 = timeouts[0].parse().unwrap_or_else(|_| panic!("timeout parameter {timeouts:?}"));
    assert!(passed > 1.5 && passed <= 2.0, "the replica was told the time left: {passed}");
    assert_eq!(mpp.selected().await, vec![url], "a slow query is no sign of a dead replica");
}

/// An HTTP/2 connection with prior knowledge, as h2load or a Go client with h2c uses.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Connections the replica has accepted, from its own metrics.
async fn accepted_connections(replica: &Prometheus) -> f64 {
    let text = get(&format!("{}/metrics", replica.url())).await.unwrap().text();
    let samples = mpp::fuzzing::exposition::parse(&text).unwrap();
    mpp::fuzzing::exposition::sum(&samples, "net_conntrack_listener_conn_accepted_total").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_http2_streams_with_bodies_is_bounded_in_memory_and_backend_connections() {
    let (replica, mpp, _dir) = one_replica(&[
        "--request-body-budget",
        "8MiB",
        "--max-request-body",
        "1MiB",
        "--max-backend-connections",
        "8",
        "--max-concurrent-streams",
        "100",
    ])
    .await;
    let before = accepted_connections(&replica).await;
    let sender = h2_client(mpp.addr).await;
    // 1 MiB of form body: `query=up` and padding Prometheus ignores.
    let mut form = b"query=up&pad=".to_vec();
    form.resize(1 << 20, b'x');
    let form = Bytes::from(form);
    let streams = (0..150).map(|_| {
        let mut sender = sender.clone();
        let form = form.clone();
        let uri = mpp.url("/api/v1/query");
        async move {
            let request = Request::post(uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(form))
                .unwrap();
            sender.ready().await.map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            response.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, retry_after))
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(60), futures_util::future::join_all(streams))
        .await
        .expect("every stream answered within 60s");
    let (mut ok, mut overloaded) = (0, 0);
    for answer in answers {
        match answer {
            Ok((StatusCode::OK, _)) => ok += 1,
            Ok((StatusCode::SERVICE_UNAVAILABLE, Some(retry_after))) => {
                assert_eq!(retry_after, "1");
                overloaded += 1;
            }
            other => panic!("unexpected answer to a stream: {other:?}"),
        }
    }
    assert!(ok > 0, "some streams were served");
    assert!(overloaded > 0, "150 MiB of bodies cannot fit an 8 MiB budget at once");
    let opened = accepted_connections(&replica).await - before;
    // At most 8 for queries, plus the probes' and liveness checks' own during the test.
    assert!(opened <= 8.0 + 12.0, "mpp opened {opened} connections to the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_file_that_lists_mpp_itself_is_refused_without_a_storm() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&replica.url()]).await;
    let itself = format!("http://{}", mpp.addr);
    endpoints_file(dir.path(), &[replica.url(), itself.clone()]);
    wait_until("mpp itself to be found and explained", Duration::from_secs(20), || async {
        let status = mpp.status().await;
        status["candidates"].as_array().unwrap().iter().any(|c| {
            c["url"] == itself.as_str()
                && c["selected"] == false
                && c["last_probe_error"].as_str().is_some_and(|e| e.contains("this mpp itself"))
        })
    })
    .await;
    for _ in 0..20 {
        let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        assert_eq!((answer.status, answer.served_by()), (StatusCode::OK, Some(replica.url())));
    }

    // Only mpp itself: each request comes back once, is refused, and the client hears at once.
    endpoints_file(dir.path(), std::slice::from_ref(&itself));
    wait_until("only mpp listed", Duration::from_secs(20), || async {
        mpp.status().await["candidates"].as_array().unwrap().len() == 1
    })
    .await;
    let started = Instant::now();
    let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(answer.status.as_u16(), 503 | 508), "{} {}", answer.status, answer.text());
    let ready = get(&mpp.url("/mpp/ready")).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "nothing to serve: not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_cannot_be_forwarded_safely_get_clear_answers() {
    let (_replica, mpp, _dir) = one_replica(&[]).await;
    let addr = mpp.addr;
    let lines = tokio::task::spawn_blocking(move || {
        let many_headers: String = (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        [
            (
                "gzip",
                b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            ),
            ("two hosts", b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
            ("no host", b"GET /api/v1/query?query=up HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
            ("connect", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
            ("authority form", b"GET evil.example:80 HTTP/1.1\r\nHost: evil.example:80\r\n\r\n".to_vec()),
            ("asterisk GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("asterisk OPTIONS", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
            (
                "absolute form",
                b"GET http://x/api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            ),
            (
                "150 headers",
                format!("GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many_headers}\r\n")
                    .into_bytes(),
            ),
        ]
        .into_iter()
        .map(|(what, request)| (what, status_line(addr, &request)))
        .collect::<Vec<_>>()
    });
    let lines = lines.await.unwrap();
    let expect = [
        ("gzip", " 501 "),
        ("two hosts", " 400 "),
        ("no host", " 400 "),
        ("connect", " 405 "),
        ("authority form", " 400 "),
        ("asterisk GET", " 400 "),
        ("asterisk OPTIONS", " 200 "),
        ("absolute form", " 200 "),
        ("150 headers", " 200 "),
    ];
    for ((what, line), (_, status)) in lines.iter().zip(expect) {
        assert!(line.contains(status), "{what}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_replica_leaves_the_metrics_too() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    wait_until("both replicas to have served", Duration::from_secs(20), || async {
        get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
        metrics.contains(&a.url()) && metrics.contains(&b.url())
    })
    .await;
    endpoints_file(dir.path(), &[a.url()]);
    mpp.wait_selected(&[&a.url()]).await;
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(!metrics.contains(&b.url()), "series of the departed replica remain:\n{metrics}");
    assert!(metrics.contains(&a.url()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_heads_are_paid_from_one_budget_and_big_heads_get_431() {
    // Heads may be 1 MiB each, but all of them together hold 2 MiB beyond their first 16 KiB.
    let (_replica, mpp, _dir) =
        one_replica(&["--max-header-bytes", "1MiB", "--request-head-budget", "2MiB", "--header-read-timeout", "30s"])
            .await;
    let addr = mpp.addr;
    // 40 connections, each sending 600 KiB of one header line that never ends: 24 MB asked,
    // 2 MiB (and each connection's first 16 KiB) given.
    let outcomes = tokio::task::spawn_blocking(move || {
        let filler = vec![b'a'; 600 << 10];
        let mut streams: Vec<TcpStream> = (0..40)
            .map(|_| {
                let mut stream = open(addr, b"GET /mpp/health HTTP/1.1\r\nHost: a\r\nX: ");
                // mpp may close before it has all of it: that is the point.
                let _ = stream.write_all(&filler);
                stream
            })
            .collect();
        streams
            .iter_mut()
            .map(|stream| {
                let (answer, closed) = read_until_closed(stream, Duration::from_secs(2));
                (String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string(), closed.is_some())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let refused = outcomes.iter().filter(|(line, closed)| line.contains(" 503 ") && *closed).count();
    // At most three heads of 600 KiB fit in 2 MiB; every other one was refused and closed.
    assert!(refused >= 36, "only {refused} of 40 oversized unfinished heads were refused: {outcomes:?}");
    // The budget is given back as heads finish or fail: others are served meanwhile and after.
    assert_eq!(get(&mpp.url("/mpp/health")).await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, StatusCode::OK);

    // The default largest head is 64 KiB, as nginx and HAProxy keep theirs small.
    let (_replica, mpp, _dir) = one_replica(&[]).await;
    let addr = mpp.addr;
    let lines = tokio::task::spawn_blocking(move || {
        let head = |size: usize| {
            format!("GET /mpp/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: {}\r\n\r\n", "a".repeat(size))
        };
        (status_line(addr, head(60 << 10).as_bytes()), status_line(addr, head(70 << 10).as_bytes()))
    })
    .await
    .unwrap();
    assert!(lines.0.contains(" 200 "), "a 60 KiB head: {}", lines.0);
    assert!(lines.1.contains(" 431 "), "a 70 KiB head: {}", lines.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_held_to_http1s_header_limits_and_rapid_resets_end_the_connection() {
    let (_replica, mpp, _dir) = one_replica(&[]).await;
    // HPACK lets one indexed field stand for a line: 2,000 of them are a few KiB on the wire
    // and would be 2,000 lines towards the replica. An HTTP/1 head may have 256.
    // Over the head size once decoded (2,000 fields of 40 bytes as HPACK counts them), or
    // over the line count within it (300): both 431, neither reaches the replica.
    let mut sender = h2_client(mpp.addr).await;
    for lines in [2000, 300] {
        let mut request = Request::get(mpp.url("/api/v1/query?query=up"));
        for _ in 0..lines {
            request = request.header("x-flood", "a");
        }
        let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{lines} lines");
        assert!(response.headers().get("mpp.servedby").is_none(), "{lines} lines reached a replica");
    }

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, as fast as a client
    // can, make mpp end the connection (GOAWAY) rather than start work for each.
    let tcp = tokio::net::TcpStream::connect(mpp.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut opened = 0;
    for _ in 0..20_000 {
        let Ok(mut ready) = client.clone().ready().await else { break };
        let request = http::Request::get(mpp.url("/api/v1/query?query=up")).body(()).unwrap();
        let Ok((_response, mut stream)) = ready.send_request(request, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    let error = match ended {
        Ok(Ok(Err(error))) => error,
        other => panic!("the connection survived {opened} rapid resets: {other:?}"),
    };
    assert!(opened < 20_000, "every one of {opened} streams was taken");
    // mpp says GOAWAY (ENHANCE_YOUR_CALM) and closes; a client still writing may see the
    // close before it reads the GOAWAY.
    assert!(error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(), "{error}");
    // Everyone else is served as before.
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, StatusCode::OK);
}

/// An HTTP/2 frame: its 9-byte header (length, type, flags, stream) and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut bytes = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_continuation_flood_ends_the_connection_at_the_head_limit() {
    let (_replica, mpp, _dir) = one_replica(&[]).await;
    let addr = mpp.addr;
    let (sent, closed) = tokio::task::spawn_blocking(move || {
        let mut stream = open(addr, &[PREFACE, EMPTY_SETTINGS].concat());
        // HEADERS without END_HEADERS, then CONTINUATION frames of literal fields that never
        // end the block: 16 MiB offered, against a 64 KiB head.
        // A literal field without indexing: name "x", a 16,000-byte value (HPACK's integer:
        // 127, then 15,873 in 7-bit groups).
        let field: Vec<u8> = [&[0x00, 0x01, b'x', 0x7f, 0x81, 0x7c][..], &vec![b'a'; 16_000][..]].concat();
        stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sent = 0usize;
        let _ = stream.write_all(&frame(0x1, 0x0, 1, &[0x82, 0x84, 0x86])); // :method GET, :path /, :scheme http
        for _ in 0..1024 {
            if stream.write_all(&frame(0x9, 0x0, 1, &field)).is_err() {
                break;
            }
            sent += field.len();
        }
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
        (sent, closed.is_some())
    })
    .await
    .unwrap();
    assert!(closed, "the connection stayed open after {sent} bytes of CONTINUATION");
    assert!(sent < 8 << 20, "{sent} bytes of one header block were taken");
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, StatusCode::OK);
}
