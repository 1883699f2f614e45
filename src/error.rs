//! What can go wrong with a proxied request, whether it may be retried, and the one mapping
//! from error to the HTTP answer the client gets (a Prometheus-API-style JSON error).

use std::error::Error as StdError;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::body::Guarded;

/// The body of every answer mpp gives: a backend's streamed answer (holding its replica's
/// connection slot until done), or one of our own.
pub type ProxyBody = Either<Guarded<Incoming, OwnedSemaphorePermit>, Full<Bytes>>;

/// Why a request got no answer from a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body is larger than `--max-request-body`.
    #[error("request body is larger than the limit of {limit} bytes (--max-request-body)")]
    BodyTooLarge { limit: u64 },
    /// The client's body could not be read.
    #[error("could not read the request body: {0}")]
    BadRequestBody(String),
    /// The request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No replica is selected.
    #[error("no Prometheus replica is available: {0}")]
    NoReplica(String),
    /// Every attempt failed without a replica answering; this is the last failure.
    #[error("no Prometheus replica is available: the last one tried, {backend}, {detail}")]
    Unavailable { backend: String, detail: String },
    /// The request may have reached a replica and failed there, and may not be replayed.
    #[error("Prometheus replica {backend} failed: {detail}")]
    Upstream { backend: String, detail: String },
    /// The method is never forwarded (`CONNECT`).
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    /// The request uses something mpp does not implement.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// The request has already passed through this mpp (its `Via` token): a discovery
    /// source lists mpp itself, or something forwards mpp's requests back to it.
    #[error("loop detected: this request already passed through this mpp ({0}); does discovery list mpp itself?")]
    LoopDetected(String),
    /// A shared budget is spent (buffered bodies, a replica's connections); the client may
    /// try again shortly.
    #[error("mpp is overloaded: {0}; try again shortly")]
    Overloaded(String),
    /// The request's total time (`--request-timeout`) ran out; it is not run again.
    #[error("no answer within {limit} (--request-timeout); the last replica tried was {backend}")]
    Timeout { limit: String, backend: String },
    /// The client sent its body too slowly.
    #[error("the request body arrived too slowly: {0}")]
    BodyTooSlow(String),
}

impl ProxyError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoReplica(_) | ProxyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooSlow(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `errorType` of the Prometheus API error body.
    fn error_type(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::BodyTooSlow(_) => "bad_data",
            ProxyError::NoReplica(_)
            | ProxyError::Unavailable { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::LoopDetected(_)
            | ProxyError::Overloaded(_) => "unavailable",
            ProxyError::Timeout { .. } => "timeout",
        }
    }

    /// The answer to send: the status, and `{"status":"error","errorType":..,"error":..}`.
    pub fn into_response(self) -> Response<ProxyBody> {
        let overloaded = matches!(self, ProxyError::Overloaded(_));
        // A client too slow to send its body is not kept for another request.
        let closes = matches!(self, ProxyError::BodyTooSlow(_));
        let body = serde_json::json!({
            "status": "error",
            "errorType": self.error_type(),
            "error": self.to_string(),
        });
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = self.status();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if overloaded {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if closes {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// How one attempt on one backend failed, and so whether another attempt is safe.
#[derive(Debug)]
pub enum AttemptError {
    /// The connection could not be made: nothing was sent, so any request may be retried.
    Connect(String),
    /// The request may have reached the backend; only a read-only request may be replayed.
    Sent(String),
    /// The backend answered 503 (typically: not ready, replaying its WAL).
    Unavailable,
    /// The replica was found down (liveness, ejection) while this attempt waited on it.
    Abandoned,
    /// The replica answered 508: the request came back to this mpp (the candidate is mpp
    /// itself, or forwards to it). Nothing ran.
    Loop,
    /// The request's time (`--request-timeout`) ran out while waiting.
    TimedOut,
    /// Every connection to the replica (`--max-backend-connections`) stayed in use while the
    /// request queued for one. Nothing was sent.
    Busy,
}

impl AttemptError {
    /// Whether another backend may be tried. `replayable`: the request is read-only. A
    /// request whose time ran out is never run again: a query heavy enough to time out on
    /// one replica would only cost the next one as much.
    pub fn retryable(&self, replayable: bool) -> bool {
        match self {
            AttemptError::Connect(_) | AttemptError::Loop | AttemptError::Busy => true,
            AttemptError::Sent(_) | AttemptError::Unavailable | AttemptError::Abandoned => replayable,
            AttemptError::TimedOut => false,
        }
    }

    /// Whether this failure counts against the replica's health. Only the replica's own
    /// signals do: it refused or dropped the connection, it answered 503 outside the API
    /// (not ready: replaying its WAL), or it is mpp itself. A Prometheus API error answer is
    /// not a failure at all (it reaches the client as it is), nor is a slow query.
    pub fn counts_against_replica(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect(_) | AttemptError::Sent(_) | AttemptError::Unavailable | AttemptError::Loop
        )
    }

    /// Whether the replica is known not to have handled the request (so the client's
    /// answer is "unavailable", 503, rather than "failed", 502).
    pub fn nothing_answered(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect(_)
                | AttemptError::Unavailable
                | AttemptError::Abandoned
                | AttemptError::Loop
                | AttemptError::Busy
        )
    }

    /// Classifies a client error.
    pub fn from_client(error: &hyper_util::client::legacy::Error) -> Self {
        if error.is_connect() {
            AttemptError::Connect(error_chain(error))
        } else {
            AttemptError::Sent(error_chain(error))
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Connect(e) => write!(f, "connection failed: {e}"),
            AttemptError::Sent(e) => write!(f, "request failed: {e}"),
            AttemptError::Unavailable => f.write_str("answered 503 Service Unavailable"),
            AttemptError::Abandoned => f.write_str("was found down while the request waited"),
            AttemptError::Loop => f.write_str("answered 508 Loop Detected: it is this mpp, or forwards to it"),
            AttemptError::TimedOut => f.write_str("did not answer within the request's time"),
            AttemptError::Busy => f.write_str("had all its connections in use"),
        }
    }
}

/// An error with its sources, `outer: inner: innermost`; hyper's own messages alone
/// ("client error (Connect)") do not say what happened.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
