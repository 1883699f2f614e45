//! The dashboard cache (`--cache-max-bytes`): the answers of range queries kept as extents of
//! steps, so that a dashboard's refresh asks the replicas only for the steps not answered yet,
//! and instant queries at an explicit time in the past kept whole.
//!
//! A query is kept under its [`Key`]: the path, every parameter Prometheus reads other than
//! `start` and `end` (and `timeout`, which changes no answer), the step and the alignment of
//! `start` on it, and a digest of the `Authorization` the replicas get (clients whose
//! credentials differ never share answers). What is kept of it are [`Extent`]s: runs of steps
//! with the answer a replica (or several, in slices) gave for them, byte for byte.
//!
//! What is never kept: the steps within `--cache-fresh-window` of now (late scrapes, rule
//! evaluations and out-of-order samples still change them), answers with an error or with
//! `warnings`, queries whose steps depend on their own `start` and `end` (`@ start()`,
//! `@ end()`), and whatever a client asks afresh (`Cache-Control: no-cache`).
//!
//! The cache follows the replicas' coverage ([`Cache::plan`]): an extent whose window a
//! replica that answered it is later found to have a hole in is dropped, and the steps that
//! read data older than the replicas' oldest are no longer served. A delete sent through mpp
//! empties it. Memory is bounded by the bytes held (keys and answers), evicted least recently
//! used by moka.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;

use crate::coverage::Millis;
use crate::metrics::{CacheMetrics, ResultLabels, SourceLabels};
use crate::selection::Snapshot;
use crate::window::{self, Endpoint};
use prometheus_client::metrics::counter::Counter;

/// Prometheus refuses range queries of more steps than this (its engine's resolution limit).
const MAX_STEPS: i64 = 11_000;

/// What one entry costs besides the bytes of its key, expression and answers: moka's own
/// bookkeeping of it, the allocations around it and the allocator's rounding. Measured
/// (bench/cache.py: resident memory over 100,000 small entries, against the bytes counted):
/// about 1,000 bytes an entry, with one extent; counted with some margin.
const ENTRY_OVERHEAD: usize = 1024;

/// What one extent costs besides its answer and the names of its replicas.
const EXTENT_OVERHEAD: usize = 128;

/// The largest entry kept whatever the budget: each request that uses part of an extent
/// reads it whole to cut it, so a huge one would make small requests costly.
const MAX_ENTRY: usize = 8 << 20;

/// Extents kept per query at most; a new one beyond drops the oldest.
const MAX_EXTENTS: usize = 4;

