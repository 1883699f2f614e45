//! The request path's side of the dashboard cache ([`crate::cache`]): a range query is
//! answered from the steps the cache holds and the steps the replicas are asked for (each
//! missing run of steps a request of its own, routed as any request is: by affinity,
//! coverage, in slices), stitched together byte for byte; what may be kept of the answer is
//! kept. An instant query at a past time is answered whole from the cache, or asked and kept.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Either, Full};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::body::Buffered;
use super::fanout::{Held, read_up_to};
use super::slice::{SLICES, Times, rewrite};
use super::{Exchange, Prepared, Proxy, headers, now_millis};
use crate::api::Api;
use crate::body::Guarded;
use crate::cache::{self, Cache, Query};
use crate::client::pool::Transport;
use crate::coverage::Millis;
use crate::error::{ProxyBody, ProxyError};
use crate::merge;
use crate::metrics::RequestLabels;
use crate::window::Endpoint;

/// One part of an answer being stitched: its body, the steps of it to use, and who answered.
struct Piece {
    body: Bytes,
    steps: (Millis, Millis),
    replicas: Arc<[Box<str>]>,
    /// The body holds these steps and no other: it is used as it is.
    whole: bool,
}

/// Answers up to this size are stitched on the serving thread; larger ones on a thread of
/// their own, so that a long answer does not hold the requests behind it.
const STITCH_INLINE: usize = 256 << 10;

impl<P: Transport> Proxy<P> {
    /// The cache's view of a request, when it is a query the cache can keep.
    pub(super) fn cache_query(&self, cache: &Cache, prepared: &Prepared) -> Option<Query> {
        let Api::Read(endpoint @ (Endpoint::QueryRange | Endpoint::Query)) = prepared.api else { return None };
        if !matches!(prepared.method, Method::GET | Method::POST) {
            return None;
        }
        // Parameters read as Prometheus (Go's `ParseForm`) reads them: a body only from a POST
        // of exactly a URL-encoded form, of at most 10 MiB; a request whose body Prometheus
        // might read otherwise is not kept.
        let body = &prepared.body.bytes;
        let form = match (&prepared.method, body.is_empty()) {
            (_, true) => None,
            (&Method::POST, false) if body.len() <= MAX_FORM && is_form(&prepared.outgoing_headers) => Some(&body[..]),
            _ => {
                cache.count("bypass");
                return None;
            }
        };
        let path = &prepared.path_and_query;
        let query = cache.query(endpoint, path.path(), path.query(), form, &prepared.outgoing_headers, now_millis);
        if query.is_none() {
            cache.count("bypass");
        }
        query
    }

    /// Answers `query` with what the cache holds of it and what the replicas answer for the
    /// rest, and keeps what may be kept.
    pub(super) async fn cached(
        &self,
        cache: &Cache,
        mut exchange: Exchange,
        query: Query,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        // Answers are read to be stitched and kept: asked for uncompressed. What may be kept is
        // judged by the time they were asked at.
        exchange.prepared.outgoing_headers.remove(header::ACCEPT_ENCODING);
        let plan = cache.plan(&query, &exchange.snapshot);
        let asked = Asked { at: now_millis(), oldest: plan.oldest, held: cache::newest_held(&exchange.snapshot) };
        if plan.cached.is_empty() {
            cache.count("miss");
            let deadline = exchange.deadline;
            let answer = self.dispatch(exchange).await?;
            return Ok(self.keep_whole(cache, deadline, &query, answer, asked).await);
        }
        let pieces: Vec<Piece> = plan
            .cached
            .iter()
            .map(|(extent, steps)| Piece {
                whole: *steps == (extent.first, extent.last),
                body: extent.body.clone(),
                steps: *steps,
                replicas: extent.replicas.clone(),
            })
            .collect();
        if plan.hit() {
            cache.count("hit");
            cache.count_steps(steps_in(&pieces, query.step), 0);
            return self.stitched(cache, &query, pieces, None, asked).await;
        }
        let mut sub_queries = Vec::with_capacity(plan.missing.len());
        for &(first, last) in &plan.missing {
            sub_queries.push(exchange.for_steps(&query, first, last)?);
        }
        let answers = join_all(sub_queries.into_iter().map(|sub| self.dispatch(sub))).await;
        let mut fetched = Vec::with_capacity(answers.len());
        let mut head = None;
        let mut held = Vec::new();
        // An error of mpp's own asking for the missing steps: the answer has none from the cache.
        let missed = |error: ProxyError| {
            cache.count("miss");
            error
        };
        for (answer, &steps) in answers.into_iter().zip(&plan.missing) {
            let answer = answer.map_err(missed)?;
            if answer.status() != StatusCode::OK || !headers::is_plain_json(answer.headers()) {
                // Prometheus's own answer about the query (an error, as a rule): the client's,
                // and none of it from the cache.
                cache.count("miss");
                let mut answer = answer;
                answer.headers_mut().insert(headers::MPP_CACHE.clone(), HeaderValue::from_static("miss"));
                return Ok(answer);
            }
            let (parts, body) = answer.into_parts();
            let replicas = answered_by(&parts.headers);
            match self.read_answer(body, exchange.deadline).await.map_err(missed)? {
                Read::Whole(bytes, permit) => {
                    held.push(permit);
                    fetched.push(Piece { body: bytes, steps, replicas, whole: true });
                }
                Read::Stream(_) => {
                    // Too much to stitch: the whole query, as it came, streamed on.
                    cache.count("miss");
                    let mut answer = self.dispatch(exchange.again()).await?;
                    if answer.status() == StatusCode::OK {
                        cache.count_steps(0, steps_of(&query));
                    }
                    answer.headers_mut().insert(headers::MPP_CACHE.clone(), HeaderValue::from_static("miss"));
                    return Ok(answer);
                }
            }
            head.get_or_insert(parts);
        }
        cache.count("partial");
        cache.count_steps(steps_in(&pieces, query.step), steps_in(&fetched, query.step));
        let mut all = pieces;
        all.extend(fetched);
        all.sort_by_key(|piece| piece.steps.0);
        let answer = self.stitched(cache, &query, all, head, asked).await;
        drop(held);
        answer
    }

