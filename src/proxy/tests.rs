//! The request path end to end, over [`FakeReplicas`] and paused time: where an attempt
//! goes, what the client gets, and what the answer says about how it was made.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::fake::{FakeReplicas, Reply};
use super::route::tests::with_holes;
use super::{Proxy, ProxySettings, body::BodyLimits, headers};
use crate::metrics::Metrics;
use crate::registry::Replica;
use crate::registry::tests::replicas;
use crate::selection::{CandidateState, Snapshot};
use crate::via::Pseudonym;

const SERIES_A: &str = r#"{"status":"success","data":[{"__name__":"up","job":"a"}]}"#;
const SERIES_B: &str = r#"{"status":"success","data":[{"__name__":"up","job":"b"}]}"#;
const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

/// Two replicas, `a` and `b`, at `http://a:1` and `http://b:1`, and their fakes.
fn two() -> (FakeReplicas, Arc<Replica>, Arc<Replica>) {
    let all = replicas(&["http://a:1", "http://b:1"]);
    (FakeReplicas::default(), all[0].clone(), all[1].clone())
}

/// A settled snapshot with `selected` selected and `viable` viable.
fn snapshot(selected: &[&Arc<Replica>], viable: &[&Arc<Replica>]) -> Snapshot {
    Snapshot {
        selected: selected.iter().map(|r| Arc::clone(r)).collect(),
        viable: viable.iter().map(|r| Arc::clone(r)).collect(),
        settled: true,
        ..Snapshot::empty()
    }
}

/// The request path over `fake`, routing by `snapshot`, with mpp's defaults except where
/// `tune` says otherwise.
fn proxy(
    fake: &FakeReplicas,
    snapshot: Snapshot,
    tune: impl FnOnce(&mut ProxySettings<FakeReplicas>),
) -> Proxy<FakeReplicas> {
    let (reselect, _) = mpsc::channel(1);
    let mut settings = ProxySettings {
        pool: fake.clone(),
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        metrics: Arc::new(Metrics::new()),
        affinity: Default::default(),
        reselect,
        body: BodyLimits {
            max: 1 << 20,
            min_rate: 0,
            grace: Duration::from_secs(10),
            budget: Arc::new(Semaphore::new(1 << 20)),
            budget_bytes: 1 << 20,
        },
        request_timeout: Duration::from_secs(30),
        max_backend_connections: 8,
        pseudonym: Pseudonym::random(),
        trusted_proxies: super::client_ip::TrustedProxies::everyone(),
        credentials: None,
        coverage_routing: false,
        merge_max_bytes: 1 << 20,
        max_fanout_per_client: 64,
        admin_api: crate::proxy::broadcast::AdminApi::Refuse,
        query_log: None,
        tracer: None,
        cache: None,
    };
    tune(&mut settings);
    Proxy::new(settings)
}

