//! OpenTelemetry tracing (`--tracing-endpoint`): a trace that starts in Grafana passes through
//! mpp to the replicas, and shows mpp's own time on the way.
//!
//! The client's W3C trace context (`traceparent`, `tracestate`) is the parent of mpp's span for
//! the request; each attempt on a replica is a child span of it (or of the merge, the slices or
//! the broadcast it belongs to), and the replica gets that attempt's context in its own
//! `traceparent`, so that Prometheus's span for the query hangs under the attempt that asked.
//! The coverage decision (what the query reads, which replicas hold it) is a span of its own.
//! Roots are sampled at `--tracing-sampling-ratio`; a client's sampling decision is followed.
//!
//! Nothing here runs unless tracing is on: the listener sends such requests down a path of
//! their own (as it does for the query log), and the request path asks only whether a tracer
//! is there. Finished spans go to a batch that a thread of the SDK exports over OTLP (HTTP
//! with protobuf, through mpp's own hyper client, or gRPC); a span that finds the batch full
//! is dropped rather than waited for.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, StatusCode};
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderInjector;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

use crate::registry::Replica;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest query string a request span keeps (`url.query`); longer ones are cut.
const MAX_QUERY_ATTRIBUTE: usize = 4096;

/// How spans reach the collector (`--tracing-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP over gRPC (a collector's port 4317).
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, `/v1/traces`).
    Http,
}

/// What tracing was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's URL (`--tracing-endpoint`); `https` makes the connection TLS.
    pub endpoint: http::Uri,
    /// `--tracing-protocol`.
    pub protocol: Protocol,
    /// The share of traces started here (not by the client) that are kept, 0 to 1.
    pub sampling_ratio: f64,
}

/// The tracer provider: flushes what is left when mpp stops.
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// Starts traced requests' spans; cheap to clone (one per proxy).
#[derive(Clone)]
pub struct Tracer {
    tracer: SdkTracer,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tracer")
    }
}