    /// The answer made of `pieces` (in time order), with `head` (a replica's) or a head of
    /// mpp's own; kept for the steps that may be.
    async fn stitched(
        &self,
        cache: &Cache,
        query: &Query,
        pieces: Vec<Piece>,
        head: Option<http::response::Parts>,
        asked: Asked,
    ) -> Result<Response<ProxyBody<P::Body>>, ProxyError> {
        let hit = head.is_none();
        let pieces_bytes: usize = pieces.iter().map(|p| p.body.len()).sum();
        let replicas: Arc<[Box<str>]> = {
            let mut all: Vec<Box<str>> = pieces.iter().flat_map(|p| p.replicas.iter().cloned()).collect();
            all.sort();
            all.dedup();
            all.into()
        };
        // A hit teaches the cache nothing: only what the replicas added is kept.
        let keep = if hit { None } else { cache.keepable_until(query, asked.at, asked.held) };
        let (start, endpoint) = (query.start, query.endpoint);
        let stitch = move || -> Result<(Bytes, Option<Bytes>), String> {
            if endpoint == Endpoint::Query || (pieces.len() == 1 && pieces[0].whole && keep.is_none()) {
                // An instant query's one answer, or a run of steps held as asked: as it is.
                let body = pieces.into_iter().next().map(|p| p.body).unwrap_or_default();
                return Ok((body, None));
            }
            let parts: Vec<(merge::Part, (Millis, Millis))> = pieces
                .iter()
                .map(|p| (merge::Part { body: &p.body, replica: p.replicas.first().map_or("cache", |r| r) }, p.steps))
                .collect();
            let body = Bytes::from(merge::concatenate_steps(&parts, None).map_err(|e| e.to_string())?.body);
            let kept = keepable(&body, start, keep)?;
            Ok((body, kept))
        };
        let stitched =
            if pieces_bytes <= STITCH_INLINE { Ok(stitch()) } else { tokio::task::spawn_blocking(stitch).await };
        let (body, kept) = match stitched {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Err(ProxyError::Upstream {
                    backend: replicas.first().map_or_else(String::new, |r| r.to_string()),
                    detail: format!("the cached and new steps could not be joined: {e}"),
                });
            }
            Err(e) => {
                return Err(ProxyError::Upstream { backend: String::new(), detail: format!("joining steps: {e}") });
            }
        };
        if let (Some(kept), Some(until)) = (kept, keep) {
            cache.store(query, until, kept, replicas.clone(), asked.oldest);
        }
        let mut parts = match head {
            Some(parts) => parts,
            None => {
                let (parts, ()) = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(())
                    .expect("a valid head")
                    .into_parts();
                parts
            }
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(headers::MPP_CACHE.clone(), HeaderValue::from_static(if hit { "hit" } else { "partial" }));
        if hit {
            let labels = RequestLabels { backend: "cache".into(), code: StatusCode::OK.as_u16() };
            self.inner.metrics.requests.get_or_create(&labels).inc();
            if let Ok(names) = HeaderValue::from_str(&replicas.join(", ")) {
                parts.headers.insert(headers::SERVED_BY.clone(), names);
            }
        }
        Ok(Response::from_parts(parts, Either::Right(Full::new(body))))
    }

