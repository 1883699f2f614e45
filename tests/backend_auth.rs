//! Replicas that require TLS client certificates and basic auth (a real Prometheus with its
//! own web config file): mpp's probes and forwarded requests carry the CA, certificate and
//! password it is given, a changed password file is picked up without a restart, and a
//! client's own `Authorization` header is forwarded unless mpp is told to replace it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tls::{Pki, RecordingReplica, SecuredReplica, Usage, write_atomically};
use common::{Mpp, endpoints_file, get, send, wait_until};
use http::Request;

/// `Authorization` for user `mpp` with a password the replica does not take.
const WRONG_CLIENT_CREDENTIALS: &str = "Basic bXBwOndyb25n"; // mpp:wrong

fn flags(replica: &SecuredReplica, endpoints: &std::path::Path, more: &[&str]) -> Vec<String> {
    let mut flags = vec![format!("--endpoints-file={}", endpoints.display())];
    flags.extend(replica.mpp_flags());
    flags.extend(more.iter().map(|s| s.to_string()));
    flags
}

async fn start_mpp(flags: &[String]) -> Mpp {
    Mpp::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await
}

async fn query_with(mpp: &Mpp, authorization: &str) -> common::Answer {
    let request = Request::get(mpp.url("/api/v1/query?query=up")).header("authorization", authorization);
    send(request, Bytes::new()).await.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_requiring_a_client_certificate_and_basic_auth_is_probed_and_queried() {
    let dir = tempfile::tempdir().unwrap();
    let replica = SecuredReplica::start(dir.path(), "first password").await;
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = start_mpp(&flags(&replica, &endpoints, &[])).await;
    mpp.wait_selected(&[&replica.url()]).await;

    // The replica's own scrapes (over TLS, with the same password) show through mpp.
    let up = mpp.url("/api/v1/query?query=up");
    wait_until("the replica's data through mpp", Duration::from_secs(15), || async {
        get(&up).await.is_ok_and(|a| a.status == 200 && a.text().contains(r#""job":"prometheus""#))
    })
    .await;
    assert_eq!(get(&up).await.unwrap().served_by(), Some(replica.url()));

    // A client's own credentials are forwarded unchanged: the replica judges them.
    let answer = query_with(&mpp, WRONG_CLIENT_CREDENTIALS).await;
    assert_eq!((answer.status.as_u16(), answer.served_by()), (401, Some(replica.url())));

    // The replica changes its password; mpp's probes are refused until its password file
    // holds the new one, which it reads again by itself.
    replica.set_password("second password");
    wait_until("the replica refuses mpp's old password", Duration::from_secs(15), || async {
        mpp.candidates_where("viable").await.is_empty()
    })
    .await;
    let status = mpp.status().await.to_string();
    assert!(status.contains("401"), "the probe error names the refusal: {status}");
    std::fs::write(&replica.password_file, "second password\n").unwrap();
    wait_until("mpp uses the new password", Duration::from_secs(15), || async {
        get(&mpp.url("/api/v1/query?query=up")).await.is_ok_and(|a| a.status == 200)
    })
    .await;
    let status = mpp.status().await.to_string();
    assert!(!status.contains("password"), "no secret on /mpp/status: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_authorization_sends_mpps_credentials_instead_of_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let replica = SecuredReplica::start(dir.path(), "s3cret").await;
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = start_mpp(&flags(&replica, &endpoints, &["--backend-replace-authorization"])).await;
    mpp.wait_selected(&[&replica.url()]).await;
    let answer = query_with(&mpp, WRONG_CLIENT_CREDENTIALS).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_password_or_the_certificate_the_replica_is_not_viable() {
    let dir = tempfile::tempdir().unwrap();
    let replica = SecuredReplica::start(dir.path(), "s3cret").await;
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let all = flags(&replica, &endpoints, &[]);
    let without_password: Vec<String> = all.iter().filter(|f| !f.contains("basic-auth")).cloned().collect();
    let without_certificate: Vec<String> =
        all.iter().filter(|f| !f.contains("-cert-file") && !f.contains("-key-file")).cloned().collect();
    let without_ca: Vec<String> = all.iter().filter(|f| !f.contains("-ca-file")).cloned().collect();
    // With no viable replica, a query is still tried on it as a last resort: the replica's
    // 401 is passed on; a server certificate mpp cannot verify fails before anything is sent
    // (503); a missing client certificate is refused by TLS 1.3 only once the request is on
    // its way (502, the replica's error).
    for (what, flags, expected, query_status) in [
        ("no password", without_password, "HTTP 401", 401),
        ("no client certificate", without_certificate, "GET /-/ready", 502),
        ("the system's roots only", without_ca, "certificate", 503),
    ] {
        let mpp = start_mpp(&flags).await;
        wait_until(&format!("a probe error with {what}"), Duration::from_secs(15), || async {
            let status = mpp.status().await;
            status["candidates"][0]["last_probe_error"].as_str().is_some_and(|e| e.contains(expected))
        })
        .await;
        assert!(mpp.candidates_where("viable").await.is_empty(), "{what}");
        assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, query_status, "{what}");
    }
}

/// The `Authorization` header of the last request for `path` the replica got.
fn last_authorization(replica: &RecordingReplica, path: &str) -> Option<String> {
    let requests = replica.requests_for(path);
    requests.last()?.get("authorization").map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_file_reaches_probes_and_queries_and_is_read_again_when_it_changes() {
    let replica = RecordingReplica::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let endpoints = endpoints_file(dir.path(), std::slice::from_ref(&replica.url));
    let mpp = start_mpp(&[
        format!("--endpoints-file={}", endpoints.display()),
        format!("--backend-bearer-token-file={}", token.display()),
    ])
    .await;
    mpp.wait_selected(&[&replica.url]).await;
    assert_eq!(last_authorization(&replica, "/-/ready").as_deref(), Some("Bearer first-token"));
    assert_eq!(get(&mpp.url("/api/v1/labels")).await.unwrap().status, 200);
    assert_eq!(last_authorization(&replica, "/api/v1/labels").as_deref(), Some("Bearer first-token"));

    // A projected service-account token is replaced in place by the kubelet.
    std::fs::write(&token, "second-token\n").unwrap();
    wait_until("probes carry the new token", Duration::from_secs(10), || async {
        last_authorization(&replica, "/-/ready").as_deref() == Some("Bearer second-token")
    })
    .await;
    assert_eq!(get(&mpp.url("/api/v1/labels")).await.unwrap().status, 200);
    assert_eq!(last_authorization(&replica, "/api/v1/labels").as_deref(), Some("Bearer second-token"));

    // A client's own header goes through unchanged.
    let request = Request::get(mpp.url("/api/v1/labels")).header("authorization", "Bearer the-clients-own");
    assert_eq!(send(request, Bytes::new()).await.unwrap().status, 200);
    assert_eq!(last_authorization(&replica, "/api/v1/labels").as_deref(), Some("Bearer the-clients-own"));
}

/// One series of mpp's own metrics.
async fn metric(mpp: &Mpp, name: &str) -> f64 {
    let text = get(&mpp.url("/mpp/metrics")).await.expect("GET /mpp/metrics").text();
    let samples = mpp::fuzzing::exposition::parse(&text).expect("mpp's metrics parse");
    mpp::fuzzing::exposition::sum(&samples, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_and_client_certificate_are_taken_without_a_restart_and_a_broken_one_fails_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let replica = SecuredReplica::start(dir.path(), "s3cret").await;
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    // mpp's own copies of its TLS files, which the test rotates; first from a CA the replica
    // knows nothing of.
    let (ca, cert, key) =
        (dir.path().join("mpp-ca.pem"), dir.path().join("mpp-cert.pem"), dir.path().join("mpp-key.pem"));
    let strangers = Pki::new(dir.path(), "strangers");
    let stranger = strangers.issue("stranger", Usage::Client);
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        write_atomically(to, &std::fs::read_to_string(from).expect("read a test certificate"));
    };
    copy(&strangers.ca_file(), &ca);
    copy(&stranger.cert, &cert);
    copy(&stranger.key, &key);
    let show = |p: &std::path::Path| p.display().to_string();
    let flags: Vec<String> = vec![
        format!("--endpoints-file={}", show(&endpoints)),
        format!("--backend-ca-file={}", show(&ca)),
        format!("--backend-cert-file={}", show(&cert)),
        format!("--backend-key-file={}", show(&key)),
        format!("--backend-basic-auth-user={}", replica.user),
        format!("--backend-basic-auth-password-file={}", show(&replica.password_file)),
    ];
    let mpp = start_mpp(&flags).await;
    wait_until("a probe refusing the replica's certificate", Duration::from_secs(15), || async {
        let status = mpp.status().await;
        status["candidates"][0]["last_probe_error"].as_str().is_some_and(|e| e.contains("certificate"))
    })
    .await;
    assert!(mpp.candidates_where("viable").await.is_empty());

    // Rotated to the replica's CA and a client certificate it accepts: taken by itself.
    copy(&replica.server_ca, &ca);
    copy(&replica.client.cert, &cert);
    copy(&replica.client.key, &key);
    mpp.wait_selected(&[&replica.url()]).await;
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
    assert_eq!(metric(&mpp, "mpp_config_last_reload_successful").await, 1.0);

    // A broken CA file fails the reload; the last good CA stays in use.
    std::fs::write(&ca, "not a certificate\n").unwrap();
    wait_until("the broken CA file to fail the reload", Duration::from_secs(15), || async {
        metric(&mpp, "mpp_config_last_reload_successful").await == 0.0
    })
    .await;
    assert_eq!(mpp.candidates_where("viable").await, vec![replica.url()]);
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
    copy(&replica.server_ca, &ca);
    wait_until("the mended CA file to be read", Duration::from_secs(15), || async {
        metric(&mpp, "mpp_config_last_reload_successful").await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_get_one_line_of_each_forwarding_header_and_none_of_the_clients_connection_headers() {
    let replica = RecordingReplica::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints = endpoints_file(dir.path(), std::slice::from_ref(&replica.url));
    let mpp = start_mpp(&[format!("--endpoints-file={}", endpoints.display())]).await;
    mpp.wait_selected(&[&replica.url]).await;
    let request = Request::get(mpp.url("/api/v1/labels"))
        .header("x-forwarded-for", "192.0.2.1")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("te", "trailers")
        .header("x-kept", "2");
    let answer = send(request, Bytes::new()).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = replica.requests_for("/api/v1/labels");
    let head = seen.last().expect("the replica got the request");
    let lines = |name: &str| head.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(lines("x-forwarded-for"), ["192.0.2.1, 127.0.0.1"], "{head:?}");
    assert_eq!(lines("x-forwarded-proto"), ["http"], "{head:?}");
    assert_eq!(lines("x-forwarded-host"), [mpp.addr.to_string()], "the client's Host: {head:?}");
    let via = lines("via");
    assert!(via.len() == 1 && via[0].starts_with("1.1 "), "one Via line, mpp's: {head:?}");
    assert_eq!(lines("host"), [replica.url.trim_start_matches("http://")], "the replica's own: {head:?}");
    assert_eq!(lines("x-kept"), ["2"]);
    for gone in ["x-secret", "te"] {
        assert!(lines(gone).is_empty(), "{gone} went on: {head:?}");
    }
}