/// The cache, shared by every serving thread.
pub struct Cache {
    entries: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    /// The largest entry kept (a tenth of the budget).
    max_entry: usize,
    /// `--cache-fresh-window`, in milliseconds.
    fresh: Millis,
    metrics: CacheMetrics,
    /// `mpp_cache_requests_total` for `hit`, `partial`, `miss` and `bypass`, looked up once.
    results: [(&'static str, Counter); 4],
    hits: AtomicU64,
    lookups: AtomicU64,
    /// Bumped each time the cache is emptied.
    generation: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("entries", &self.entries.entry_count()).finish_non_exhaustive()
    }
}

/// What is kept of one query.
#[derive(Debug)]
pub struct Entry {
    /// The request's path, shown on the status page with the expression.
    path: Box<str>,
    /// The expression, for the status page.
    expr: Box<str>,
    /// Runs of steps, in time order, disjoint.
    extents: Vec<Extent>,
}

/// A run of steps and the answer for them.
#[derive(Debug, Clone)]
pub struct Extent {
    /// The first step (milliseconds).
    pub first: Millis,
    /// The last step.
    pub last: Millis,
    /// A successful `query_range` answer (or an instant query's) with no point outside
    /// `[first, last]`, as the replicas wrote it.
    pub body: Bytes,
    /// The replicas that answered it (their URLs).
    pub replicas: Arc<[Box<str>]>,
    /// The oldest data the replicas held when it was kept (see [`Plan::oldest`]).
    pub oldest: Option<Millis>,
}

/// A query the cache can keep, read from its request.
#[derive(Debug, Clone)]
pub struct Query {
    /// Its key.
    pub key: Arc<str>,
    /// `query_range` (steps) or `query` (one time).
    pub endpoint: Endpoint,
    /// The path and expression, for the status page.
    path: Box<str>,
    expr: Box<str>,
    /// The first step (or the instant query's time).
    pub start: Millis,
    /// The last step (at or before the query's `end`).
    pub last: Millis,
    /// The time between steps (1 for an instant query).
    pub step: Millis,
    /// What one step at time `t` reads: `[t + before, t + after]`.
    pub before: Millis,
    pub after: Millis,
    /// The windows `@ <time>` fixes, read at every step.
    pub fixed: Vec<(Millis, Millis)>,
    /// The cache's generation when the query arrived: an answer asked for before the cache
    /// was emptied is not kept after it.
    generation: u64,
    /// The client asked for fresh data (`Cache-Control: no-cache`): nothing is served from
    /// the cache, and what the replicas answer replaces what it held.
    pub refresh: bool,
}

/// What [`Cache::plan`] found for a query.
#[derive(Debug, Default)]
pub struct Plan {
    /// Kept answers for some of the steps, each with the steps of it to use, in time order.
    pub cached: Vec<(Extent, (Millis, Millis))>,
    /// The runs of steps to ask the replicas for, in time order.
    pub missing: Vec<(Millis, Millis)>,
    /// The oldest data every scanned replica holds now (the coverage scan's start), when
    /// known: once it moves on (retention), the kept steps that read older data are not
    /// served again, since the replicas no longer answer them so.
    pub oldest: Option<Millis>,
}

impl Plan {
    /// Whether every step comes from the cache.
    pub fn hit(&self) -> bool {
        self.missing.is_empty() && !self.cached.is_empty()
    }
}

impl Cache {
    /// A cache of at most `max_bytes`; steps within `fresh` (milliseconds) of now are never kept.
    pub fn new(max_bytes: u64, fresh: Millis, metrics: CacheMetrics) -> Cache {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|key: &Arc<str>, entry: &Arc<Entry>| -> u32 {
                u32::try_from(key.len() + entry.bytes()).unwrap_or(u32::MAX)
            })
            .build();
        let results = ["hit", "partial", "miss", "bypass"]
            .map(|result| (result, metrics.requests.get_or_create(&ResultLabels { result }).clone()));
        Cache {
            entries,
            max_entry: usize::try_from(max_bytes / 10).unwrap_or(usize::MAX).min(MAX_ENTRY),
            fresh,
            metrics,
            results,
            hits: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The cache's side of a request for `endpoint` (path, query string, form body, headers
    /// the replicas get), when it can keep the query: a range query of at most 11,000 steps, or
    /// an instant query at an explicit time older than the fresh window; `None` otherwise. `now`
    /// reads the clock, only for a query that may be kept.
    pub fn query(
        &self,
        endpoint: Endpoint,
        path: &str,
        query_string: Option<&str>,
        form: Option<&[u8]>,
        headers: &HeaderMap,
        now: impl FnOnce() -> Millis,
    ) -> Option<Query> {
        // The usual instant query, at now (no `time`), is turned away before anything is read,
        // the clock included.
        if endpoint == Endpoint::Query && !names_time(query_string.unwrap_or_default().as_bytes(), form) {
            return None;
        }
        let now = now();
        let params = window::Params::new(query_string, form);
        let expr = params.get("query")?;
        // Evaluated at the query's own start or end (PromQL reads `@ END ( )` too): the same
        // step differs with them.
        let squeezed: String = expr.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect();
        if squeezed.contains("start()") || squeezed.contains("end()") || params.get("stats").is_some() {
            return None;
        }
        let (start, last, step) = match endpoint {
            Endpoint::QueryRange => {
                let start = params.time("start").ok()??;
                let end = params.time("end").ok()??;
                let step = window::parse_duration(&params.get("step")?).ok()?;
                let span = end.checked_sub(start)?;
                if step <= 0 || span < 0 || span / step >= MAX_STEPS {
                    // Prometheus refuses it: its answer goes to the client, nothing is kept.
                    return None;
                }
                (start, start + span / step * step, step)
            }
            Endpoint::Query => {
                let time = params.time("time").ok()??;
                (time, time, 1)
            }
            _ => return None,
        };
        let lookback = params.lookback(crate::tracker::DEFAULT_LOOKBACK).ok()?;
        let reads = window::step_reads(&expr, start, last, step, lookback, now).ok()?;
        let before = reads.moving.iter().map(|w| w.0).min().unwrap_or(0);
        let after = reads.moving.iter().map(|w| w.1).max().unwrap_or(0);
        if endpoint == Endpoint::Query && time_is_fresh(last.checked_add(after)?, now, self.fresh) {
            return None;
        }
        // What `@ <time>` fixes is read at every step: kept only when it is out of the fresh
        // window, and checked for holes and retention with the steps.
        let fixed: Vec<(Millis, Millis)> = reads.fixed.iter().map(|w| (w.start, w.end)).collect();
        if fixed.iter().any(|&(_, end)| time_is_fresh(end, now, self.fresh)) {
            return None;
        }
        let key = key(endpoint, path, &params, start.rem_euclid(step), step, headers)?;
        let refresh = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
        Some(Query {
            key,
            endpoint,
            path: path.into(),
            expr: expr.into(),
            start,
            last,
            step,
            before,
            after,
            fixed,
            refresh,
            generation: self.generation.load(Ordering::Acquire),
        })
    }

    /// What of `query` the cache holds and may serve, and what is to be asked for; extents a
    /// hole was found in since are dropped here.
    pub fn plan(&self, query: &Query, snapshot: &Snapshot) -> Plan {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let oldest = oldest_data(snapshot);
        let whole = Plan { cached: Vec::new(), missing: vec![(query.start, query.last)], oldest };
        if query.refresh {
            return whole;
        }
        let Some(entry) = self.entries.get(&query.key) else { return whole };
        let mut kept = Vec::with_capacity(entry.extents.len());
        let mut dropped = false;
        for extent in &entry.extents {
            let read = (extent.first + query.before, extent.last + query.after);
            let fixed_gone = match (oldest, extent.oldest) {
                (Some(now), Some(then)) if now > then => query.fixed.iter().any(|w| w.0 < now),
                _ => false,
            };
            if fixed_gone
                || holed(snapshot, &extent.replicas, read)
                || query.fixed.iter().any(|&w| holed(snapshot, &extent.replicas, w))
            {
                dropped = true;
                continue;
            }
            kept.push(extent);
        }
        if dropped {
            let extents: Vec<Extent> = kept.iter().map(|&e| e.clone()).collect();
            self.replace(query, &entry, extents);
        }
        let mut plan = Plan { oldest, ..Plan::default() };
        let mut next = query.start;
        for extent in kept {
            // Steps that read data older than the replicas hold since it was kept are no
            // longer served.
            let first_servable = match (oldest, extent.oldest) {
                (Some(now), Some(then)) if now > then => now - query.before,
                _ => Millis::MIN,
            };
            let from = extent.first.max(next).max(first_servable);
            let to = extent.last.min(query.last);
            if from > to {
                continue;
            }
            let from = align_up(from, query.start, query.step);
            if from > to {
                continue;
            }
            if from > next {
                plan.missing.push((next, from - query.step));
            }
            plan.cached.push((extent.clone(), (from, to)));
            next = to + query.step;
        }
        if next <= query.last {
            plan.missing.push((next, query.last));
        }
        if plan.hit() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        plan
    }

    /// The last step of `query` that may be kept at `now`: its read ends outside the fresh
    /// window; `None` when no step may.
    /// `held` is what every replica that may serve had ingested ([`newest_held`]): no step
    /// reads past it, so that a kept step is never newer than what each of them held.
    pub fn keepable_until(&self, query: &Query, now: Millis, held: Option<Millis>) -> Option<Millis> {
        let limit = (now - self.fresh).min(held.unwrap_or(Millis::MAX)) - query.after;
        if limit < query.start {
            return None;
        }
        Some(query.start + ((limit.min(query.last) - query.start) / query.step) * query.step)
    }

    /// Keeps `body` (a successful answer without warnings, none of its points outside
    /// `[query.start, until]`) as `query`'s extent for those steps, answered by `replicas`;
    /// beside the extents it does not overlap. An answer over a tenth of the budget is not kept.
    pub fn store(&self, query: &Query, until: Millis, body: Bytes, replicas: Arc<[Box<str>]>, oldest: Option<Millis>) {
        if body.len() > self.max_entry || self.generation.load(Ordering::Acquire) != query.generation {
            return;
        }
        // Held apart from the buffer it was read or stitched into, whose capacity can be
        // several times its length: what the cache counts is what it holds.
        let body = Bytes::copy_from_slice(&body);
        let extent = Extent { first: query.start, last: until, body, replicas, oldest };
        let mut extents: Vec<Extent> = match self.entries.get(&query.key) {
            Some(entry) => {
                entry.extents.iter().filter(|e| e.last < extent.first || e.first > extent.last).cloned().collect()
            }
            None => Vec::new(),
        };
        extents.push(extent);
        extents.sort_by_key(|e| e.first);
        while extents.len() > MAX_EXTENTS {
            extents.remove(0);
        }
        let entry = Entry { path: query.path.clone(), expr: query.expr.clone(), extents };
        if entry.bytes() + query.key.len() > self.max_entry {
            return;
        }
        self.insert(query, entry);
    }

    /// Puts `entry` in as `query`'s, unless the cache was emptied since `query` arrived: what
    /// was asked for, or planned, before a delete is not kept after it.
    fn insert(&self, query: &Query, entry: Entry) {
        self.entries.insert(query.key.clone(), Arc::new(entry));
        // An emptying between the caller's check and the insert: taken out again. (One
        // before the insert finds the generation moved; one after it removes the entry.)
        if self.generation.load(Ordering::Acquire) != query.generation {
            self.entries.invalidate(&query.key);
        }
        self.publish();
    }

    /// Empties the cache (a delete through mpp changed what the replicas hold).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
        self.entries.run_pending_tasks();
        self.publish();
    }

