//! Every metric mpp exports on `/mpp/metrics`, defined in one place. The names follow
//! Prometheus conventions; the README maps the original mpp's names to these.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
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

/// A DNS name of the endpoints file, and how its lookup went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The endpoints file's line (`dns+http://prometheus:9090`).
    pub name: String,
    /// `ok`, `empty` (no such name, or no record: no candidates) or `error` (the last good
    /// addresses stay).
    pub result: &'static str,
}

/// A label naming why mpp closed a client connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// `header_timeout`, `idle`, `pressure` or `stalled`.
    pub reason: &'static str,
}

/// Labels of a request sent to every replica (a write, an admin request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BroadcastLabels {
    /// `admin` (TSDB admin and lifecycle paths) or `write` (remote write, OTLP).
    pub kind: &'static str,
    /// `ok` (every replica succeeded), `refused` (by `--admin-api`), `refused_by_replica`
    /// (a replica's 4xx, passed on) or `failed` (some replica failed or answered 5xx).
    pub outcome: &'static str,
}

/// Labels of an answer mpp made from more than one replica, or tried to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MergeLabels {
    /// The API endpoint: `query`, `query_range`, `series`, `labels`, `label_values`, `query_exemplars`.
    pub endpoint: &'static str,
    /// `merged`, `sliced` (a range query answered in time slices), `too_large` (one
    /// replica's answer went alone) or `failed` (the others' answers could not be used).
    pub outcome: &'static str,
}

type HistogramFamily = Family<BackendLabels, DurationHistogram, fn() -> DurationHistogram>;

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
    /// `mpp_dns_lookups_total{name,result}`.
    pub dns_lookups: Family<DnsLabels, Counter>,
    /// `mpp_selected_backends`: replicas currently allowed to serve.
    pub selected_backends: Gauge,
    /// `mpp_candidates`: replicas discovery currently lists.
    pub candidates: Gauge,
    /// `mpp_affinity_hits_total{type}`: requests routed by a sticky session.
    pub affinity_hits: Family<AffinityLabels, Counter>,
    /// `mpp_probe_failures_total{backend}`: probes that found a replica not viable.
    pub probe_failures: Family<BackendLabels, Counter>,
    /// `mpp_connections_closed_total{reason}`: client connections mpp closed for a deadline.
    pub connections_closed: Family<CloseLabels, Counter>,
    /// `mpp_web_config_last_reload_successful`: 0 while the web config file (or a file it
    /// names) is broken and the last good one is still in force.
    pub web_config_last_reload_successful: Gauge,
    /// How the rereads of every file went (`mpp_config_last_reload_successful`,
    /// `mpp_config_last_reload_success_timestamp_seconds`), and SIGHUP's ask for them.
    pub reloads: crate::reload::Reloads,
    /// `mpp_query_log_dropped_total`: query log lines dropped because the writer fell behind.
    pub query_log_dropped: Counter,
    /// `mpp_tracing_spans_exported_total` and `mpp_tracing_export_failures_total`.
    pub tracing: TracingExport,
    /// `mpp_cache_requests_total`, `mpp_cache_steps_total`, `mpp_cache_bytes`, `mpp_cache_entries`.
    pub cache: CacheMetrics,
    /// `mpp_merged_requests_total{endpoint,outcome}`: queries no single replica could answer
    /// whole, answered from several.
    pub merged_requests: Family<MergeLabels, Counter>,
    /// `mpp_slice_requests_total`: the sub-range requests of range queries answered in time
    /// slices (divided by `mpp_merged_requests_total{outcome="sliced"}`: slices per query).
    pub slice_requests: Counter,
    /// `mpp_broadcast_requests_total{kind,outcome}`: writes and admin requests, each sent to
    /// every replica (or refused).
    pub broadcast_requests: Family<BroadcastLabels, Counter>,
    /// `mpp_backend_coverage_ratio{backend}`: the share of the scanned time range the replica
    /// holds complete data for.
    pub coverage_ratio: Family<BackendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `mpp_backend_coverage_holes{backend}`: the holes in that range (an open one included).
    pub coverage_holes: Family<BackendLabels, Gauge>,
    /// `mpp_coverage_scan_queries_total`: queries the coverage tracker sent (bucket scans and
    /// reads around a hole's edges).
    pub coverage_queries: Counter,
    /// `mpp_backend_data_ejected{backend}`: 1 while a replica is out of the selection because
    /// its ingestion stalled or lags its peers.
    pub data_ejected: Family<BackendLabels, Gauge>,
}

