//! The window of stored data that a Prometheus API request reads, so that mpp can send the
//! request to a replica with no hole in that window.
//!
//! This module owns three readings of a request, each done as Prometheus does it: its
//! parameters (from the URL and a form body, as Go's `Request.FormValue` finds them), its times
//! (float Unix seconds or RFC 3339), and its PromQL (parsed with `promql-parser`, then walked for
//! every selector's range, offset and `@`). It knows nothing of replicas or their coverage: the
//! caller holds the window against each replica's coverage.
//!
//! The window of a PromQL expression is the one Prometheus's engine asks its storage for
//! (`FindMinMaxTime` in `promql/engine.go`): a selector evaluated at time `t` reads
//! `[t - offset - lookback, t - offset]`, or `[t - offset - range, t - offset]` inside a range
//! selector `x[range]`; `@` replaces `t`; a subquery `e[range:step] offset o` evaluates `e` at
//! every time in `[t - o - range, t - o]`, so that offsets and ranges of nested subqueries add
//! up. The window is the smallest one that holds every selector's (so `x - x offset 1w` asks for
//! the week between its two reads too); one with no selector reads [`Window::EMPTY`].
//!
//! The window errs wide, never narrow, since a hole just outside it costs nothing and one inside
//! it shows on a dashboard: every time in `[start, end]` of a range query counts as an
//! evaluation time (the last step may fall before `end`), both ends are closed (Prometheus 3
//! opens the left one), and a query's `lookback_delta` only ever lengthens the replicas' lookback
//! (a replica too old to know the parameter ignores it).
//!
//! Times are Unix milliseconds. Arithmetic saturates, and no input makes this module panic:
//! queries that would make `promql-parser` panic, recurse deep or work for long (its type checks
//! are quadratic in the length of an operator chain) are refused before parsing
//! ([`MAX_QUERY_BYTES`], [`MAX_NESTING`]). A refused query is an `Err`, which the caller routes
//! as it did before windows existed.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use lrpar::{Lexeme, Lexer, NonStreamingLexer};
use promql_parser::parser::token::{
    T_ADD, T_AT, T_COLON, T_END, T_EQL_REGEX, T_IDENTIFIER, T_LEFT_BRACE, T_LEFT_BRACKET, T_LEFT_PAREN, T_NEQ_REGEX,
    T_NUMBER, T_OFFSET, T_RIGHT_BRACE, T_RIGHT_PAREN, T_START, T_STRING, T_SUB, TokenId, TokenType,
};
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};

/// The longest query parsed. Longer ones (a generated regex of thousands of instances still
/// fits) are refused, and routed as before.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// The most operators, parentheses and brackets a parsed query may hold. Each can add a level to
/// the tree (whose drop recurses: 32,000 levels overflow a 2 MiB stack in a debug build), and
/// `promql-parser` checks an operator chain in time quadratic in its length (16,000 `+` take
/// 6 s, optimised); at this bound the worst case parses in 2.5 ms, and a typical query in tens of
/// microseconds.
pub const MAX_NESTING: usize = 500;

/// The longest duration taken from a number (`x[300]`, `offset 1e3`): Go's `time.Duration`
/// holds no more, and `promql-parser` panics on a number too large for `std::time::Duration`.
const MAX_DURATION_SECONDS: f64 = 9_223_372_036.0;

/// Prometheus's `MinTime` and `MaxTime` (`web/api/v1/api.go`), the defaults of an open range,
/// which clients may also send spelled out (Go's `time.Parse` cannot read them).
const PROMETHEUS_MIN_TIME: i64 = -9_223_309_901_257_974_000;
const PROMETHEUS_MAX_TIME: i64 = 9_223_309_901_257_974_999;
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";

/// A closed interval of time. Times are Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first millisecond read.
    pub start: i64,
    /// The last millisecond read.
    pub end: i64,
}

impl Window {
    /// The window of a read of no stored data (`vector(1)`, `time()`, a query wholly in the
    /// future): `start > end`, and every replica covers it.
    pub const EMPTY: Window = Window { start: i64::MAX, end: i64::MIN };

