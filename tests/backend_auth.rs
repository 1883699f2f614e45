//! Replicas that require TLS client certificates and basic auth (a real Prometheus with its
//! own web config file): mpp's probes and forwarded requests carry the CA, certificate and
//! password it is given, a changed password file is picked up without a restart, and a
//! client's own `Authorization` header is forwarded unless mpp is told to replace it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tls::{RecordingReplica, SecuredReplica};
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
