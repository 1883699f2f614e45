//! Requests that change what a replica holds reach every replica, or none, so that the
//! replicas stay identical:
//!
//! - **Admin and lifecycle** (`/api/v1/admin/tsdb/*`, `/-/reload`, `/-/quit`): refused with
//!   `403` unless `--admin-api all`; then sent to every viable replica, and `2xx` only when
//!   every one of them succeeded. A snapshot's answer names each replica's snapshot.
//! - **Ingestion** (remote write `/api/v1/write`, OTLP `/api/v1/otlp/v1/metrics`): sent to
//!   every viable replica at once, the body from memory (one copy, shared). When a replica
//!   fails, the sender gets a `5xx`, which every remote-write sender retries (a replica drops
//!   the samples it already holds); a replica out of the selection is skipped, and its
//!   absence shows as a hole in its coverage, which routing avoids.
//!
//! A replica's own refusal (`4xx`: bad data, the receiver not enabled) is passed on as it is.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::fanout::{Held, read_up_to};
use super::retry::Outcome;
use super::{Exchange, Proxy, headers};
use crate::api::Api;
use crate::client::pool::Transport;
use crate::error::{ProxyBody, ProxyError};
use crate::metrics::BroadcastLabels;
use crate::registry::Replica;

/// The largest answer read from one replica of a broadcast (admin and write answers are a
/// few bytes; a snapshot's names one directory).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// What `--admin-api` lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AdminApi {
    /// Refused with `403`; nothing reaches a replica.
    #[default]
    Refuse,
    /// Sent to every viable replica.
    All,
}

/// A request that must reach every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// TSDB admin (`/api/v1/admin/tsdb/*`) or lifecycle (`/-/reload`, `/-/quit`).
    Admin,
    /// Samples written: remote write or OTLP.
    Write,
}

impl Broadcast {
    /// Which kind of request that must reach every replica a request to `api` is, if any: an
    /// admin or lifecycle request whatever its method, a write when it is a POST (Prometheus
    /// itself refuses a GET of the write path).
    pub fn of(method: &Method, api: Api) -> Option<Broadcast> {
        match api {
            Api::Admin => Some(Broadcast::Admin),
            Api::Write if method == Method::POST => Some(Broadcast::Write),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Broadcast::Admin => "admin",
            Broadcast::Write => "write",
        }
    }
}

/// One replica's part of a broadcast: its answer read whole, or why there is none.
struct Part {
    replica: Arc<Replica>,
    answer: Result<(http::response::Parts, Bytes), String>,
    /// What reading the answer paid (of its own cap).
    _paid: Option<OwnedSemaphorePermit>,
}

impl Part {
    fn status(&self) -> Option<StatusCode> {
        self.answer.as_ref().ok().map(|(parts, _)| parts.status)
    }

    fn describe(&self) -> String {
        match &self.answer {
            Ok((parts, _)) => format!("{} answered {}", self.replica.url(), parts.status.as_u16()),
            Err(e) => format!("{} failed: {e}", self.replica.url()),
        }
    }
}

impl<P: Transport> Proxy<P> {
    /// Sends the exchange's request to every viable replica (or refuses it), and makes one
    /// answer of theirs.
    pub(super) async fn broadcast(
        &self,
        mut exchange: Exchange,
        kind: Broadcast,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let inner = &*self.inner;
        let count = |outcome: &'static str| {
            inner.metrics.broadcast_requests.get_or_create(&BroadcastLabels { kind: kind.label(), outcome }).inc();
        };
        if kind == Broadcast::Admin && inner.admin_api == AdminApi::Refuse {
            count("refused");
            return Err(ProxyError::Forbidden(format!(
                "{} is not sent to the replicas: mpp sends admin and lifecycle requests to every \
                 replica only with --admin-api all",
                exchange.prepared.path_and_query.path()
            )));
        }
        // Answers are read here (a snapshot's names), so they come uncompressed; and each
        // replica is asked once, never again on a fresh connection.
        exchange.prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
        exchange.prepared.replayable = false;
        let replicas = exchange.snapshot.viable.clone();
        if kind == Broadcast::Admin {
            // An admin request is for every replica or none: one that is down now would keep
            // what the others delete.
            let missing: Vec<&str> = exchange
                .snapshot
                .candidates
                .iter()
                .filter(|c| !replicas.contains(&c.replica))
                .map(|c| c.replica.url())
                .collect();
            if !missing.is_empty() {
                count("failed");
                return Err(ProxyError::NotEveryReplica(format!(
                    "not sent to any: {} cannot be reached now",
                    missing.join(", ")
                )));
            }
        }
        if replicas.is_empty() {
            count("failed");
            return Err(ProxyError::NoReplica(exchange.snapshot.reason.clone()));
        }
        let parts = join_all(replicas.into_iter().map(|replica| self.part(&exchange, replica))).await;
        if kind == Broadcast::Admin
            && let Some(cache) = &inner.cache
        {
            // A delete (or any admin request) changes what the replicas hold: what the cache
            // kept of their answers is no longer theirs.
            cache.clear();
        }