    /// Whether the window holds no time at all (any `start > end`, not only [`Window::EMPTY`]).
    pub fn is_empty(&self) -> bool {
        self.start > self.end
    }

    /// The smallest window that holds both.
    fn union(self, other: Window) -> Window {
        Window { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

pub use crate::api::Endpoint;

/// What a request reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Which endpoint the request asks.
    pub endpoint: Endpoint,
    /// The stored data the answer is made of; it ends at `now` at the latest.
    pub window: Window,
    /// For [`Endpoint::Query`], the evaluation time (`time`, or `now` without one).
    pub eval_time: Option<i64>,
    /// For [`Endpoint::QueryRange`], what each step reads, when the query parsed and its
    /// `step` is one Prometheus accepts.
    pub steps: Option<Steps>,
}

/// The most steps of a range query Prometheus answers (`web/api/v1/api.go` refuses more than
/// 11,000 points per series).
pub const MAX_STEPS: i64 = 11_000;

/// What a range query reads at each of its steps: the steps are `start`, `start + step`, ...
/// up to `end`, and at step `t` the query reads every window of [`Steps::windows_at`]. A read
/// that moves with the evaluation time (any selector without `@`) is kept apart from one an
/// `@` fixes, and each selector's apart from the others', so that `x - x offset 1w` does not
/// count the week between its two reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps {
    /// The first step (the query's `start`).
    pub start: i64,
    /// The query's `end`; the last step is at or before it.
    pub end: i64,
    /// The time between steps (more than 0).
    pub step: i64,
    /// Windows relative to a step's time `t`: `[t + before, t + after]`.
    pub moving: Vec<(i64, i64)>,
    /// Windows read at every step (fixed by `@`).
    pub fixed: Vec<Window>,
    /// Nothing is stored after this time.
    pub now: i64,
}

impl Steps {
    /// How many steps the query has.
    pub fn count(&self) -> usize {
        if self.step <= 0 || self.end < self.start {
            return 0;
        }
        usize::try_from(self.end.saturating_sub(self.start) / self.step + 1).unwrap_or(0)
    }

    /// The time of step `index`.
    pub fn time(&self, index: usize) -> i64 {
        self.start.saturating_add((index as i64).saturating_mul(self.step))
    }

    /// The windows of stored data read at step time `t`, each cut at `now`; a window wholly
    /// after `now` reads nothing and is left out.
    pub fn windows_at(&self, t: i64) -> impl Iterator<Item = Window> + '_ {
        self.moving
            .iter()
            .map(move |&(before, after)| Window { start: t.saturating_add(before), end: t.saturating_add(after) })
            .chain(self.fixed.iter().copied())
            .map(|w| Window { start: w.start, end: w.end.min(self.now) })
            .filter(|w| !w.is_empty())
    }
}

