//! Session affinity: cookies and source addresses keep a client on one selected replica;
//! forged, foreign and stale cookies are never followed.

mod common;

use bytes::Bytes;
use common::{Answer, Mpp, Prometheus, endpoints_file, send};
use http::Request;

const QUERY: &str = "/api/v1/query?query=up";

async fn query(mpp: &Mpp, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(mpp.url(QUERY));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = send(request, Bytes::new()).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer
}

async fn ids_by_url(mpp: &Mpp) -> Vec<(String, String)> {
    let status = mpp.status().await;
    status["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c["url"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_pins_a_client_and_forged_or_stale_cookies_are_replaced() {
    let replicas = [Prometheus::start().await, Prometheus::start().await, Prometheus::start().await];
    let urls: Vec<String> = replicas.iter().map(|p| p.url()).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &urls);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&urls[0], &urls[1], &urls[2]]).await;

    // The first answer sets the cookie, naming the replica that served by its opaque id.
    let first = query(&mpp, &[]).await;
    let id = first.route_cookie().expect("a Set-Cookie for MPP.Route");
    let pinned = first.served_by().unwrap();
    assert!(!id.contains("127.0.0.1"), "the cookie must not reveal the address: {id}");
    assert!(first.headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    assert!(ids_by_url(&mpp).await.contains(&(id.clone(), pinned.clone())));
    let cookie = format!("MPP.Route={id}");
    for _ in 0..20 {
        let answer = query(&mpp, &[("cookie", &cookie)]).await;
        assert_eq!(answer.served_by(), Some(pinned.clone()));
        assert_eq!(answer.route_cookie(), None, "a valid cookie is not set again");
    }

    // Forged values, including the original mpp's address format, are ignored and replaced.
    for forged in ["MPP.Route=0123456789abcdef", "MPP.Route=http://127.0.0.1:1", "MPP.Route="] {
        let answer = query(&mpp, &[("cookie", forged)]).await;
        let replaced = answer.route_cookie().expect("a forged cookie is replaced");
        let served = answer.served_by().unwrap();
        assert!(ids_by_url(&mpp).await.contains(&(replaced, served.clone())));
        assert!(urls.contains(&served));
    }

    // Once the pinned replica leaves the selection, its cookie is stale: not followed, replaced.
    let remaining: Vec<String> = urls.iter().filter(|u| **u != pinned).cloned().collect();
    std::fs::write(&file, remaining.join("\n")).unwrap();
    mpp.wait_selected(&[&remaining[0], &remaining[1]]).await;
    for _ in 0..10 {
        let answer = query(&mpp, &[("cookie", &cookie)]).await;
        assert_ne!(answer.served_by(), Some(pinned.clone()));
        assert!(answer.route_cookie().is_some_and(|new| new != id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_pins_clients_by_forwarded_for_and_peer_address_ipv4_and_ipv6() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let args =
        ["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random", "--affinity-options", "sourceip"];
    let mpp = Mpp::start(&args).await;
    let mpp6 = Mpp::start_on("[::1]:0", &args).await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    mpp6.wait_selected(&[&a.url(), &b.url()]).await;

    for client in ["192.0.2.10", "2001:db8::10", "[2001:db8::11]:443", "198.51.100.7, 10.0.0.1"] {
        let pinned = query(&mpp, &[("x-forwarded-for", client)]).await.served_by().unwrap();
        for _ in 0..15 {
            let answer = query(&mpp, &[("x-forwarded-for", client)]).await;
            assert_eq!(answer.served_by(), Some(pinned.clone()), "client {client} moved");
            assert_eq!(answer.route_cookie(), None, "cookies are off");
        }
    }
    // The peer address itself, over IPv6 loopback.
    let pinned = query(&mpp6, &[]).await.served_by().unwrap();
    for _ in 0..15 {
        assert_eq!(query(&mpp6, &[]).await.served_by(), Some(pinned.clone()));
    }
    let metrics = common::get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(metrics.contains("mpp_affinity_hits_total{type=\"sourceip\"}"), "{metrics}");
}

/// Where each of 1,000 client addresses (sent as `X-Forwarded-For`) is served through `mpp`.
async fn placement(mpp: &Mpp) -> Vec<String> {
    let mut served = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let client = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        served.push(query(mpp, &[("x-forwarded-for", &client)]).await.served_by().unwrap());
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpp_instances_agree_on_every_clients_replica_and_only_a_leaving_replicas_clients_move() {
    let mut replicas = [Prometheus::start().await, Prometheus::start().await, Prometheus::start().await];
    let urls: Vec<String> = replicas.iter().map(|p| p.url()).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &urls);
    let args =
        ["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random", "--affinity-options", "sourceip"];
    // Three instances that share nothing but the endpoints file, as behind a load balancer.
    let instances = [Mpp::start(&args).await, Mpp::start(&args).await, Mpp::start(&args).await];
    for mpp in &instances {
        mpp.wait_selected(&[&urls[0], &urls[1], &urls[2]]).await;
    }
    let before = placement(&instances[0]).await;
    for mpp in &instances[1..] {
        assert_eq!(placement(mpp).await, before, "two mpp instances sent a client to different replicas");
    }
    for url in &urls {
        let share = before.iter().filter(|s| *s == url).count();
        assert!(share > 200, "{url} serves only {share} of 1000 clients");
    }

    // A replica leaves: its clients move, each the same way on every instance; no other moves.
    replicas[1].kill();
    for mpp in &instances {
        mpp.wait_selected(&[&urls[0], &urls[2]]).await;
    }
    let after = placement(&instances[0]).await;
    for mpp in &instances[1..] {
        assert_eq!(placement(mpp).await, after, "the instances disagree after a replica left");
    }
    for (was, is) in before.iter().zip(&after) {
        assert_ne!(is, &urls[1], "a client went to the replica that left");
        if was != &urls[1] {
            assert_eq!(was, is, "a client of a replica that stayed moved");
        }
    }
}
