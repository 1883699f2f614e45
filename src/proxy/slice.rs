//! The sub-range requests of a range query answered in time slices (see
//! [`route`](super::route)): the client's request with its `start` and `end` replaced by a
//! slice's, and its `@ start()` and `@ end()` pinned to the whole query's times, so that each
//! slice evaluates the same expression at its own steps. Everything else (the step, the
//! timeout, `lookback_delta`, unknown parameters) goes as the client sent it.
//!
//! A remote read no replica holds whole is cut the same way, into time ranges: each slice's
//! request is the client's `ReadRequest` with every query's range cut to the slice, and the
//! answers' series are joined in time order ([`window::join_answers`]).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use http::uri::PathAndQuery;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tokio::sync::OwnedSemaphorePermit;

use super::body::Buffered;
use super::fanout::{Held, read_up_to};
use super::retry::{self, Outcome, Target};
use super::route::Slice;
use super::{Exchange, Prepared, Proxy, headers};
use crate::client::pool::Transport;
use crate::coverage::Millis;
use crate::error::{ProxyBody, ProxyError};
use crate::merge;
use crate::metrics::MergeLabels;
use crate::registry::Replica;
use crate::window::{self, Endpoint, Read, RemoteRead, pin_start_end, seconds};

/// Names the replicas a sliced answer came from, and the steps each answered
/// (`MPP-Slices: http://a:9090 1700000000.000-1700000300.000, http://b:9090 ...`).
pub static SLICES: http::HeaderName = http::HeaderName::from_static("mpp-slices");

/// One slice's request, and where it was answered.
struct Sent {
    slice: Slice,
    /// The slice's own request, with the whole query's selection and time; its target is
    /// how the replica of its attempt under way was chosen.
    exchange: Exchange,
    /// The replicas tried before the one that answered (a failed attempt moves the slice on).
    tried: Vec<Arc<Replica>>,
}