/// What a request to `endpoint` reads, with its parameters from `query_string` (the URL's, without
/// `?`) and `form_body` (the body of a POST sent as `application/x-www-form-urlencoded`, and
/// only then). `now` is the current time, `lookback` the replicas' `--query.lookback-delta`
/// (Prometheus's default is 5 minutes) and `earliest` the start of an open range (`series`,
/// `labels`, label values and exemplars without `start` read from the beginning of time);
/// all in milliseconds.
///
/// `Ok(None)` for remote read (see [`remote_read`]), and for a query without `query` (or a range query
/// without `start` or `end`), which the replica will refuse. `Err` for a parameter Prometheus
/// would refuse (a time it cannot read, PromQL that does not parse, a range that ends before it
/// starts) or a query over this module's limits; the caller routes it as before, and the replica
/// answers the error itself.
///
/// Nothing is stored after `now` (a scrape stamps its samples with its own time), so the window
/// ends there at the latest, and a read wholly in the future is empty.
pub fn read_window(
    endpoint: Endpoint,
    query_string: Option<&str>,
    form_body: Option<&[u8]>,
    now: i64,
    lookback: i64,
    earliest: i64,
) -> Result<Option<Read>, String> {
    let params = Params { body: form_body.unwrap_or_default(), url: query_string.unwrap_or_default().as_bytes() };
    let (window, eval_time) = match endpoint {
        Endpoint::Query => {
            let Some(query) = params.get("query") else { return Ok(None) };
            let time = params.time("time")?.unwrap_or(now);
            (remembered_window(&query, time, time, params.lookback(lookback)?)?, Some(time))
        }
        Endpoint::QueryRange => {
            let (Some(query), Some(start), Some(end)) =
                (params.get("query"), params.time("start")?, params.time("end")?)
            else {
                return Ok(None);
            };
            if end < start {
                return Err("query_range: end is before start".to_string());
            }
            let lookback = params.lookback(lookback)?;
            let window = remembered_window(&query, start, end, lookback)?;
            let steps = match params.get("step").map(|step| parse_duration(&step)) {
                Some(Ok(step)) if step > 0 && end.checked_sub(start).is_some_and(|span| span / step < MAX_STEPS) => {
                    Some(step_reads(&query, start, end, step, lookback, now)?)
                }
                _ => None,
            };
            return Ok(Some(Read { endpoint, window: clipped(window, now), eval_time: None, steps }));
        }
        // What `match[]` or `query` selects does not move the window: these read [start, end].
        Endpoint::RemoteRead => return Ok(None),
        Endpoint::Series | Endpoint::Labels | Endpoint::LabelValues | Endpoint::Exemplars => {
            let start = match params.time("start")? {
                Some(start) if start > PROMETHEUS_MIN_TIME => start,
                _ => earliest,
            };
            (Window { start, end: params.time("end")?.unwrap_or(now) }, None)
        }
    };
    Ok(Some(Read { endpoint, window: clipped(window, now), eval_time, steps: None }))
}

/// A window never narrower than the one [`read_window`] finds for an instant or range query,
/// from the query's text alone, without parsing it (see [`reach`]): the evaluation times
/// widened by every range, offset and the lookback in the expression, cut at `now`. `None` for
/// another endpoint, a parameter missing or unreadable, or an expression whose text does not
/// tell (an `@`, say): the caller then reads the exact window.
pub fn read_bound(
    endpoint: Endpoint,
    query_string: Option<&str>,
    form_body: Option<&[u8]>,
    now: i64,
    lookback: i64,
) -> Option<Window> {
    let params = Params { body: form_body.unwrap_or_default(), url: query_string.unwrap_or_default().as_bytes() };
    let (first, last) = match endpoint {
        Endpoint::Query => {
            let time = params.time("time").ok()?.unwrap_or(now);
            (time, time)
        }
        Endpoint::QueryRange => (params.time("start").ok()??, params.time("end").ok()??),
        _ => return None,
    };
    if last < first {
        return None;
    }
    let query = params.get("query")?;
    let (before, after) = reach::reach(&query, params.lookback(lookback).ok()?)?;
    Some(clipped(Window { start: first.saturating_sub(before), end: last.saturating_add(after) }, now))
}

/// `window` cut at `now` ([`Window::EMPTY`] when nothing of it is left).
fn clipped(window: Window, now: i64) -> Window {
    let window = Window { start: window.start, end: window.end.min(now) };
    if window.is_empty() { Window::EMPTY } else { window }
}

/// What the range query `expr` from `start` to `end` every `step` reads at each step (see
/// [`Steps`]). Parses the query once (remembered per thread like [`remembered_window`] when it
/// has no `@`).
pub fn step_reads(expr: &str, start: i64, end: i64, step: i64, lookback: i64, now: i64) -> Result<Steps, String> {
    let (moving, fixed) = if expr.contains('@') {
        let pieces = expr_pieces(expr, start, end, lookback)?;
        let moving = pieces.iter().filter(|p| p.moving).map(|p| (p.window.start, p.window.end)).collect();
        let fixed = pieces.iter().filter(|p| !p.moving).map(|p| p.window).collect();
        (moving, fixed)
    } else {
        (remembered(expr, lookback)?, Vec::new())
    };
    Ok(Steps { start, end, step, moving, fixed, now })
}