/// The client's answer to `method target`: status, head and body.
async fn ask(proxy: &Proxy<FakeReplicas>, method: Method, target: &str) -> (StatusCode, HeaderMap, String) {
    let request = Request::builder().method(method).uri(target).body(Full::new(Bytes::new())).expect("a valid request");
    let response = proxy.handle(request, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the answer's body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A query on `a`, which answers with `reply`, and `b`, which answers it: `a` is the
/// selection, `b` is viable, where a failed attempt goes next. The query's answer must come
/// from `b`, after `a`, and say so.
async fn query_failing_over_from_a(reply: Reply) -> (FakeReplicas, Proxy<FakeReplicas>, HeaderMap, String) {
    let (fake, a, b) = two();
    fake.answer("a:1", reply);
    fake.answer("b:1", Reply::Json(VECTOR));
    let proxy = proxy(&fake, snapshot(&[&a], &[&a, &b]), |_| {});
    let (status, headers, body) = ask(&proxy, Method::GET, "/api/v1/query?query=up").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.asked(), ["a:1", "b:1"]);
    assert_eq!(header(&headers, &headers::FAILOVER_FROM), "http://a:1");
    (fake, proxy, headers, body)
}

#[tokio::test(start_paused = true)]
async fn a_refused_query_fails_over_to_another_replica_and_the_answer_names_the_one_that_failed() {
    let (_, _, headers, body) = query_failing_over_from_a(Reply::Refuse).await;
    assert_eq!(header(&headers, &headers::SERVED_BY), "http://b:1");
    assert!(body.contains(r#""infos":["mpp: answered by http://b:1 after http://a:1 failed"]"#), "{body}");
    assert!(!body.contains("warnings"), "a whole answer has no warning: {body}");
}

#[tokio::test(start_paused = true)]
async fn a_replica_not_ready_is_passed_over_and_its_own_503_is_the_answer_when_no_other_is_left() {
    let (fake, _, _, _) = query_failing_over_from_a(Reply::NotReady).await;
    let a = replicas(&["http://a:1"]).remove(0);
    let alone = proxy(&fake, snapshot(&[&a], &[&a]), |_| {});
    let (status, headers, body) = ask(&alone, Method::GET, "/api/v1/query?query=up").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Service Unavailable", "the replica's own answer, as it is");
    assert_eq!(header(&headers, &headers::SERVED_BY), a.url());
}

#[tokio::test(start_paused = true)]
async fn an_api_error_answer_is_the_clients_as_it_is_and_no_failure() {
    const BAD_DATA: &str = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
    let (fake, a, b) = two();
    fake.answer("a:1", Reply::JsonStatus(StatusCode::BAD_REQUEST, BAD_DATA));
    fake.answer("b:1", Reply::Json(VECTOR));
    let proxy = proxy(&fake, snapshot(&[&a], &[&a, &b]), |_| {});
    for _ in 0..super::retry::EJECT_AFTER_FAILURES {
        let (status, _, body) = ask(&proxy, Method::GET, "/api/v1/query?query=up(").await;
        assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, BAD_DATA));
    }
    assert_eq!(fake.asked(), ["a:1", "a:1", "a:1"], "not tried elsewhere");
    assert!(!a.health().is_down(), "an API error does not count against the replica");
}

#[tokio::test(start_paused = true)]
async fn the_last_resort_is_tried_when_no_replica_is_usable_and_its_failure_says_so() {
    let (fake, a, _) = two();
    a.health().mark_down();
    let mut last = snapshot(&[], &[]);
    last.reason = "every probe failed".into();
    last.candidates.push(CandidateState {
        replica: a.clone(),
        probe: Default::default(),
        selected: false,
        data: Default::default(),
    });
    let proxy = proxy(&fake, last, |_| {});

    fake.answer("a:1", Reply::Json(VECTOR));
    let (status, headers, _) = ask(&proxy, Method::GET, "/api/v1/query?query=up").await;
    assert_eq!(status, StatusCode::OK, "a replica found down may still answer");
    assert_eq!(header(&headers, &headers::SERVED_BY), a.url());

    fake.answer("a:1", Reply::Refuse);
    let (status, _, body) = ask(&proxy, Method::GET, "/api/v1/query?query=up").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("tried although every probe failed"), "{body}");
    assert_eq!(fake.asked(), ["a:1", "a:1"], "one attempt each: no other candidate");
}

#[tokio::test(start_paused = true)]
async fn a_request_ends_at_its_deadline_and_is_not_sent_again() {
    let (fake, a, b) = two();
    fake.answer("a:1", Reply::Hang);
    fake.answer("b:1", Reply::Json(VECTOR));
    let proxy = proxy(&fake, snapshot(&[&a], &[&a, &b]), |s| s.request_timeout = Duration::from_secs(2));
    let started = Instant::now();
    let (status, _, body) = ask(&proxy, Method::GET, "/api/v1/query?query=up").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(body.contains("http://a:1"), "{body}");
    assert_eq!(fake.asked(), ["a:1"], "a query that timed out is not run on another replica");
    assert!(fake.seen()[0].target.contains("timeout="), "the replica is told the time left: {:?}", fake.seen());
}