impl<P: Transport> Proxy<P> {
    /// A range query answered in time slices (see [`route`](super::route)): each slice's
    /// request goes to its replica (to another when that fails, as any attempt does), the
    /// answers are read within `--merge-max-bytes` and concatenated off the serving thread.
    /// When a slice's answer is not a successful one (Prometheus refused the query, say),
    /// that answer is the client's, as it is; when the answers are over the bound, the whole
    /// query goes to the replica answering the most steps, with an `MPP-Warning` header.
    pub(super) async fn sliced(
        &self,
        mut exchange: Exchange,
        slices: Vec<Slice>,
        read: &Read,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let Some(_fanout) = self.inner.fanout.take(exchange.prepared.client, slices.len().saturating_sub(1)) else {
            let most = slices
                .iter()
                .max_by_key(|s| s.end - s.start)
                .map(|s| s.replica.clone())
                .expect("a range query has at least one slice");
            return self.alone(exchange, most, read.endpoint.label()).await;
        };
        let steps = read.steps.as_ref().expect("slices are planned from steps");
        // A remote read's slices are stretches of its window.
        let remote =
            (read.endpoint == Endpoint::RemoteRead).then_some(RemoteRead { window: read.window, streamed: false });
        let inner = &*self.inner;
        let deadline = exchange.deadline;
        exchange.prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
        let prepared = &exchange.prepared;
        let form = headers::form_body(&prepared.outgoing_headers, &prepared.body.bytes);
        let mut sent = Vec::with_capacity(slices.len());
        let last = slices.len().saturating_sub(1);
        for (index, mut slice) in slices.into_iter().enumerate() {
            let (path_and_query, body) = match &remote {
                Some(remote) => {
                    (slice.start, slice.end) = remote.stretch(slice.start, slice.end);
                    for run in &mut slice.incomplete {
                        *run = remote.stretch(run.0, run.1);
                    }
                    // The window ends at mpp's now; the last slice reads to the queries' own
                    // end, as a direct read would (a replica's clock may be ahead).
                    let end = if index == last { Millis::MAX } else { slice.end };
                    let body = window::slice_request(&prepared.body.bytes, slice.start, end)
                        .map_err(|e| ProxyError::BadRequest(format!("cannot cut the remote read into slices: {e}")))?;
                    (prepared.path_and_query.clone(), Some(Bytes::from(body)))
                }
                None => {
                    let times =
                        Times { start: slice.start, end: slice.end, query_start: steps.start, query_end: steps.end };
                    rewrite(&prepared.path_and_query, form, times)
                        .map_err(|e| ProxyError::BadRequest(format!("cannot cut the range query into slices: {e}")))?
                }
            };
            let slice_request = Prepared {
                method: prepared.method.clone(),
                api: prepared.api,
                route_cookie: None,
                body: body.map_or_else(|| Buffered::made(prepared.body.bytes.clone()), Buffered::made),
                outgoing_headers: prepared.outgoing_headers.clone(),
                added: prepared.added.clone(),
                path_and_query,
                client: prepared.client,
                replayable: prepared.replayable,
                pass_timeout: prepared.pass_timeout,
            };
            let exchange = Exchange {
                prepared: slice_request,
                snapshot: exchange.snapshot.clone(),
                deadline,
                started: exchange.started,
                target: Target::Replica,
                keep_lines: false,
            };
            sent.push(Sent { slice, exchange, tried: Vec::new() });
        }
        inner.metrics.slice_requests.inc_by(sent.len() as u64);
        let answers = join_all(sent.iter_mut().map(|s| self.slice_attempts(s))).await;
        let label = read.endpoint.label();
        let count = |outcome: &'static str| {
            inner.metrics.merged_requests.get_or_create(&MergeLabels { endpoint: label, outcome }).inc();
        };
        // Every slice answered, or the client hears why one did not.
        let mut answered: Vec<(Arc<Replica>, Response<P::Body>, OwnedSemaphorePermit)> = Vec::new();
        for answer in answers {
            match answer {
                Ok(answer) => answered.push(answer),
                Err((replica, failure)) => {
                    count("failed");
                    return Err(self.failure(&exchange, failure, &replica));
                }
            }
        }
        let usable = |r: &Response<P::Body>| {
            r.status() == StatusCode::OK
                && if remote.is_some() { is_samples(r.headers()) } else { headers::is_plain_json(r.headers()) }
        };
        if let Some(refused) = answered.iter().position(|(_, r, _)| !usable(r)) {
            // Prometheus's own answer (an error about the query, as a rule): the client's.
            let (served, response, slot) = answered.swap_remove(refused);
            return Ok(self.answer(&exchange, &served, response, slot));
        }
        let mut bodies: Vec<(Arc<Replica>, Bytes)> = Vec::with_capacity(answered.len());
        let mut held = Vec::new();
        let mut head = None;
        for (replica, response, slot) in answered {
            let (parts, body) = response.into_parts();
            head.get_or_insert(parts);
            let limit = inner.merge_max_bytes.saturating_sub(bodies.iter().map(|(_, b)| b.len()).sum());
            match read_up_to(body, limit, &inner.merge_budget, deadline).await {
                Ok(Held::Whole(bytes, permit)) => {
                    held.push(permit);
                    bodies.push((replica, bytes));
                }
                Ok(Held::Over(..)) => {
                    count("too_large");
                    drop((held, slot));
                    return Box::pin(self.whole_instead(exchange, &sent)).await;
                }
                Err(e) => return Err(ProxyError::Upstream { backend: replica.url().to_string(), detail: e }),
            }
            drop(slot);
        }
        let mut parts = head.expect("a range query has at least one slice");
        let names = sent
            .iter()
            .zip(&bodies)
            .map(|(s, (replica, _))| format!("{} {}-{}", replica.url(), seconds(s.slice.start), seconds(s.slice.end)))
            .collect::<Vec<_>>()
            .join(", ");
        let warning = incomplete_warning(&sent);
        let failed: Vec<String> = sent.iter().flat_map(|s| s.tried.iter().map(|r| r.url().to_string())).collect();
        // A remote read's answer is protobuf: a warning goes in a header instead.
        let (in_body, in_header) = if remote.is_some() { (None, warning) } else { (warning, None) };
        let limit = inner.merge_max_bytes;
        let work = tokio::task::spawn_blocking(move || {
            if remote.is_some() {
                let bodies: Vec<&[u8]> = bodies.iter().map(|(_, body)| &body[..]).collect();
                return window::join_answers(&bodies, limit).map_err(|e| e.to_string());
            }
            let parts: Vec<merge::Part> =
                bodies.iter().map(|(r, body)| merge::Part { body, replica: r.url() }).collect();
            merge::concatenate(&parts, in_body.as_deref()).map(|merged| merged.body).map_err(|e| e.to_string())
        });
        let body = match work.await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                count("failed");
                return Err(ProxyError::Upstream {
                    backend: sent[0].slice.replica.url().to_string(),
                    detail: format!("the slices' answers could not be joined: {e}"),
                });
            }
            Err(e) => {
                return Err(ProxyError::Upstream {
                    backend: sent[0].slice.replica.url().to_string(),
                    detail: format!("joining slices: {e}"),
                });
            }
        };
        count("sliced");
        drop(held);
        if let Ok(value) = HeaderValue::from_str(&names) {
            parts.headers.insert(SLICES.clone(), value);
        }
        if let Some(warning) = in_header
            && let Ok(value) = HeaderValue::from_str(&warning)
        {
            parts.headers.insert(headers::MPP_WARNING.clone(), value);
        }
        if !failed.is_empty()
            && let Ok(value) = HeaderValue::from_str(&failed.join(", "))
        {
            parts.headers.insert(headers::FAILOVER_FROM.clone(), value);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let first = &sent.first().expect("at least one slice").slice.replica;
        Ok(self.finish(&exchange, parts, Either::Right(Full::new(Bytes::from(body))), first))
    }

    /// Sends one slice's request, to its replica and, when an attempt fails in a way that is
    /// safe to retry, to the next replica the retry policy names. The answer (any status),
    /// or the last failure and where it happened.
    async fn slice_attempts(
        &self,
        sent: &mut Sent,
    ) -> Result<(Arc<Replica>, Response<P::Body>, OwnedSemaphorePermit), (Arc<Replica>, retry::AttemptError)> {
        let mut replica = sent.slice.replica.clone();
        let exchange = &mut sent.exchange;
        loop {
            match self.attempt(exchange, &replica, &sent.tried).await {
                Outcome::Answer((response, slot)) => return Ok((replica, response, slot)),
                Outcome::Failed(failure, answer) => {
                    if failure.counts_against_replica() {
                        let _ = self.inner.reselect.try_send(());
                    }
                    sent.tried.push(replica.clone());
                    let replayable = exchange.prepared.replayable;
                    match retry::next_attempt(&exchange.snapshot, &sent.tried, &failure, replayable, exchange.target) {
                        Some((next, target)) => (replica, exchange.target) = (next, target),
                        None => {
                            return match answer {
                                Some((response, slot)) => Ok((replica, response, slot)),
                                None => Err((replica, failure)),
                            };
                        }
                    }
                }
            }
        }
    }

    /// The whole query from the replica that was to answer the most steps, as it answers
    /// (the slices' answers together are over `--merge-max-bytes`), with an `MPP-Warning`.
    async fn whole_instead(
        &self,
        exchange: Exchange,
        sent: &[Sent],
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let most = sent
            .iter()
            .max_by_key(|s| s.slice.end - s.slice.start)
            .map(|s| s.slice.replica.clone())
            .expect("a range query has at least one slice");
        let mut answer = self.relay(exchange, most).await?;
        let note = format!(
            "not sliced: the slices' answers are over --merge-max-bytes {}; this is one replica's answer and may have gaps",
            self.inner.merge_max_bytes
        );
        if let Ok(value) = HeaderValue::from_str(&note) {
            answer.headers_mut().insert(headers::MPP_WARNING.clone(), value);
        }
        Ok(answer)
    }
}