/// One window a selector reads: relative to the evaluation time (`moving`, as read at time
/// 0), or fixed by an `@`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    window: Window,
    moving: bool,
}

/// Every selector's window in `expr` evaluated at time 0, for a range query from `start` to
/// `end` (what `@ start()` and `@ end()` mean), deduplicated.
fn expr_pieces(expr: &str, start: i64, end: i64, lookback: i64) -> Result<Vec<Piece>, String> {
    let ast = parse_checked(expr)?;
    let evaluation = Evaluation { start, end, lookback: lookback.max(0) };
    let mut pieces = Vec::new();
    evaluation.pieces(&ast, Instants { first: 0, last: 0, moving: true }, &mut pieces)?;
    pieces.sort_by_key(|p| (p.moving, p.window.start, p.window.end));
    pieces.dedup();
    Ok(pieces)
}

/// The stored data that `expr` reads when evaluated at every time in `[eval_start, eval_end]`
/// (the `start` and `end` of a range query, or twice the `time` of an instant query), with
/// `lookback` (milliseconds) as the lookback delta. An expression without selectors reads
/// [`Window::EMPTY`], and so does `eval_start > eval_end` (no evaluation at all).
///
/// `Err` for PromQL that does not parse, and for a query longer than [`MAX_QUERY_BYTES`] or
/// nested deeper than [`MAX_NESTING`].
pub fn expr_window(expr: &str, eval_start: i64, eval_end: i64, lookback: i64) -> Result<Window, String> {
    let ast = parse_checked(expr)?;
    if eval_start > eval_end {
        return Ok(Window::EMPTY);
    }
    let evaluation = Evaluation { start: eval_start, end: eval_end, lookback: lookback.max(0) };
    let mut pieces = Vec::new();
    evaluation.pieces(&ast, Instants { first: eval_start, last: eval_end, moving: true }, &mut pieces)?;
    Ok(pieces.iter().fold(Window::EMPTY, |window, piece| window.union(piece.window)))
}

/// `expr` parsed, once [`check_cost`] lets it through.
fn parse_checked(expr: &str) -> Result<Expr, String> {
    let expr = check_cost(expr)?;
    // Last resort for a panic in the parser that `check_cost` does not foresee: the request is
    // routed conservatively instead of losing its connection.
    std::panic::catch_unwind(|| parser::parse(&expr))
        .map_err(|_| "the PromQL parser failed on this query".to_string())?
        .map_err(|e| format!("PromQL: {e}"))
}

/// How many expressions each serving thread remembers the window of.
const REMEMBERED: usize = 1024;
/// The longest expression remembered (so that the memory it takes stays within 4 MiB per
/// thread); longer ones are parsed each time.
const REMEMBERED_BYTES: usize = 4096;

/// What is remembered of an expression without `@`: the windows it reads relative to one
/// evaluation time `t` (`[t + before, t + after]`, one per distinct selector read; none when
/// it reads nothing), or why it could not be read.
type Relative = Result<std::rc::Rc<[(i64, i64)]>, String>;

/// A remembered expression: its text and lookback (to tell hash collisions apart) and what
/// it reads.
type Remembered = (Box<str>, i64, Relative);

thread_local! {
    /// Per serving thread (no lock on the request path): what an expression reads relative to
    /// its evaluation times, by a hash of the expression and the lookback. Dashboards send the
    /// same expressions over and over with other times; parsing one costs tens of
    /// microseconds, finding it here well under one.
    static RELATIVE: std::cell::RefCell<lru::LruCache<u64, Remembered>> =
        std::cell::RefCell::new(lru::LruCache::new(std::num::NonZeroUsize::new(REMEMBERED).expect("not zero")));
}

