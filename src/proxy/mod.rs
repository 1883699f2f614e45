//! The request path: everything outside `/mpp/` is forwarded to a selected replica. One
//! request: read (and cap) the body so it can be replayed, pick the replica (affinity first,
//! else by strategy), make an *attempt*, and on a failure that is safe to retry make another
//! on a different replica. The answer streams back as it arrives. This path only loads the
//! published [`Snapshot`]; it never waits for the selection loop, it only signals it.

pub mod affinity;
pub mod forward;
pub mod retry;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::client::HttpClient;
use crate::error::{AttemptError, ProxyBody, ProxyError};
use crate::metrics::{AffinityLabels, BackendLabels, Metrics, RequestLabels};
use crate::selection::Snapshot;
use affinity::{Affinity, AffinityOptions};

/// How long a replica may take to start answering a request. Prometheus gives up on a query
/// after `--query.timeout` (2 minutes by default); this only bounds a replica that hangs.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(150);
/// How often a waiting attempt looks whether its replica has been found down.
const DOWN_CHECK: Duration = Duration::from_millis(200);
/// How long a last-resort attempt (on a replica already found down, because no other is
/// left) waits for an answer before a query moves on.
const LAST_RESORT_PATIENCE: Duration = Duration::from_secs(5);

/// The request path's state. Cheap to clone. Every serving thread has its own, made with
/// [`Proxy::with_client`], so that its backend connections stay on that thread.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    client: HttpClient,
}

/// What every serving thread shares.
struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    affinity: Affinity,
    reselect: mpsc::Sender<()>,
    max_body: u64,
}

/// What the proxy needs from the rest of the program.
pub struct ProxySettings {
    /// The backend client.
    pub client: HttpClient,
    /// The published selection.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Where to count.
    pub metrics: Arc<Metrics>,
    /// The sticky-session modes.
    pub affinity: AffinityOptions,
    /// Signals the selection loop that a replica failed.
    pub reselect: mpsc::Sender<()>,
    /// The largest request body accepted.
    pub max_body: u64,
}

/// A request, read and ready to be sent to any replica.
struct Prepared {
    method: Method,
    /// The client's `MPP.Route` cookie, if any.
    route_cookie: Option<String>,
    body: Bytes,
    outgoing_headers: HeaderMap,
    path_and_query: PathAndQuery,
    client: IpAddr,
    replayable: bool,
}

impl Proxy {
    /// The request path over the given state.
    pub fn new(settings: ProxySettings) -> Self {
        Proxy {
            client: settings.client,
            inner: Arc::new(Inner {
                snapshot: settings.snapshot,
                metrics: settings.metrics,
                affinity: Affinity::new(settings.affinity),
                reselect: settings.reselect,
                max_body: settings.max_body,
            }),
        }
    }

    /// The same proxy (selection, affinity table, metrics) over another backend client.
    pub fn with_client(&self, client: HttpClient) -> Self {
        Proxy { inner: self.inner.clone(), client }
    }