    /// Counts a request's result (`hit`, `partial`, `miss`, `bypass`).
    pub fn count(&self, result: &'static str) {
        if let Some((_, counter)) = self.results.iter().find(|(name, _)| *name == result) {
            counter.inc();
        }
    }

    /// Counts the steps of a range answer, by where they came from.
    pub fn count_steps(&self, cached: u64, asked: u64) {
        if cached > 0 {
            self.metrics.steps.get_or_create(&SourceLabels { source: "cache" }).inc_by(cached);
        }
        if asked > 0 {
            self.metrics.steps.get_or_create(&SourceLabels { source: "replica" }).inc_by(asked);
        }
    }

    /// What the status page shows: entries, bytes, the share of lookups answered whole, and
    /// the largest queries (path, expression, bytes), largest first.
    pub fn summary(&self, largest: usize) -> Summary {
        self.entries.run_pending_tasks();
        let mut queries: Vec<(String, String, u64)> = self
            .entries
            .iter()
            .map(|(key, entry)| (entry.path.to_string(), entry.expr.to_string(), (key.len() + entry.bytes()) as u64))
            .collect();
        queries.sort_by_key(|q| std::cmp::Reverse(q.2));
        queries.truncate(largest);
        let lookups = self.lookups.load(Ordering::Relaxed);
        Summary {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            hit_ratio: (lookups > 0).then(|| self.hits.load(Ordering::Relaxed) as f64 / lookups as f64),
            largest: queries,
        }
    }