/// What `expr` (without `@`) reads relative to one evaluation time, remembered (see
/// [`RELATIVE`]; an expression longer than [`REMEMBERED_BYTES`] is parsed each time).
fn remembered(expr: &str, lookback: i64) -> Result<Vec<(i64, i64)>, String> {
    let relative = || -> Relative {
        let pieces = expr_pieces(expr, 0, 0, lookback)?;
        Ok(pieces.iter().map(|p| (p.window.start, p.window.end)).collect())
    };
    if expr.len() > REMEMBERED_BYTES {
        return relative().map(|pieces| pieces.to_vec());
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (expr, lookback).hash(&mut hasher);
    let key = hasher.finish();
    let found = RELATIVE.with(|cache| {
        let mut cache = cache.borrow_mut();
        cache.get(&key).filter(|(e, l, _)| &**e == expr && *l == lookback).map(|(_, _, relative)| relative.clone())
    });
    let relative = match found {
        Some(relative) => relative,
        None => {
            let relative = relative();
            RELATIVE.with(|cache| cache.borrow_mut().put(key, (expr.into(), lookback, relative.clone())));
            relative
        }
    };
    relative.map(|pieces| pieces.to_vec())
}

/// [`expr_window`], remembered. Without an `@` modifier, an expression reads the same
/// stretches relative to every evaluation time, so those are what is remembered; an
/// expression with `@` (fixed times) is parsed each time.
fn remembered_window(expr: &str, eval_start: i64, eval_end: i64, lookback: i64) -> Result<Window, String> {
    if expr.contains('@') || eval_start > eval_end {
        return expr_window(expr, eval_start, eval_end, lookback);
    }
    let pieces = remembered(expr, lookback)?;
    let before = pieces.iter().map(|p| p.0).min();
    let after = pieces.iter().map(|p| p.1).max();
    Ok(match (before, after) {
        (Some(before), Some(after)) => {
            Window { start: eval_start.saturating_add(before), end: eval_end.saturating_add(after) }
        }
        _ => Window::EMPTY,
    })
}

/// Refuses, before parsing, a query that would cost `promql-parser` too much (see
/// [`MAX_NESTING`]) or make it panic: a number as a duration (after `[`, `:` or `offset`) that
/// `std::time::Duration` cannot hold. Returns the query with every regular expression of a
/// matcher (`=~`, `!~`) replaced by `.`: the parser compiles each one, which a client can make cost
/// seconds (`{l=~"\\w{200}"}` takes 45 ms; Prometheus accepts it), and what a matcher matches
/// never moves the window.
fn check_cost(expr: &str) -> Result<Cow<'_, str>, String> {
    if expr.len() > MAX_QUERY_BYTES {
        return Err(format!("query longer than {MAX_QUERY_BYTES} bytes"));
    }
    let lexer = parser::lex::lexer(expr).map_err(|e| format!("PromQL: {e}"))?;
    let (mut nesting, mut in_braces) = (0, false);
    let (mut before, mut before_that): (Option<TokenId>, Option<TokenId>) = (None, None);
    let mut emptied = String::new();
    let mut copied = 0;
    for lexeme in lexer.iter() {
        let Ok(lexeme) = lexeme else { return Err("PromQL: invalid token".to_string()) };
        let token = lexeme.tok_id();
        in_braces = match token {
            T_LEFT_BRACE => true,
            T_RIGHT_BRACE => false,
            _ => in_braces,
        };
        // Matchers (`=~`, `!=` in braces) and `@` add no level to the tree.
        let adds_a_level = token == T_LEFT_PAREN
            || token == T_LEFT_BRACKET
            || (TokenType::new(token).is_operator() && token != T_AT && !in_braces);
        if adds_a_level {
            nesting += 1;
            if nesting > MAX_NESTING {
                return Err(format!("query has more than {MAX_NESTING} operators and brackets"));
            }
        }
        let a_duration = matches!(before, Some(T_LEFT_BRACKET | T_COLON | T_OFFSET))
            || (matches!(before, Some(T_ADD | T_SUB)) && before_that == Some(T_OFFSET));
        if token == T_NUMBER && a_duration {
            let seconds = promql_parser::util::parse_str_radix(lexer.span_str(lexeme.span()))
                .map_err(|e| format!("PromQL: {e}"))?;
            if !(0.0..=MAX_DURATION_SECONDS).contains(&seconds) {
                return Err(format!("duration out of range: {seconds}"));
            }
        }
        if token == T_STRING && matches!(before, Some(T_EQL_REGEX | T_NEQ_REGEX)) {
            let span = lexeme.span();
            emptied.push_str(&expr[copied..span.start()]);
            // Any one-character regex: it does not match the empty string, so a selector
            // stays as valid as it was (one matcher must not match "").
            emptied.push_str("\".\"");
            copied = span.end();
        }
        // Prometheus 2.x's name for what 3.x (and the parser) call `double_exponential_smoothing`:
        // the same arguments, so the same window.
        if token == T_IDENTIFIER && lexer.span_str(lexeme.span()) == "holt_winters" {
            let span = lexeme.span();
            emptied.push_str(&expr[copied..span.start()]);
            emptied.push_str("double_exponential_smoothing");
            copied = span.end();
        }
        (before_that, before) = (before, Some(token));
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(expr));
    }
    emptied.push_str(&expr[copied..]);
    Ok(Cow::Owned(emptied))
}

