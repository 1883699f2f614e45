//! The query shapes of the transparency suite, generated from building blocks (selectors x
//! functions x ranges x offsets, then aggregations, operators, `@`, subqueries, constants and
//! queries Prometheus refuses), each with the data it reads kept beside its text, worked out
//! here from how the shape was built, not by parsing it (mpp's own parser is what is tested).

/// The replicas' `--query.lookback-delta`, milliseconds: an instant selector at `t` reads
/// `[t - LOOKBACK, t]`.
pub const LOOKBACK: i64 = 2_000;

/// A counter of the Prometheus the replicas scrape, one series per handler and code.
pub const COUNTER: &str = r#"prometheus_http_requests_total{job="node"}"#;
/// A counter of the test's own target that drops to a small value every 10 s.
pub const RESETTING: &str = "mpp_test_ticks_total";
/// A gauge of the test's own target, negative and positive, two series.
pub const GAUGE: &str = "mpp_test_wave";
/// A series of the test's own target that is there for 4 s and gone for 4 s, so that
/// Prometheus writes staleness markers.
pub const FLAPPING: &str = "mpp_test_flapping";
/// A gauge of the Prometheus the replicas scrape.
pub const GOROUTINES: &str = r#"go_goroutines{job="node"}"#;
/// `up` of both targets.
pub const UP: &str = r#"up{job="node"}"#;
/// The buckets of a histogram of the Prometheus the replicas scrape.
pub const BUCKETS: &str = r#"prometheus_http_request_duration_seconds_bucket{job="node"}"#;
/// A metric nobody writes.
pub const NEVER: &str = "mpp_test_never_written";

/// What a read's times are relative to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anchor {
    /// The evaluation time (each step of a range query).
    Eval,
    /// A time `@` fixes (Unix milliseconds).
    At(i64),
    /// `@ start()`: the range query's start (the evaluation time of an instant query).
    Start,
    /// `@ end()`: the range query's end (the evaluation time of an instant query).
    End,
}

/// One selector's read: the samples in `[anchor + from, anchor + to]` (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    pub anchor: Anchor,
    pub from: i64,
    pub to: i64,
}

impl Read {
    /// The window read when evaluating at `t` in a range query from `start` to `end`.
    pub fn at(&self, t: i64, start: i64, end: i64) -> (i64, i64) {
        let anchor = match self.anchor {
            Anchor::Eval => t,
            Anchor::At(time) => time,
            Anchor::Start => start,
            Anchor::End => end,
        };
        (anchor + self.from, anchor + self.to)
    }
}

/// Which queries Prometheus refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// None: it answers as instant and as range query.
    Never,
    /// Both: the answer is an error.
    Always,
    /// Only as a range query (a range vector or a string has no value per step).
    AsRange,
}

/// One query, what it reads and whether Prometheus answers it.
#[derive(Debug, Clone)]
pub struct Shape {
    pub query: String,
    /// Every selector's read; none for a query that reads no data (`42`, `time()`).
    pub reads: Vec<Read>,
    pub refused: Refused,
}

/// An expression being built: its text and its selectors' reads.
#[derive(Debug, Clone)]
struct E {
    text: String,
    reads: Vec<Read>,
}

/// `5s`, `-3s`, `1m`: a duration as PromQL writes it.
fn duration(ms: i64) -> String {
    if ms % 60_000 == 0 && ms != 0 { format!("{}m", ms / 60_000) } else { format!("{}s", ms / 1000) }
}

/// An instant selector.
fn sel(selector: &str) -> E {
    E { text: selector.to_string(), reads: vec![Read { anchor: Anchor::Eval, from: -LOOKBACK, to: 0 }] }
}

/// A range selector `selector[range]`.
fn matrix(selector: &str, range: i64) -> E {
    E {
        text: format!("{selector}[{}]", duration(range)),
        reads: vec![Read { anchor: Anchor::Eval, from: -range, to: 0 }],
    }
}

/// Text that reads no data.
fn lit(text: &str) -> E {
    E { text: text.to_string(), reads: Vec::new() }
}

