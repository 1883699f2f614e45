//! OpenTelemetry tracing through a running mpp: an OTLP collector on loopback (HTTP and gRPC)
//! decodes what mpp exports with the official protobuf definitions, and the replica's request
//! carries the client's trace, under mpp's attempt.
//!
//! Debian's Prometheus 2.42 is built without an OTLP exporter (its `tracing` configuration
//! installs a provider that sends nothing), so what the replica gets is shown by a replica
//! that records the requests it is sent.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::otlp::{Collector, hex};
use common::tls::RecordingReplica;
use common::{Mpp, Prometheus, endpoints_file, send, wait_until};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// The value of one of mpp's counters.
async fn counter(mpp: &Mpp, name: &str) -> f64 {
    let metrics = send(http::Request::get(mpp.url("/mpp/metrics")), Bytes::new()).await.unwrap();
    let prefix = format!("{name} ");
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{name} on /mpp/metrics"))
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_trace_passes_through_mpp_to_the_replica_over_otlp_http() {
    let collector = Collector::default();
    let at = collector.start_http().await;
    let replica = RecordingReplica::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), std::slice::from_ref(&replica.url));
    // A ratio of 0: only the client's sampled traces are kept, none of mpp's own.
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--tracing-endpoint",
        &format!("http://{at}"),
        "--tracing-protocol",
        "http",
        "--tracing-sampling-ratio",
        "0",
    ])
    .await;

    // Not traced by the client: not sampled, so nothing of it is exported.
    let untraced = send(http::Request::get(mpp.url("/api/v1/query?query=up")), Bytes::new()).await.unwrap();
    assert_eq!(untraced.status, 200);
    let traced = http::Request::post(mpp.url("/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .header("tracestate", "grafana=1");
    let answer = send(traced, Bytes::from_static(b"query=up")).await.unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // The attempt's span ends before the request's: both are waited for.
    wait_until("mpp's spans for the query", Duration::from_secs(30), || async {
        let spans = collector.spans();
        let of = |kind: SpanKind| spans.iter().any(|s| s.trace_id() == TRACE_ID && s.span.kind == kind as i32);
        of(SpanKind::Server) && of(SpanKind::Client)
    })
    .await;
    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| s.service == "mpp" && s.trace_id() == TRACE_ID),
        "only the client's trace: {spans:#?}"
    );
    let request = spans.iter().find(|s| s.span.kind == SpanKind::Server as i32).expect("mpp's span for the request");
    assert_eq!(hex(&request.span.parent_span_id), CLIENT_SPAN, "a child of the client's span");
    assert_eq!(request.span.trace_state, "grafana=1");
    assert_eq!(request.span.name, "POST /api/v1/query");
    assert_eq!(request.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(request.attribute("mpp.served_by").as_ref(), Some(&replica.url));
    let attempt = spans.iter().find(|s| s.span.kind == SpanKind::Client as i32).expect("mpp's span for the attempt");
    assert_eq!(attempt.span.parent_span_id, request.span.span_id, "the attempt is the request's child");
    assert_eq!(attempt.attribute("mpp.replica").as_ref(), Some(&replica.url));
    assert!(attempt.span.start_time_unix_nano >= request.span.start_time_unix_nano);
    assert!(attempt.span.end_time_unix_nano <= request.span.end_time_unix_nano);

    // The replica got the client's trace, with mpp's attempt as the parent, and its state.
    // The clients' queries (mpp's own probes carry no X-Forwarded-For), in order.
    let sent: Vec<http::HeaderMap> =
        replica.requests_for("/api/v1/query").into_iter().filter(|h| h.contains_key("x-forwarded-for")).collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let traced = &sent[1];
    let expected = format!("00-{TRACE_ID}-{}-01", hex(&attempt.span.span_id));
    assert_eq!(traced["traceparent"], expected.as_str());
    assert_eq!(traced["tracestate"], "grafana=1");
    // The untraced query got a context too, not sampled, so the replica does not trace it.
    let untraced = sent[0]["traceparent"].to_str().unwrap().to_owned();
    assert!(untraced.ends_with("-00") && !untraced.contains(TRACE_ID), "{untraced}");

    // What was exported is counted (once the collector has answered the export).
    wait_until("the exported spans counted", Duration::from_secs(10), || async {
        counter(&mpp, "mpp_tracing_spans_exported_total").await >= 2.0
    })
    .await;
    assert_eq!(counter(&mpp, "mpp_tracing_export_failures_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_and_its_attempts_are_spans_exported_over_otlp_grpc() {
    let collector = Collector::default();
    let at = collector.start_grpc().await;
    let (one, two) = tokio::join!(Prometheus::start(), Prometheus::start());
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[one.url(), two.url()]);
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--tracing-endpoint",
        &format!("http://{at}"),
        "--tracing-sampling-ratio",
        "1",
    ])
    .await;
    wait_until("both replicas viable", Duration::from_secs(20), || async {
        mpp.candidates_where("viable").await.len() == 2
    })
    .await;

    // Alerts are united across every replica: a merge, with an attempt on each.
    let answer = send(http::Request::get(mpp.url("/api/v1/alerts")), Bytes::new()).await.unwrap();
    assert_eq!(answer.status, 200);
    wait_until("the merge's spans", Duration::from_secs(30), || async {
        let spans = collector.spans();
        spans.iter().filter(|s| s.span.kind == SpanKind::Client as i32).count() >= 2
            && spans.iter().any(|s| s.span.name == "mpp.merge")
            && spans.iter().any(|s| s.span.name == "GET /api/v1/alerts")
    })
    .await;
    let spans = collector.spans();
    let request = spans
        .iter()
        .find(|s| s.span.name == "GET /api/v1/alerts")
        .unwrap_or_else(|| panic!("the request's span: {spans:#?}"));
    assert!(request.span.parent_span_id.is_empty(), "a root: the client sent no trace context");
    let merge = spans.iter().find(|s| s.span.name == "mpp.merge").expect("the merge's span");
    assert_eq!(merge.span.parent_span_id, request.span.span_id);
    let mut asked: Vec<String> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Client as i32 && s.span.parent_span_id == merge.span.span_id)
        .filter_map(|s| s.attribute("mpp.replica"))
        .collect();
    asked.sort();
    let mut replicas = vec![one.url(), two.url()];
    replicas.sort();
    assert_eq!(asked, replicas, "one attempt on each replica, under the merge");
    assert!(spans.iter().all(|s| s.trace_id() == request.trace_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_requests_nothing_and_is_counted() {
    let replica = RecordingReplica::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), std::slice::from_ref(&replica.url));
    // Nothing listens there.
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--tracing-endpoint",
        &nowhere,
        "--tracing-protocol",
        "http",
        "--tracing-sampling-ratio",
        "1",
    ])
    .await;
    for _ in 0..20 {
        let answer = send(http::Request::get(mpp.url("/api/v1/query?query=up")), Bytes::new()).await.unwrap();
        assert_eq!(answer.status, 200);
    }
    wait_until("the failed export counted", Duration::from_secs(30), || async {
        counter(&mpp, "mpp_tracing_export_failures_total").await > 0.0
    })
    .await;
    let answer = send(http::Request::get(mpp.url("/api/v1/query?query=up")), Bytes::new()).await.unwrap();
    assert_eq!(answer.status, 200);
}
