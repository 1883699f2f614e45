//! Answers from more than one replica: a failover's answer annotated (which replicas failed
//! before it), and a query no single replica holds whole answered by several, merged. Both
//! read answers whole, within `--merge-max-bytes` (shared by every request in flight) and
//! the request's deadline; an answer over the bound streams on as it is ([`Held::Over`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::retry::{Outcome, Target};
use super::{Exchange, Proxy, headers};
use crate::body::Guarded;
use crate::client::pool::Transport;
use crate::error::{ProxyBody, ProxyError};
use crate::merge;
use crate::merge::state::Agreed;
use crate::metrics::MergeLabels;
use crate::registry::Replica;
use crate::window;

/// The most replica requests all merges and slices together may add at a time.
const GLOBAL_FANOUT: usize = 1024;

/// How many replica requests merges and slices may add to the one every query makes, per
/// client address and in all, so that a client cannot multiply its load on the replicas
/// without bound (each merge asks every replica; a range query may be cut into 32 slices).
/// Taken only on those rare paths, never by background work.
pub(super) struct FanoutLimit {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    per_client_max: usize,
    global: Arc<Semaphore>,
}

/// A query's added replica requests, given back when it is dropped.
pub(super) struct FanoutShare<'a> {
    limit: &'a FanoutLimit,
    client: IpAddr,
    extra: usize,
    _global: OwnedSemaphorePermit,
}

impl FanoutLimit {
    /// At most `per_client_max` added requests per client address.
    pub(super) fn new(per_client_max: usize) -> Self {
        FanoutLimit {
            per_client: Mutex::new(HashMap::new()),
            per_client_max,
            global: Arc::new(Semaphore::new(GLOBAL_FANOUT)),
        }
    }

    /// `extra` added requests for `client`, if it and everyone together are within bounds.
    pub(super) fn take(&self, client: IpAddr, extra: usize) -> Option<FanoutShare<'_>> {
        let global = self.global.clone().try_acquire_many_owned(u32::try_from(extra).ok()?).ok()?;
        let mut taken = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let count = taken.entry(client).or_insert(0);
        if *count + extra > self.per_client_max {
            if *count == 0 {
                taken.remove(&client);
            }
            return None;
        }
        *count += extra;
        Some(FanoutShare { limit: self, client, extra, _global: global })
    }
}

impl Drop for FanoutShare<'_> {
    fn drop(&mut self) {
        let mut taken = self.limit.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = taken.get_mut(&self.client) {
            *count = count.saturating_sub(self.extra);
            if *count == 0 {
                taken.remove(&self.client);
            }
        }
    }
}

/// The `MPP-Warning` of a query answered by one replica because its client is over
/// `--max-fanout-per-client`.
fn fanout_note(limit: usize) -> String {
    format!(
        "not merged: this client has {limit} replica requests of merged queries in flight \
         (--max-fanout-per-client); this is one replica's answer and may have gaps"
    )
}

