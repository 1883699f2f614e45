//! The request path: everything outside `/mpp/` is forwarded to a selected replica. One
//! request: read (and cap) the body so it can be replayed, pick the replica (affinity first,
//! else by strategy), make an *attempt*, and on a failure that is safe to retry make another
//! on a different replica. The answer streams back as it arrives. This path only loads the
//! published [`Snapshot`]; it never waits for the selection loop, it only signals it.
//!
//! One request's state travels as one `Exchange` (the prepared request, the snapshot, the
//! deadline, the start, how its replica was chosen). What an attempt's outcome means, and
//! where the next goes, is [`retry`]'s; answers from several replicas are `fanout`'s and
//! [`slice`]'s. The attempts go through a [`Transport`] (the pool, or in the unit tests in
//! `tests.rs` the fake replicas of `fake.rs`).

pub mod affinity;
pub mod body;
pub mod broadcast;
mod cached;
pub mod client_ip;
#[cfg(test)]
mod fake;
mod fanout;
pub mod headers;
pub mod query_log;
pub mod retry;
pub mod route;
pub mod slice;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::{FutureExt, future};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{Either, Full};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::api::Api;
use crate::body::Guarded;
use crate::cache::Cache;
use crate::client::pool::{self, Pool, Transport};
use crate::coverage::Millis;
use crate::credentials::Credentials;
use crate::error::{ProxyBody, ProxyError};
use crate::http1::lines;
use crate::metrics::{AffinityLabels, BackendLabels, Metrics, RequestLabels};
use crate::registry::Replica;
use crate::selection::Snapshot;
use crate::telemetry::Tracer;
use crate::tracker::DEFAULT_LOOKBACK;
use crate::units::format_duration;
use crate::via::Pseudonym;
use crate::window::{self, Read, Window};
use affinity::{Affinity, AffinityOptions};
use body::{BodyLimits, Buffered};
use broadcast::{AdminApi, Broadcast};
use client_ip::TrustedProxies;
use fanout::Union;
use query_log::QueryLog;
pub use query_log::{Pending, VerifiedUser};
use retry::{AttemptError, Outcome, Target};
use route::Route;

/// A client's request body, whichever protocol brought it: hyper's for HTTP/2, the
/// listener's own for HTTP/1 ([`crate::server::http1::RequestBody`]).
pub trait ClientBody:
    hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + Unpin
{
}
impl<B> ClientBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::error::Error + Send + Sync + 'static> + Send + Unpin
{
}

/// How long a request waits for one of a replica's connections (`--max-backend-connections`)
/// before it is refused with 503 and `Retry-After`.
const QUEUE_PATIENCE: Duration = Duration::from_secs(5);
/// How long a request that arrives before discovery's first complete answer waits for it.
/// mpp accepts connections before that only when `--startup-timeout` has run out, so
/// discovery is slow or broken by then: worth a short wait, not a long one per request.
const STARTUP_PATIENCE: Duration = Duration::from_secs(2);

/// The request path's state. Cheap to clone. Every serving thread has its own, made with
/// [`Proxy::with_pool`], so that its backend connections stay on that thread.
///
/// `P` sends the attempts: the pool of connections to the replicas, or in unit tests
/// replicas of a test's own making.
#[derive(Clone)]
pub struct Proxy<P = Pool> {
    inner: Arc<Inner>,
    pool: P,
}

/// What every serving thread shares.
struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    affinity: Affinity,
    reselect: mpsc::Sender<()>,
    body: BodyLimits,
    request_timeout: Duration,
    max_backend_connections: u32,
    pseudonym: Pseudonym,
    trusted_proxies: TrustedProxies,
    credentials: Option<Arc<Credentials>>,
    coverage_routing: bool,
    merge_max_bytes: usize,
    /// The bytes of answers held for merging, by every merge in flight together.
    merge_budget: Arc<Semaphore>,
    /// The replica requests merges and slices may add, per client and in all.
    fanout: fanout::FanoutLimit,
    admin_api: AdminApi,
    /// The query log and slow-query log, when either is on.
    query_log: Option<QueryLog>,
    /// OpenTelemetry tracing, when it is on.
    tracer: Option<Tracer>,
    /// The dashboard cache, when it is on.
    cache: Option<Arc<Cache>>,
}