/// `expr` with every `@ start()` and `@ end()` replaced by the time it means in a range query
/// from `start` to `end` (milliseconds), so that a sub-range of the query evaluates the same
/// expression at its steps. Unchanged (borrowed) when it has neither; `Err` when it does not
/// lex.
pub fn pin_start_end(expr: &str, start: i64, end: i64) -> Result<Cow<'_, str>, String> {
    if !expr.contains('@') {
        return Ok(Cow::Borrowed(expr));
    }
    let lexer = parser::lex::lexer(expr).map_err(|e| format!("PromQL: {e}"))?;
    let lexemes: Vec<_> = lexer.iter().collect::<Result<_, _>>().map_err(|_| "PromQL: invalid token".to_string())?;
    let mut pinned = String::with_capacity(expr.len() + 16);
    let mut copied = 0;
    for (i, lexeme) in lexemes.iter().enumerate() {
        if lexeme.tok_id() != T_AT {
            continue;
        }
        let time = match lexemes.get(i + 1).map(|l| l.tok_id()) {
            Some(T_START) => start,
            Some(T_END) => end,
            _ => continue,
        };
        let (Some(open), Some(close)) = (lexemes.get(i + 2), lexemes.get(i + 3)) else { continue };
        if open.tok_id() != T_LEFT_PAREN || close.tok_id() != T_RIGHT_PAREN {
            continue;
        }
        let name = lexemes[i + 1].span();
        pinned.push_str(&expr[copied..name.start()]);
        pinned.push_str(&seconds(time));
        copied = close.span().end();
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(expr));
    }
    pinned.push_str(&expr[copied..]);
    Ok(Cow::Owned(pinned))
}