/// The upper bounds of `mpp_request_duration_seconds`, in seconds (`+Inf` follows).
const DURATION_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A histogram of durations recorded with atomic additions only, so that requests on
/// different threads never wait for each other or for a scrape of `/mpp/metrics` (the
/// library's histogram takes a mutex per observation). The sum is kept in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    inner: Arc<DurationCounts>,
}

#[derive(Debug, Default)]
struct DurationCounts {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.inner.buckets.iter().map(|count| count.load(Ordering::Relaxed));
        let bounds = DURATION_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One backend's request-path metrics, looked up once and kept with the backend so that a
/// request costs two atomic additions instead of two hash-map lookups.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    /// `mpp_request_duration_seconds{backend}`.
    pub duration: DurationHistogram,
    /// `mpp_requests_total{backend, code="200"}`, the common case.
    pub ok: Counter,
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
        let request_duration: HistogramFamily = Family::new_with_constructor(DurationHistogram::default);
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
        let dns_lookups = Family::default();
        registry.register(
            "mpp_dns_lookups",
            "Lookups of the endpoints file's DNS names, by name and result",
            dns_lookups.clone(),
        );
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
        let connections_closed = Family::default();
        registry.register(
            "mpp_connections_closed",
            "Client connections closed by mpp for a deadline (header_timeout, idle, pressure, stalled)",
            connections_closed.clone(),
        );
        let web_config_last_reload_successful = Gauge::default();
        // Nothing has failed until a web config file is read again and found broken.
        web_config_last_reload_successful.set(1);
        registry.register(
            "mpp_web_config_last_reload_successful",
            "Whether the web config file, and the files it names, were last read again without error",
            web_config_last_reload_successful.clone(),
        );
        let (reload_successful, reload_time) = (Gauge::default(), Gauge::<f64, AtomicU64>::default());
        registry.register(
            "mpp_config_last_reload_successful",
            "Whether every file mpp reads (endpoints, web config and what it names, credentials, the replicas' TLS files) last read without error",
            reload_successful.clone(),
        );
        registry.register(
            "mpp_config_last_reload_success_timestamp_seconds",
            "When mpp's files were last read with a change, or on SIGHUP, with every file reading well",
            reload_time.clone(),
        );
        let reloads = crate::reload::Reloads::new(reload_successful, reload_time);
        let query_log_dropped = Counter::default();
        registry.register(
            "mpp_query_log_dropped",
            "Query log lines dropped because the file's writer fell behind (the request never waits for it)",
            query_log_dropped.clone(),
        );
        let tracing = TracingExport::default();
        registry.register(
            "mpp_tracing_spans_exported",
            "Spans the --tracing-endpoint collector took",
            tracing.exported.clone(),
        );
        registry.register(
            "mpp_tracing_export_failures",
            "Batches of spans the --tracing-endpoint collector did not take (lost)",
            tracing.failures.clone(),
        );
        let cache = CacheMetrics::default();
        registry.register(
            "mpp_cache_requests",
            "Queries the dashboard cache took part in, by result: hit (every step from the cache), partial, miss, bypass (a query it cannot keep)",
            cache.requests.clone(),
        );
        registry.register(
            "mpp_cache_steps",
            "Steps of range query answers, by source: the cache or a replica",
            cache.steps.clone(),
        );
        registry.register("mpp_cache_bytes", "Bytes the dashboard cache holds", cache.bytes.clone());
        registry.register("mpp_cache_entries", "Queries the dashboard cache holds", cache.entries.clone());
        let merged_requests = Family::default();
        registry.register(
            "mpp_merged_requests",
            "Queries no single replica could answer whole, answered from several, by endpoint and outcome",
            merged_requests.clone(),
        );
        let slice_requests = Counter::default();
        registry.register(
            "mpp_slice_requests",
            "Sub-range requests sent for range queries answered in time slices",
            slice_requests.clone(),
        );
        let broadcast_requests = Family::default();
        registry.register(
            "mpp_broadcast_requests",
            "Writes and admin requests, each sent to every replica or refused, by kind and outcome",
            broadcast_requests.clone(),
        );
        let coverage_ratio = Family::default();
        registry.register(
            "mpp_backend_coverage_ratio",
            "Share of the scanned time range a replica holds complete data for",
            coverage_ratio.clone(),
        );
        let coverage_holes = Family::default();
        registry.register(
            "mpp_backend_coverage_holes",
            "Holes in a replica's data within the scanned time range",
            coverage_holes.clone(),
        );
        let coverage_queries = Counter::default();
        registry.register(
            "mpp_coverage_scan_queries",
            "Queries the coverage tracker sent to the replicas: bucket scans and reads around a hole's edges",
            coverage_queries.clone(),
        );
        let data_ejected = Family::default();
        registry.register(
            "mpp_backend_data_ejected",
            "Whether a replica is out of the selection because its ingestion stalled or lags its peers",
            data_ejected.clone(),
        );
        registry.register(
            "mpp_build",
            "Build information",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("MPP_REVISION")),
                ("branch", env!("MPP_BRANCH")),
                ("rustc", env!("MPP_RUSTC")),
            ]),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            requests,
            request_duration,
            retries,
            selection_rounds,
            dns_lookups,
            selected_backends,
            candidates,
            affinity_hits,
            probe_failures,
            connections_closed,
            web_config_last_reload_successful,
            reloads,
            query_log_dropped,
            tracing,
            cache,
            merged_requests,
            slice_requests,
            broadcast_requests,
            coverage_ratio,
            coverage_holes,
            coverage_queries,
            data_ejected,
        }
    }

    /// Counts a connection closed for `reason` (a `CloseReason` label).
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed.get_or_create(&CloseLabels { reason }).inc();
    }

    /// Removes every series of a replica that is no longer a candidate, so that pod churn
    /// does not grow `/mpp/metrics` forever.
    pub fn forget_backend(&self, backend: &Arc<str>) {
        let labels = BackendLabels { backend: backend.clone() };
        self.request_duration.remove(&labels);
        self.retries.remove(&labels);
        self.probe_failures.remove(&labels);
        self.coverage_ratio.remove(&labels);
        self.coverage_holes.remove(&labels);
        self.data_ejected.remove(&labels);
        // Status codes are three digits; the family cannot be filtered, so every one is named.
        for code in 100..600 {
            self.requests.remove(&RequestLabels { backend: backend.clone(), code });
        }
    }

    /// The request-path metrics of the backend labelled `backend`.
    pub fn backend(&self, backend: Arc<str>) -> BackendMetrics {
        let duration = self.request_duration.get_or_create(&BackendLabels { backend: backend.clone() }).clone();
        let ok = self.requests.get_or_create(&RequestLabels { backend, code: 200 }).clone();
        BackendMetrics { duration, ok }
    }

    /// Adds metrics read at each scrape (before the metrics are shared).
    pub fn register_collector(&mut self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(collector);
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

/// What is counted about the cache.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// `mpp_cache_requests_total{result}`: `hit`, `partial`, `miss`, and `bypass` for the
    /// queries the cache cannot keep.
    pub requests: Family<ResultLabels, Counter>,
    /// `mpp_cache_steps_total{source}`: the steps of range answers, from the cache or a replica.
    pub steps: Family<SourceLabels, Counter>,
    /// `mpp_cache_bytes`: what the cache holds.
    pub bytes: Gauge,
    /// `mpp_cache_entries`: the queries it holds.
    pub entries: Gauge,
}

