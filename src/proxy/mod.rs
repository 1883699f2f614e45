//! The request path: everything outside `/mpp/` is forwarded to a selected replica. One
//! request: read (and cap) the body so it can be replayed, pick the replica (affinity first,
//! else by strategy), make an *attempt*, and on a failure that is safe to retry make another
//! on a different replica. The answer streams back as it arrives. This path only loads the
//! published [`Snapshot`]; it never waits for the selection loop, it only signals it.

pub mod affinity;
pub mod body;
pub mod client_ip;
pub mod headers;
pub mod retry;
pub mod route;
pub mod slice;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::join_all;
use http::HeaderValue;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::{Either, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::body::Guarded;
use crate::client::pool::{self, Pool};
use crate::coverage::Millis;
use crate::coverage::tracker::DEFAULT_LOOKBACK;
use crate::credentials::Credentials;
use crate::error::{ProxyBody, ProxyError};
use crate::merge;
use crate::metrics::{AffinityLabels, BackendLabels, MergeLabels, Metrics, RequestLabels};
use crate::registry::Replica;
use crate::selection::Snapshot;
use crate::units::format_duration;
use crate::via::Pseudonym;
use crate::window::{self, Read, Window};
use affinity::{Affinity, AffinityOptions};
use body::{BodyLimits, Buffered};
use client_ip::TrustedProxies;
use retry::AttemptError;
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

/// How long a last-resort attempt (on a replica already found down, because no other is
/// left) waits for an answer before a query moves on.
const LAST_RESORT_PATIENCE: Duration = Duration::from_secs(5);
/// How long a request waits for one of a replica's connections (`--max-backend-connections`)
/// before it is refused with 503 and `Retry-After`.
const QUEUE_PATIENCE: Duration = Duration::from_secs(5);
/// How long a request that arrives before discovery's first complete answer waits for it.
/// mpp accepts connections before that only when `--startup-timeout` has run out, so
/// discovery is slow or broken by then: worth a short wait, not a long one per request.
const STARTUP_PATIENCE: Duration = Duration::from_secs(2);

/// The request path's state. Cheap to clone. Every serving thread has its own, made with
/// [`Proxy::with_pool`], so that its backend connections stay on that thread.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    pool: Pool,
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
}

/// What the proxy needs from the rest of the program.
pub struct ProxySettings {
    /// The connections to the replicas (of the first serving thread).
    pub pool: Pool,
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
}

/// A request, read and ready to be sent to any replica.
struct Prepared {
    method: Method,
    /// The client's `MPP.Route` cookie, if any.
    route_cookie: Option<String>,
    body: Buffered,
    outgoing_headers: HeaderMap,
    path_and_query: PathAndQuery,
    client: IpAddr,
    replayable: bool,
    /// A query that names no `timeout`: each attempt tells the replica the time left.
    pass_timeout: bool,
}

/// How one attempt ended.
enum Outcome {
    /// An answer for the client (a Prometheus API error answer included).
    Answer(Response<pool::Body>, OwnedSemaphorePermit),
    /// A failure; with the replica's own answer when it gave one (a 503 while not ready),
    /// which the client gets if no other replica does better.
    Failed(AttemptError, Option<(Response<pool::Body>, OwnedSemaphorePermit)>),
}

