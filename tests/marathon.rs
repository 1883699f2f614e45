//! Marathon discovery with DC/OS service-account login, against a fake Marathon and a fake
//! login endpoint that checks the JWT's RS256 signature, in front of real Prometheus replicas.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::marathon::{FakeMarathon, secret, task};
use common::{Mpp, Prometheus, get, send, wait_until};
use http::Request;

fn port(p: &Prometheus) -> u16 {
    p.url().rsplit(':').next().unwrap().parse().unwrap()
}

async fn mpp_for(marathon: &FakeMarathon, apps: &str, secret: &str, extra: &[&str]) -> Mpp {
    let url = marathon.url();
    let mut args = vec!["--marathon-url", &url, "--marathon-apps", apps, "--marathon-principal-secret", secret];
    args.extend_from_slice(extra);
    Mpp::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_healthy_tasks_of_several_apps_become_candidates_behind_the_admin_router() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let marathon = FakeMarathon::start("/service/marathon").await;
    marathon.set_tasks(
        "/prometheus-a",
        vec![
            task("/prometheus-a", 1, port(&a), "TASK_RUNNING", Some(true)),
            task("/prometheus-a", 2, 1, "TASK_STAGING", None),
        ],
    );
    marathon.set_tasks(
        "/monitoring/prometheus-b",
        vec![
            task("/monitoring/prometheus-b", 1, port(&b), "TASK_RUNNING", None),
            task("/monitoring/prometheus-b", 2, 2, "TASK_RUNNING", Some(false)),
        ],
    );
    let secret = secret("service-account-pkcs1.pem", &marathon.login_url());
    let mpp =
        mpp_for(&marathon, "/prometheus-a,monitoring/prometheus-b", &secret, &["--routing-strategy", "random"]).await;

    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let status = mpp.status().await;
    assert_eq!(status["candidates"].as_array().unwrap().len(), 2, "staging and unhealthy tasks are left out: {status}");
    assert!(status["discovery"].as_str().unwrap().contains("/service/marathon"));
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
    assert_eq!(marathon.logins(), 1);
    let page = get(&mpp.url("/mpp/status")).await.unwrap().text();
    assert!(!page.contains("PRIVATE KEY") && !page.contains("dcos-token"), "secrets leaked to the status page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_down_app_stops_being_used_even_by_pinned_clients() {
    let replicas = [Prometheus::start().await, Prometheus::start().await, Prometheus::start().await];
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let marathon = FakeMarathon::start("").await;
    let tasks = |keep: &[usize]| {
        keep.iter().map(|&i| task("/prometheus", i, port(&replicas[i]), "TASK_RUNNING", Some(true))).collect()
    };
    marathon.set_tasks("/prometheus", tasks(&[0, 1, 2]));
    let secret = secret("service-account-pkcs8.pem", &marathon.login_url());
    let mpp =
        mpp_for(&marathon, "prometheus", &secret, &["--routing-strategy", "random", "--selection-interval", "300ms"])
            .await;
    mpp.wait_selected(&[&urls[0], &urls[1], &urls[2]]).await;

    let first = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
    let (pinned, cookie) = (first.served_by().unwrap(), format!("MPP.Route={}", first.route_cookie().unwrap()));
    let pinned_index = urls.iter().position(|u| *u == pinned).unwrap();
    let keep: Vec<usize> = (0..3).filter(|&i| i != pinned_index).collect();
    marathon.set_tasks("/prometheus", tasks(&keep));
    mpp.wait_selected(&[&urls[keep[0]], &urls[keep[1]]]).await;
    for _ in 0..10 {
        let answer = send(Request::get(mpp.url("/api/v1/query?query=up")).header("cookie", &cookie), Bytes::new())
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_ne!(answer.served_by(), Some(pinned.clone()), "a client stayed pinned to a removed task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_costs_one_login_and_no_client_error() {
    let a = Prometheus::start().await;
    let marathon = FakeMarathon::start("").await;
    marathon.set_tasks("/prometheus", vec![task("/prometheus", 1, port(&a), "TASK_RUNNING", Some(true))]);
    let secret = secret("service-account-pkcs8.pem", &marathon.login_url());
    let mpp = mpp_for(&marathon, "/prometheus", &secret, &["--selection-interval", "200ms"]).await;
    mpp.wait_selected(&[&a.url()]).await;
    assert_eq!(marathon.logins(), 1);

    let (stop, errors, requests) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, errors, requests, url) =
            (stop.clone(), errors.clone(), requests.clone(), mpp.url("/api/v1/query?query=up"));
        async move {
            while !stop.load(Ordering::Relaxed) {
                requests.fetch_add(1, Ordering::Relaxed);
                if !get(&url).await.is_ok_and(|a| a.status == 200) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    marathon.expire_tokens();
    wait_until("mpp to log in again", Duration::from_secs(10), || async { marathon.logins() == 2 }).await;
    // Several more rounds run on the new token without another login.
    let round = mpp.status().await["selection_round"].as_u64().unwrap();
    wait_until("three more rounds", Duration::from_secs(10), || async {
        mpp.status().await["selection_round"].as_u64().unwrap() >= round + 3
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(marathon.logins(), 2, "one expiry, one login");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "of {} requests", requests.load(Ordering::Relaxed));
    assert!(mpp.status().await["discovery_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_endpoint_flag_overrides_the_secrets_login_endpoint() {
    let a = Prometheus::start().await;
    let marathon = FakeMarathon::start("/marathon").await;
    marathon.set_tasks("/prometheus", vec![task("/prometheus", 1, port(&a), "TASK_RUNNING", None)]);
    let secret = secret("service-account-pkcs8.pem", "http://127.0.0.1:1/acs/api/v1/auth/login");
    let login = marathon.login_url();
    let mpp = mpp_for(&marathon, "/prometheus", &secret, &["--marathon-auth-endpoint", &login]).await;
    mpp.wait_selected(&[&a.url()]).await;
    assert_eq!(marathon.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_cluster_does_not_know_is_refused_and_reported_without_leaking() {
    let marathon = FakeMarathon::start("").await;
    marathon.set_tasks("/prometheus", vec![task("/prometheus", 1, 1, "TASK_RUNNING", None)]);
    let secret = secret("other-account-pkcs8.pem", &marathon.login_url());
    // Discovery never answers: mpp accepts connections once the start-up wait is over.
    let mpp = mpp_for(&marathon, "/prometheus", &secret, &["--startup-timeout", "1s"]).await;
    let status = mpp.status().await;
    let error = status["discovery_error"].as_str().expect("the refused login is reported");
    assert!(error.contains("refused: HTTP 401"), "{error}");
    assert!(marathon.refused_logins() >= 1 && marathon.logins() == 0);
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_going_away_keeps_the_last_known_replicas_serving() {
    let a = Prometheus::start().await;
    let marathon = FakeMarathon::start("").await;
    marathon.set_tasks("/prometheus", vec![task("/prometheus", 1, port(&a), "TASK_RUNNING", Some(true))]);
    let secret = secret("service-account-pkcs8.pem", &marathon.login_url());
    let mpp = mpp_for(&marathon, "/prometheus", &secret, &["--selection-interval", "200ms"]).await;
    mpp.wait_selected(&[&a.url()]).await;

    drop(marathon);
    wait_until("the outage to show on the status page", Duration::from_secs(10), || async {
        mpp.status().await["discovery_error"].as_str().is_some_and(|e| e.contains("Marathon"))
    })
    .await;
    assert_eq!(mpp.selected().await, vec![a.url()]);
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().served_by(), Some(a.url()));
}