impl E {
    /// `template` with `{}` replaced by this expression.
    fn within(&self, template: &str) -> E {
        E { text: template.replacen("{}", &self.text, 1), reads: self.reads.clone() }
    }

    /// `self op other`.
    fn op(&self, op: &str, other: &E) -> E {
        let mut reads = self.reads.clone();
        reads.extend_from_slice(&other.reads);
        E { text: format!("{} {op} {}", self.text, other.text), reads }
    }

    /// `self offset ms` on a selector or subquery: every read moves back by `ms`.
    fn offset(&self, ms: i64) -> E {
        if ms == 0 {
            return self.clone();
        }
        let reads = self.reads.iter().map(|r| Read { from: r.from - ms, to: r.to - ms, ..*r }).collect();
        E { text: format!("{} offset {}", self.text, duration(ms)), reads }
    }

    /// `self @ …` on a selector or subquery: what moved with the evaluation time is fixed.
    fn at(&self, anchor: Anchor) -> E {
        let text = match anchor {
            Anchor::Eval => return self.clone(),
            Anchor::At(t) => format!("{} @ {}.{:03}", self.text, t / 1000, t % 1000),
            Anchor::Start => format!("{} @ start()", self.text),
            Anchor::End => format!("{} @ end()", self.text),
        };
        let reads =
            self.reads.iter().map(|r| if r.anchor == Anchor::Eval { Read { anchor, ..*r } } else { *r }).collect();
        E { text, reads }
    }

    /// The subquery `(self)[range:step]` (`step` 0: the default, written `[range:]`): the
    /// inner expression is evaluated at times over the `range` before each evaluation time.
    fn sub(&self, range: i64, step: i64) -> E {
        let step = if step == 0 { String::new() } else { duration(step) };
        let text = format!("({})[{}:{step}]", self.text, duration(range));
        let reads = self
            .reads
            .iter()
            .map(|r| if r.anchor == Anchor::Eval { Read { from: r.from - range, ..*r } } else { *r })
            .collect();
        E { text, reads }
    }

    fn shape(self, refused: Refused) -> Shape {
        Shape { query: self.text, reads: self.reads, refused }
    }
}

/// Every shape, with `at` (Unix milliseconds) the time `@` shapes fix.
pub fn all(at: i64) -> Vec<Shape> {
    let mut shapes = Vec::new();
    range_functions(&mut shapes);
    instant_functions(&mut shapes);
    aggregations(&mut shapes);
    operators(&mut shapes);
    at_and_subqueries(&mut shapes, at);
    histograms_constants_and_staleness(&mut shapes);
    refused(&mut shapes);
    shapes
}

/// Every function over a range vector, at every range and offset, over selectors in turn.
fn range_functions(shapes: &mut Vec<Shape>) {
    const FUNCTIONS: [&str; 21] = [
        "rate({})",
        "irate({})",
        "increase({})",
        "delta({})",
        "idelta({})",
        "deriv({})",
        "predict_linear({}, 10)",
        "holt_winters({}, 0.5, 0.5)",
        "resets({})",
        "changes({})",
        "avg_over_time({})",
        "min_over_time({})",
        "max_over_time({})",
        "sum_over_time({})",
        "count_over_time({})",
        "quantile_over_time(0.75, {})",
        "stddev_over_time({})",
        "stdvar_over_time({})",
        "last_over_time({})",
        "present_over_time({})",
        "absent_over_time({})",
    ];
    const SELECTORS: [&str; 4] = [COUNTER, RESETTING, GAUGE, FLAPPING];
    let mut turn = 0;
    for function in FUNCTIONS {
        for range in [2_000, 5_000, 20_000] {
            for offset in [0, 3_000, -3_000] {
                let selector = SELECTORS[turn % SELECTORS.len()];
                turn += 1;
                shapes.push(matrix(selector, range).offset(offset).within(function).shape(Refused::Never));
            }
        }
    }
    shapes.push(matrix(NEVER, 5_000).within("absent_over_time({})").shape(Refused::Never));
    shapes.push(matrix(UP, 60_000).within("count_over_time({})").shape(Refused::Never));
}

