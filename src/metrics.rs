//! Every metric mpp exports on `/mpp/metrics`, defined in one place. The names follow
//! Prometheus conventions; the README maps the original mpp's names to these.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Labels of a proxied request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The replica that answered, or `none`.
    pub backend: Arc<str>,
    /// The HTTP status code the client got.
    pub code: u16,
}

/// A label naming one backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The replica's base URL.
    pub backend: Arc<str>,
}

/// A label naming an affinity mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AffinityLabels {
    /// `cookies` or `sourceip`.
    pub r#type: &'static str,
}

/// A label naming how a selection round went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabels {
    /// `ok` or `discovery_error` (the round kept the last good candidates).
    pub result: &'static str,
}

type HistogramFamily = Family<BackendLabels, Histogram, fn() -> Histogram>;

/// All metrics, registered once at start-up and shared by the request path and the
/// selection loop (counters are atomics; no lock is held across requests).
pub struct Metrics {
    registry: Registry,
    /// `mpp_requests_total{backend,code}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `mpp_request_duration_seconds{backend}`: until the answer's headers arrive.
    pub request_duration: HistogramFamily,
    /// `mpp_retries_total{backend}`: attempts on this backend that failed and were retried.
    pub retries: Family<BackendLabels, Counter>,
    /// `mpp_selection_rounds_total{result}`.
    pub selection_rounds: Family<RoundLabels, Counter>,
    /// `mpp_selected_backends`: replicas currently allowed to serve.
    pub selected_backends: Gauge,
    /// `mpp_candidates`: replicas discovery currently lists.
    pub candidates: Gauge,
    /// `mpp_affinity_hits_total{type}`: requests routed by a sticky session.
    pub affinity_hits: Family<AffinityLabels, Counter>,
    /// `mpp_probe_failures_total{backend}`: probes that found a replica not viable.
    pub probe_failures: Family<BackendLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "mpp_requests",
            "Proxied requests by the replica that answered and status code",
            requests.clone(),
        );
        let request_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "mpp_request_duration",
            "Time from a request's arrival to its answer's headers, by replica",
            Unit::Seconds,
            request_duration.clone(),
        );
        let retries = Family::default();
        registry.register(
            "mpp_retries",
            "Failed attempts that were retried on another replica, by the replica that failed",
            retries.clone(),
        );
        let selection_rounds = Family::default();
        registry.register("mpp_selection_rounds", "Selection rounds, by result", selection_rounds.clone());
        let selected_backends = Gauge::default();
        registry.register("mpp_selected_backends", "Replicas currently selected to serve", selected_backends.clone());
        let candidates = Gauge::default();
        registry.register("mpp_candidates", "Replicas currently listed by discovery", candidates.clone());
        let affinity_hits = Family::default();
        registry.register("mpp_affinity_hits", "Requests routed by session affinity, by type", affinity_hits.clone());
        let probe_failures = Family::default();
        registry.register(
            "mpp_probe_failures",
            "Probes that found a replica not viable, by replica",
            probe_failures.clone(),
        );
        registry.register("mpp_build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        Metrics {
            registry,
            requests,
            request_duration,
            retries,
            selection_rounds,
            selected_backends,
            candidates,
            affinity_hits,
            probe_failures,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
