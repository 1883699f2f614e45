//! Probing: asking one backend how it is. A probe answers three questions, each within its
//! own deadline so that one hung replica delays nothing else: is it *viable* (answers
//! `/-/ready` and an instant query for `up` within [`READY_TIMEOUT`]), how much data has it
//! ingested (from its `/metrics`), and, for `minimum-history`, does it hold data old enough.
//! A whole probe never takes longer than [`PROBE_TIMEOUT`].

pub mod exposition;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use crate::backend::Backend;
use crate::client::HttpClient;
use crate::credentials::Credentials;
use crate::error::error_chain;

/// How long a replica may take to say it is ready and to answer the `up` query.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one whole probe may take, `/metrics` included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest probe answer read (a replica's `/metrics` is typically under 200 KiB).
const MAX_PROBE_BODY: usize = 16 << 20;

/// The counter of samples written to the head block: Prometheus 2.x and 3.x (2.42 and later
/// split it by `type`, so it is summed over its series).
pub const SAMPLES_METRIC: &str = "prometheus_tsdb_head_samples_appended_total";
/// Prometheus 1.x's counter, read when the 2.x one is absent.
pub const SAMPLES_METRIC_1X: &str = "prometheus_local_storage_ingested_samples_total";

/// What one probe learned about a backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// `/-/ready` answered 2xx in time.
    pub ready: bool,
    /// An instant query for `up` answered `"status":"success"` in time.
    pub answers_up: bool,
    /// Samples ingested since the replica started, when `/metrics` could be read.
    pub samples: Option<f64>,
    /// The replica's process start time (Unix seconds), from `process_start_time_seconds`.
    pub start_time: Option<f64>,
    /// The newest sample time in its head block (Unix seconds), from
    /// `prometheus_tsdb_head_max_time_seconds`: how far its ingestion has got.
    pub head_max_time: Option<f64>,
    /// The oldest sample time it holds (Unix seconds), from
    /// `prometheus_tsdb_lowest_timestamp_seconds`: where its retention begins.
    pub lowest_time: Option<f64>,
    /// Whether it has `up` samples at now minus the minimum history (asked only for
    /// `minimum-history`).
    pub has_history: Option<bool>,
    /// The first thing that went wrong, if anything did.
    pub error: Option<String>,
    /// How long the probe took.
    pub took: Duration,
}

impl Probe {
    /// A viable replica may serve traffic.
    pub fn viable(&self) -> bool {
        self.ready && self.answers_up
    }

    fn note(&mut self, error: String) {
        self.error.get_or_insert(error);
    }
}

/// Probes backends with the shared client.
#[derive(Clone)]
pub struct Prober {
    client: HttpClient,
    history: Option<Duration>,
    /// Sent as `Via`, so that a candidate that is mpp itself answers 508.
    via: http::HeaderValue,
    credentials: Option<Arc<Credentials>>,
}

impl Prober {
    /// `history` is the minimum history to ask about, if the strategy needs it.
    /// `via` is this mpp's `Via` entry ([`crate::via::Pseudonym::via`]).
    pub fn new(client: HttpClient, history: Option<Duration>, via: http::HeaderValue) -> Self {
        Prober { client, history, via, credentials: None }
    }

    /// The same prober, sending these credentials to the replicas.
    pub fn with_credentials(self, credentials: Option<Arc<Credentials>>) -> Self {
        Prober { credentials, ..self }
    }