/// The `result` label of `mpp_cache_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The `source` label of `mpp_cache_steps_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// The counters of tracing's export (`mpp_tracing_spans_exported_total`,
/// `mpp_tracing_export_failures_total`).
#[derive(Debug, Clone, Default)]
pub struct TracingExport {
    /// Spans the collector took.
    pub exported: Counter,
    /// Batches of spans the collector did not take (lost).
    pub failures: Counter,
}

/// What `--version` prints after the name: the facts of `mpp_build_info`.
pub const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (branch: ",
    env!("MPP_BRANCH"),
    ", revision: ",
    env!("MPP_REVISION"),
    ")\n  rustc: ",
    env!("MPP_RUSTC"),
    "\n  platform: ",
    env!("MPP_PLATFORM")
);

/// The standard `process_*` metrics of Prometheus's client libraries, read at each scrape
/// ([`crate::system::ProcessStats`]). Written here: prometheus-client has no process
/// collector, and the maintained one (`metrics-process`) serves the `metrics` facade, not
/// this registry. With them, `mpp_log_lines_dropped_total`, also read at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let dropped = ConstCounter::new(crate::logging::dropped_lines());
        dropped.encode(encoder.encode_descriptor(
            "mpp_log_lines_dropped",
            "Log lines dropped because standard error did not take them in time.",
            None,
            dropped.metric_type(),
        )?)?;
        let Some(stats) = crate::system::ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", stats.resident_bytes as f64),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", stats.virtual_bytes as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stats.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", stats.open_fds as f64),
            ("process_max_fds", "Maximum number of open file descriptors", stats.max_fds as f64),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
