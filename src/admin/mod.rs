//! The admin paths under `/mpp/`: `health` (liveness: the process answers), `ready`
//! (readiness: at least one replica is selected), `metrics` (OpenMetrics text) and
//! `status` (HTML, or JSON for `Accept: application/json`). All read one published
//! [`Snapshot`]; none of them touches a backend.

mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::metrics::Metrics;
use crate::proxy::affinity::AffinityOptions;
use crate::selection::Snapshot;
use crate::strategy::Strategy;

pub use status::Status;

/// The fixed facts the status page shows beside the snapshot.
#[derive(Debug, Clone)]
pub struct Facts {
    /// When mpp started.
    pub started: SystemTime,
    /// The routing strategy.
    pub strategy: Strategy,
    /// The selection interval.
    pub interval: Duration,
    /// The sticky-session modes.
    pub affinity: AffinityOptions,
    /// The discovery source, described.
    pub discovery: String,
}

/// Serves the admin paths.
#[derive(Clone)]
pub struct Admin {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    facts: Arc<Facts>,
    cache: Option<Arc<crate::cache::Cache>>,
}

impl Admin {
    /// The admin paths over the given state.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        facts: Facts,
        cache: Option<Arc<crate::cache::Cache>>,
    ) -> Self {
        Admin { snapshot, metrics, facts: Arc::new(facts), cache }
    }

    /// Answers a request whose path starts with `/mpp/`.
    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are allowed here\n");
        }
        match request.uri().path() {
            "/mpp/health" => text(StatusCode::OK, "OK"),
            "/mpp/ready" => {
                let snapshot = self.snapshot.load();
                if snapshot.selected.is_empty() {
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        format!("not ready: {}\n", snapshot.reason),
                    )
                } else {
                    text(StatusCode::OK, "ready")
                }
            }
            "/mpp/metrics" => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/mpp/status" => {
                let cache = self.cache.as_ref().map(|cache| cache.summary(10));
                let status = Status::new(&self.facts, &self.snapshot.load(), cache);
                if wants_json(request) {
                    let json = serde_json::to_string_pretty(&status).expect("the status always serializes");
                    respond(StatusCode::OK, "application/json", json)
                } else {
                    respond(StatusCode::OK, "text/html; charset=utf-8", status.html())
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; mpp serves /mpp/health, /mpp/ready, /mpp/metrics and /mpp/status\n",
            ),
        }
    }
}

fn wants_json<B>(request: &Request<B>) -> bool {
    let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let query = request.uri().query().unwrap_or("");
    (accept.contains("application/json") && !accept.contains("text/html")) || query.contains("format=json")
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