    /// A miss: the replicas' answer to the whole query, read (within `--merge-max-bytes`) and
    /// kept for the steps that may be; streamed on as it is when it cannot be kept.
    async fn keep_whole(
        &self,
        cache: &Cache,
        deadline: Instant,
        query: &Query,
        answer: Response<ProxyBody<P::Body>>,
        asked: Asked,
    ) -> Response<ProxyBody<P::Body>> {
        let mut answer = answer;
        answer.headers_mut().insert(headers::MPP_CACHE.clone(), HeaderValue::from_static("miss"));
        if query.endpoint == Endpoint::QueryRange && answer.status() == StatusCode::OK {
            cache.count_steps(0, steps_of(query));
        }
        let Some(until) = cache.keepable_until(query, asked.at, asked.held) else { return answer };
        if answer.status() != StatusCode::OK || !headers::is_plain_json(answer.headers()) {
            return answer;
        }
        let (parts, body) = answer.into_parts();
        let replicas = answered_by(&parts.headers);
        let (bytes, permit) = match self.read_answer(body, deadline).await {
            Ok(Read::Whole(bytes, permit)) => (bytes, permit),
            Ok(Read::Stream(body)) => return Response::from_parts(parts, body),
            Err(error) => return self.refuse(error),
        };
        let (start, endpoint) = (query.start, query.endpoint);
        let body = bytes.clone();
        let keep = move || {
            if endpoint == Endpoint::Query {
                return merge::notes(&body).ok().filter(|noted| !noted).map(|_| body);
            }
            keepable(&body, start, Some(until)).ok().flatten()
        };
        let kept =
            if bytes.len() <= STITCH_INLINE { keep() } else { tokio::task::spawn_blocking(keep).await.ok().flatten() };
        drop(permit);
        if let Some(kept) = kept {
            cache.store(query, until, kept, replicas, asked.oldest);
        }
        Response::from_parts(parts, Either::Right(Full::new(bytes)))
    }

    /// Reads an answer's body whole, within `--merge-max-bytes` and the budget of bytes held
    /// for merging; over them, what was read and the rest, to stream on.
    async fn read_answer(&self, body: ProxyBody<P::Body>, deadline: Instant) -> Result<Read<P::Body>, ProxyError> {
        let inner = &*self.inner;
        match body {
            Either::Right(full) => {
                let bytes = full.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                Ok(Read::Whole(bytes, None))
            }
            Either::Left(guarded) => {
                let (prefix, body, slot) = guarded.into_inner();
                let prefix = prefix.unwrap_or_default();
                let limit = inner.merge_max_bytes.saturating_sub(prefix.len());
                match read_up_to(body, limit, &inner.merge_budget, deadline).await {
                    Ok(Held::Whole(bytes, permit)) => Ok(Read::Whole(joined(prefix, bytes), permit)),
                    Ok(Held::Over(read, rest)) => {
                        Ok(Read::Stream(Either::Left(Guarded::with_prefix(joined(prefix, read), rest, slot))))
                    }
                    Err(detail) => Err(ProxyError::Upstream { backend: String::new(), detail }),
                }
            }
        }
    }
}

impl Exchange {
    /// The same request again, for another way through the proxy.
    fn again(&self) -> Exchange {
        Exchange {
            prepared: self.prepared.copy(self.prepared.path_and_query.clone(), self.prepared.body.bytes.clone()),
            snapshot: self.snapshot.clone(),
            deadline: self.deadline,
            started: self.started,
            target: self.target,
            // The cache reads the answer.
            keep_lines: false,
        }
    }

    /// The request for the steps from `first` to `last` of `query` only.
    fn for_steps(&self, query: &Query, first: Millis, last: Millis) -> Result<Exchange, ProxyError> {
        let prepared = &self.prepared;
        let form = headers::form_body(&prepared.outgoing_headers, &prepared.body.bytes);
        let times = Times { start: first, end: last, query_start: query.start, query_end: query.last };
        let (path_and_query, body) = rewrite(&prepared.path_and_query, form, times)
            .map_err(|e| ProxyError::BadRequest(format!("cannot ask for the steps the cache lacks: {e}")))?;
        let body = body.unwrap_or_else(|| prepared.body.bytes.clone());
        Ok(Exchange {
            prepared: prepared.copy(path_and_query, body),
            snapshot: self.snapshot.clone(),
            deadline: self.deadline,
            started: self.started,
            target: self.target,
            // The cache reads the answer.
            keep_lines: false,
        })
    }
}

