//! What can go wrong with a proxied request, and the one mapping from error to the HTTP
//! answer the client gets (a Prometheus-API-style JSON error). Whether a failed attempt may
//! be retried is the retry policy's call (`proxy::retry`).

use std::error::Error as StdError;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::Guarded;

/// The header on every error answer mpp makes itself.
pub static MPP_ERROR: http::HeaderName = http::HeaderName::from_static("mpp-error");

/// The body of every answer mpp gives: a backend's streamed answer (holding its replica's
/// connection slot until done), or one of our own. `B` is how the replicas' answers arrive:
/// the pool's bodies, or in the request path's unit tests their own.
pub type ProxyBody<B = crate::client::pool::Body> = Either<Guarded<B, OwnedSemaphorePermit>, Full<Bytes>>;

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
    /// mpp does not forward this request by its configuration (`--admin-api`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A request for every replica (a write, an admin request) did not succeed on every one;
    /// the detail names each replica and its answer.
    #[error("not every Prometheus replica succeeded: {0}")]
    NotEveryReplica(String),
    /// The request's head has more header lines than an HTTP/1 head may (an HTTP/2 client's
    /// HPACK-compressed headers, which would be written out whole to the replica).
    #[error("request header fields too large: {0}")]
    HeadTooLarge(String),
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
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NotEveryReplica(_) => StatusCode::BAD_GATEWAY,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
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
            | ProxyError::BodyTooSlow(_)
            | ProxyError::HeadTooLarge(_) => "bad_data",
            ProxyError::NoReplica(_)
            | ProxyError::Unavailable { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::LoopDetected(_)
            | ProxyError::Overloaded(_)
            | ProxyError::NotEveryReplica(_) => "unavailable",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Timeout { .. } => "timeout",
        }
    }

    /// The answer to send: the status, and `{"status":"error","errorType":..,"error":..}`.
    pub fn into_response<B: hyper::body::Body>(self) -> Response<ProxyBody<B>> {
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
        // Marks the answer as mpp's own, so that an mpp in front of this one does not take it
        // for a replica's API answer (and retries elsewhere instead).
        response.headers_mut().insert(MPP_ERROR.clone(), HeaderValue::from_static("1"));
        if overloaded {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if closes {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
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