impl Proxy {
    /// The request path over the given state.
    pub fn new(settings: ProxySettings) -> Self {
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
            }),
        }
    }

    /// The same proxy (selection, affinity table, metrics) over another thread's pool.
    pub fn with_pool(&self, pool: Pool) -> Self {
        Proxy { inner: self.inner.clone(), pool }
    }

    /// Forwards one request; always produces an answer (a JSON error at worst). The error is
    /// mapped onto `forward`'s own future rather than awaited in a future around it: each
    /// level of nesting is a state the request's future carries, and copies, on every request.
    pub fn handle<B: ClientBody>(
        &self,
        request: Request<B>,
        peer: IpAddr,
    ) -> impl Future<Output = Response<ProxyBody>> {
        let started = Instant::now();
        self.forward(request, peer, started).map(|answer| answer.unwrap_or_else(|error| self.refuse(error)))
    }

    /// The answer to a request that is refused (counted like any other answer).
    pub fn refuse(&self, error: ProxyError) -> Response<ProxyBody> {
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
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The steps that need no waiting are plain calls, not futures of their own nested in
        // this one (see `handle`).
        let (parts, body) = request.into_parts();
        let path_and_query = request_path(&parts.uri)?;
        let body = self.inner.body.read(&parts.headers, body).await?;
        let prepared = self.prepare(parts, path_and_query, body, peer);
        let inner = &*self.inner;
        let deadline = started + inner.request_timeout;
        let snapshot = match inner.snapshot.load_full() {
            snapshot if snapshot.settled => snapshot,
            _ => Box::pin(self.settled_snapshot(deadline)).await,
        };
        let backend = match inner.affinity.preferred(&snapshot, prepared.route_cookie.as_deref(), prepared.client) {
            Some((backend, sticky)) => {
                inner.metrics.affinity_hits.get_or_create(&AffinityLabels { r#type: sticky.label() }).inc();
                backend
            }
            None => match retry::next_backend(&snapshot, &[]) {
                Some(backend) => backend,
                None => {
                    // Nothing usable is left: every candidate is tried anyway before clients
                    // get a 503.
                    let backend = retry::last_resort(&snapshot, &[])
                        .ok_or_else(|| ProxyError::NoReplica(snapshot.reason.clone()))?;
                    return Box::pin(self.relay(prepared, backend, true, false, snapshot, deadline, started)).await;
                }
            },
        };
        match self.coverage_read(&prepared, &snapshot, &backend) {
            Some(read) => match route::plan(&snapshot, backend, &read) {
                Route::One { replica, diverted } => {
                    Box::pin(self.relay(prepared, replica, false, diverted, snapshot, deadline, started)).await
                }
                // Boxed, as the other rare paths below: the request's future is moved about
                // (into hyper's connection), and each path's state would otherwise add to
                // every request's.
                Route::Merge { primary, others } => {
                    Box::pin(self.merge(prepared, read.endpoint, primary, others, snapshot, deadline, started)).await
                }
                Route::Slices(slices) => {
                    let steps = read.steps.as_ref().expect("slices are planned from a range query's steps");
                    Box::pin(self.sliced(prepared, slices, steps, snapshot, deadline, started)).await
                }
            },
            None => Box::pin(self.relay(prepared, backend, false, false, snapshot, deadline, started)).await,
        }
    }

    /// What a request reads, when coverage routing is on, the request is a routable query,
    /// the replica it would go to (`default`) has a hole and so does some usable replica
    /// (otherwise that replica, or every one, covers every window, and the query is not even
    /// parsed).
    fn coverage_read(&self, prepared: &Prepared, snapshot: &Snapshot, default: &Replica) -> Option<Read> {
        let read_method = prepared.method == Method::GET || prepared.method == Method::POST;
        if !self.inner.coverage_routing
            || !read_method
            || window::Endpoint::of_path(prepared.path_and_query.path()).is_none()
        {
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
        let lookback = lookback.unwrap_or(DEFAULT_LOOKBACK);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as Millis;
        let form = headers::form_body(&prepared.outgoing_headers, &prepared.body.bytes);
        match window::read_window(
            prepared.path_and_query.path(),
            prepared.path_and_query.query(),
            form,
            now,
            lookback,
            Millis::MIN / 4,
        ) {
            Ok(read) => read,
            Err(e) => {
                // Prometheus may still accept it (PromQL newer than the parser knows): the
                // replica missing the least of everything it holds answers, never one
                // chosen without a look at the holes.
                tracing::debug!(error = %e, "cannot tell what the query reads; routing it by all of its data");
                let endpoint = window::Endpoint::of_path(prepared.path_and_query.path())?;
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
    /// replica, until one answers or none is left. `diverted`: coverage chose `backend` over
    /// the client's affinity, which then stays as it was.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        mut prepared: Prepared,
        mut backend: Arc<Replica>,
        mut last_resort: bool,
        diverted: bool,
        mut snapshot: Arc<Snapshot>,
        deadline: Instant,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let inner = &*self.inner;
        // Allocates only when an attempt fails.
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        loop {
            let (failure, unavailable) = match self.attempt(&prepared, &backend, &tried, last_resort, deadline).await {
                Outcome::Answer(response, slot) => {
                    let answer = self.answer(response, slot, &backend, &snapshot, &prepared, started, diverted);
                    if tried.is_empty() {
                        return Ok(answer);
                    }
                    return Ok(Box::pin(self.with_failover(answer, &tried, &backend, deadline)).await);
                }
                Outcome::Failed(failure, answer) => (failure, answer),
            };
            tracing::debug!(backend = %backend, error = %failure, last_resort, "attempt failed");
            if failure.counts_against_replica() {
                // The selection loop re-probes at once; this request does not wait for it.
                let _ = inner.reselect.try_send(());
            }
            tried.push(backend.clone());
            // The answer of another replica is read to say so in it: uncompressed.
            prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
            snapshot = inner.snapshot.load_full();
            let next = retry::next_attempt(&snapshot, &tried, &failure, prepared.replayable, last_resort);
            match (next, unavailable) {
                (Some((next, next_is_last_resort)), _) => {
                    inner.metrics.retries.get_or_create(&BackendLabels { backend: backend.url_label() }).inc();
                    (backend, last_resort) = (next, next_is_last_resort);
                }
                (None, Some((response, slot))) => {
                    return Ok(self.answer(response, slot, &backend, &snapshot, &prepared, started, diverted));
                }
                (None, None) => {
                    tracing::warn!(backend = %backend, error = %failure, attempts = tried.len(), "request failed on every attempt");
                    return Err(self.failure(failure, &backend, &snapshot, last_resort));
                }
            }
        }
    }

    /// An answer that another replica gave after `failed` ones (at least one) did not: says
    /// so in a header and, for an API answer mpp can read within `--merge-max-bytes`, in its
    /// `warnings` (Grafana shows them). A longer answer streams on as it is.
    async fn with_failover(
        &self,
        answer: Response<ProxyBody>,
        failed: &[Arc<Replica>],
        served: &Replica,
        deadline: Instant,
    ) -> Response<ProxyBody> {
        let names = failed.iter().map(|r| r.url()).collect::<Vec<_>>().join(", ");
        let (mut parts, body) = answer.into_parts();
        if let Ok(value) = HeaderValue::from_str(&names) {
            parts.headers.insert(headers::FAILOVER_FROM.clone(), value);
        }
        let Either::Left(body) = body else { return Response::from_parts(parts, body) };
        if !headers::is_plain_json(&parts.headers) {
            return Response::from_parts(parts, Either::Left(body));
        }
        let (body, slot) = body.into_parts();
        let budget = &self.inner.merge_budget;
        match read_up_to(body, self.inner.merge_max_bytes, budget, deadline).await {
            Ok(Held::Whole(bytes, _held)) => {
                let warning = format!("mpp: answered by {} after {names} failed", served.url());
                let bytes = merge::add_warning(&bytes, &warning).map(Bytes::from).unwrap_or(bytes);
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, Either::Right(Full::new(bytes)))
            }
            Ok(Held::Over(prefix, rest)) => {
                Response::from_parts(parts, Either::Left(Guarded::with_prefix(prefix, rest, slot)))
            }
            Err(e) => ProxyError::Upstream { backend: served.url().to_string(), detail: e }.into_response(),
        }
    }

    /// Answers from several replicas: each is asked (uncompressed); their answers are read
    /// within `--merge-max-bytes` (shared by every merge in flight) and before the request's
    /// deadline, and merged off the serving thread. The first replica in `[primary,
    /// others...]` to answer `200` is the primary; when none does, the planned primary's
    /// answer (a bad query's error, say) is the client's. When the primary's own answer is
    /// over the bound, it streams on alone, with an `MPP-Warning` header.
    #[allow(clippy::too_many_arguments)]
    async fn merge(
        &self,
        mut prepared: Prepared,
        endpoint: window::Endpoint,
        primary: Arc<Replica>,
        others: Vec<Arc<Replica>>,
        snapshot: Arc<Snapshot>,
        deadline: Instant,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let inner = &*self.inner;
        prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
        let replicas: Vec<Arc<Replica>> = std::iter::once(primary.clone()).chain(others).collect();
        let outcomes = join_all(replicas.iter().map(|r| self.attempt(&prepared, r, &[], false, deadline))).await;
        let mut answers: Vec<(Arc<Replica>, Response<pool::Body>, OwnedSemaphorePermit)> = Vec::new();
        for (replica, outcome) in replicas.iter().zip(outcomes) {
            match outcome {
                Outcome::Answer(response, slot) => answers.push((replica.clone(), response, slot)),
                Outcome::Failed(failure, _) => {
                    tracing::debug!(backend = %replica, error = %failure, "a replica asked for a merge failed");
                }
            }
        }
        let label = endpoint.label();
        let count = |outcome: &'static str| {
            inner.metrics.merged_requests.get_or_create(&MergeLabels { endpoint: label, outcome }).inc();
        };
        let usable = |r: &Response<pool::Body>| r.status() == StatusCode::OK && headers::is_plain_json(r.headers());
        let Some(first_ok) = answers.iter().position(|(_, r, _)| usable(r)) else {
            return match answers.into_iter().next() {
                // Nobody answered 200: the first answer is the client's, as it is.
                Some((served, response, slot)) => {
                    Ok(self.answer(response, slot, &served, &snapshot, &prepared, started, true))
                }
                // Nobody answered at all: the ordinary way, with its retries and errors.
                None => self.relay(prepared, primary, false, false, snapshot, deadline, started).await,
            };
        };
        let (served, response, slot) = answers.remove(first_ok);
        let failed: Vec<Arc<Replica>> = replicas.iter().take_while(|r| **r != served).cloned().collect();
        let (mut parts, body) = response.into_parts();
        let budget = &inner.merge_budget;
        let mut held = Vec::new();
        let primary_body = match read_up_to(body, inner.merge_max_bytes, budget, deadline).await {
            Ok(Held::Whole(bytes, permit)) => {
                held.push(permit);
                bytes
            }
            Ok(Held::Over(prefix, rest)) => {
                count("too_large");
                let note = format!("not merged: the answer is over --merge-max-bytes {}", inner.merge_max_bytes);
                if let Ok(value) = HeaderValue::from_str(&note) {
                    parts.headers.insert(headers::MPP_WARNING.clone(), value);
                }
                // What was read and what is still to come are the whole answer, as it was.
                return Ok(self.finish(
                    parts,
                    Either::Left(Guarded::with_prefix(prefix, rest, slot)),
                    &served,
                    started,
                ));
            }
            Err(e) => return Err(ProxyError::Upstream { backend: served.url().to_string(), detail: e }),
        };
        drop(slot);
        let mut others: Vec<(Arc<Replica>, Bytes)> = Vec::new();
        let mut over = false;
        for (replica, response, slot) in answers.into_iter().filter(|(_, r, _)| usable(r)) {
            let limit = inner.merge_max_bytes.saturating_sub(primary_body.len());
            match read_up_to(response.into_body(), limit, budget, deadline).await {
                Ok(Held::Whole(bytes, permit)) => {
                    held.push(permit);
                    others.push((replica, bytes));
                }
                Ok(Held::Over(..)) => over = true,
                Err(e) => tracing::debug!(backend = %replica, error = %e, "an answer is left out of a merge"),
            }
            drop(slot);
        }
        let mut names: Vec<String> = vec![served.url().to_string()];
        names.extend(others.iter().map(|(r, _)| r.url().to_string()));
        let primary_url = served.url().to_string();
        let body = if others.is_empty() {
            let warning = if over {
                count("too_large");
                format!(
                    "mpp: no single replica holds all data for this query, and the others' answers are over --merge-max-bytes; this is {primary_url}'s alone"
                )
            } else {
                count("failed");
                format!(
                    "mpp: no single replica holds all data for this query, and only {primary_url} answered; it may have gaps"
                )
            };
            merge::add_warning(&primary_body, &warning).map(Bytes::from).unwrap_or(primary_body)
        } else {
            let warning = format!(
                "mpp: merged from replicas {} (no single replica holds all data for this time range; {primary_url} is the primary)",
                names.join(", ")
            );
            // Parsing and writing answers of megabytes is work for a blocking thread, not for
            // the thread that serves every other connection of this core.
            let work = tokio::task::spawn_blocking(move || {
                let parts: Vec<merge::Part> =
                    others.iter().map(|(r, b)| merge::Part { body: b, replica: r.url() }).collect();
                let merged = merge::merge(
                    endpoint,
                    merge::Part { body: &primary_body, replica: &primary_url },
                    &parts,
                    Some(&warning),
                );
                (merged, primary_body)
            });
            match work.await {
                Ok((Ok(merged), _)) => {
                    count("merged");
                    tracing::debug!(replicas = ?names, filled = merged.filled, added_series = merged.added_series, "answers merged");
                    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
                        parts.headers.insert(headers::MERGED_FROM.clone(), value);
                    }
                    Bytes::from(merged.body)
                }
                Ok((Err(e), primary_body)) => {
                    count("failed");
                    tracing::debug!(error = %e, "answers could not be merged; sending the primary's");
                    primary_body
                }
                Err(e) => {
                    return Err(ProxyError::Upstream {
                        backend: served.url().to_string(),
                        detail: format!("merging: {e}"),
                    });
                }
            }
        };
        drop(held);
        if !failed.is_empty()
            && let Ok(value) = HeaderValue::from_str(&failed.iter().map(|r| r.url()).collect::<Vec<_>>().join(", "))
        {
            parts.headers.insert(headers::FAILOVER_FROM.clone(), value);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(self.finish(parts, Either::Right(Full::new(body)), &served, started))
    }

    /// The client's answer when the last attempt failed.
    fn failure(&self, failure: AttemptError, backend: &Replica, snapshot: &Snapshot, last_resort: bool) -> ProxyError {
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
                if last_resort {
                    detail = format!("{detail} (tried although {})", snapshot.reason);
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
        let pass_timeout = headers::wants_timeout(&path_and_query, &parts.headers, &body.bytes);
        let client = self.inner.trusted_proxies.client_address(&parts.headers, peer);
        let route_cookie = affinity::route_cookie(&parts.headers).map(str::to_owned);
        let tls = parts.extensions.get::<headers::ClientTls>().is_some();
        let mut incoming = parts.headers;
        self.inner.trusted_proxies.drop_untrusted_forwarding(&mut incoming, peer);
        let mut outgoing_headers = headers::request_headers(incoming, peer, tls);
        outgoing_headers.append(header::VIA, self.inner.pseudonym.via().clone());
        if let Some(credentials) = &self.inner.credentials {
            credentials.apply(&mut outgoing_headers);
        }
        Prepared {
            client,
            route_cookie,
            replayable: retry::replayable(&parts.method, path_and_query.path()),
            outgoing_headers,
            method: parts.method,
            path_and_query,
            body,
            pass_timeout,
        }
    }

    /// One try of the request on one backend (after the `tried` ones), until the answer's
    /// headers arrive.
    async fn attempt(
        &self,
        prepared: &Prepared,
        backend: &Replica,
        tried: &[Arc<Replica>],
        last_resort: bool,
        deadline: Instant,
    ) -> Outcome {
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
                    Ok(Err(_)) | Err(_) => return Outcome::Failed(AttemptError::Busy, None),
                }
            }
        };
        let timeout = prepared.pass_timeout.then(|| {
            headers::timeout_parameter(&prepared.path_and_query, deadline.saturating_duration_since(Instant::now()))
        });
        let request = pool::Outgoing {
            method: &prepared.method,
            target: [backend.prefix(), prepared.path_and_query.as_str(), timeout.as_ref().map_or("", |t| t.as_str())],
            headers: &prepared.outgoing_headers,
            body: &prepared.body.bytes,
            replayable: prepared.replayable,
        };
        let patience = if last_resort { LAST_RESORT_PATIENCE } else { Duration::ZERO };
        let sent = std::pin::pin!(self.pool.send(backend.scheme(), backend.authority(), request));
        let movable =
            || prepared.replayable && retry::has_alternative(&self.inner.snapshot.load(), tried, backend, last_resort);
        let outcome = match retry::wait_for_answer(sent, movable, backend.health(), patience, deadline).await {
            Ok(response)
                if response.status() == StatusCode::SERVICE_UNAVAILABLE && !headers::is_api_answer(&response) =>
            {
                Outcome::Failed(AttemptError::Unavailable, prepared.replayable.then_some((response, slot)))
            }
            Ok(response) if response.status() == StatusCode::LOOP_DETECTED => Outcome::Failed(AttemptError::Loop, None),
            Ok(response) => Outcome::Answer(response, slot),
            Err(failure) => Outcome::Failed(failure, None),
        };
        match &outcome {
            Outcome::Answer(..) => backend.health().record_success(),
            Outcome::Failed(failure, _) if failure.counts_against_replica() => {
                if backend.health().record_failure(retry::EJECT_AFTER_FAILURES) {
                    tracing::warn!(backend = %backend, "replica failed live traffic repeatedly; ejected until it passes a probe");
                }
            }
            Outcome::Failed(..) => {}
        }
        outcome
    }

    /// The backend's answer, made ready for the client; its body streams through untouched,
    /// holding the replica's connection slot until it is done.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        response: Response<pool::Body>,
        slot: OwnedSemaphorePermit,
        backend: &Arc<Replica>,
        snapshot: &Snapshot,
        prepared: &Prepared,
        started: Instant,
        diverted: bool,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        // A replica chosen for its data serves this query only; the client's pin stays.
        if !diverted {
            self.inner.affinity.remember(
                snapshot,
                prepared.route_cookie.as_deref(),
                prepared.client,
                backend,
                &mut parts.headers,
            );
        }
        self.finish(parts, Either::Left(Guarded::new(body, slot)), backend, started)
    }

    /// An answer's head made ready for the client (hop-by-hop headers out, `MPP.ServedBy`
    /// in), counted.
    fn finish(
        &self,
        mut parts: http::response::Parts,
        body: ProxyBody,
        backend: &Replica,
        started: Instant,
    ) -> Response<ProxyBody> {
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(headers::SERVED_BY.clone(), backend.served_by().clone());
        let metrics = backend.metrics();
        metrics.duration.observe(started.elapsed());
        if parts.status == StatusCode::OK {
            metrics.ok.inc();
        } else {
            let labels = RequestLabels { backend: backend.url_label(), code: parts.status.as_u16() };
            self.inner.metrics.requests.get_or_create(&labels).inc();
        }
        Response::from_parts(parts, body)
    }
}