/// Unix milliseconds as the seconds Prometheus reads in a parameter or after `@`
/// (`1700000000.250`).
pub fn seconds(millis: i64) -> String {
    let sign = if millis < 0 { "-" } else { "" };
    let abs = millis.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// The times at which an expression is evaluated: every time in `[first, last]`; `moving`
/// while they are the query's own evaluation times (shifted, perhaps), not fixed by an `@`.
#[derive(Debug, Clone, Copy)]
struct Instants {
    first: i64,
    last: i64,
    moving: bool,
}

/// One query's evaluation: its own start and end (what `@ start()` and `@ end()` mean at any
/// depth) and its lookback delta.
struct Evaluation {
    start: i64,
    end: i64,
    lookback: i64,
}

impl Evaluation {
    /// Adds to `out` the stored data each selector in `expr` reads when evaluated at `at`.
    fn pieces(&self, expr: &Expr, at: Instants, out: &mut Vec<Piece>) -> Result<(), String> {
        match expr {
            Expr::VectorSelector(selector) => out.push(self.selector(selector, self.lookback, at)),
            // A range replaces the lookback: `x[5m]` reads 5 minutes, not 10.
            Expr::MatrixSelector(matrix) => out.push(self.selector(&matrix.vs, millis(&matrix.range), at)),
            Expr::Subquery(subquery) => {
                let at = self.moved(subquery.at.as_ref(), subquery.offset.as_ref(), at);
                let inner = Instants { first: at.first.saturating_sub(millis(&subquery.range)), ..at };
                self.pieces(&subquery.expr, inner, out)?;
            }
            Expr::Aggregate(aggregate) => {
                if let Some(param) = &aggregate.param {
                    self.pieces(param, at, out)?;
                }
                self.pieces(&aggregate.expr, at, out)?;
            }
            Expr::Binary(binary) => {
                self.pieces(&binary.lhs, at, out)?;
                self.pieces(&binary.rhs, at, out)?;
            }
            Expr::Unary(unary) => self.pieces(&unary.expr, at, out)?,
            Expr::Paren(paren) => self.pieces(&paren.expr, at, out)?,
            Expr::Call(call) => {
                // `info` also reads info series (`target_info` by default) that no selector names,
                // at the evaluation times, with the lookback and without the argument's offset.
                if call.func.name == "info" {
                    let window = Window { start: at.first.saturating_sub(self.lookback), end: at.last };
                    out.push(Piece { window, moving: at.moving });
                }
                for arg in &call.args.args {
                    self.pieces(arg, at, out)?;
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            // Only built by programs that extend the parser's tree, never by parsing.
            Expr::Extension(_) => return Err("PromQL: unknown expression".to_string()),
        }
        Ok(())
    }

    /// What a selector reads at `at`, back `range` from each (moved) evaluation time.
    fn selector(&self, selector: &VectorSelector, range: i64, at: Instants) -> Piece {
        let at = self.moved(selector.at.as_ref(), selector.offset.as_ref(), at);
        Piece { window: Window { start: at.first.saturating_sub(range), end: at.last }, moving: at.moving }
    }

    /// `at` replaced by an `@` and then moved back by an offset (forward by a negative one).
    fn moved(&self, at_modifier: Option<&AtModifier>, offset: Option<&Offset>, at: Instants) -> Instants {
        let fixed = |time: i64| Instants { first: time, last: time, moving: false };
        let at = match at_modifier {
            None => at,
            Some(AtModifier::Start) => fixed(self.start),
            Some(AtModifier::End) => fixed(self.end),
            Some(AtModifier::At(time)) => fixed(unix_millis(time)),
        };
        let offset = match offset {
            None => 0,
            Some(Offset::Pos(duration)) => millis(duration),
            Some(Offset::Neg(duration)) => millis(duration).saturating_neg(),
        };
        Instants { first: at.first.saturating_sub(offset), last: at.last.saturating_sub(offset), moving: at.moving }
    }
}

fn millis(duration: &Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn unix_millis(time: &SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => millis(&after),
        Err(before) => millis(&before.duration()).saturating_neg(),
    }
}

/// A request's parameters, found as Go's `Request.FormValue` finds them (Prometheus reads every
/// parameter so): the first value in the form body, else the first in the URL; each parsed as
/// `url.ParseQuery` does, which skips a pair holding a `;` or a bad `%` escape.
pub(crate) struct Params<'a> {
    body: &'a [u8],
    url: &'a [u8],
}

impl<'a> Params<'a> {
    /// The parameters of a request: its query string and its form body, if any.
    pub(crate) fn new(query_string: Option<&'a str>, form_body: Option<&'a [u8]>) -> Self {
        Params { body: form_body.unwrap_or_default(), url: query_string.unwrap_or_default().as_bytes() }
    }

    /// Every pair, the form body's before the URL's (the order in which Go's `FormValue`
    /// looks).
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        form_pairs(self.body).chain(form_pairs(self.url))
    }

    /// The parameter's value; an empty one counts as missing, as Prometheus counts it.
    pub(crate) fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        first_value(self.body, name).or_else(|| first_value(self.url, name)).filter(|value| !value.is_empty())
    }

    /// A time parameter, if there is one.
    pub(crate) fn time(&self, name: &str) -> Result<Option<i64>, String> {
        self.get(name).map(|value| parse_time(&value).map_err(|e| format!("parameter {name}: {e}"))).transpose()
    }

    /// The lookback delta: the replicas' `lookback`, or the query's `lookback_delta` if longer.
    pub(crate) fn lookback(&self, lookback: i64) -> Result<i64, String> {
        let Some(value) = self.get("lookback_delta") else { return Ok(lookback) };
        let asked = parse_duration(&value).map_err(|e| format!("parameter lookback_delta: {e}"))?;
        Ok(lookback.max(asked))
    }
}