    /// Probes one backend; never takes longer than [`PROBE_TIMEOUT`] and never fails: what
    /// went wrong is recorded in the [`Probe`].
    pub async fn probe(&self, backend: &Backend) -> Probe {
        let started = Instant::now();
        let mut probe = Probe::default();
        let viability = tokio::time::timeout(READY_TIMEOUT, async {
            tokio::join!(self.get(backend, "/-/ready"), self.query_has_result(backend, "count(up)", None))
        });
        let metrics = self.get(backend, "/metrics");
        let history = async {
            match self.history {
                Some(d) => Some(self.query_has_result(backend, "count(up)", Some(d)).await),
                None => None,
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, async { tokio::join!(viability, metrics, history) }).await {
            Err(_) => probe.note(format!("no complete answer within {PROBE_TIMEOUT:?}")),
            Ok((viability, metrics, history)) => {
                match viability {
                    Err(_) => probe.note(format!("not ready within {READY_TIMEOUT:?}")),
                    Ok((ready, up)) => {
                        probe.ready = ready.map_err(|e| probe.note(e)).is_ok();
                        probe.answers_up = up.map_err(|e| probe.note(e)).is_ok();
                    }
                }
                match metrics.and_then(|body| read_metrics(&body)) {
                    Ok(read) => {
                        probe.samples = Some(read.samples);
                        probe.start_time = read.start_time;
                        probe.head_max_time = read.head_max_time;
                        probe.lowest_time = read.lowest_time;
                    }
                    Err(e) => probe.note(e),
                }
                probe.has_history = history.and_then(|h| h.map_err(|e| probe.note(e)).ok());
            }
        }
        probe.took = started.elapsed();
        probe
    }

    /// The liveness check: `/-/ready` answers 2xx within `timeout`.
    pub async fn ready(&self, backend: &Backend, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.get(backend, "/-/ready")).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(format!("GET /-/ready: no answer within {timeout:?}")),
        }
    }

    /// Runs an instant query (at now minus `ago`, if given); `Ok(true)` when it returned at
    /// least one series.
    async fn query_has_result(&self, backend: &Backend, query: &str, ago: Option<Duration>) -> Result<bool, String> {
        let mut path = format!("/api/v1/query?query={}", encode_query(query));
        if let Some(ago) = ago {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let at = now.saturating_sub(ago).as_secs_f64();
            path.push_str(&format!("&time={at:.3}"));
        }
        let body = self.get(backend, &path).await?;
        query_has_result(&body).map_err(|e| format!("query {query}: {e}"))
    }

    pub(crate) async fn get(&self, backend: &Backend, path: &str) -> Result<Bytes, String> {
        let what = path.split('?').next().unwrap_or(path);
        let pq: PathAndQuery = path.parse().map_err(|e| format!("GET {what}: {e}"))?;
        let uri = backend.uri(&pq).map_err(|e| format!("GET {what}: {e}"))?;
        let mut request = Request::get(uri)
            .header(header::ACCEPT, "text/plain;version=0.0.4, application/json;q=0.9, */*;q=0.1")
            .header(header::USER_AGENT, concat!("mpp/", env!("CARGO_PKG_VERSION"), " (probe)"))
            .header(header::VIA, self.via.clone())
            .body(Full::default())
            .map_err(|e| format!("GET {what}: {e}"))?;
        if let Some(credentials) = &self.credentials {
            credentials.insert(request.headers_mut());
        }
        let response = self.client.request(request).await.map_err(|e| format!("GET {what}: {}", error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {what}: reading the answer: {}", error_chain(e.as_ref())))?
            .to_bytes();
        if status == http::StatusCode::LOOP_DETECTED {
            return Err(format!(
                "GET {what}: HTTP {status}: this endpoint is this mpp itself, or forwards back to it; \
                 it is never selected (remove it from discovery)"
            ));
        }
        if !status.is_success() {
            return Err(format!("GET {what}: HTTP {status}"));
        }
        Ok(body)
    }
}

/// What a replica's `/metrics` says about its data.
#[derive(Debug, PartialEq)]
struct DataMetrics {
    samples: f64,
    start_time: Option<f64>,
    head_max_time: Option<f64>,
    lowest_time: Option<f64>,
}

/// Reads the samples counter, the process start time and the TSDB's time bounds from a
/// `/metrics` answer.
fn read_metrics(body: &[u8]) -> Result<DataMetrics, String> {
    let text = std::str::from_utf8(body).map_err(|_| "GET /metrics: not UTF-8 text".to_string())?;
    let samples = exposition::parse(text).map_err(|e| format!("GET /metrics: {e}"))?;
    // Prometheus 2.42+ creates the counter's series with the first sample of each type, so a
    // replica that has ingested nothing yet has none: that is zero, not unknown.
    let ingested = exposition::sum(&samples, SAMPLES_METRIC)
        .or_else(|| exposition::sum(&samples, SAMPLES_METRIC_1X))
        .unwrap_or(0.0);
    // Before the first sample, Prometheus reports the extremes of int64 milliseconds; those
    // are "nothing yet", not times.
    let time = |name| exposition::sum(&samples, name).filter(|t: &f64| t.abs() < 1e13);
    Ok(DataMetrics {
        samples: ingested,
        start_time: exposition::sum(&samples, "process_start_time_seconds"),
        head_max_time: time("prometheus_tsdb_head_max_time_seconds"),
        lowest_time: time("prometheus_tsdb_lowest_timestamp_seconds"),
    })
}

/// Reads a Prometheus API answer to an instant query: `Ok(true)` when it succeeded with at
/// least one result, `Ok(false)` when it succeeded empty, the API's error otherwise.
pub fn query_has_result(body: &[u8]) -> Result<bool, String> {
    let answer: QueryAnswer = serde_json::from_slice(body).map_err(|e| format!("not a Prometheus API answer ({e})"))?;
    if answer.status != "success" {
        return Err(answer.error.unwrap_or(answer.status));
    }
    Ok(answer.data.is_some_and(|d| !d.result.is_empty()))
}

/// Percent-encodes a PromQL expression for a query string.
pub(crate) fn encode_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len() * 3);
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct QueryAnswer {
    status: String,
    error: Option<String>,
    data: Option<QueryData>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(default)]
    result: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_2x_counter_and_falls_back_to_1x() {
        let two = b"prometheus_tsdb_head_samples_appended_total{type=\"float\"} 10\n\
            prometheus_tsdb_head_samples_appended_total{type=\"histogram\"} 5\n\
            process_start_time_seconds 100\n";
        let read = read_metrics(two).unwrap();
        assert_eq!((read.samples, read.start_time), (15.0, Some(100.0)));
        let one = b"prometheus_local_storage_ingested_samples_total 7\n";
        assert_eq!((read_metrics(one).unwrap().samples, read_metrics(one).unwrap().start_time), (7.0, None));
        assert_eq!(read_metrics(b"up 1\n").unwrap().samples, 0.0);
        assert!(read_metrics(b"m{ 1\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn reads_the_tsdb_time_bounds_and_ignores_the_empty_extremes() {
        let text = b"prometheus_tsdb_head_max_time_seconds 1.7e+09\n\
            prometheus_tsdb_lowest_timestamp_seconds 1.6e+09\n";
        let read = read_metrics(text).unwrap();
        assert_eq!((read.head_max_time, read.lowest_time), (Some(1.7e9), Some(1.6e9)));
        let empty = b"prometheus_tsdb_head_max_time_seconds -9.223372036854776e+15\n\
            prometheus_tsdb_lowest_timestamp_seconds 9.223372036854776e+15\n";
        let read = read_metrics(empty).unwrap();
        assert_eq!((read.head_max_time, read.lowest_time), (None, None));
    }

    #[test]
    fn reads_query_answers() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#;
        assert_eq!(query_has_result(vector), Ok(true));
        assert_eq!(query_has_result(br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#), Ok(false));
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(query_has_result(error), Err("parse error".into()));
        assert!(query_has_result(b"<html>").is_err());
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(encode_query("count(up)"), "count%28up%29");
    }
}