/// What the proxy needs from the rest of the program.
pub struct ProxySettings<P = Pool> {
    /// The connections to the replicas (of the first serving thread).
    pub pool: P,
    /// The published selection.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Where to count.
    pub metrics: Arc<Metrics>,
    /// The sticky-session modes.
    pub affinity: AffinityOptions,
    /// Signals the selection loop that a replica failed.
    pub reselect: mpsc::Sender<()>,
    /// How request bodies are read and paid for.
    pub body: BodyLimits,
    /// The total time a request may spend on its attempts.
    pub request_timeout: Duration,
    /// The most requests in flight to one replica (and so its connections in use).
    pub max_backend_connections: u32,
    /// This mpp's `Via` pseudonym.
    pub pseudonym: Pseudonym,
    /// The peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// What mpp sends the replicas as `Authorization`, if anything.
    pub credentials: Option<Arc<Credentials>>,
    /// Whether queries are routed by the replicas' coverage (`--coverage-routing`).
    pub coverage_routing: bool,
    /// The most bytes of answers held to merge one query (`--merge-max-bytes`).
    pub merge_max_bytes: u64,
    /// The most replica requests one client's merges and slices may add (`--max-fanout-per-client`).
    pub max_fanout_per_client: usize,
    /// Whether admin and lifecycle requests are refused or sent to every replica.
    pub admin_api: AdminApi,
    /// The query log and slow-query log (`--query-log-file`, `--slow-query-threshold`).
    pub query_log: Option<QueryLog>,
    /// OpenTelemetry tracing (`--tracing-endpoint`).
    pub tracer: Option<Tracer>,
    /// The dashboard cache (`--cache-max-bytes`).
    pub cache: Option<Arc<Cache>>,
}

/// A request, read and ready to be sent to any replica.
struct Prepared {
    method: Method,
    /// What the path asks of Prometheus's API.
    api: Api,
    /// The client's `MPP.Route` cookie, if any.
    route_cookie: Option<String>,
    body: Buffered,
    /// The client's headers, as they go on.
    outgoing_headers: HeaderMap,
    /// The forwarding headers mpp adds, written after them.
    added: headers::Added,
    path_and_query: PathAndQuery,
    client: IpAddr,
    replayable: bool,
    /// A query that names no `timeout`: each attempt tells the replica the time left.
    pass_timeout: bool,
}

/// One request on its way through the proxy, in the spirit of pingora's session: what every
/// attempt sends, the selection it is routed by, its time, and how its replica was chosen.
/// `forward` makes it once; relaying, merging, slicing and answering take it whole rather
/// than each of its pieces.
struct Exchange {
    prepared: Prepared,
    /// The selection the request is routed by (reloaded when an attempt fails).
    snapshot: Arc<Snapshot>,
    /// When the request's time (`--request-timeout`) runs out.
    deadline: Instant,
    /// When the request arrived, for its duration.
    started: Instant,
    /// How the replica of the attempt under way was chosen.
    target: Target,
    /// Whether an attempt's answer may keep the replica's headers as the bytes they came in
    /// ([`crate::http1::lines`]): only one relayed whole to a client of mpp's HTTP/1.1
    /// listener, whose headers nothing reads on the way (merges, slices, the cache and
    /// failovers read them; HTTP/2 answers are hyper's to write).
    keep_lines: bool,
}

/// An attempt's answer, with the replica's connection slot it holds until its body is done.
type Answered<B> = (Response<B>, OwnedSemaphorePermit);

/// The answer to a request on its way, by whichever way [`Proxy::dispatch`] chose.
type Dispatched<'a, B> = Pin<Box<dyn Future<Output = Result<Response<ProxyBody<B>>, ProxyError>> + Send + 'a>>;