/// The first value of `name` in a form, or `None`. Only the value found is decoded (a
/// query's PromQL is most of a request's parameters, and this runs for several names).
fn first_value<'f>(form: &'f [u8], name: &str) -> Option<Cow<'f, str>> {
    form.split(|&b| b == b'&')
        .filter(|pair| {
            let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
            let named = match form_urlencoded::parse(key).next() {
                Some((key, _)) => key == name,
                None => name.is_empty(),
            };
            named && !pair.contains(&b';') && escapes_are_valid(pair)
        })
        .find_map(|pair| form_urlencoded::parse(pair).next())
        .map(|(_, value)| value)
}

/// Every pair of a form as Go's `url.ParseQuery` takes it (a pair holding a `;` or a bad `%`
/// escape skipped), in order.
pub(crate) fn form_pairs(form: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    form.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty() && !pair.contains(&b';') && escapes_are_valid(pair))
        .filter_map(|pair| form_urlencoded::parse(pair).next())
}

/// Whether every `%` starts an escape of two hex digits (Go's `url.QueryUnescape` refuses others).
fn escapes_are_valid(pair: &[u8]) -> bool {
    pair.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'%')
        .all(|(i, _)| pair.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)))
}

/// A time as Prometheus reads one (`parseTime` in `web/api/v1/api.go`): float Unix seconds,
/// rounded to the millisecond, or RFC 3339, or `MinTime`/`MaxTime` spelled out. Times beyond
/// what milliseconds in an `i64` hold are clamped (Prometheus would overflow).
pub(crate) fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() {
            return Err(format!("{} is not a finite time", shown(text)));
        }
        let whole = seconds.trunc();
        // `as` saturates: absurd times are clamped, not wrapped.
        return Ok((whole * 1000.0 + ((seconds - whole) * 1000.0).round()) as i64);
    }
    match text {
        MIN_TIME_FORMATTED => return Ok(PROMETHEUS_MIN_TIME),
        MAX_TIME_FORMATTED => return Ok(PROMETHEUS_MAX_TIME),
        _ => {}
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|_| format!("cannot read {} as a time", shown(text)))
}

/// A duration as Prometheus reads one (`parseDuration` in `web/api/v1/api.go`): float seconds or
/// Prometheus's `1h30m` syntax, in milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if !(-MAX_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&seconds) {
            return Err(format!("{} is not a duration", shown(text)));
        }
        return Ok((seconds * 1000.0) as i64);
    }
    // Not a number, so not the part of `parse_duration` that panics on negative ones.
    promql_parser::util::parse_duration(text)
        .map(|duration| millis(&duration))
        .map_err(|_| format!("{} is not a duration", shown(text)))
}

/// A parameter's value quoted for an error message, cut short.
fn shown(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

mod reach;
mod remote_read;
pub use remote_read::{RemoteRead, join_answers, remote_read, slice_request};

#[cfg(test)]
mod tests;