    /// Forwards one request; always produces an answer (a JSON error at worst).
    pub async fn handle(&self, request: Request<Incoming>, peer: IpAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        match self.forward(request, peer, started).await {
            Ok(response) => response,
            Err(error) => {
                let response = error.into_response();
                let labels = RequestLabels { backend: "none".into(), code: response.status().as_u16() };
                self.inner.metrics.requests.get_or_create(&labels).inc();
                response
            }
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let prepared = self.prepare(request, peer).await?;
        let inner = &*self.inner;
        let mut snapshot = inner.snapshot.load_full();
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
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        loop {
            let (failure, unavailable) = match self.attempt(&prepared, &backend, last_resort).await {
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE && prepared.replayable => {
                    (AttemptError::Unavailable, Some(response))
                }
                Ok(response) => return Ok(self.answer(response, &backend, &snapshot, &prepared, started)),
                Err(failure) => (failure, None),
            };
            tracing::debug!(backend = %backend, error = %failure, last_resort, "attempt failed");
            // The selection loop re-probes at once; this request does not wait for it.
            let _ = inner.reselect.try_send(());
            tried.push(backend.clone());
            let next = if tried.len() < retry::MAX_ATTEMPTS && failure.retryable(prepared.replayable) {
                snapshot = inner.snapshot.load_full();
                match retry::next_backend(&snapshot, &tried) {
                    Some(next) => Some((next, false)),
                    None if last_resort => retry::last_resort(&snapshot, &tried).map(|next| (next, true)),
                    None => None,
                }
            } else {
                None
            };
            match (next, unavailable) {
                (Some((next, next_is_last_resort)), _) => {
                    inner.metrics.retries.get_or_create(&BackendLabels { backend: backend.url_label() }).inc();
                    (backend, last_resort) = (next, next_is_last_resort);
                }
                (None, Some(response)) => return Ok(self.answer(response, &backend, &snapshot, &prepared, started)),
                (None, None) => {
                    tracing::warn!(backend = %backend, error = %failure, attempts = tried.len(), "request failed on every attempt");
                    let mut detail = failure.to_string();
                    if last_resort {
                        detail = format!("{detail} (tried although {})", snapshot.reason);
                    }
                    let backend = backend.url().to_string();
                    return Err(if failure.nothing_answered() {
                        ProxyError::Unavailable { backend, detail }
                    } else {
                        ProxyError::Upstream { backend, detail }
                    });
                }
            }
        }
    }

    /// Reads the body (up to the limit) and works out everything the attempts share.
    async fn prepare(&self, request: Request<Incoming>, peer: IpAddr) -> Result<Prepared, ProxyError> {
        let (parts, body) = request.into_parts();
        let limit = self.inner.max_body;
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProxyError::BodyTooLarge { limit }
                } else {
                    ProxyError::BadRequestBody(crate::error::error_chain(e.as_ref()))
                }
            })?
            .to_bytes();
        let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        if !path_and_query.path().starts_with('/') {
            return Err(ProxyError::BadRequest(format!("request target '{path_and_query}' is not a path")));
        }
        Ok(Prepared {
            client: affinity::client_address(&parts.headers, peer),
            route_cookie: affinity::route_cookie(&parts.headers).map(str::to_owned),
            replayable: retry::replayable(&parts.method, path_and_query.path()),
            outgoing_headers: forward::request_headers(parts.headers, peer),
            method: parts.method,
            path_and_query,
            body,
        })
    }

    /// One try of the request on one backend, until the answer's headers arrive.
    async fn attempt(
        &self,
        prepared: &Prepared,
        backend: &Backend,
        last_resort: bool,
    ) -> Result<Response<Incoming>, AttemptError> {
        let uri = backend.uri(&prepared.path_and_query).map_err(|e| AttemptError::Connect(e.to_string()))?;
        let mut request = Request::new(Full::new(prepared.body.clone()));
        *request.method_mut() = prepared.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = prepared.outgoing_headers.clone();
        let patience = if last_resort { LAST_RESORT_PATIENCE } else { Duration::ZERO };
        let result = self.wait_for_answer(self.client.request(request), prepared.replayable, backend, patience).await;
        match &result {
            Ok(response) if response.status() != StatusCode::SERVICE_UNAVAILABLE => backend.health().record_success(),
            Err(AttemptError::Abandoned) => {}
            _ => {
                if backend.health().record_failure() {
                    tracing::warn!(backend = %backend, "replica failed live traffic repeatedly; ejected until it passes a probe");
                }
            }
        }
        result
    }

    /// Waits for the answer's headers. A query waiting on a replica that the liveness check
    /// or other requests have since found down moves on (`Abandoned`), after `patience` at
    /// the earliest (a last-resort attempt gives a replica already known down some time);
    /// writes wait for their answer. The replica's health is an atomic read every
    /// [`DOWN_CHECK`] rather than a wake-up, so that no request registers with anything the
    /// background tasks lock.
    async fn wait_for_answer<F>(
        &self,
        send: F,
        replayable: bool,
        backend: &Backend,
        patience: Duration,
    ) -> Result<Response<Incoming>, AttemptError>
    where
        F: Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
    {
        let started = Instant::now();
        tokio::pin!(send);
        loop {
            match tokio::time::timeout(DOWN_CHECK, &mut send).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(e)) => return Err(AttemptError::from_client(&e)),
                Err(_) if replayable && backend.health().is_down() && started.elapsed() >= patience => {
                    return Err(AttemptError::Abandoned);
                }
                Err(_) if started.elapsed() >= ANSWER_TIMEOUT => {
                    return Err(AttemptError::Sent(format!("no answer within {ANSWER_TIMEOUT:?}")));
                }
                Err(_) => {}
            }
        }
    }

    /// The backend's answer, made ready for the client; its body streams through untouched.
    fn answer(
        &self,
        response: Response<Incoming>,
        backend: &Arc<Backend>,
        snapshot: &Snapshot,
        prepared: &Prepared,
        started: Instant,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(forward::SERVED_BY.clone(), backend.served_by().clone());
        let inner = &*self.inner;
        inner.affinity.remember(
            snapshot,
            prepared.route_cookie.as_deref(),
            prepared.client,
            backend,
            &mut parts.headers,
        );
        let metrics = backend.metrics(&inner.metrics);
        metrics.duration.observe(started.elapsed());
        if parts.status == StatusCode::OK {
            metrics.ok.inc();
        } else {
            let labels = RequestLabels { backend: backend.url_label(), code: parts.status.as_u16() };
            inner.metrics.requests.get_or_create(&labels).inc();
        }
        Response::from_parts(parts, Either::Left(body))
    }
}