impl Tracing {
    /// Starts the exporter (within the tokio runtime, which its HTTP client and gRPC channel
    /// run on) and the provider.
    pub fn start(settings: &Settings, metrics: crate::metrics::TracingExport) -> anyhow::Result<(Tracing, Tracer)> {
        let endpoint = &settings.endpoint;
        let https = match endpoint.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("--tracing-endpoint '{endpoint}' is not an http:// or https:// URL"),
        };
        let exporter = match settings.protocol {
            Protocol::Http => {
                // A collector's address alone means its traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
                let url = match endpoint.path() {
                    "" | "/" => {
                        format!("{}://{}/v1/traces", endpoint.scheme_str().unwrap_or("http"), authority(endpoint)?)
                    }
                    _ => endpoint.to_string(),
                };
                let client = OtlpHttpClient {
                    client: crate::client::build(false, 2)?,
                    runtime: tokio::runtime::Handle::current(),
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    // Whatever OTEL_EXPORTER_OTLP_PROTOCOL says: this is the HTTP exporter.
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(client)
                    .with_endpoint(url)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()?
            }
            Protocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.to_string())
                    .with_timeout(EXPORT_TIMEOUT);
                if https {
                    let tls = opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_native_roots();
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
        };
        let ratio = settings.sampling_ratio;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Counted { exporter, metrics })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(resource())
            .build();
        let tracer = provider.tracer("mpp");
        Ok((Tracing { provider }, Tracer { tracer }))
    }

    /// Exports the spans still in the batch, and stops the exporter.
    pub async fn shutdown(self) {
        // Off the runtime: the SDK waits for the export, which runs on the runtime.
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
        });
        if let Ok(Err(error)) = flushed.await {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// The resource every span carries: `service.name` `mpp` unless `OTEL_SERVICE_NAME` (or
/// `OTEL_RESOURCE_ATTRIBUTES`) names another, and mpp's version.
fn resource() -> opentelemetry_sdk::Resource {
    let builder = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if named { builder.build() } else { builder.with_service_name("mpp").build() }
}

fn authority(endpoint: &http::Uri) -> anyhow::Result<&str> {
    match endpoint.authority() {
        Some(authority) => Ok(authority.as_str()),
        None => anyhow::bail!("--tracing-endpoint '{endpoint}' names no host"),
    }
}

impl Tracer {
    /// The context of a request's span: a child of the client's trace context when it sent
    /// one, a root otherwise. Its attributes are set only when it is recorded (sampled).
    pub fn request<B>(&self, request: &Request<B>, client: IpAddr) -> Context {
        let parent = TraceContextPropagator::new().extract(&ClientContext(request.headers()));
        let method = method_name(request.method());
        let path = request.uri().path();
        // A span's name is low in cardinality (OpenTelemetry's HTTP conventions): the API's
        // route where the path is one of its, the method alone otherwise.
        let name = match route_of(crate::api::Api::of(path)) {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        let mut span =
            self.tracer.span_builder(name).with_kind(SpanKind::Server).start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method));
            span.set_attribute(KeyValue::new("url.path", cut(path, MAX_PATH_ATTRIBUTE)));
            span.set_attribute(KeyValue::new("client.address", client.to_string()));
            span.set_attribute(KeyValue::new("network.protocol.version", protocol_version(request.version())));
            if let Some(query) = request.uri().query() {
                span.set_attribute(KeyValue::new("url.query", cut(query, MAX_QUERY_ATTRIBUTE)));
            }
            if let Some(agent) = request.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
                span.set_attribute(KeyValue::new("user_agent.original", cut(agent, 256)));
            }
        }
        parent.with_span(span)
    }

    /// Ends a request's span with its answer.
    pub fn answered(context: &Context, status: StatusCode, served_by: Option<&http::HeaderValue>) {
        let span = context.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if let Some(served_by) = served_by.and_then(|v| v.to_str().ok()) {
            span.set_attribute(KeyValue::new("mpp.served_by", served_by.to_owned()));
        }
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        span.end();
    }

    /// An attempt on `backend`, a child of the current span: its span, and the request's
    /// headers with the attempt's trace context in place of the client's.
    pub fn attempt(&self, backend: &Replica, method: &Method, path: &str, headers: &HeaderMap) -> Box<Attempt> {
        let parent = Context::current();
        let mut span = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            let url = format!("{}{}", backend.url().trim_end_matches('/'), path);
            span.set_attribute(KeyValue::new("http.request.method", method_name(method)));
            span.set_attribute(KeyValue::new("server.address", backend.authority().host().to_owned()));
            if let Some(port) = backend.authority().port_u16() {
                span.set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
            span.set_attribute(KeyValue::new("url.full", cut(&url, MAX_QUERY_ATTRIBUTE)));
            span.set_attribute(KeyValue::new("mpp.replica", backend.url().to_owned()));
        }
        let context = parent.with_span(span);
        let mut headers = headers.clone();
        headers.remove(TRACESTATE);
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
        if headers.get(TRACESTATE).is_some_and(|v| v.is_empty()) {
            headers.remove(TRACESTATE);
        }
        Box::new(Attempt { context, headers })
    }

    /// A span of its own, a child of the current one, started at `start`; ended on drop.
    pub fn child(&self, name: &'static str, start: SystemTime) -> Context {
        let span =
            self.tracer.span_builder(name).with_start_time(start).start_with_context(&self.tracer, &Context::current());
        Context::current().with_span(span)
    }

    /// Runs `work` within a child span named `name` (a merge, the slices of a range query, a
    /// broadcast): the attempts it makes are that span's children.
    pub async fn within<F: Future>(&self, name: &'static str, work: F) -> F::Output {
        let context = self.child(name, SystemTime::now());
        let output = work.with_context(context.clone()).await;
        context.span().end();
        output
    }
}

/// One attempt's span, and the headers it sends the replica.
pub struct Attempt {
    context: Context,
    /// The request's headers with this attempt's `traceparent`.
    pub headers: HeaderMap,
}

impl Attempt {
    /// Ends the span with the replica's answer.
    pub fn answered(&self, status: StatusCode) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        span.end();
    }

    /// Ends the span with the attempt's failure.
    pub fn failed(&self, failure: &dyn fmt::Display, kind: &'static str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(failure.to_string()));
        span.end();
    }
}

/// Records the coverage decision on its span, and ends it: the window of data the query
/// reads (milliseconds since the epoch), the route's kind and the replicas it asks.
pub fn decided(context: &Context, window: (i64, i64), route: &'static str, replicas: Vec<String>) {
    let span = context.span();
    span.set_attribute(KeyValue::new("mpp.window.start_ms", window.0));
    span.set_attribute(KeyValue::new("mpp.window.end_ms", window.1));
    span.set_attribute(KeyValue::new("mpp.route", route));
    let replicas: Vec<opentelemetry::StringValue> = replicas.into_iter().map(Into::into).collect();
    span.set_attribute(KeyValue::new("mpp.replicas", opentelemetry::Value::Array(replicas.into())));
    span.end();
}

