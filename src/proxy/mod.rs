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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::body::Guarded;
use crate::client::pool::Pool;
use crate::credentials::Credentials;
use crate::error::{ProxyBody, ProxyError};
use crate::metrics::{AffinityLabels, BackendLabels, Metrics, RequestLabels};
use crate::registry::Replica;
use crate::selection::Snapshot;
use crate::units::format_duration;
use crate::via::Pseudonym;
use affinity::{Affinity, AffinityOptions};
use body::{BodyLimits, Buffered};
use client_ip::TrustedProxies;
use retry::AttemptError;

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
    Answer(Response<Incoming>, OwnedSemaphorePermit),
    /// A failure; with the replica's own answer when it gave one (a 503 while not ready),
    /// which the client gets if no other replica does better.
    Failed(AttemptError, Option<(Response<Incoming>, OwnedSemaphorePermit)>),
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
            }),
        }
    }

    /// The same proxy (selection, affinity table, metrics) over another thread's pool.
    pub fn with_pool(&self, pool: Pool) -> Self {
        Proxy { inner: self.inner.clone(), pool }
    }

    /// Forwards one request; always produces an answer (a JSON error at worst).
    pub async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        match self.forward(request, peer, started).await {
            Ok(response) => response,
            Err(error) => self.refuse(error),
        }
    }

    /// The answer to a request that is refused (counted like any other answer).
    pub fn refuse(&self, error: ProxyError) -> Response<ProxyBody> {
        let response = error.into_response();
        let labels = RequestLabels { backend: "none".into(), code: response.status().as_u16() };
        self.inner.metrics.requests.get_or_create(&labels).inc();
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let prepared = self.prepare(request, peer).await?;
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        let mut snapshot = self.settled_snapshot(deadline).await;
        // Nothing usable is left: every candidate is tried anyway before clients get a 503.
        let mut last_resort = false;
        let mut backend = match inner.affinity.preferred(&snapshot, prepared.route_cookie.as_deref(), prepared.client) {
            Some((backend, sticky)) => {
                inner.metrics.affinity_hits.get_or_create(&AffinityLabels { r#type: sticky.label() }).inc();
                backend
            }
            None => match retry::next_backend(&snapshot, &[]) {
                Some(backend) => backend,
                None => {
                    last_resort = true;
                    retry::last_resort(&snapshot, &[]).ok_or_else(|| ProxyError::NoReplica(snapshot.reason.clone()))?
                }
            },
        };
        // Allocates only when an attempt fails.
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        loop {
            let (failure, unavailable) = match self.attempt(&prepared, &backend, last_resort, deadline).await {
                Outcome::Answer(response, slot) => {
                    return Ok(self.answer(response, slot, &backend, &snapshot, &prepared, started));
                }
                Outcome::Failed(failure, answer) => (failure, answer),
            };
            tracing::debug!(backend = %backend, error = %failure, last_resort, "attempt failed");
            if failure.counts_against_replica() {
                // The selection loop re-probes at once; this request does not wait for it.
                let _ = inner.reselect.try_send(());
            }
            tried.push(backend.clone());
            snapshot = inner.snapshot.load_full();
            let next = retry::next_attempt(&snapshot, &tried, &failure, prepared.replayable, last_resort);
            match (next, unavailable) {
                (Some((next, next_is_last_resort)), _) => {
                    inner.metrics.retries.get_or_create(&BackendLabels { backend: backend.url_label() }).inc();
                    (backend, last_resort) = (next, next_is_last_resort);
                }
                (None, Some((response, slot))) => {
                    return Ok(self.answer(response, slot, &backend, &snapshot, &prepared, started));
                }
                (None, None) => {
                    tracing::warn!(backend = %backend, error = %failure, attempts = tried.len(), "request failed on every attempt");
                    return Err(self.failure(failure, &backend, &snapshot, last_resort));
                }
            }
        }
    }

    /// The client's answer when the last attempt failed.
    fn failure(&self, failure: AttemptError, backend: &Replica, snapshot: &Snapshot, last_resort: bool) -> ProxyError {
        let url = backend.url().to_string();
        match failure {
            AttemptError::TimedOut => {
                ProxyError::Timeout { limit: format_duration(self.inner.request_timeout), backend: url }
            }
            AttemptError::Local(e) => ProxyError::BadRequest(format!("cannot forward it to {url}: {e}")),
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
        let snapshot = self.inner.snapshot.load_full();
        if snapshot.settled {
            return snapshot;
        }
        let give_up = deadline.min(Instant::now() + STARTUP_PATIENCE);
        loop {
            let snapshot = self.inner.snapshot.load_full();
            if snapshot.settled || Instant::now() >= give_up {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the body (within the limits) and works out everything the attempts share.
    async fn prepare(&self, request: Request<Incoming>, peer: IpAddr) -> Result<Prepared, ProxyError> {
        let (parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        if !path_and_query.path().starts_with('/') {
            return Err(ProxyError::BadRequest(format!("request target '{path_and_query}' is not a path")));
        }
        let body = self.inner.body.read(&parts.headers, body).await?;
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
        Ok(Prepared {
            client,
            route_cookie,
            replayable: retry::replayable(&parts.method, path_and_query.path()),
            outgoing_headers,
            method: parts.method,
            path_and_query,
            body,
            pass_timeout,
        })
    }

    /// One try of the request on one backend, until the answer's headers arrive.
    async fn attempt(&self, prepared: &Prepared, backend: &Replica, last_resort: bool, deadline: Instant) -> Outcome {
        let slots = backend.connection_slots();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let queued = tokio::time::timeout_at(
                    deadline.min(Instant::now() + QUEUE_PATIENCE),
                    slots.clone().acquire_owned(),
                );
                match queued.await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(_)) | Err(_) => return Outcome::Failed(AttemptError::Busy, None),
                }
            }
        };
        let path_and_query = if prepared.pass_timeout {
            headers::with_timeout(&prepared.path_and_query, deadline.saturating_duration_since(Instant::now()))
        } else {
            prepared.path_and_query.clone()
        };
        let uri = match backend.uri(&path_and_query) {
            Ok(uri) => uri,
            Err(e) => return Outcome::Failed(AttemptError::Local(e.to_string()), None),
        };
        let mut request = Request::new(Full::new(prepared.body.bytes.clone()));
        *request.method_mut() = prepared.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = prepared.outgoing_headers.clone();
        let patience = if last_resort { LAST_RESORT_PATIENCE } else { Duration::ZERO };
        let sent = self.pool.send(request);
        let outcome = match retry::wait_for_answer(sent, prepared.replayable, backend.health(), patience, deadline)
            .await
        {
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
    fn answer(
        &self,
        response: Response<Incoming>,
        slot: OwnedSemaphorePermit,
        backend: &Arc<Replica>,
        snapshot: &Snapshot,
        prepared: &Prepared,
        started: Instant,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(headers::SERVED_BY.clone(), backend.served_by().clone());
        let inner = &*self.inner;
        inner.affinity.remember(
            snapshot,
            prepared.route_cookie.as_deref(),
            prepared.client,
            backend,
            &mut parts.headers,
        );
        let metrics = backend.metrics();
        metrics.duration.observe(started.elapsed());
        if parts.status == StatusCode::OK {
            metrics.ok.inc();
        } else {
            let labels = RequestLabels { backend: backend.url_label(), code: parts.status.as_u16() };
            inner.metrics.requests.get_or_create(&labels).inc();
        }
        Response::from_parts(parts, Either::Left(Guarded::new(body, slot)))
    }
}