    /// `query`'s entry `old` with only `extents` left.
    fn replace(&self, query: &Query, old: &Entry, extents: Vec<Extent>) {
        if extents.is_empty() {
            self.entries.invalidate(&query.key);
            self.publish();
        } else {
            self.insert(query, Entry { path: old.path.clone(), expr: old.expr.clone(), extents });
        }
    }

    fn publish(&self) {
        // moka counts what it holds as it catches up with its inserts: caught up first.
        self.entries.run_pending_tasks();
        self.metrics.bytes.set(i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX));
        self.metrics.entries.set(i64::try_from(self.entries.entry_count()).unwrap_or(i64::MAX));
    }
}

/// The cache as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
    /// Lookups answered wholly from the cache, of all lookups (none yet: `None`).
    pub hit_ratio: Option<f64>,
    /// The largest queries: path, expression, bytes held.
    pub largest: Vec<(String, String, u64)>,
}

impl Entry {
    /// The bytes it holds.
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + self.path.len()
            + self.expr.len()
            + self
                .extents
                .iter()
                .map(|e| EXTENT_OVERHEAD + e.body.len() + e.replicas.iter().map(|r| r.len()).sum::<usize>())
                .sum::<usize>()
    }
}

/// Whether a query string or form may name `time` (a percent-encoded name is not seen: such
/// a query is then only not cached).
fn names_time(query_string: &[u8], form: Option<&[u8]>) -> bool {
    let names = |text: &[u8]| text.split(|&b| b == b'&').any(|pair| pair.starts_with(b"time="));
    names(query_string) || form.is_some_and(names)
}

