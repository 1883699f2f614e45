//! Basic auth under a flood of wrong passwords: the right password is never refused because
//! others are wrong. 120 clients loop wrong passwords for a known user (bcrypt cost 10, as in
//! a real web config) while that user, already admitted once, keeps querying, and another user
//! logs in for the first time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{Mpp, Prometheus, endpoints_file, send, wait_until};
use http::Request;

const FLOODERS: usize = 120;

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn query_as(mpp: &Mpp, authorization: &str) -> (u16, Duration) {
    let started = Instant::now();
    let request = Request::get(mpp.url("/api/v1/query?query=up")).header("authorization", authorization);
    let answer = send(request, Bytes::new()).await.expect("an answer");
    (answer.status.as_u16(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_never_refuses_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let (alice, bob) = (bcrypt::hash("alice-pw", 10).unwrap(), bcrypt::hash("bob-pw", 10).unwrap());
    std::fs::write(&web, format!("basic_auth_users:\n  alice: {alice}\n  bob: {bob}\n")).unwrap();
    let replica = Prometheus::start().await;
    let endpoints = endpoints_file(dir.path(), &[replica.url()]);
    let mpp =
        Mpp::start(&["--endpoints-file", endpoints.to_str().unwrap(), "--web.config.file", web.to_str().unwrap()])
            .await;
    let right = basic("alice", "alice-pw");
    // /mpp/status needs the password too: alice's query is what says the replica serves.
    wait_until("alice's query answered before the flood", Duration::from_secs(20), || async {
        query_as(&mpp, &right).await.0 == 200
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let url = mpp.url("/api/v1/query?query=up");
    let flood: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request = Request::get(&url).header("authorization", basic("alice", &format!("wrong-{i}-{n}")));
                    if let Ok(answer) = send(request, Bytes::new()).await {
                        seen.push(answer.status.as_u16());
                    }
                }
                seen
            })
        })
        .collect();

    // Let the flood fill every queue, then ask as alice, again and again, and as bob, whose
    // password was never checked before.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let (status, took) = query_as(&mpp, &right).await;
        assert_eq!(status, 200, "the right password during the flood");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (first_login, _) = query_as(&mpp, &basic("bob", "bob-pw")).await;
    assert!([200, 429, 503].contains(&first_login), "a first login during the flood: {first_login}, never 401");
    stop.store(true, Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for attempt in flood {
        for status in attempt.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
        }
    }
    eprintln!("flood answers {statuses:?}; slowest admitted answer {slowest:?}; bob's first login {first_login}");
    assert!(statuses.keys().all(|s| [401, 429, 503].contains(s)), "wrong passwords get only refusals: {statuses:?}");
    assert!(statuses.contains_key(&401), "some wrong passwords were checked: {statuses:?}");
    assert!(
        statuses.keys().any(|s| [429, 503].contains(s)),
        "a flood from one address is held to its share of checks: {statuses:?}"
    );
    // Once the flood is over, bob gets in.
    wait_until("bob's login after the flood", Duration::from_secs(10), || async {
        query_as(&mpp, &basic("bob", "bob-pw")).await.0 == 200
    })
    .await;
}