        // A replica that failed, or answered 5xx or 429: the sender should try again (a write
        // resent is dropped where it is already held; an admin request is for its user).
        let failed = |p: &Part| p.status().is_none_or(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS);
        if parts.iter().any(failed) {
            count("failed");
            let detail = parts.iter().map(Part::describe).collect::<Vec<_>>().join("; ");
            tracing::warn!(kind = kind.label(), %detail, "a request for every replica did not succeed on every one");
            return Err(ProxyError::NotEveryReplica(detail));
        }
        let mut parts = parts;
        // Every replica answered. A refusal (4xx) is passed on as it is, the first one.
        let refusal = parts.iter().position(|p| p.status().is_some_and(|s| !s.is_success()));
        let (chosen, refused) = (refusal.unwrap_or(0), refusal.is_some());
        if refused && kind == Broadcast::Admin && parts.iter().any(|p| p.status().is_some_and(|s| s.is_success())) {
            // Some replicas did what others refused: the replicas now differ, and the client
            // must hear of it.
            count("failed");
            let detail = parts.iter().map(Part::describe).collect::<Vec<_>>().join("; ");
            tracing::warn!(%detail, "an admin request succeeded on some replicas only");
            return Err(ProxyError::NotEveryReplica(detail));
        }
        count(if refused { "refused_by_replica" } else { "ok" });
        let sent_to = parts.iter().map(|p| p.replica.url()).collect::<Vec<_>>().join(", ");
        let names = snapshot_names(&exchange, &parts);
        let Part { replica, answer, .. } = parts.swap_remove(chosen);
        let (mut head, mut body) = answer.expect("every part answered");
        if !refused && let Some(names) = names {
            body = names;
            head.headers.remove(header::CONTENT_LENGTH);
        }
        if let Ok(value) = HeaderValue::from_str(&sent_to) {
            head.headers.insert(headers::SENT_TO.clone(), value);
        }
        Ok(super::present(head, Either::Right(Full::new(body)), &replica))
    }

    /// Sends the request to one replica and reads its answer whole (an answer to a write or
    /// an admin request is short).
    async fn part(&self, exchange: &Exchange, replica: Arc<Replica>) -> Part {
        let mut paid = None;
        let answer = match self.attempt(exchange, &replica, &[]).await {
            Outcome::Answer((response, _slot)) | Outcome::Failed(_, Some((response, _slot))) => {
                let (parts, body) = response.into_parts();
                // Bounded by its own cap, not by the merge budget (a busy merge must not fail a
                // write whose replicas all succeeded).
                let budget = Arc::new(Semaphore::new(MAX_ANSWER_BYTES));
                match read_up_to(body, MAX_ANSWER_BYTES, &budget, exchange.deadline).await {
                    Ok(Held::Whole(bytes, permit)) => {
                        paid = permit;
                        Ok((parts, bytes))
                    }
                    Ok(Held::Over(..)) => Err(format!("its answer is over {MAX_ANSWER_BYTES} bytes")),
                    Err(e) => Err(e),
                }
            }
            Outcome::Failed(failure, None) => Err(failure.to_string()),
        };
        if let Ok((parts, _)) = &answer {
            self.count_answer(exchange, &replica, parts.status);
        }
        Part { replica, answer, _paid: paid }
    }
}

/// For a TSDB snapshot that every replica made: Prometheus's answer with the first replica's
/// snapshot as `data.name` and every replica's in `data.replicas` (`[{replica, name}]`), since
/// each replica writes its own under its own data directory.
fn snapshot_names(exchange: &Exchange, parts: &[Part]) -> Option<Bytes> {
    if !exchange.prepared.path_and_query.path().ends_with("/admin/tsdb/snapshot") {
        return None;
    }
    let mut replicas = Vec::with_capacity(parts.len());
    for part in parts {
        let (_, body) = part.answer.as_ref().ok()?;
        let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
        let name = answer.pointer("/data/name")?.as_str()?.to_string();
        replicas.push(serde_json::json!({ "replica": part.replica.url(), "name": name }));
    }
    let first = replicas.first()?.get("name")?.clone();
    let answer = serde_json::json!({ "status": "success", "data": { "name": first, "replicas": replicas } });
    Some(Bytes::from(answer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_requests_whatever_the_method_and_posted_writes_reach_every_replica() {
        let post = Method::POST;
        assert_eq!(Broadcast::of(&post, Api::of("/api/v1/admin/tsdb/delete_series")), Some(Broadcast::Admin));
        assert_eq!(Broadcast::of(&Method::PUT, Api::of("/api/v1/admin/tsdb/snapshot")), Some(Broadcast::Admin));
        assert_eq!(Broadcast::of(&Method::GET, Api::of("/-/reload")), Some(Broadcast::Admin));
        assert_eq!(Broadcast::of(&post, Api::of("/api/v1/write")), Some(Broadcast::Write));
        assert_eq!(Broadcast::of(&post, Api::of("/api/v1/otlp/v1/metrics")), Some(Broadcast::Write));
        // A GET of the write path is Prometheus's to refuse (405), not a write.
        assert_eq!(Broadcast::of(&Method::GET, Api::of("/api/v1/write")), None);
        for path in ["/api/v1/query", "/-/ready", "/api/v1/read", "/federate"] {
            assert_eq!(Broadcast::of(&post, Api::of(path)), None, "{path}");
        }
    }
}