/// A client's trace context: `traceparent`, and `tracestate` joined from all its fields (W3C
/// allows several), left out when over 512 bytes (the size W3C asks vendors to keep to).
struct ClientContext<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for ClientContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(TRACESTATE) {
            // The propagator reads the joined value through `get`; only one field is common.
            let mut fields = self.0.get_all(TRACESTATE).iter();
            let first = fields.next()?.to_str().ok()?;
            return (fields.next().is_none() && first.len() <= MAX_TRACESTATE).then_some(first);
        }
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The W3C trace state header.
const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` taken from a client.
const MAX_TRACESTATE: usize = 512;

/// The longest path a request span keeps (`url.path`).
const MAX_PATH_ATTRIBUTE: usize = 1024;

/// The method as OpenTelemetry names it: one of HTTP's own, or `_OTHER`.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// The route of an API path, as a span names it; `None` outside the API mpp knows.
fn route_of(api: crate::api::Api) -> Option<&'static str> {
    use crate::api::{Agreed, Api, Endpoint};
    Some(match api {
        Api::Read(Endpoint::Query) => "/api/v1/query",
        Api::Read(Endpoint::QueryRange) => "/api/v1/query_range",
        Api::Read(Endpoint::Series) => "/api/v1/series",
        Api::Read(Endpoint::Labels) => "/api/v1/labels",
        Api::Read(Endpoint::LabelValues) => "/api/v1/label/{name}/values",
        Api::Read(Endpoint::Exemplars) => "/api/v1/query_exemplars",
        Api::Read(Endpoint::RemoteRead) | Api::RemoteRead => "/api/v1/read",
        Api::Agreed(Agreed::Alerts) => "/api/v1/alerts",
        Api::Agreed(Agreed::Rules) => "/api/v1/rules",
        Api::Agreed(Agreed::Metadata) => "/api/v1/metadata",
        Api::Agreed(Agreed::TargetsMetadata) => "/api/v1/targets/metadata",
        Api::Write => "write",
        Api::Admin => "admin",
        Api::OtherRead | Api::Other => return None,
    })
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The OTLP exporter, counting what it exported and what it lost.
#[derive(Debug)]
struct Counted {
    exporter: opentelemetry_otlp::SpanExporter,
    metrics: crate::metrics::TracingExport,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.exporter.export(batch).await;
        match &result {
            Ok(()) => {
                self.metrics.exported.inc_by(spans);
            }
            Err(error) => {
                self.metrics.failures.inc();
                tracing::warn!(%error, spans, "spans could not be exported to --tracing-endpoint");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

/// The OTLP/HTTP exporter's client: mpp's own hyper client, run on the tokio runtime. The
/// SDK exports from a thread of its own, outside the runtime; each request is spawned onto the
/// runtime and its answer awaited from there.
#[derive(Debug)]
struct OtlpHttpClient {
    client: crate::client::HttpClient,
    runtime: tokio::runtime::Handle,
}

/// The most of a collector's answer read (it is only looked at when the export failed).
const MAX_ANSWER: usize = 1 << 20;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            use http_body_util::BodyExt as _;
            let exchange = async {
                let response = client.request(request.map(http_body_util::Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {}s", EXPORT_TIMEOUT.as_secs()).into()),
            }
        });
        sent.await.map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::Extractor as _;

    #[test]
    fn a_clients_trace_state_is_taken_only_whole_and_small() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(ClientContext(&headers).get("tracestate"), None);
        headers.insert(TRACESTATE, "grafana=1,tempo=2".parse().unwrap());
        assert_eq!(ClientContext(&headers).get("tracestate"), Some("grafana=1,tempo=2"));
        assert!(ClientContext(&headers).get("traceparent").is_some());
        headers.append(TRACESTATE, "other=3".parse().unwrap());
        assert_eq!(ClientContext(&headers).get("tracestate"), None, "split over fields: not taken");
        headers.insert(TRACESTATE, format!("a={}", "x".repeat(MAX_TRACESTATE)).parse().unwrap());
        assert_eq!(ClientContext(&headers).get("tracestate"), None, "over 512 bytes: not taken");
    }

    #[test]
    fn span_names_stay_few_whatever_the_client_sends() {
        assert_eq!(method_name(&Method::from_bytes(b"BREW").unwrap()), "_OTHER");
        assert_eq!(method_name(&Method::POST), "POST");
        let route = |path: &str| route_of(crate::api::Api::of(path));
        assert_eq!(route("/prefix/api/v1/query_range"), Some("/api/v1/query_range"));
        assert_eq!(route("/api/v1/label/job/values"), Some("/api/v1/label/{name}/values"));
        assert_eq!(route(&format!("/{}/graph", "x".repeat(60_000))), None);
        assert_eq!(cut("héllo", 2), "h", "cut on a character boundary");
    }
}