/// The request's target as a path (and query) to forward; a target that is not a path (an
/// authority, or `*`) is refused.
fn request_path(uri: &http::Uri) -> Result<PathAndQuery, ProxyError> {
    let path_and_query = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !path_and_query.path().starts_with('/') {
        return Err(ProxyError::BadRequest(format!("request target '{path_and_query}' is not a path")));
    }
    Ok(path_and_query)
}

/// An answer's body as far as it was read: whole (with the budget it holds), or, over the
/// limit, what was read and the rest still to come.
enum Held<B> {
    Whole(Bytes, Option<OwnedSemaphorePermit>),
    Over(Bytes, B),
}

/// Reads `body` whole, paying for each byte from `budget`, unless it is over `limit` or the
/// budget runs out (then [`Held::Over`], so that it can still stream on). Fails when the body
/// fails or does not end before `deadline`.
async fn read_up_to<B>(mut body: B, limit: usize, budget: &Arc<Semaphore>, deadline: Instant) -> Result<Held<B>, String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut read = BytesMut::new();
    let mut paid: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err("the answer did not arrive whole within --request-timeout".to_string()),
            Ok(None) => return Ok(Held::Whole(read.freeze(), paid)),
            Ok(Some(Err(e))) => {
                return Err(format!("reading the answer: {}", crate::error::error_chain(e.into().as_ref())));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let fits = read.len() + data.len() <= limit;
        let permit =
            u32::try_from(data.len()).ok().filter(|_| fits).and_then(|n| budget.clone().try_acquire_many_owned(n).ok());
        read.extend_from_slice(&data);
        match (permit, &mut paid) {
            (Some(permit), Some(paid)) => paid.merge(permit),
            (Some(permit), None) => paid = Some(permit),
            (None, _) => return Ok(Held::Over(read.freeze(), body)),
        }
    }
}