/// Whether an answer is a remote read's `SAMPLES` (`application/x-protobuf`; streamed chunks
/// are `application/x-streamed-protobuf`).
fn is_samples(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("application/x-protobuf"))
}

/// The `warnings` entry of an answer with steps whose window no replica held whole, naming
/// them; `None` when every step's was held. A slice answered by another replica than
/// planned (its own failed) counts as wholly uncertain.
fn incomplete_warning(sent: &[Sent]) -> Option<String> {
    let mut runs: Vec<String> = Vec::new();
    for s in sent {
        let uncertain: Vec<(Millis, Millis)> =
            if s.tried.is_empty() { s.slice.incomplete.clone() } else { vec![(s.slice.start, s.slice.end)] };
        runs.extend(uncertain.iter().map(|&(first, last)| {
            if first == last { rfc3339(first) } else { format!("{} to {}", rfc3339(first), rfc3339(last)) }
        }));
    }
    if runs.is_empty() {
        return None;
    }
    const SHOWN: usize = 8;
    let more = runs.len().saturating_sub(SHOWN);
    runs.truncate(SHOWN);
    let mut list = runs.join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    Some(format!("mpp: no replica holds the whole data these steps read, so their values may be incomplete: {list}"))
}

/// Unix milliseconds as RFC 3339 (`2026-12-03T08:00:00.000Z`), for a warning a person reads.
fn rfc3339(millis: Millis) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The times a slice's request is rewritten to.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// The slice's first step.
    pub start: Millis,
    /// The slice's last step.
    pub end: Millis,
    /// The whole query's `start` (what `@ start()` means).
    pub query_start: Millis,
    /// The whole query's `end`.
    pub query_end: Millis,
}