/// Every function over an instant vector, each over two selectors.
fn instant_functions(shapes: &mut Vec<Shape>) {
    const FUNCTIONS: [&str; 30] = [
        "abs({})",
        "ceil({})",
        "floor({})",
        "exp({})",
        "ln({})",
        "log2({})",
        "log10({})",
        "sqrt({})",
        "sgn({})",
        "round({})",
        "round({}, 0.5)",
        "clamp({}, -1, 1)",
        "clamp_min({}, 0)",
        "clamp_max({}, 1)",
        "timestamp({})",
        "sort({})",
        "sort_desc({})",
        "absent({})",
        "scalar(sum({}))",
        "vector(scalar(sum({})))",
        r#"label_replace({}, "host", "$1", "instance", "(.*):.*")"#,
        r#"label_join({}, "both", "/", "job", "instance")"#,
        "day_of_month(timestamp({}))",
        "day_of_week(timestamp({}))",
        "day_of_year(timestamp({}))",
        "days_in_month(timestamp({}))",
        "hour(timestamp({}))",
        "minute(timestamp({}))",
        "month(timestamp({}))",
        "year(timestamp({}))",
    ];
    const SELECTORS: [&str; 5] = [GAUGE, COUNTER, FLAPPING, GOROUTINES, RESETTING];
    for (i, function) in FUNCTIONS.iter().enumerate() {
        for k in 0..2 {
            let selector = SELECTORS[(i + k) % SELECTORS.len()];
            shapes.push(sel(selector).within(function).shape(Refused::Never));
        }
    }
    shapes.push(sel(NEVER).within("absent({})").shape(Refused::Never));
    shapes.push(sel(r#"mpp_test_never_written{job="x",instance="y"}"#).within("absent({})").shape(Refused::Never));
    shapes.push(sel(GAUGE).offset(3_000).within("timestamp({})").shape(Refused::Never));
}

/// Every aggregation, without grouping, `by` and `without`, over three inner expressions.
fn aggregations(shapes: &mut Vec<Shape>) {
    const AGGREGATIONS: [(&str, &str); 12] = [
        ("sum", ""),
        ("avg", ""),
        ("min", ""),
        ("max", ""),
        ("count", ""),
        ("group", ""),
        ("stddev", ""),
        ("stdvar", ""),
        ("topk", "2, "),
        ("bottomk", "2, "),
        ("quantile", "0.5, "),
        ("count_values", r#""value", "#),
    ];
    let inner = [sel(COUNTER), matrix(COUNTER, 5_000).within("rate({})"), sel(GAUGE)];
    for (aggregation, parameter) in AGGREGATIONS {
        for grouping in ["", " by (code)", " without (handler)"] {
            for e in &inner {
                shapes.push(e.within(&format!("{aggregation}{grouping} ({parameter}{{}})")).shape(Refused::Never));
            }
        }
    }
}

/// Arithmetic, comparisons (with and without `bool`), set operators and vector matching.
fn operators(shapes: &mut Vec<Shape>) {
    let (counter, gauge, up, flapping) = (sel(COUNTER), sel(GAUGE), sel(UP), sel(FLAPPING));
    let rate = matrix(COUNTER, 5_000).within("rate({})");
    for op in ["+", "-", "*", "/", "%", "^"] {
        shapes.push(counter.op(op, &lit("3")).shape(Refused::Never));
        shapes.push(lit("2").op(op, &gauge).shape(Refused::Never));
    }
    for op in ["==", "!=", ">", "<", ">=", "<="] {
        shapes.push(gauge.op(op, &lit("0")).shape(Refused::Never));
        shapes.push(gauge.op(&format!("{op} bool"), &lit("0")).shape(Refused::Never));
        shapes.push(counter.op(&format!("{op} bool"), &counter.offset(3_000)).shape(Refused::Never));
    }
    shapes.push(lit("1").op("< bool", &lit("2")).shape(Refused::Never));
    shapes.push(gauge.op("*", &gauge).shape(Refused::Never));
    shapes.push(counter.op("-", &counter.offset(5_000)).shape(Refused::Never));
    shapes.push(counter.op("-", &counter.offset(-3_000)).shape(Refused::Never));
    shapes.push(rate.op("/", &matrix(COUNTER, 5_000).within("irate({})")).shape(Refused::Never));
    shapes.push(counter.op("and", &sel(r#"prometheus_http_requests_total{code="200"}"#)).shape(Refused::Never));
    shapes.push(gauge.op("or", &flapping).shape(Refused::Never));
    shapes.push(up.op("unless", &flapping).shape(Refused::Never));
    shapes.push(up.op("and on(instance)", &flapping).shape(Refused::Never));
    shapes.push(up.op("unless ignoring(state, __name__)", &flapping).shape(Refused::Never));
    shapes.push(flapping.op("or on(job)", &gauge).shape(Refused::Never));
    let per_instance = rate.within("sum by (instance) ({})");
    shapes.push(rate.op("/ on(instance) group_left", &per_instance).shape(Refused::Never));
    shapes.push(per_instance.op("/ on(instance) group_right", &rate).shape(Refused::Never));
    shapes.push(up.op("* on(instance) group_left(version)", &sel("prometheus_build_info")).shape(Refused::Never));
    shapes.push(counter.op("+ ignoring(handler, code) group_left", &up).shape(Refused::Never));
    shapes.push(gauge.op("+ on(job) group_left", &flapping).shape(Refused::Never));
    shapes.push(sel(GOROUTINES).op("> bool on(instance)", &up).shape(Refused::Never));
    shapes.push(gauge.within("-{}").shape(Refused::Never));
}

/// `@` with a time, `start()` and `end()`; subqueries, nested ones and ones with offsets.
fn at_and_subqueries(shapes: &mut Vec<Shape>, at: i64) {
    let (counter, gauge, flapping) = (sel(COUNTER), sel(GAUGE), sel(FLAPPING));
    let fixed = Anchor::At(at);
    let rate = |range| matrix(COUNTER, range).within("rate({})");
    let rate_at = |anchor| matrix(COUNTER, 5_000).at(anchor).within("rate({})");
    for e in [
        counter.at(fixed),
        rate_at(fixed),
        gauge.at(Anchor::Start),
        gauge.at(Anchor::End),
        rate_at(Anchor::End),
        rate_at(Anchor::Start),
        counter.at(fixed).offset(3_000),
        counter.offset(-3_000).at(Anchor::Start),
        gauge.at(fixed).op("-", &gauge),
        counter.at(Anchor::End).within("sum({})").op("-", &counter.within("sum({})")),
        flapping.at(fixed).within("timestamp({})"),
        matrix(UP, 5_000).at(Anchor::Start).within("avg_over_time({})"),
        matrix(FLAPPING, 5_000).at(Anchor::End).offset(2_000).within("last_over_time({})"),
        rate(2_000).sub(10_000, 1_000).within("max_over_time({})"),
        gauge.sub(10_000, 2_000).within("min_over_time({})"),
        gauge.sub(10_000, 0).within("avg_over_time({})"),
        flapping.sub(10_000, 1_000).offset(3_000).within("sum_over_time({})"),
        gauge.sub(5_000, 1_000).offset(-3_000).within("max_over_time({})"),
        gauge.sub(5_000, 1_000).within("avg_over_time({})").sub(10_000, 2_000).within("max_over_time({})"),
        rate(2_000).sub(4_000, 1_000).within("min_over_time({})").sub(6_000, 1_000).within("max_over_time({})"),
        gauge.sub(10_000, 1_000).within("deriv({})"),
        counter.sub(10_000, 1_000).within("rate({})"),
        gauge.sub(10_000, 1_000).within("quantile_over_time(0.5, {})"),
        sel(NEVER).sub(10_000, 1_000).within("absent_over_time({})"),
        flapping.sub(10_000, 1_000).within("last_over_time({})"),
        flapping.sub(5_000, 1_000).within("present_over_time({})"),
        flapping.sub(10_000, 1_000).within("changes({})"),
        gauge.at(fixed).sub(10_000, 1_000).within("max_over_time({})"),
        gauge.sub(10_000, 1_000).at(Anchor::End).within("max_over_time({})"),
        gauge.sub(10_000, 1_000).at(fixed).within("min_over_time({})"),
        rate(5_000).within("sum by (code) ({})").sub(10_000, 1_000).within("max_over_time({})"),
    ] {
        shapes.push(e.shape(Refused::Never));
    }
    // A range vector is an instant query's answer (the raw samples), never a range query's.
    for e in
        [matrix(COUNTER, 5_000), matrix(FLAPPING, 10_000), gauge.sub(10_000, 1_000), matrix(GAUGE, 5_000).at(fixed)]
    {
        shapes.push(e.shape(Refused::AsRange));
    }
}

/// Histograms, queries that read no data, and series that go stale.
fn histograms_constants_and_staleness(shapes: &mut Vec<Shape>) {
    let buckets_rate = |range| matrix(BUCKETS, range).within("rate({})");
    for e in [
        buckets_rate(5_000).within("histogram_quantile(0.9, {})"),
        buckets_rate(20_000).within("sum by (le) ({})").within("histogram_quantile(0.5, {})"),
        matrix(BUCKETS, 5_000)
            .within("increase({})")
            .within("sum by (le, handler) ({})")
            .within("histogram_quantile(0.99, {})"),
        sel(BUCKETS).within("histogram_quantile(0.9, {})"),
        buckets_rate(5_000).within("histogram_quantile(1.5, {})"),
        matrix(BUCKETS, 5_000)
            .offset(3_000)
            .within("rate({})")
            .within("sum by (le) ({})")
            .within("histogram_quantile(0.9, {})"),
        matrix("prometheus_http_request_duration_seconds_sum", 5_000)
            .within("rate({})")
            .op("/", &matrix("prometheus_http_request_duration_seconds_count", 5_000).within("rate({})")),
    ] {
        shapes.push(e.shape(Refused::Never));
    }
    for text in [
        "42",
        "-1.5",
        "1 + 2 * 3",
        "time()",
        "time() - 60",
        "vector(1)",
        "vector(time())",
        "scalar(vector(2))",
        "pi()",
        "sgn(vector(-3))",
        "NaN",
        "Inf",
        "-Inf",
        "day_of_month()",
        "day_of_week()",
        "day_of_year()",
        "days_in_month()",
        "hour()",
        "minute()",
        "month()",
        "year()",
    ] {
        shapes.push(lit(text).shape(Refused::Never));
    }
    shapes.push(lit(r#""a string""#).shape(Refused::AsRange));
    let flapping = sel(FLAPPING);
    for e in [
        flapping.clone(),
        flapping.within("count({})"),
        flapping.within("absent({})"),
        flapping.offset(4_000),
        flapping.offset(-4_000),
        flapping.op("*", &sel(GAUGE).within("sum({})").within("scalar({})")),
        matrix(FLAPPING, 3_000).within("count_over_time({})"),
    ] {
        shapes.push(e.shape(Refused::Never));
    }
}

/// Queries Prometheus refuses: when it parses them (they read nothing), and when it evaluates
/// them (they read what their selectors do).
fn refused(shapes: &mut Vec<Shape>) {
    for text in [
        r#"rate(prometheus_http_requests_total{job="node"})"#,
        "sum(",
        "1 +",
        r#"{job=~".*"}"#,
        r#"topk("a", prometheus_http_requests_total{job="node"})"#,
        "histogram_quantile(0.9)",
        "mpp_no_such_function(mpp_test_wave)",
        "mpp_test_wave offset 1x",
        "count_values(1, mpp_test_wave)",
        "quantile_over_time(mpp_test_wave, mpp_test_wave[5s])",
        "mpp_test_wave @ foo()",
        "mpp_test_wave[5s:1s][5s]",
    ] {
        shapes.push(lit(text).shape(Refused::Always));
    }
    let gauge = sel(GAUGE);
    for e in [
        gauge.within(r#"label_replace({}, "x", "$1", "phase", "(")"#),
        matrix(GAUGE, 5_000).within("holt_winters({}, 2, 0.5)"),
        gauge.op("+ on(job)", &sel(UP)),
    ] {
        shapes.push(e.shape(Refused::Always));
    }
}