impl<P: Transport> Proxy<P> {
    /// An answer that another replica gave after `failed` ones (at least one) did not: says
    /// so in a header and, for an API answer mpp can read within `--merge-max-bytes`, in its
    /// `infos` (the answer is whole; `warnings` are for answers that may not be). A longer
    /// answer streams on as it is.
    pub(super) async fn with_failover(
        &self,
        answer: Response<ProxyBody<P::Body>>,
        failed: &[Arc<Replica>],
        served: &Replica,
        deadline: Instant,
    ) -> Response<ProxyBody<P::Body>> {
        let names = failed.iter().map(|r| r.url()).collect::<Vec<_>>().join(", ");
        let mut answer = answer;
        // Its headers are read, and its length may change.
        crate::http1::lines::unpack(&mut answer);
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
                let info = format!("mpp: answered by {} after {names} failed", served.url());
                let bytes = merge::add_info(&bytes, &info).map(Bytes::from).unwrap_or(bytes);
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, Either::Right(Full::new(bytes)))
            }
            Ok(Held::Over(prefix, rest)) => {
                Response::from_parts(parts, Either::Left(Guarded::with_prefix(prefix, rest, slot)))
            }
            Err(e) => ProxyError::Upstream { backend: served.url().to_string(), detail: e }.into_response(),
        }
    }

    /// The query from `replica` alone, because its client has too many replica requests of
    /// merges in flight: with an `MPP-Warning`, counted as `fanout_limited`.
    pub(super) async fn alone(
        &self,
        exchange: Exchange,
        replica: Arc<Replica>,
        label: &'static str,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let inner = &*self.inner;
        inner.metrics.merged_requests.get_or_create(&MergeLabels { endpoint: label, outcome: "fanout_limited" }).inc();
        tracing::debug!(client = %exchange.prepared.client, "a client over --max-fanout-per-client: not merged");
        let mut answer = Box::pin(self.relay(exchange, replica)).await?;
        if let Ok(value) = HeaderValue::from_str(&fanout_note(inner.fanout.per_client_max)) {
            answer.headers_mut().insert(headers::MPP_WARNING.clone(), value);
        }
        Ok(answer)
    }

    /// Answers from several replicas: each is asked (uncompressed); their answers are read
    /// within `--merge-max-bytes` (shared by every merge in flight) and before the request's
    /// deadline, and merged off the serving thread. The first replica in `[primary,
    /// others...]` to answer `200` is the primary; when none does, the planned primary's
    /// answer (a bad query's error, say) is the client's. When the primary's own answer is
    /// over the bound, it streams on alone, with an `MPP-Warning` header.
    pub(super) async fn merge(
        &self,
        mut exchange: Exchange,
        union: Union,
        primary: Arc<Replica>,
        others: Vec<Arc<Replica>>,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let inner = &*self.inner;
        let Some(_fanout) = inner.fanout.take(exchange.prepared.client, others.len()) else {
            return self.alone(exchange, primary, union.label()).await;
        };
        let deadline = exchange.deadline;
        exchange.prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
        let replicas: Vec<Arc<Replica>> = std::iter::once(primary.clone()).chain(others).collect();
        let outcomes = join_all(replicas.iter().map(|r| self.attempt(&exchange, r, &[]))).await;
        let mut answers: Vec<(Arc<Replica>, Response<P::Body>, OwnedSemaphorePermit)> = Vec::new();
        for (replica, outcome) in replicas.iter().zip(outcomes) {
            match outcome {
                Outcome::Answer((response, slot)) => answers.push((replica.clone(), response, slot)),
                Outcome::Failed(failure, _) => {
                    tracing::debug!(backend = %replica, error = %failure, "a replica asked for a merge failed");
                }
            }
        }
        let label = union.label();
        let count = |outcome: &'static str| {
            inner.metrics.merged_requests.get_or_create(&MergeLabels { endpoint: label, outcome }).inc();
        };
        let usable = |r: &Response<P::Body>| r.status() == StatusCode::OK && headers::is_plain_json(r.headers());
        let Some(first_ok) = answers.iter().position(|(_, r, _)| usable(r)) else {
            return match answers.into_iter().next() {
                // Nobody answered 200: the first answer is the client's, as it is.
                Some((served, response, slot)) => Ok(self.answer(&exchange, &served, response, slot)),
                // Nobody answered at all: the ordinary way, with its retries and errors, and
                // the client pinned to the primary if it answers.
                None => {
                    exchange.target = Target::Replica;
                    self.relay(exchange, primary).await
                }
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
                    &exchange,
                    parts,
                    Either::Left(Guarded::with_prefix(prefix, rest, slot)),
                    &served,
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
        let limit = union_limit(&exchange);
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
            let info = format!(
                "mpp: merged from replicas {} (no single replica holds all data for this time range; {primary_url} is the primary)",
                names.join(", ")
            );
            // Parsing and writing answers of megabytes is work for a blocking thread, not for
            // the thread that serves every other connection of this core.
            let work = tokio::task::spawn_blocking(move || {
                let parts: Vec<merge::Part> =
                    others.iter().map(|(r, b)| merge::Part { body: b, replica: r.url() }).collect();
                let primary = merge::Part { body: &primary_body, replica: &primary_url };
                let merged = match union {
                    Union::Api(endpoint) => {
                        let extra = merge::Extra { info: Some(&info), limit, ..merge::Extra::default() };
                        merge::merge_with(endpoint, primary, &parts, extra).map(|merged| merged.body)
                    }
                    Union::Agreed(kind) => {
                        let bodies: Vec<&[u8]> = parts.iter().map(|p| p.body).collect();
                        merge::state::unite(kind, &primary_body, &bodies, limit)
                    }
                };
                (merged, primary_body)
            });
            match work.await {
                Ok((Ok(merged), _)) => {
                    count("merged");
                    tracing::debug!(replicas = ?names, "answers merged");
                    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
                        parts.headers.insert(headers::MERGED_FROM.clone(), value);
                    }
                    Bytes::from(merged)
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
        Ok(self.finish(&exchange, parts, Either::Right(Full::new(body)), &served))
    }
}

/// What answers from several replicas are joined into.
#[derive(Debug, Clone, Copy)]
pub(super) enum Union {
    /// A query API answer no replica holds whole: series, label names or values, exemplars.
    Api(window::Endpoint),
    /// Alerts (and the rules' alerts) the replicas agree on.
    Agreed(Agreed),
}

impl Union {
    fn label(self) -> &'static str {
        match self {
            Union::Api(endpoint) => endpoint.label(),
            Union::Agreed(kind) => kind.label(),
        }
    }
}

/// The client's `limit` on a union (`series`, `labels`, label values; Prometheus 2.51 and
/// later): a positive number in the query string or the form body. Anything else is the
/// replicas' to refuse, or means no limit.
fn union_limit(exchange: &Exchange) -> Option<usize> {
    let prepared = &exchange.prepared;
    let query = prepared.path_and_query.query().unwrap_or("").as_bytes();
    let form = headers::form_body(&prepared.outgoing_headers, &prepared.body.bytes).unwrap_or(&[]);
    [query, form]
        .into_iter()
        .flat_map(form_urlencoded::parse)
        .find(|(name, _)| name == "limit")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .filter(|&limit| limit > 0)
}

/// An answer's body as far as it was read: whole (with the budget it holds), or, over the
/// limit, what was read and the rest still to come.
pub(super) enum Held<B> {
    Whole(Bytes, Option<OwnedSemaphorePermit>),
    Over(Bytes, B),
}

/// Reads `body` whole, paying for each byte from `budget`, unless it is over `limit` or the
/// budget runs out (then [`Held::Over`], so that it can still stream on). Fails when the body
/// fails or does not end before `deadline`.
pub(super) async fn read_up_to<B>(
    mut body: B,
    limit: usize,
    budget: &Arc<Semaphore>,
    deadline: Instant,
) -> Result<Held<B>, String>
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