impl Prepared {
    /// This request with another target and body.
    fn copy(&self, path_and_query: http::uri::PathAndQuery, body: Bytes) -> Prepared {
        Prepared {
            method: self.method.clone(),
            api: self.api,
            route_cookie: self.route_cookie.clone(),
            body: Buffered::made(body),
            outgoing_headers: self.outgoing_headers.clone(),
            added: self.added.clone(),
            path_and_query,
            client: self.client,
            replayable: self.replayable,
            pass_timeout: self.pass_timeout,
        }
    }
}

/// The part of a `query_range` answer that may be kept: its steps up to `until` (none when
/// no step may be), unless the answer carries warnings or infos.
fn keepable(body: &[u8], start: Millis, until: Option<Millis>) -> Result<Option<Bytes>, String> {
    let Some(until) = until else { return Ok(None) };
    if merge::notes(body).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let part = merge::Part { body, replica: "cache" };
    let kept = merge::concatenate_steps(&[(part, (start, until))], None).map_err(|e| e.to_string())?;
    Ok(Some(Bytes::from(kept.body)))
}

/// The replicas an answer names as its source: `MPP.ServedBy`, and the replicas of its slices
/// or of its merge.
fn answered_by(headers: &http::HeaderMap) -> Arc<[Box<str>]> {
    let mut replicas: Vec<Box<str>> = Vec::new();
    if let Some(served) = headers.get(&headers::SERVED_BY).and_then(|v| v.to_str().ok()) {
        replicas.push(served.into());
    }
    for name in [&SLICES, &headers::MERGED_FROM] {
        for value in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            // `MPP-Slices: URL first-last, URL first-last`; `MPP-Merged-From: URL, URL`.
            for item in value.split(',') {
                if let Some(url) = item.split_whitespace().next() {
                    replicas.push(url.into());
                }
            }
        }
    }
    replicas.sort();
    replicas.dedup();
    replicas.into()
}

/// When a query was asked and what the replicas held then: what may be kept of its answer.
#[derive(Debug, Clone, Copy)]
struct Asked {
    at: Millis,
    /// The oldest data the replicas hold ([`crate::cache::Plan::oldest`]).
    oldest: Option<Millis>,
    /// The newest sample every viable replica had ingested ([`cache::newest_held`]).
    held: Option<Millis>,
}

/// The steps a range query asks for.
fn steps_of(query: &Query) -> u64 {
    ((query.last - query.start) / query.step.max(1) + 1) as u64
}

/// The steps the pieces hold, counted from their bounds.
fn steps_in(pieces: &[Piece], step: Millis) -> u64 {
    pieces.iter().map(|p| ((p.steps.1 - p.steps.0) / step.max(1) + 1) as u64).sum()
}

fn joined(prefix: Bytes, rest: Bytes) -> Bytes {
    if prefix.is_empty() {
        return rest;
    }
    let mut all = BytesMut::with_capacity(prefix.len() + rest.len());
    all.extend_from_slice(&prefix);
    all.extend_from_slice(&rest);
    all.freeze()
}

/// The largest form body Prometheus reads (Go's `ParseForm`: 10 MiB).
const MAX_FORM: usize = 10 << 20;

/// Whether the request's media type is exactly a URL-encoded form (parameters aside).
fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// An answer's body, read: whole (with the budget it holds), or, over what may be held, to
/// stream on as it is.
enum Read<B: hyper::body::Body> {
    Whole(Bytes, Option<OwnedSemaphorePermit>),
    Stream(ProxyBody<B>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix answer of one series with points at 1, 2 and 3 s, and `extra` after `data`.
    fn matrix(extra: &str) -> String {
        format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[[1,"1"],[2,"2"],[3,"3"]]}}]}}{extra}}}"#
        )
    }

    #[test]
    fn answers_with_warnings_are_not_kept_and_others_only_up_to_the_last_keepable_step() {
        let plain = matrix("");
        let kept = keepable(plain.as_bytes(), 1000, Some(2000)).unwrap().expect("kept");
        let kept = String::from_utf8(kept.to_vec()).unwrap();
        assert!(kept.contains(r#"[2,"2"]"#) && !kept.contains(r#"[3,"3"]"#), "{kept}");
        let warned = matrix(r#","warnings":["answered by one replica: the merge was over --merge-max-bytes"]"#);
        assert_eq!(keepable(warned.as_bytes(), 1000, Some(2000)).unwrap(), None);
        assert_eq!(keepable(plain.as_bytes(), 1000, None).unwrap(), None, "no step may be kept");
    }
}