/// The target and form body of one slice's request: `start`, `end` and `query` rewritten
/// wherever they are (URL and form body alike, as Prometheus reads either), the rest byte for
/// byte. `form` is the body when it is a form (else the body goes as it is, and `None` comes
/// back for it).
pub fn rewrite(
    target: &PathAndQuery,
    form: Option<&[u8]>,
    times: Times,
) -> Result<(PathAndQuery, Option<Bytes>), String> {
    let query = target.query().map(|q| rewrite_form(q.as_bytes(), times)).transpose()?;
    let target = match query {
        Some(query) => {
            let text = format!("{}?{}", target.path(), String::from_utf8_lossy(&query));
            PathAndQuery::try_from(text).map_err(|e| format!("the slice's target: {e}"))?
        }
        None => target.clone(),
    };
    let body = form.map(|form| rewrite_form(form, times).map(Bytes::from)).transpose()?;
    Ok((target, body))
}

/// A form (`a=1&b=2`) with its `start`, `end` and `query` rewritten. A pair Prometheus would
/// not read (Go's `url.ParseQuery` skips one holding `;` or a bad escape) is left as it is.
fn rewrite_form(form: &[u8], times: Times) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(form.len() + 32);
    for (i, pair) in form.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let readable = !pair.contains(&b';');
        let decoded = readable.then(|| form_urlencoded::parse(pair).next()).flatten();
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        let value: Option<String> = match decoded {
            Some((name, _)) if name == "start" => Some(seconds(times.start)),
            Some((name, _)) if name == "end" => Some(seconds(times.end)),
            Some((name, query)) if name == "query" => {
                let pinned = pin_start_end(&query, times.query_start, times.query_end)?;
                match pinned {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(pinned) => Some(pinned),
                }
            }
            _ => None,
        };
        match value {
            Some(value) => {
                out.extend_from_slice(key);
                out.push(b'=');
                out.extend(form_urlencoded::byte_serialize(value.as_bytes()).flat_map(str::bytes));
            }
            None => out.extend_from_slice(pair),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: Times = Times {
        start: 1_700_000_030_000,
        end: 1_700_000_059_500,
        query_start: 1_700_000_000_000,
        query_end: 1_700_000_090_000,
    };

    #[test]
    fn start_and_end_are_replaced_and_the_rest_kept_byte_for_byte() {
        let target = PathAndQuery::from_static(
            "/api/v1/query_range?query=rate(x%5B1m%5D)&start=1700000000&end=1700000090&step=15s&x=%zz",
        );
        let (rewritten, body) = rewrite(&target, None, TIMES).unwrap();
        assert_eq!(
            rewritten.as_str(),
            "/api/v1/query_range?query=rate(x%5B1m%5D)&start=1700000030.000&end=1700000059.500&step=15s&x=%zz"
        );
        assert_eq!(body, None);
    }

    #[test]
    fn a_form_body_is_rewritten_too_and_at_start_and_end_are_pinned() {
        let target = PathAndQuery::from_static("/api/v1/query_range");
        let form = b"query=x+%40+start()+-+y%40end()&start=1700000000&end=1700000090&step=1";
        let (rewritten, body) = rewrite(&target, Some(form), TIMES).unwrap();
        assert_eq!(rewritten.as_str(), "/api/v1/query_range");
        let body = body.unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(pairs[0], ("query".into(), "x @ 1700000000.000 - y@1700000090.000".into()));
        assert_eq!(pairs[1], ("start".into(), "1700000030.000".into()));
        assert_eq!(pairs[2], ("end".into(), "1700000059.500".into()));
        assert_eq!(pairs[3], ("step".into(), "1".into()));
    }

    #[test]
    fn a_pair_prometheus_skips_is_left_alone() {
        let target = PathAndQuery::from_static("/api/v1/query_range?start=1;2&start=5&end=9&query=up");
        let (rewritten, _) = rewrite(&target, None, TIMES).unwrap();
        assert_eq!(
            rewritten.as_str(),
            "/api/v1/query_range?start=1;2&start=1700000030.000&end=1700000059.500&query=up"
        );
    }
}