#[tokio::test(start_paused = true)]
async fn a_replica_answering_garbage_loses_a_query_to_another_and_a_write_gets_a_502() {
    let (fake, proxy, _, _) = query_failing_over_from_a(Reply::Garbage).await;
    // A request that may not be replayed (not a query, and not one mpp sends to every
    // replica): VictoriaMetrics's import, say.
    let (status, _, body) = ask(&proxy, Method::POST, "/api/v1/import").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("invalid HTTP status line"), "{body}");
    assert_eq!(fake.asked(), ["a:1", "b:1", "a:1"], "a write that may have reached a is not sent to b");
}

#[tokio::test(start_paused = true)]
async fn a_remote_write_goes_to_every_viable_replica_once_and_fails_if_one_fails() {
    const WRITTEN: &str = "";
    let (fake, a, b) = two();
    fake.answer("a:1", Reply::JsonStatus(StatusCode::NO_CONTENT, WRITTEN));
    fake.answer("b:1", Reply::JsonStatus(StatusCode::NO_CONTENT, WRITTEN));
    // Only a is selected; b, viable, scrapes too and must be written to as well.
    let proxy = proxy(&fake, snapshot(&[&a], &[&a, &b]), |_| {});
    let (status, headers, _) = ask(&proxy, Method::POST, "/api/v1/write").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&headers, &headers::SENT_TO), "http://a:1, http://b:1");
    let mut asked = fake.asked();
    asked.sort();
    assert_eq!(asked, ["a:1", "b:1"]);

    fake.answer("b:1", Reply::Garbage);
    let (status, _, body) = ask(&proxy, Method::POST, "/api/v1/write").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the sender resends: {body}");
    assert!(body.contains("http://a:1 answered 204") && body.contains("http://b:1 failed"), "{body}");
    assert_eq!(fake.asked().len(), 4, "each replica asked once more, none twice");

    // A refusal every replica shares is the sender's as it is.
    const BAD: &str = r#"{"status":"error","errorType":"bad_data","error":"out of order sample"}"#;
    fake.answer("a:1", Reply::JsonStatus(StatusCode::BAD_REQUEST, BAD));
    fake.answer("b:1", Reply::JsonStatus(StatusCode::BAD_REQUEST, BAD));
    let (status, _, body) = ask(&proxy, Method::POST, "/api/v1/write").await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, BAD));
}

