//! Replicas of a test's own making, for the request path's unit tests: a [`Transport`] that
//! answers each replica's requests as the test scripts it, and notes every request it was
//! given. No socket, no Prometheus: with paused time, a test of failover or of the deadline
//! takes no time and always ends the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::body::BoxError;
use crate::client::pool::{Error, Outgoing, Transport};

/// What a fake replica does with each request it is sent.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers 200 with this JSON body (an API answer).
    Json(&'static str),
    /// Answers `status` with this JSON body (an API error, say).
    JsonStatus(StatusCode, &'static str),
    /// Answers 503 in plain text, as a Prometheus that is not ready yet.
    NotReady,
    /// Refuses the connection: nothing is sent.
    Refuse,
    /// Reads the request and answers something that is not HTTP (as the pool reports it).
    Garbage,
    /// Never answers.
    Hang,
}

/// A request a fake replica was sent: the replica's authority, and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub authority: String,
    pub target: String,
}

/// Replicas answering as scripted, by authority (`a:1`); one not scripted refuses.
#[derive(Debug, Clone, Default)]
pub struct FakeReplicas {
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeReplicas {
    /// Scripts the replica at `authority` to answer every request so from now on.
    pub fn answer(&self, authority: &str, reply: Reply) {
        self.replies.lock().expect("not poisoned").insert(authority.to_string(), reply);
    }

    /// The requests sent so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The authorities the requests sent so far went to, in order.
    pub fn asked(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.authority).collect()
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<BoxBody<Bytes, BoxError>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed())
        .expect("a valid answer")
}

impl Transport for FakeReplicas {
    type Body = BoxBody<Bytes, BoxError>;

    fn send(
        &self,
        _scheme: &Scheme,
        authority: &Authority,
        request: Outgoing<'_>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Error>> + Send {
        let authority = authority.to_string();
        let reply = self.replies.lock().expect("not poisoned").get(&authority).cloned().unwrap_or(Reply::Refuse);
        let target = request.target.concat();
        self.seen.lock().expect("not poisoned").push(Seen { authority: authority.clone(), target });
        async move {
            match reply {
                Reply::Json(body) => Ok(answer(StatusCode::OK, "application/json", body)),
                Reply::JsonStatus(status, body) => Ok(answer(status, "application/json", body)),
                Reply::NotReady => Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "Service Unavailable")),
                Reply::Refuse => Err(Error::NotSent(format!("connect to {authority}: connection refused").into())),
                Reply::Garbage => Err(Error::Sent(format!("{authority} answered: invalid HTTP status line").into())),
                Reply::Hang => std::future::pending().await,
            }
        }
    }
}