impl<P: Transport> Proxy<P> {
    /// The request path over the given state.
    pub fn new(settings: ProxySettings<P>) -> Self {
        Proxy {
            pool: settings.pool,
            inner: Arc::new(Inner {
                snapshot: settings.snapshot,
                metrics: settings.metrics,
                affinity: Affinity::new(settings.affinity),
                reselect: settings.reselect,
                body: settings.body,
                request_timeout: settings.request_timeout,
                max_backend_connections: settings.max_backend_connections,
                pseudonym: settings.pseudonym,
                trusted_proxies: settings.trusted_proxies,
                credentials: settings.credentials,
                coverage_routing: settings.coverage_routing,
                merge_max_bytes: usize::try_from(settings.merge_max_bytes).unwrap_or(usize::MAX),
                merge_budget: Arc::new(Semaphore::new(
                    usize::try_from(settings.merge_max_bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
                )),
                admin_api: settings.admin_api,
                fanout: fanout::FanoutLimit::new(settings.max_fanout_per_client),
                query_log: settings.query_log,
                tracer: settings.tracer,
                cache: settings.cache,
            }),
        }
    }

    /// The same proxy (selection, affinity table, metrics) over another thread's pool.
    pub fn with_pool(&self, pool: P) -> Self {
        Proxy { inner: self.inner.clone(), pool }
    }

    /// Forwards one request; always produces an answer (a JSON error at worst). The error is
    /// mapped onto `forward`'s own future rather than awaited in a future around it: each
    /// level of nesting is a state the request's future carries, and copies, on every request.
    pub fn handle<B: ClientBody>(
        &self,
        request: Request<B>,
        peer: IpAddr,
    ) -> impl Future<Output = Response<ProxyBody<P::Body>>> {
        let started = Instant::now();
        self.forward(request, peer, started, ()).map(|answer| answer.unwrap_or_else(|error| self.refuse(error)))
    }

    /// Whether the query log (or the slow-query log) is on.
    pub fn logs_queries(&self) -> bool {
        self.inner.query_log.is_some()
    }

    /// Whether requests go through [`Proxy::handle_observed`] instead of [`Proxy::handle`]:
    /// the query log or tracing is on.
    pub fn observes(&self) -> bool {
        self.inner.query_log.is_some() || self.inner.tracer.is_some()
    }

    /// [`Proxy::handle`] with the query log's line and the trace's spans for the request, as
    /// far as each is on and tells of it. Its own future (boxed by the caller), so that
    /// neither adds anything to other requests'.
    pub async fn handle_observed<B: ClientBody>(
        &self,
        request: Request<B>,
        peer: IpAddr,
    ) -> Response<ProxyBody<P::Body>> {
        let started = Instant::now();
        let client = self.inner.trusted_proxies.client_address(request.headers(), peer);
        let pending = self.inner.query_log.as_ref().and_then(|log| {
            let user = request.extensions().get::<VerifiedUser>().map(|user| user.0.as_str());
            log.begin(Api::of(request.uri().path()), request.method(), request.uri(), user, client)
        });
        let trace = self.inner.tracer.as_ref().map(|tracer| tracer.request(&request, client));
        let forwarded = self.forward(request, peer, started, pending.as_ref());
        let answer = match &trace {
            Some(context) => forwarded.with_context(context.clone()).await,
            None => forwarded.await,
        };
        let mut answer = answer.unwrap_or_else(|error| self.refuse(error));
        // Both read its headers (which replicas answered).
        lines::unpack(&mut answer);
        if let (Some(log), Some(pending)) = (&self.inner.query_log, &pending) {
            log.finish(pending, &answer, started.elapsed());
        }
        if let Some(context) = &trace {
            Tracer::answered(context, answer.status(), answer.headers().get(&headers::SERVED_BY));
        }
        answer
    }

    /// The answer to a request that is refused (counted like any other answer).
    pub fn refuse(&self, error: ProxyError) -> Response<ProxyBody<P::Body>> {
        let response = error.into_response();
        let labels = RequestLabels { backend: "none".into(), code: response.status().as_u16() };
        self.inner.metrics.requests.get_or_create(&labels).inc();
        response
    }

    async fn forward<B: ClientBody>(
        &self,
        request: Request<B>,
        peer: IpAddr,
        started: Instant,
        tap: impl BodyTap,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        // The steps that need no waiting are plain calls, not futures of their own nested in
        // this one (see `handle`).
        let (parts, body) = request.into_parts();
        if parts.method == Method::OPTIONS && parts.uri.path() == "*" {
            // The asterisk form asks about the server itself (RFC 9112, 3.2.4): mpp answers
            // for the replicas, which take these methods.
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::ALLOW, "GET, HEAD, POST, PUT, DELETE, OPTIONS")
                .header(header::CONTENT_LENGTH, "0")
                .body(Either::Right(Full::new(Bytes::new())))
                .expect("a valid answer"));
        }
        let path_and_query = request_path(&parts.uri)?;
        let http1 = parts.version <= Version::HTTP_11;
        let body = self.inner.body.read(&parts.headers, body).await?;
        tap.read_body(&parts.headers, &body.bytes);
        let prepared = self.prepare(parts, path_and_query, body, peer);
        let inner = &*self.inner;
        let deadline = started + inner.request_timeout;
        let snapshot = match inner.snapshot.load_full() {
            snapshot if snapshot.settled => snapshot,
            _ => Box::pin(self.settled_snapshot(deadline)).await,
        };
        let mut exchange =
            Exchange { prepared, snapshot, deadline, started, target: Target::Replica, keep_lines: http1 };
        if let Some(cache) = &inner.cache
            && let Some(query) = self.cache_query(cache, &exchange.prepared)
        {
            exchange.keep_lines = false;
            return Box::pin(self.cached(cache, exchange, query)).await;
        }
        self.dispatch(exchange).await
    }

    /// Routes a request to its replica or replicas, as its path, the selection, affinity and
    /// coverage say. Decided at once; each way's future boxed (the request's future is moved
    /// about, into hyper's connection, and each way's state would otherwise add to every
    /// request's).
    fn dispatch(&self, mut exchange: Exchange) -> Dispatched<'_, P::Body> {
        let inner = &*self.inner;
        if let Some(kind) = Broadcast::of(&exchange.prepared.method, exchange.prepared.api) {
            exchange.target = Target::Diverted;
            exchange.keep_lines = false;
            return Box::pin(self.within("mpp.broadcast", self.broadcast(exchange, kind)));
        }
        let (prepared, snapshot) = (&exchange.prepared, &exchange.snapshot);
        let backend = match inner.affinity.preferred(snapshot, prepared.route_cookie.as_deref(), prepared.client) {
            Some((backend, sticky)) => {
                inner.metrics.affinity_hits.get_or_create(&AffinityLabels { r#type: sticky.label() }).inc();
                backend
            }
            None => match retry::next_backend(snapshot, &[]) {
                Some(backend) => backend,
                None => {
                    // Nothing usable is left: every candidate is tried anyway before clients
                    // get a 503.
                    let Some(backend) = retry::last_resort(snapshot, &[]) else {
                        return Box::pin(future::ready(Err(ProxyError::NoReplica(snapshot.reason.clone()))));
                    };
                    exchange.target = Target::LastResort;
                    return Box::pin(self.relay(exchange, backend));
                }
            },
        };
        if let Api::Agreed(kind) = prepared.api
            && prepared.method == Method::GET
            && snapshot.viable.len() > 1
        {
            let others = snapshot.viable.iter().filter(|r| **r != backend).cloned().collect();
            exchange.target = Target::Diverted;
            exchange.keep_lines = false;
            return Box::pin(self.within("mpp.merge", self.merge(exchange, Union::Agreed(kind), backend, others)));
        }
        match self.coverage_read(prepared, snapshot, &backend) {
            Some((read, trace)) => match self.plan(snapshot, backend, &read, trace) {
                Route::One { replica, diverted } => {
                    if diverted {
                        exchange.target = Target::Diverted;
                    }
                    // A remote read that cannot be sliced (streamed chunks) and that this
                    // replica does not hold whole: its protobuf answer cannot carry a warning.
                    let incomplete = exchange.prepared.api == Api::RemoteRead
                        && !replica.coverage().covers(read.window.start, read.window.end);
                    if !incomplete {
                        return Box::pin(self.relay(exchange, replica));
                    }
                    Box::pin(self.relay(exchange, replica).map(|mut answer| {
                        if let Ok(answer) = &mut answer {
                            answer.headers_mut().insert(headers::MPP_WARNING.clone(), headers::INCOMPLETE_READ.clone());
                        }
                        answer
                    }))
                }
                Route::Merge { primary, others } => {
                    exchange.target = Target::Diverted;
                    exchange.keep_lines = false;
                    Box::pin(self.within("mpp.merge", self.merge(exchange, Union::Api(read.endpoint), primary, others)))
                }
                Route::Slices(slices) => {
                    exchange.target = Target::Diverted;
                    exchange.keep_lines = false;
                    Box::pin(async move { self.within("mpp.slices", self.sliced(exchange, slices, &read)).await })
                }
            },
            None => Box::pin(self.relay(exchange, backend)),
        }
    }

    /// `work`, within a span of its own named `name` when tracing is on (as it is when not).
    fn within<'a, F: Future + Send + 'a>(
        &'a self,
        name: &'static str,
        work: F,
    ) -> future::Either<F, impl Future<Output = F::Output> + Send + 'a> {
        match &self.inner.tracer {
            Some(tracer) => future::Either::Right(tracer.within(name, work)),
            None => future::Either::Left(work),
        }
    }

    /// The route of a query that reads `read`, whose affinity or strategy choice is
    /// `default`; told to the coverage decision's span, when it is traced.
    fn plan(&self, snapshot: &Snapshot, default: Arc<Replica>, read: &Read, trace: Option<Context>) -> Route {
        let route = route::plan(snapshot, default, read);
        if let Some(context) = trace {
            let (kind, replicas) = route.describe();
            crate::telemetry::decided(&context, (read.window.start, read.window.end), kind, replicas);
        }
        route
    }

    /// What a request reads, when coverage routing is on, the request is a routable query,
    /// the replica it would go to (`default`) has a hole and so does some usable replica
    /// (otherwise that replica, or every one, covers every window, and the query is not even
    /// parsed), and, for an instant or range query, the bound its text sets on its window
    /// ([`window::read_bound`]) meets one of `default`'s holes; with the coverage decision's
    /// span, when the request is traced.
    fn coverage_read(
        &self,
        prepared: &Prepared,
        snapshot: &Snapshot,
        default: &Replica,
    ) -> Option<(Read, Option<Context>)> {
        let (endpoint, remote_read) = match (prepared.api, &prepared.method) {
            (Api::Read(endpoint), &Method::GET | &Method::POST) => (Some(endpoint), false),
            (Api::RemoteRead, &Method::POST) => (None, true),
            _ => return None,
        };
        if !self.inner.coverage_routing {
            return None;
        }
        // A default replica scanned and without a hole covers whatever the query reads.
        let own = default.coverage();
        if own.known() && own.holes().is_empty() && own.open_from.is_none() {
            return None;
        }
        drop(own);
        let mut holes = false;
        let mut lookback: Option<Millis> = None;
        for replica in &snapshot.viable {
            let coverage = replica.coverage();
            holes |= !coverage.holes().is_empty() || coverage.open_from.is_some();
            if coverage.known() {
                lookback = lookback.max(Some(coverage.lookback));
            }
        }
        if !holes {
            return None;
        }
        let started = self.inner.tracer.as_ref().map(|_| SystemTime::now());
        let lookback = lookback.unwrap_or(DEFAULT_LOOKBACK);
        let form = headers::form_body(&prepared.outgoing_headers, &prepared.body.bytes);
        // A query far from every hole of its replica (the usual case) goes there unparsed: a
        // bound from its text is enough, and only one that meets a hole is parsed.
        if let Some(endpoint @ (window::Endpoint::Query | window::Endpoint::QueryRange)) = endpoint {
            let own = default.coverage();
            if own.known()
                && window::read_bound(endpoint, prepared.path_and_query.query(), form, now_millis(), lookback)
                    .is_some_and(|bound| own.covers(bound.start, bound.end))
            {
                return None;
            }
        }
        let read = self.read_of(prepared, endpoint, remote_read, form, lookback)?;
        let trace = self.inner.tracer.as_ref().zip(started).map(|(tracer, at)| tracer.child("mpp.coverage", at));
        Some((read, trace))
    }

    /// What a query reads (see [`Proxy::coverage_read`]), with its form body `form` (if
    /// any), each replica's lookback being at most `lookback`.
    fn read_of(
        &self,
        prepared: &Prepared,
        endpoint: Option<window::Endpoint>,
        remote_read: bool,
        form: Option<&[u8]>,
        lookback: Millis,
    ) -> Option<Read> {
        let now = now_millis();
        if remote_read {
            // Raw samples over the queries' ranges, no lookback: held whole by one replica, as
            // an instant query's data is (the replica missing the least of it otherwise).
            return Some(match window::remote_read(&prepared.body.bytes, now) {
                // Streamed chunks cannot be joined: one replica answers them whole.
                Ok(read) if read.streamed => {
                    Read { endpoint: window::Endpoint::Query, window: read.window, eval_time: None, steps: None }
                }
                Ok(read) => Read {
                    endpoint: window::Endpoint::RemoteRead,
                    window: read.window,
                    eval_time: None,
                    steps: Some(read.steps(now)),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot tell what a remote read reads; routing it by all of its data");
                    let window = Window { start: Millis::MIN / 4, end: now };
                    Read { endpoint: window::Endpoint::Query, window, eval_time: None, steps: None }
                }
            });
        }
        let endpoint = endpoint?;
        match window::read_window(endpoint, prepared.path_and_query.query(), form, now, lookback, Millis::MIN / 4) {
            Ok(read) => read,
            Err(e) => {
                // Prometheus may still accept it (PromQL newer than the parser knows): the
                // replica missing the least of everything it holds answers, never one
                // chosen without a look at the holes.
                tracing::debug!(error = %e, "cannot tell what the query reads; routing it by all of its data");
                Some(Read {
                    endpoint,
                    window: Window { start: Millis::MIN / 4, end: now },
                    eval_time: None,
                    steps: None,
                })
            }
        }
    }

    /// Sends the request to `backend`, and on a failure that is safe to retry to another
    /// replica, until one answers or none is left.
    async fn relay(
        &self,
        mut exchange: Exchange,
        mut backend: Arc<Replica>,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let inner = &*self.inner;
        // Allocates only when an attempt fails.
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        loop {
            let (failure, unavailable) = match self.attempt(&exchange, &backend, &tried).await {
                Outcome::Answer((response, slot)) => {
                    let answer = self.answer(&exchange, &backend, response, slot);
                    if tried.is_empty() {
                        return Ok(answer);
                    }
                    return Ok(Box::pin(self.with_failover(answer, &tried, &backend, exchange.deadline)).await);
                }
                Outcome::Failed(failure, answer) => (failure, answer),
            };
            let last_resort = exchange.target.is_last_resort();
            tracing::debug!(backend = %backend, error = %failure, last_resort, "attempt failed");
            if failure.counts_against_replica() {
                // The selection loop re-probes at once; this request does not wait for it.
                let _ = inner.reselect.try_send(());
            }
            tried.push(backend.clone());
            // The answer of another replica is read to say so in it: uncompressed.
            exchange.prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
            exchange.snapshot = inner.snapshot.load_full();
            let replayable = exchange.prepared.replayable;
            let next = retry::next_attempt(&exchange.snapshot, &tried, &failure, replayable, exchange.target);
            match (next, unavailable) {
                (Some((next, target)), _) => {
                    inner.metrics.retries.get_or_create(&BackendLabels { backend: backend.url_label() }).inc();
                    (backend, exchange.target) = (next, target);
                }
                (None, Some((response, slot))) => return Ok(self.answer(&exchange, &backend, response, slot)),
                (None, None) => {
                    tracing::warn!(backend = %backend, error = %failure, attempts = tried.len(), "request failed on every attempt");
                    return Err(self.failure(&exchange, failure, &backend));
                }
            }
        }
    }

    /// The client's answer when the exchange's last attempt (on `backend`) failed.
    fn failure(&self, exchange: &Exchange, failure: AttemptError, backend: &Replica) -> ProxyError {
        let url = backend.url().to_string();
        match failure {
            AttemptError::TimedOut => {
                ProxyError::Timeout { limit: format_duration(self.inner.request_timeout), backend: url }
            }
            AttemptError::Busy => ProxyError::Overloaded(format!(
                "{url} has {} requests in flight (--max-backend-connections)",
                self.inner.max_backend_connections
            )),
            failure => {
                let mut detail = failure.to_string();
                if exchange.target.is_last_resort() {
                    detail = format!("{detail} (tried although {})", exchange.snapshot.reason);
                }
                if failure.nothing_answered() {
                    ProxyError::Unavailable { backend: url, detail }
                } else {
                    ProxyError::Upstream { backend: url, detail }
                }
            }
        }
    }

    /// The published snapshot, once the first selection has settled: a request that arrives
    /// while discovery is still listing (mpp gave up waiting for it at start-up) waits a
    /// little rather than failing at once. Polls the snapshot, like waiting attempts, so that
    /// requests register with nothing the background tasks lock.
    async fn settled_snapshot(&self, deadline: Instant) -> Arc<Snapshot> {
        let give_up = deadline.min(Instant::now() + STARTUP_PATIENCE);
        loop {
            let snapshot = self.inner.snapshot.load_full();
            if snapshot.settled || Instant::now() >= give_up {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Works out everything the attempts share, from the request's head and its body (read
    /// within the limits).
    fn prepare(
        &self,
        parts: http::request::Parts,
        path_and_query: PathAndQuery,
        body: Buffered,
        peer: IpAddr,
    ) -> Prepared {
        let api = Api::of(path_and_query.path());
        let pass_timeout = headers::wants_timeout(api, &path_and_query, &parts.headers, &body.bytes);
        let client = self.inner.trusted_proxies.client_address(&parts.headers, peer);
        let route_cookie = if self.inner.affinity.uses_cookies() {
            affinity::route_cookie(&parts.headers).map(str::to_owned)
        } else {
            None
        };
        let tls = parts.extensions.get::<headers::ClientTls>().is_some();
        let mut incoming = parts.headers;
        self.inner.trusted_proxies.drop_untrusted_forwarding(&mut incoming, peer);
        let (mut outgoing_headers, mut added) = headers::request_headers(incoming, peer, tls);
        added.push(header::VIA, self.inner.pseudonym.via().clone());
        if let Some(credentials) = &self.inner.credentials {
            credentials.apply(&mut outgoing_headers);
        }
        Prepared {
            client,
            route_cookie,
            replayable: api.replayable(&parts.method),
            api,
            outgoing_headers,
            added,
            method: parts.method,
            path_and_query,
            body,
            pass_timeout,
        }
    }

    /// One try of the exchange's request on `backend` (after the `tried` ones), until the
    /// answer's headers arrive; judged and recorded by the retry policy.
    async fn attempt(
        &self,
        exchange: &Exchange,
        backend: &Replica,
        tried: &[Arc<Replica>],
    ) -> Outcome<Answered<P::Body>> {
        let (prepared, deadline) = (&exchange.prepared, exchange.deadline);
        // Boxed: a pointer in every attempt's future, whether tracing is on or not.
        let trace = self.inner.tracer.as_ref().map(|tracer| {
            tracer.attempt(backend, &prepared.method, prepared.path_and_query.as_str(), &prepared.outgoing_headers)
        });
        let slots = backend.connection_slots();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let queued = tokio::time::timeout_at(
                    deadline.min(Instant::now() + QUEUE_PATIENCE),
                    slots.clone().acquire_owned(),
                );
                match Box::pin(queued).await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(_)) | Err(_) => {
                        if let Some(trace) = &trace {
                            trace.failed(&AttemptError::Busy, AttemptError::Busy.kind());
                        }
                        return Outcome::Failed(AttemptError::Busy, None);
                    }
                }
            }
        };
        // One reading of the clock for the time left and the attempt's start.
        let now = Instant::now();
        let timeout = prepared
            .pass_timeout
            .then(|| headers::timeout_parameter(&prepared.path_and_query, deadline.saturating_duration_since(now)));
        let request = pool::Outgoing {
            method: &prepared.method,
            target: [backend.prefix(), prepared.path_and_query.as_str(), timeout.as_ref().map_or("", |t| t.as_str())],
            headers: trace.as_ref().map_or(&prepared.outgoing_headers, |trace| &trace.headers),
            added: prepared.added.lines(),
            body: &prepared.body.bytes,
            replayable: prepared.replayable,
            keep_lines: exchange.keep_lines,
        };
        let target = exchange.target;
        let patience = if target.is_last_resort() { retry::LAST_RESORT_PATIENCE } else { Duration::ZERO };
        let sent = std::pin::pin!(self.pool.send(backend.scheme(), backend.authority(), request));
        let movable =
            || prepared.replayable && retry::has_alternative(&self.inner.snapshot.load(), tried, backend, target);
        let mut answer = retry::wait_for_answer(sent, movable, backend.health(), patience, now, deadline).await;
        if let Ok(response) = &mut answer
            && response.status() == StatusCode::SERVICE_UNAVAILABLE
        {
            // Judged by its headers: Prometheus's own 503 or a replica not ready.
            lines::unpack(response);
        }
        let outcome = retry::judge(answer, prepared.replayable, backend);
        if let Some(trace) = &trace {
            match &outcome {
                Outcome::Answer(response) => trace.answered(response.status()),
                Outcome::Failed(failure, _) => trace.failed(failure, failure.kind()),
            }
        }
        outcome.map(|response| (response, slot))
    }

    /// The backend's answer, made ready for the client; its body streams through untouched,
    /// holding the replica's connection slot until it is done. A replica chosen for its data
    /// serves this query only: the client's pin stays.
    fn answer(
        &self,
        exchange: &Exchange,
        backend: &Arc<Replica>,
        response: Response<P::Body>,
        slot: OwnedSemaphorePermit,
    ) -> Response<ProxyBody<P::Body>> {
        let (mut parts, body) = response.into_parts();
        if exchange.target != Target::Diverted {
            let prepared = &exchange.prepared;
            self.inner.affinity.remember(
                &exchange.snapshot,
                prepared.route_cookie.as_deref(),
                backend,
                &mut parts.headers,
            );
        }
        self.finish(exchange, parts, Either::Left(Guarded::new(body, slot)), backend)
    }

    /// An answer's head made ready for the client (`MPP.ServedBy` in), counted.
    fn finish(
        &self,
        exchange: &Exchange,
        parts: http::response::Parts,
        body: ProxyBody<P::Body>,
        backend: &Replica,
    ) -> Response<ProxyBody<P::Body>> {
        self.count_answer(exchange, backend, parts.status);
        present(parts, body, backend)
    }

    /// Counts `backend`'s answer to the exchange.
    fn count_answer(&self, exchange: &Exchange, backend: &Replica, status: StatusCode) {
        let metrics = backend.metrics();
        metrics.duration.observe(exchange.started.elapsed());
        if status == StatusCode::OK {
            metrics.ok.inc();
        } else {
            let labels = RequestLabels { backend: backend.url_label(), code: status.as_u16() };
            self.inner.metrics.requests.get_or_create(&labels).inc();
        }
    }
}