/// Whether data at `time` is still within the fresh window at `now`.
fn time_is_fresh(time: Millis, now: Millis, fresh: Millis) -> bool {
    time > now - fresh
}

/// The first step at or after `time` of steps from `start` every `step`.
fn align_up(time: Millis, start: Millis, step: Millis) -> Millis {
    if time <= start {
        return start;
    }
    start + (time - start + step - 1) / step * step
}

/// The newest sample every viable replica had ingested at its last probe
/// (`prometheus_tsdb_head_max_time_seconds`), when each said.
pub fn newest_held(snapshot: &Snapshot) -> Option<Millis> {
    let viable = snapshot.candidates.iter().filter(|c| snapshot.viable.iter().any(|v| Arc::ptr_eq(v, &c.replica)));
    let mut newest = viable.map(|c| c.probe.head_max_time.filter(|t| t.is_finite()).map(|t| (t * 1000.0) as Millis));
    let first = newest.next()??;
    newest.try_fold(first, |held, t| Some(held.min(t?)))
}

/// The oldest data every scanned replica of the selection still holds (the coverage scan's
/// start), when known.
fn oldest_data(snapshot: &Snapshot) -> Option<Millis> {
    snapshot.viable.iter().filter_map(|r| Some(r.coverage()).filter(|c| c.known()).map(|c| c.from)).max()
}

/// Whether one of `replicas` (by URL) is now known to lack data in `read`. Every candidate's
/// last coverage counts, viable or not: a replica whose hole was found just before it went
/// down answered those steps from incomplete data all the same.
fn holed(snapshot: &Snapshot, replicas: &[Box<str>], read: (Millis, Millis)) -> bool {
    snapshot.candidates.iter().map(|c| &c.replica).any(|replica| {
        replicas.iter().any(|url| **url == *replica.url()) && {
            let coverage = replica.coverage();
            coverage.known() && !coverage.covers(read.0, read.1)
        }
    })
}

/// The key of a query: its endpoint and path, every parameter Prometheus reads (the first
/// value of each name, the form's before the URL's, as Go's `FormValue`) but `start`, `end`
/// and `timeout`, the step's alignment, and a digest of the `Authorization` sent on.
fn key(
    endpoint: Endpoint,
    path: &str,
    params: &window::Params<'_>,
    alignment: Millis,
    step: Millis,
    headers: &HeaderMap,
) -> Option<Arc<str>> {
    let mut names: Vec<(String, String)> = Vec::new();
    for (name, value) in params.pairs() {
        if matches!(&*name, "start" | "end" | "timeout" | "step") || names.iter().any(|(n, _)| *n == name) {
            continue;
        }
        names.push((name.into_owned(), value.into_owned()));
    }
    names.sort();
    let mut key = form_urlencoded::Serializer::new(String::new());
    key.append_pair("endpoint", endpoint.label()).append_pair("path", path);
    if endpoint == Endpoint::QueryRange {
        key.append_pair("step", &step.to_string()).append_pair("alignment", &alignment.to_string());
    }
    for (name, value) in &names {
        key.append_pair(name, value);
    }
    // What may tell the replicas (or a proxy in front of them) who asks: clients that differ
    // in it never share answers. mpp's own affinity cookie tells nothing.
    let mut who = Vec::new();
    for name in [http::header::AUTHORIZATION.as_str(), "x-scope-orgid", "cookie"] {
        for value in headers.get_all(name) {
            let value = value.as_bytes();
            if name == "cookie" {
                let mut cookies: Vec<&[u8]> = value
                    .split(|&b| b == b';')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty() && !c.starts_with(b"MPP.Route="))
                    .collect();
                if cookies.is_empty() {
                    continue;
                }
                cookies.sort_unstable();
                who.extend(cookies.iter().flat_map(|c| [*c, b";".as_slice()]).flatten());
            } else {
                who.extend_from_slice(name.as_bytes());
                who.extend_from_slice(value);
            }
            who.push(0);
        }
    }
    if !who.is_empty() {
        let digest = ring::digest::digest(&ring::digest::SHA256, &who);
        let hex: String = digest.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
        key.append_pair("client", &hex);
    }
    Some(key.finish().into())
}

#[cfg(test)]
mod tests;
