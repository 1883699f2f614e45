//! DNS discovery against a real DNS server (dnsmasq on loopback): `dns+` names' A and AAAA
//! records and `dnssrv+` names' SRV records become candidates, follow the records as they
//! change, keep their last good answer while the server is away, and bad records are reported
//! while the other candidates keep serving.

mod common;

use std::time::Duration;

use common::dns::{CnameLoop, Dnsmasq, srv};
use common::{Mpp, Prometheus, free_port, get, wait_until};
use tempfile::TempDir;

const QUERY: &str = "/api/v1/query?query=up";

/// mpp over an endpoints file of `lines`, asking `dns` for names, with rounds every 500 ms.
async fn mpp_over(dns: &Dnsmasq, lines: &[String]) -> (Mpp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = common::endpoints_file(dir.path(), lines);
    let dns_server = dns.addr();
    let args = [
        "--endpoints-file",
        file.to_str().unwrap(),
        "--dns-server",
        &dns_server,
        "--routing-strategy",
        "random",
        "--selection-interval",
        "500ms",
    ];
    (Mpp::start(&args).await, dir)
}

async fn candidates(mpp: &Mpp) -> Vec<String> {
    let status = mpp.status().await;
    let mut urls: Vec<String> =
        status["candidates"].as_array().unwrap().iter().map(|c| c["url"].as_str().unwrap().to_string()).collect();
    urls.sort();
    urls
}

async fn wait_candidates(mpp: &Mpp, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(&format!("candidates {want:?}"), Duration::from_secs(20), || {
        let want = want.clone();
        async move { candidates(mpp).await == want }
    })
    .await;
}

async fn problems(mpp: &Mpp) -> Vec<String> {
    let status = mpp.status().await;
    status["discovery_problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// Queries through mpp `times` times; every answer is a 200, and the replicas that served.
async fn served(mpp: &Mpp, times: usize) -> Vec<String> {
    let mut served = Vec::new();
    for _ in 0..times {
        let answer = get(&mpp.url(QUERY)).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        served.push(answer.served_by().unwrap());
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_records_become_candidates_follow_changes_and_outlive_the_server() {
    // Three replicas at one port, at three loopback addresses (one of them IPv6).
    let port = free_port();
    let (two, three, six) = (
        Prometheus::start_at("127.0.0.2", port).await,
        Prometheus::start_at("127.0.0.3", port).await,
        Prometheus::start_at("[::1]", port).await,
    );
    let mut dns = Dnsmasq::start("127.0.0.2 prom.test\n::1 prom.test\n", &[]).await;
    let name = format!("dns+http://prom.test:{port}");
    let (mpp, _dir) = mpp_over(&dns, std::slice::from_ref(&name)).await;
    wait_candidates(&mpp, &[&two.url(), &six.url()]).await;
    mpp.wait_selected(&[&two.url(), &six.url()]).await;
    let answers = served(&mpp, 20).await;
    assert!(answers.iter().all(|s| *s == two.url() || *s == six.url()), "{answers:?}");

    // A replica added to the records is used within a round or two.
    dns.set_hosts("127.0.0.2 prom.test\n127.0.0.3 prom.test\n::1 prom.test\n").await;
    wait_candidates(&mpp, &[&two.url(), &three.url(), &six.url()]).await;
    mpp.wait_selected(&[&two.url(), &three.url(), &six.url()]).await;

    // One removed is never used again.
    dns.set_hosts("127.0.0.3 prom.test\n::1 prom.test\n").await;
    wait_candidates(&mpp, &[&three.url(), &six.url()]).await;
    let answers = served(&mpp, 40).await;
    assert!(!answers.contains(&two.url()), "a replica no longer in DNS served: {answers:?}");
    assert!(problems(&mpp).await.is_empty(), "{:?}", problems(&mpp).await);

    // The server gone: the last good answer stays, and the status page says why.
    dns.kill();
    wait_until("the failed lookup on /mpp/status", Duration::from_secs(30), || async {
        problems(&mpp).await.iter().any(|p| p.contains(&name) && p.contains("lookup failed"))
    })
    .await;
    assert_eq!(candidates(&mpp).await, {
        let mut kept = vec![three.url(), six.url()];
        kept.sort();
        kept
    });
    served(&mpp, 10).await;
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    for result in ["ok", "error"] {
        let series = format!("mpp_dns_lookups_total{{name=\"{name}\",result=\"{result}\"}}");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_records_name_targets_and_ports_and_bad_names_are_reported_while_the_rest_serve() {
    let (a, b, plain) = (Prometheus::start().await, Prometheus::start().await, Prometheus::start().await);
    let port = |p: &Prometheus| p.url().rsplit_once(':').unwrap().1.to_string();
    let record = |target: &str, port: &str| srv("_web._tcp.prom.test", target, port);
    let looping = CnameLoop::start().await;
    let mut dns = Dnsmasq::start(
        "127.0.0.1 a.test\n",
        &[
            record("a.test", &port(&a)),
            record("a.test", &port(&b)),
            // Bad records: a port of 0, a target with no address.
            record("a.test", "0"),
            record("noaddr.test", "9090"),
            // A zone whose server answers with a CNAME loop.
            looping.forward("loop.test"),
        ],
    )
    .await;
    let lines = [
        "dnssrv+http://_web._tcp.prom.test".to_string(),
        // A name that does not exist, and a service with no record.
        "dns+http://missing.test:9090".to_string(),
        "dnssrv+http://_none._tcp.prom.test".to_string(),
        "dns+http://loop1.loop.test:9090".to_string(),
        plain.url(),
    ];
    let (mpp, _dir) = mpp_over(&dns, &lines).await;
    wait_candidates(&mpp, &[&a.url(), &b.url(), &plain.url()]).await;
    mpp.wait_selected(&[&a.url(), &b.url(), &plain.url()]).await;
    let reported = problems(&mpp).await;
    let wanted = [
        "names port 0",
        "noaddr.test has no address",
        "missing.test does not exist",
        "_none._tcp.prom.test",
        // A CNAME loop ends in no address.
        "loop1.loop.test has no A or AAAA record",
    ];
    for wanted in wanted {
        assert!(reported.iter().any(|p| p.contains(wanted)), "no problem saying {wanted:?} in {reported:?}");
    }
    let page = get(&mpp.url("/mpp/status")).await.unwrap().text();
    assert!(page.contains("missing.test does not exist"), "the HTML status page shows the problems too");
    served(&mpp, 10).await;

    // A record removed takes its candidate away; the plain URL stays.
    dns.set_records(&[record("a.test", &port(&b))]).await;
    wait_candidates(&mpp, &[&b.url(), &plain.url()]).await;
    let answers = served(&mpp, 30).await;
    assert!(!answers.contains(&a.url()), "{answers:?}");
}