/// An answer's head made ready for the client: `MPP.ServedBy` in (after the replica's lines,
/// when it kept them as they came). (Its hop-by-hop headers are already out: a
/// [`Transport`]'s answers carry none.)
fn present<B: lines::CarriesLines>(mut parts: http::response::Parts, mut body: B, backend: &Replica) -> Response<B> {
    match body.lines_mut() {
        Some(lines) => lines.add(backend.served_by_line().clone()),
        None => {
            parts.headers.insert(headers::SERVED_BY.clone(), backend.served_by().clone());
        }
    }
    Response::from_parts(parts, body)
}

/// What sees a request's body once it is read: nothing (`()`, which adds nothing to the
/// request's future), or the query log's entry for it.
trait BodyTap: Send {
    fn read_body(&self, headers: &HeaderMap, body: &Bytes);
}

impl BodyTap for () {
    fn read_body(&self, _: &HeaderMap, _: &Bytes) {}
}

impl BodyTap for Option<&Pending> {
    fn read_body(&self, headers: &HeaderMap, body: &Bytes) {
        if let Some(pending) = self {
            pending.read_body(headers, body);
        }
    }
}

/// The time now, in milliseconds since the epoch.
fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as Millis
}

/// The request's target as a path (and query) to forward; a target that is not a path (an
/// authority, or `*`) is refused.
fn request_path(uri: &http::Uri) -> Result<PathAndQuery, ProxyError> {
    if uri.scheme().is_none() && uri.authority().is_some() {
        // `host:port`: the authority form, which only CONNECT takes (RFC 9112, 3.2.3); it
        // names no path on any replica.
        return Err(ProxyError::BadRequest(format!(
            "request target '{uri}' is in authority form, which only CONNECT takes; send a path"
        )));
    }
    let path_and_query = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !path_and_query.path().starts_with('/') {
        return Err(ProxyError::BadRequest(format!("request target '{path_and_query}' is not a path")));
    }
    Ok(path_and_query)
}

#[cfg(test)]
mod tests;
