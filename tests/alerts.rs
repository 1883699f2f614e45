//! Alerts the replicas agree on: each replica evaluates the rules itself, and one restarted
//! forgets when an alert without `for` became active. Through mpp, `/api/v1/alerts` and the
//! alerts of `/api/v1/rules` are the union of the replicas', each alert with the earliest
//! `activeAt` any replica knows; real replicas, one restarted.

mod common;

use std::time::Duration;

use common::{Mpp, Prometheus, endpoints_file, get, wait_until};

/// A rule without `for`: it fires at its first evaluation, and Prometheus does not restore its
/// start after a restart.
const RULES: &str = "groups:\n  - name: mpp-test\n    rules:\n      - alert: AlwaysFiring\n        expr: vector(1)\n        labels: {severity: page}\n";

fn json(answer: &common::Answer) -> serde_json::Value {
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text()))
}

/// The `activeAt` of the one firing alert at `base` (a replica or mpp), once there is one.
async fn active_at(base: &str) -> String {
    let url = format!("{base}/api/v1/alerts");
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = get(&url).await
            && let Some([alert]) = json(&answer)["data"]["alerts"].as_array().map(Vec::as_slice)
            && alert["state"] == "firing"
        {
            return alert["activeAt"].as_str().expect("activeAt").to_string();
        }
        assert!(std::time::Instant::now() < give_up, "no firing alert at {base} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seconds(rfc3339: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("RFC 3339").timestamp_micros() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_start_through_mpp_survives_a_replica_restart() {
    let target = Prometheus::start().await;
    let host = target.url().trim_start_matches("http://").to_string();
    let a = Prometheus::start_replica_with_rules(std::slice::from_ref(&host), &[], RULES).await;
    let a_since = active_at(&a.url()).await;
    // B starts after A's alert fired: its own alert starts later.
    let mut b = Prometheus::start_replica_with_rules(std::slice::from_ref(&host), &[], RULES).await;
    let b_since = active_at(&b.url()).await;
    assert!(seconds(&b_since) > seconds(&a_since), "{b_since} after {a_since}");

    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    for _ in 0..10 {
        assert_eq!(active_at(&mpp.url("")).await, a_since, "the earliest start, whichever replica serves");
    }

    // B restarts and forgets: alone, it would show the alert as new.
    b.start_again().await;
    wait_until("B's alert fires again, with a new start", Duration::from_secs(30), || async {
        seconds(&active_at(&b.url()).await) > seconds(&b_since)
    })
    .await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    for _ in 0..10 {
        assert_eq!(active_at(&mpp.url("")).await, a_since, "through mpp the start is unchanged");
    }

    // The rules' alerts agree too, and the rule fires.
    let rules = json(&get(&mpp.url("/api/v1/rules")).await.unwrap());
    let rule = &rules["data"]["groups"][0]["rules"][0];
    assert_eq!(rule["name"], "AlwaysFiring");
    assert_eq!(rule["state"], "firing");
    assert_eq!(rule["alerts"][0]["activeAt"], a_since.as_str());
    assert_eq!(rule["alerts"].as_array().unwrap().len(), 1, "one alert, not one per replica");

    // Metadata is united the same way: replicas scraping the same target agree, and the
    // union through mpp is what each holds.
    for path in ["/api/v1/metadata?metric=up", "/api/v1/targets/metadata?metric=up"] {
        let through = get(&mpp.url(path)).await.unwrap();
        assert!(through.headers.contains_key("mpp-merged-from"), "{path}: asked of every replica");
        let direct = json(&get(&format!("{}{path}", a.url())).await.unwrap());
        assert_eq!(json(&through)["data"], direct["data"], "{path}");
    }
}
