//! mpp's own monitoring in `deploy/monitoring/`: the alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and every expression of the Grafana dashboard
//! returns data from a real Prometheus scraping a running mpp.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::tls::{Pki, Usage};
use common::{Mpp, Prometheus, endpoints_file, get, tool, wait_until};
use serde_json::Value;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring").join(file)
}

/// Runs promtool with `args`; fails the test with its output unless it succeeds.
fn promtool(args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool("promtool")).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let dir = monitoring("");
    let checked = promtool(&["check", "rules", "mpp-alerts.yaml"], &dir);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "mpp-alerts.test.yaml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every PromQL expression of the dashboard: its panels' targets (rows' panels too) and the
/// metric each `label_values(...)` variable reads.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, into: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                into.push(target["expr"].as_str().expect("a target's expr").to_string());
            }
            panels(&panel["panels"], into);
        }
    }
    let mut expressions = Vec::new();
    panels(&dashboard["panels"], &mut expressions);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values");
            let (metric, label) = inner.rsplit_once(", ").unwrap();
            expressions.push(format!("count by ({label}) ({metric})"));
        }
    }
    expressions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_data_from_a_prometheus_scraping_mpp() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("mpp-dashboard.json")).unwrap()).unwrap();
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 20, "{expressions:?}");

    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    // A client certificate for the replicas, so that its expiry is shown.
    let client = Pki::new(dir.path(), "replicas").issue("mpp", Usage::Client);
    let log = dir.path().join("queries.log");
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--routing-strategy",
        "random",
        "--backend-cert-file",
        client.cert.to_str().unwrap(),
        "--backend-key-file",
        client.key.to_str().unwrap(),
        "--query-log-file",
        log.to_str().unwrap(),
    ])
    .await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let scraper = Prometheus::start_with(&[mpp.addr.to_string()], None).await;

    let query = |expr: String| {
        let url = format!("{}/api/v1/query?query={}", scraper.url(), urlencode(&expr));
        async move {
            let answer = get(&url).await.expect("query the scraping Prometheus");
            let json: Value = serde_json::from_slice(&answer.body).expect("JSON");
            assert_eq!(json["status"], "success", "{expr}: {json}");
            json["data"]["result"].as_array().map_or(0, Vec::len)
        }
    };
    // Traffic through mpp while the scraper takes samples, so that every rate has two.
    wait_until("two scrapes of mpp's requests", Duration::from_secs(30), || async {
        for _ in 0..5 {
            assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
        }
        query("count_over_time(mpp_requests_total[1m]) >= 2".into()).await > 0
    })
    .await;
    for expr in expressions {
        let runnable = expr.replace("$__rate_interval", "1m").replace("$job", "mpp").replace("$instance", ".+");
        assert!(!runnable.contains('$'), "a Grafana variable the test does not know: {expr}");
        wait_until(&format!("data for {expr}"), Duration::from_secs(30), || async {
            query(runnable.clone()).await > 0
        })
        .await;
    }
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_name_is_one_mpp_registers() {
    // A panel that falls back to `... * 0` shows data whatever it reads, and the alerts' unit
    // tests feed them series of their own: neither would notice a misspelt name.
    let source = |file: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    // Where mpp registers its metrics: the names are the string literals there.
    let source = source("src/metrics.rs") + &source("src/expiry.rs");
    let registered: Vec<String> = source.split('"').skip(1).step_by(2).flat_map(metric_names).collect();
    assert!(registered.len() > 20, "{registered:?}");
    // A family's series add a suffix to its name (`_total`, `_bucket`, ...), after its unit's
    // (`_seconds`), which prometheus-client registers apart.
    let families = |name: &str| -> Vec<String> {
        let sampled = ["_total", "_bucket", "_count", "_sum", "_info"].iter().filter_map(|s| name.strip_suffix(s));
        let names: Vec<&str> = std::iter::once(name).chain(sampled).collect();
        let unitless = names.iter().filter_map(|n| n.strip_suffix("_seconds").or_else(|| n.strip_suffix("_bytes")));
        names.iter().copied().chain(unitless).map(String::from).collect()
    };
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("mpp-dashboard.json")).unwrap()).unwrap();
    let alerts = std::fs::read_to_string(monitoring("mpp-alerts.yaml")).unwrap();
    let used: Vec<String> =
        dashboard_expressions(&dashboard).iter().chain([&alerts]).flat_map(|t| metric_names(t)).collect();
    assert!(used.iter().any(|name| name == "mpp_retries_total"), "{used:?}");
    for name in used {
        let known = families(&name).iter().any(|family| registered.contains(family));
        assert!(known, "{name} is not a metric mpp registers: {registered:?}");
    }
}

/// The names of mpp's and the process's metrics that `text` uses.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("mpp_") || word.starts_with("process_"))
        .map(String::from)
        .collect()
}

/// `text` percent-encoded for a query string.
fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