#[tokio::test(start_paused = true)]
async fn admin_requests_are_refused_unless_sent_to_all_and_then_reach_every_replica() {
    let (fake, a, b) = two();
    fake.answer("a:1", Reply::JsonStatus(StatusCode::NO_CONTENT, ""));
    fake.answer("b:1", Reply::JsonStatus(StatusCode::NO_CONTENT, ""));
    let refusing = proxy(&fake, snapshot(&[&a, &b], &[&a, &b]), |_| {});
    let (status, _, body) = ask(&refusing, Method::POST, "/api/v1/admin/tsdb/delete_series?match[]=up").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(r#""errorType":"forbidden""#) && body.contains("--admin-api all"), "{body}");
    assert!(fake.asked().is_empty(), "nothing reaches a replica");

    let all = proxy(&fake, snapshot(&[&a, &b], &[&a, &b]), |s| s.admin_api = super::AdminApi::All);
    let (status, _, _) = ask(&all, Method::POST, "/api/v1/admin/tsdb/delete_series?match[]=up").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut asked = fake.asked();
    asked.sort();
    assert_eq!(asked, ["a:1", "b:1"]);
}

/// The request path over `a` and `b` where neither holds all of 0 s to 90 s: a series
/// query over it is merged, b (missing 2 s) the primary.
fn merging(fake: &FakeReplicas, a: &Arc<Replica>, b: &Arc<Replica>, merge_max_bytes: u64) -> Proxy<FakeReplicas> {
    with_holes(a, &[(10_000, 20_000)]);
    with_holes(b, &[(50_000, 52_000)]);
    fake.answer("a:1", Reply::Json(SERIES_A));
    fake.answer("b:1", Reply::Json(SERIES_B));
    proxy(fake, snapshot(&[a, b], &[a, b]), |s| {
        s.coverage_routing = true;
        s.merge_max_bytes = merge_max_bytes;
    })
}

const SERIES_QUERY: &str = "/api/v1/series?match%5B%5D=up&start=0&end=90";

#[tokio::test(start_paused = true)]
async fn a_merge_within_merge_max_bytes_answers_with_both_replicas_series() {
    let (fake, a, b) = two();
    let proxy = merging(&fake, &a, &b, 1 << 20);
    let (status, headers, body) = ask(&proxy, Method::GET, SERIES_QUERY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, &headers::MERGED_FROM), "http://b:1, http://a:1");
    assert!(body.contains(r#""job":"a""#) && body.contains(r#""job":"b""#), "{body}");
    assert!(body.contains(r#""infos":["mpp: merged from replicas http://b:1, http://a:1"#), "{body}");
    assert!(!body.contains("warnings"), "a whole union has no warning: {body}");
}

#[tokio::test(start_paused = true)]
async fn a_union_is_cut_to_the_clients_limit_with_prometheuss_warning() {
    let (fake, a, b) = two();
    let proxy = merging(&fake, &a, &b, 1 << 20);
    let (status, _, body) = ask(&proxy, Method::GET, &format!("{SERIES_QUERY}&limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""job":"b""#) && !body.contains(r#""job":"a""#), "the primary's first: {body}");
    assert!(body.contains(r#""warnings":["results truncated due to limit"]"#), "{body}");
    // A limit the union does not reach cuts nothing and warns of nothing.
    let (_, _, body) = ask(&proxy, Method::GET, &format!("{SERIES_QUERY}&limit=2")).await;
    assert!(body.contains(r#""job":"a""#) && !body.contains("truncated"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_merge_over_merge_max_bytes_streams_the_primarys_answer_alone_with_a_warning() {
    let (fake, a, b) = two();
    let proxy = merging(&fake, &a, &b, 16);
    let (status, headers, body) = ask(&proxy, Method::GET, SERIES_QUERY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, SERIES_B, "the primary's answer, whole and as it was");
    assert_eq!(header(&headers, &headers::SERVED_BY), b.url());
    assert_eq!(header(&headers, &headers::MPP_WARNING), "not merged: the answer is over --merge-max-bytes 16");
    assert!(headers.get(&headers::MERGED_FROM).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_clients_merges_in_flight_are_bounded_and_the_rest_are_one_replicas_answer_with_a_warning() {
    let (fake, a, b) = two();
    with_holes(&a, &[(10_000, 20_000)]);
    with_holes(&b, &[(50_000, 52_000)]);
    // a hangs: every merge that asks it stays in flight until its deadline.
    fake.answer("a:1", Reply::Hang);
    fake.answer("b:1", Reply::Json(SERIES_B));
    let proxy = proxy(&fake, snapshot(&[&a, &b], &[&a, &b]), |s| {
        s.coverage_routing = true;
        s.max_fanout_per_client = 2;
    });
    let asks = (0..10).map(|_| ask(&proxy, Method::GET, SERIES_QUERY));
    let answers = futures_util::future::join_all(asks).await;
    let limited: Vec<_> =
        answers.iter().filter(|(_, headers, _)| headers.get(&headers::MPP_WARNING).is_some()).collect();
    assert_eq!(limited.len(), 8, "two merges of one added request each fit in 2");
    for (status, headers, body) in limited {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(body, SERIES_B, "the primary's answer alone");
        assert!(header(headers, &headers::MPP_WARNING).contains("--max-fanout-per-client"));
    }
    let to_a = fake.asked().iter().filter(|authority| *authority == "a:1").count();
    assert_eq!(to_a, 2, "only the merges within the bound asked the other replica");
    // Once they are done, the client's share is back.
    fake.answer("a:1", Reply::Json(SERIES_A));
    let (_, headers, body) = ask(&proxy, Method::GET, SERIES_QUERY).await;
    assert!(headers.get(&headers::MPP_WARNING).is_none() && body.contains(r#""job":"a""#), "{body}");
}
