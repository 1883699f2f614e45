//! Tests of [`super`].

use super::*;
use crate::api::Api;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2023-11-14T22:13:20Z, the time most tests query at.
const T: i64 = 1_700_000_000_000;
/// mpp's clock in the tests: a day after `T`, so that clamping to `now` stays out of the way.
const NOW: i64 = T + DAY;
const LOOKBACK: i64 = 5 * MINUTE;
const EARLIEST: i64 = T - 30 * DAY;

fn window(start: i64, end: i64) -> Window {
    Window { start, end }
}

/// What `path` reads (`Ok(None)` for a path not routed by window).
fn read_path(path: &str, query: Option<&str>, body: Option<&[u8]>) -> Result<Option<Read>, String> {
    match Api::of(path) {
        Api::Read(endpoint) => read_window(endpoint, query, body, NOW, LOOKBACK, EARLIEST),
        _ => Ok(None),
    }
}

fn get(path: &str, query: &str) -> Result<Option<Read>, String> {
    read_path(path, Some(query), None)
}

fn post(path: &str, query: Option<&str>, body: &str) -> Result<Option<Read>, String> {
    read_path(path, query, Some(body.as_bytes()))
}

/// The window of `expr` as an instant query at `T`.
fn at_t(expr: &str) -> Window {
    expr_window(expr, T, T, LOOKBACK).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

#[test]
fn paths_not_routed_by_window_read_nothing() {
    assert_eq!(get("/api/v1/targets", "query=up"), Ok(None));
    assert_eq!(get("/api/v1/query/", "query=up"), Ok(None));
}

#[test]
fn instant_query_reads_the_lookback_before_its_time() {
    let read = get("/api/v1/query", "query=up&time=1700000000").unwrap().unwrap();
    assert_eq!(
        read,
        Read { endpoint: Endpoint::Query, window: window(T - LOOKBACK, T), eval_time: Some(T), steps: None }
    );
    let read = get("/api/v1/query", "query=up").unwrap().unwrap();
    assert_eq!(read.eval_time, Some(NOW), "no time is now");
    assert_eq!(read.window, window(NOW - LOOKBACK, NOW));
    let read = get("/api/v1/query", "query=up&time=").unwrap().unwrap();
    assert_eq!(read.eval_time, Some(NOW), "an empty time is no time");
}

#[test]
fn times_are_float_seconds_or_rfc3339() {
    let cases = [
        ("1700000000", T),
        ("1700000000.123", T + 123),
        ("1700000000.1236", T + 124),
        ("1.7e9", T),
        ("-1.5", -1500),
        ("0", 0),
        ("2023-11-14T22:13:20Z", T),
        ("2023-11-14T22:13:20.123Z", T + 123),
        ("2023-11-14T22:13:20.123456789Z", T + 123),
        ("2023-11-15T00:13:20+02:00", T),
        ("2023-11-14T21:13:20-01:00", T),
        ("1969-12-31T23:59:59.5Z", -500),
        (MIN_TIME_FORMATTED, PROMETHEUS_MIN_TIME),
        (MAX_TIME_FORMATTED, PROMETHEUS_MAX_TIME),
    ];
    for (text, millis) in cases {
        assert_eq!(parse_time(text), Ok(millis), "{text}");
    }
    for text in ["", "now", "1700000000s", "2023-11-14", "2023-11-14T22:13:20", "NaN", "inf", "-Infinity"] {
        assert!(parse_time(text).is_err(), "{text}");
    }
}

#[test]
fn absurd_times_saturate_without_panicking() {
    assert_eq!(parse_time("1e300"), Ok(i64::MAX));
    assert_eq!(parse_time("-1e300"), Ok(i64::MIN));
    assert_eq!(parse_time("9223372036854775807"), Ok(i64::MAX));
    let far = get("/api/v1/query", "query=rate(x[1y] offset -10y)&time=-1e300").unwrap().unwrap();
    assert_eq!(far.window, window(i64::MIN + 9 * 365 * DAY, i64::MIN + 10 * 365 * DAY));
    let future = get("/api/v1/query", "query=x offset 1y&time=1e300").unwrap().unwrap();
    assert_eq!(future.window, Window::EMPTY, "wholly after now");
    let range = get("/api/v1/query_range", "query=x[1y]&start=-1e300&end=1e300&step=1").unwrap().unwrap();
    assert_eq!(range.window, window(i64::MIN, NOW));
    for expr in ["x @ 1e30", "x @ -1e30 offset 1y", "x[5m] offset 100000000y", "(x offset -100000000y)[100000000y:]"] {
        let w = expr_window(expr, i64::MIN, i64::MAX, i64::MAX).unwrap();
        assert!(!w.is_empty(), "{expr}");
    }
    assert_eq!(expr_window("x", i64::MIN, i64::MAX, -5), Ok(window(i64::MIN, i64::MAX)), "negative lookback");
    assert!(get("/api/v1/query", "query=up&time=NaN").is_err());
    assert!(get("/api/v1/query", "query=up&time=%2BInf").is_err());
}

#[test]
fn range_query_reads_from_start_minus_the_longest_range_to_end() {
    let query = "query=sum(rate(http_requests_total[5m]))&start=1700000000&end=2023-11-14T23:13:20Z&step=15";
    let read = get("/api/v1/query_range", query).unwrap().unwrap();
    assert_eq!(
        (read.endpoint, read.window, read.eval_time),
        (Endpoint::QueryRange, window(T - 5 * MINUTE, T + HOUR), None)
    );
    let steps = read.steps.expect("a step Prometheus accepts");
    assert_eq!((steps.start, steps.end, steps.step, steps.count()), (T, T + HOUR, 15_000, 241));
    assert_eq!((steps.moving.as_slice(), steps.fixed.as_slice()), (&[(-5 * MINUTE, 0)][..], &[][..]));
    let read = get("/api/v1/query_range", "query=up&start=1700000000&end=1700000000&step=1").unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T));
}

#[test]
fn missing_parameters_leave_the_request_to_the_replica() {
    assert_eq!(get("/api/v1/query_range", "query=up&end=1700000000&step=15"), Ok(None));
    assert_eq!(get("/api/v1/query_range", "query=up&start=1700000000&step=15"), Ok(None));
    assert_eq!(get("/api/v1/query_range", "query=up&start=&end=1700000000"), Ok(None));
    assert_eq!(get("/api/v1/query", "time=1700000000"), Ok(None));
    assert_eq!(get("/api/v1/query", "query="), Ok(None));
    assert_eq!(read_window(Endpoint::QueryRange, None, None, NOW, LOOKBACK, EARLIEST), Ok(None));
}

#[test]
fn invalid_parameters_are_errors() {
    let cases = [
        ("/api/v1/query", "query=up&time=yesterday"),
        ("/api/v1/query_range", "query=up&start=1700000000&end=1699999999"),
        ("/api/v1/query_range", "query=up&start=1700000000&end=soon"),
        ("/api/v1/query", "query=up&lookback_delta=5x"),
        ("/api/v1/query", "query=up&lookback_delta=1e300"),
        ("/api/v1/series", "match[]=up&start=x"),
        ("/api/v1/labels", "end=2023-13-01T00:00:00Z"),
    ];
    for (path, query) in cases {
        assert!(get(path, query).is_err(), "{path}?{query}");
    }
}

#[test]
fn a_form_body_comes_before_the_url_as_in_go() {
    let body = "query=x%5B1h%5D&time=1700000000";
    let read = post("/api/v1/query", Some("query=x&time=1"), body).unwrap().unwrap();
    assert_eq!(read.window, window(T - HOUR, T), "the body's query and time win");
    let read = post("/api/v1/query", Some("time=1700000000"), "query=rate(x[10m])").unwrap().unwrap();
    assert_eq!(read.window, window(T - 10 * MINUTE, T), "what the body lacks comes from the URL");
    let read = post("/api/v1/query_range", None, "query=x&start=1700000000&end=1700003600&step=60").unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T + HOUR));
    let read = post("/api/v1/query", Some("time=1700000000"), "time=&query=up").unwrap().unwrap();
    assert_eq!(read.eval_time, Some(NOW), "the body's first value wins even when empty");
    let read = post("/api/v1/query", None, "query=up+offset+1h&time=1700000000").unwrap().unwrap();
    assert_eq!(read.window, window(T - HOUR - LOOKBACK, T - HOUR), "`+` is a space");
}

#[test]
fn pairs_go_skips_are_skipped() {
    let read = get("/api/v1/query", "time=1;2&query=up&time=1700000000").unwrap().unwrap();
    assert_eq!(read.eval_time, Some(T), "a pair with `;` is skipped");
    let read = get("/api/v1/query", "query=x%ZZ&query=x%5B1h%5D&time=1700000000").unwrap().unwrap();
    assert_eq!(read.window, window(T - HOUR, T), "a pair with a bad escape is skipped");
    let read = get("/api/v1/query", "&&query=up&time=1700000000&").unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T));
}

#[test]
fn offsets_move_the_window_back_and_negative_ones_forward() {
    let cases = [
        ("x offset 1h", window(T - HOUR - LOOKBACK, T - HOUR)),
        ("x[10m] offset 1h", window(T - HOUR - 10 * MINUTE, T - HOUR)),
        ("rate(x[10m] offset 1d)", window(T - DAY - 10 * MINUTE, T - DAY)),
        ("x offset -1h", window(T + HOUR - LOOKBACK, T + HOUR)),
        ("x[10m] offset -30m", window(T + 20 * MINUTE, T + 30 * MINUTE)),
        ("x - x offset 1w", window(T - 7 * DAY - LOOKBACK, T)),
        ("x[90s] offset 30", window(T - 120_000, T - 30_000)),
        ("x[300]", window(T - 5 * MINUTE, T)),
    ];
    for (expr, expected) in cases {
        assert_eq!(at_t(expr), expected, "{expr}");
    }
}

#[test]
fn at_fixes_the_evaluation_time() {
    let (start, end) = (T, T + HOUR);
    let range = |expr: &str| expr_window(expr, start, end, LOOKBACK).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let cases = [
        ("x @ 1600000000", window(1_600_000_000_000 - LOOKBACK, 1_600_000_000_000)),
        ("x[1h] @ 1600000000.5", window(1_600_000_000_500 - HOUR, 1_600_000_000_500)),
        ("x @ 1600000000 offset 1h", window(1_600_000_000_000 - HOUR - LOOKBACK, 1_600_000_000_000 - HOUR)),
        ("x @ start()", window(start - LOOKBACK, start)),
        ("x @ end()", window(end - LOOKBACK, end)),
        ("rate(x[5m] @ end())", window(end - 5 * MINUTE, end)),
        ("x @ start() + last_over_time(x[1d] @ start())", window(start - DAY, start)),
        ("x / x @ end() offset 2h", window(end - 2 * HOUR - LOOKBACK, end)),
        ("x @ -1", window(-1000 - LOOKBACK, -1000)),
    ];
    for (expr, expected) in cases {
        assert_eq!(range(expr), expected, "{expr}");
    }
}

#[test]
fn subqueries_evaluate_their_inside_over_their_range() {
    let cases = [
        ("max_over_time(x[1h:1m])", window(T - HOUR - LOOKBACK, T)),
        ("max_over_time(rate(x[5m])[1h:])", window(T - HOUR - 5 * MINUTE, T)),
        ("max_over_time(rate(x[5m])[1h:] offset 1d)", window(T - DAY - HOUR - 5 * MINUTE, T - DAY)),
        (
            "max_over_time(rate(x[5m] offset 1h)[1h:] offset 1d)",
            window(T - DAY - 2 * HOUR - 5 * MINUTE, T - DAY - HOUR),
        ),
        // Nested: ranges and offsets add up.
        (
            "max_over_time(min_over_time(x[10m:] offset 1h)[1d:1h] offset 1d)",
            window(T - 2 * DAY - HOUR - 10 * MINUTE - LOOKBACK, T - DAY - HOUR),
        ),
        ("max_over_time(x[1h:] offset -1h)", window(T - LOOKBACK, T + HOUR)),
        // `@` on a subquery fixes its time, and what is inside it moves from there.
        (
            "max_over_time(rate(x[5m])[1h:] @ 1600000000)",
            window(1_600_000_000_000 - HOUR - 5 * MINUTE, 1_600_000_000_000),
        ),
        (
            "max_over_time(max_over_time(x[5m])[1h:] @ 1600000000 offset 1h)[1d:] offset 1d",
            window(1_600_000_000_000 - 2 * HOUR - 5 * MINUTE, 1_600_000_000_000 - HOUR),
        ),
        // ... but an `@` inside overrides every subquery around it.
        ("max_over_time(x[5m] @ 1600000000)[1d:] offset 1d", window(1_600_000_000_000 - 5 * MINUTE, 1_600_000_000_000)),
    ];
    for (expr, expected) in cases {
        assert_eq!(at_t(expr), expected, "{expr}");
    }
    let w = expr_window("max_over_time(x[1h:] @ end())", T, T + DAY, LOOKBACK).unwrap();
    assert_eq!(w, window(T + DAY - HOUR - LOOKBACK, T + DAY), "`end()` is the query's end at any depth");
}

#[test]
fn every_part_of_an_expression_counts() {
    let cases = [
        ("rate(a[5m]) / rate(b[1h])", window(T - HOUR, T)),
        ("a[1h] offset 1d", window(T - DAY - HOUR, T - DAY)),
        ("sum by (job) (rate(a[10m])) > on (job) group_left count(b offset 2h)", window(T - 2 * HOUR - LOOKBACK, T)),
        ("topk(scalar(k offset 1h), rate(a[10m]))", window(T - HOUR - LOOKBACK, T)),
        ("quantile(0.9, a)", window(T - LOOKBACK, T)),
        ("histogram_quantile(0.9, rate(x[5m]))", window(T - 5 * MINUTE, T)),
        ("histogram_quantile(0.9, sum by (le) (rate(x_bucket{job=~\"a|b\"}[30m])))", window(T - 30 * MINUTE, T)),
        ("label_replace(rate(a[2h]), \"dst\", \"$1\", \"src\", \"(.*)\")", window(T - 2 * HOUR, T)),
        ("clamp(a, scalar(b offset 1d), 10)", window(T - DAY - LOOKBACK, T)),
        ("last_over_time(a[5m])", window(T - 5 * MINUTE, T)),
        ("-a offset 1h", window(T - HOUR - LOOKBACK, T - HOUR)),
        ("(a or b offset -10m) unless max_over_time(c[1h] @ 1700000000)", window(T - HOUR, T + 10 * MINUTE)),
        ("absent_over_time(up{job=\"x\"}[1d])", window(T - DAY, T)),
        ("a and on() vector(1)", window(T - LOOKBACK, T)),
        ("{__name__=~\"a|b\", job=\"x\"}", window(T - LOOKBACK, T)),
        ("timestamp(a)", window(T - LOOKBACK, T)),
    ];
    for (expr, expected) in cases {
        assert_eq!(at_t(expr), expected, "{expr}");
    }
}

#[test]
fn info_reads_info_series_at_the_evaluation_time() {
    assert_eq!(at_t("info(rate(a[1h] offset 1d))"), window(T - DAY - HOUR, T));
}

#[test]
fn expressions_without_selectors_read_nothing() {
    for expr in ["vector(1)", "time()", "1 + 2", "\"text\"", "scalar(vector(time()))", "-1", "pi()"] {
        let w = at_t(expr);
        assert_eq!(w, Window::EMPTY, "{expr}");
        assert!(w.is_empty());
    }
    assert_eq!(expr_window("x", T + 1, T, LOOKBACK), Ok(Window::EMPTY), "no evaluation time");
    let read = get("/api/v1/query", "query=vector(1)&time=1700000000").unwrap().unwrap();
    assert_eq!(read.window, Window::EMPTY);
    assert_eq!(read.eval_time, Some(T));
}

#[test]
fn windows_end_at_now() {
    let read = read_window(Endpoint::Query, Some("query=x offset -1h"), None, T, LOOKBACK, EARLIEST).unwrap().unwrap();
    assert_eq!(read.window, Window::EMPTY, "nothing is stored after now");
    let read =
        read_window(Endpoint::Query, Some("query=x[2h] offset -1h"), None, T, LOOKBACK, EARLIEST).unwrap().unwrap();
    assert_eq!(read.window, window(T - HOUR, T));
    let query = "query=x&start=1700000000&end=1700086400&step=60";
    let read = read_window(Endpoint::QueryRange, Some(query), None, T + HOUR, LOOKBACK, EARLIEST).unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T + HOUR));
}

#[test]
fn lookback_delta_only_lengthens_the_lookback() {
    let read = get("/api/v1/query", "query=x&time=1700000000&lookback_delta=1h").unwrap().unwrap();
    assert_eq!(read.window, window(T - HOUR, T));
    let read = get("/api/v1/query", "query=x&time=1700000000&lookback_delta=7200").unwrap().unwrap();
    assert_eq!(read.window, window(T - 2 * HOUR, T), "float seconds");
    let read = get("/api/v1/query", "query=x&time=1700000000&lookback_delta=30s").unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T), "a replica that ignores it still looks back 5m");
    let read = get("/api/v1/query", "query=x[1m]&time=1700000000&lookback_delta=1h").unwrap().unwrap();
    assert_eq!(read.window, window(T - MINUTE, T), "ranges need no lookback");
    let read = get("/api/v1/query", "query=x&time=1700000000&lookback_delta=-5").unwrap().unwrap();
    assert_eq!(read.window, window(T - LOOKBACK, T));
}

#[test]
fn metadata_endpoints_read_from_start_to_end() {
    let earliest_to_now = window(EARLIEST, NOW);
    let cases = [
        ("/api/v1/series", "match[]=up&start=1700000000&end=1700003600", window(T, T + HOUR)),
        ("/api/v1/series", "match[]=rate(x[30d])&start=1700000000&end=1700003600", window(T, T + HOUR)),
        ("/api/v1/series", "match[]=up", earliest_to_now),
        ("/api/v1/labels", "", earliest_to_now),
        ("/api/v1/labels", "start=2023-11-14T22:13:20Z", window(T, NOW)),
        ("/api/v1/labels", "end=1700000000", window(EARLIEST, T)),
        ("/api/v1/label/job/values", "start=1700000000&end=1700003600&match[]=up", window(T, T + HOUR)),
        ("/api/v1/label/job/values", &format!("start={MIN_TIME_FORMATTED}&end={MAX_TIME_FORMATTED}"), earliest_to_now),
        ("/api/v1/label/job/values", "start=-1e300&end=1e300", earliest_to_now),
        ("/api/v1/query_exemplars", "query=x[1d] offset 1d&start=1700000000&end=1700003600", window(T, T + HOUR)),
        ("/api/v1/query_exemplars", "query=x", earliest_to_now),
    ];
    for (path, query, expected) in cases {
        let read = get(path, query).unwrap().unwrap();
        assert_eq!(read.window, expected, "{path}?{query}");
        assert_eq!(read.eval_time, None);
    }
    let read = post("/api/v1/series", Some("start=1"), "match[]=up&start=1700000000&end=1700003600").unwrap().unwrap();
    assert_eq!(read.window, window(T, T + HOUR));
    let read = get("/api/v1/series", "start=1700003600&end=1700000000").unwrap().unwrap();
    assert_eq!(read.window, Window::EMPTY, "a range that ends before it starts reads nothing");
}

#[test]
fn unparseable_promql_is_an_error() {
    for expr in
        ["", "up{", "sum(", "rate(x)", "x[5m", "x offset", "x @ foo()", "1 +", "x[5m:1m:1m]", "unknown_fn(x)", "x;"]
    {
        assert!(expr_window(expr, T, T, LOOKBACK).is_err(), "{expr:?}");
    }
    assert!(get("/api/v1/query", "query=sum(").is_err());
    assert!(get("/api/v1/query_range", "query=x[&start=1&end=2&step=1").is_err());
}

#[test]
fn numbers_too_long_for_a_duration_are_refused_not_panicked_on() {
    let refused = ["up[1e30]", "up[5m:1e30]", "up offset 1e30", "up offset -Inf", "up offset +1e20", "rate(up[1e19])"];
    for expr in refused {
        assert!(expr_window(expr, T, T, LOOKBACK).is_err(), "{expr}");
    }
    assert_eq!(at_t("up > 1e30"), window(T - LOOKBACK, T), "a large number elsewhere is fine");
    assert_eq!(at_t("up[0x10]"), window(T - 16_000, T));
}

#[test]
fn queries_over_the_limits_are_refused() {
    let long = format!("up{{job=\"{}\"}}", "a".repeat(MAX_QUERY_BYTES));
    assert!(expr_window(&long, T, T, LOOKBACK).unwrap_err().contains("longer"));
    let chain = format!("x{}", " + x".repeat(MAX_NESTING + 1));
    assert!(expr_window(&chain, T, T, LOOKBACK).unwrap_err().contains("operators"));
    let parens = format!("{}x{}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
    assert!(expr_window(&parens, T, T, LOOKBACK).is_err());
    let negations = format!("{}x", "-".repeat(MAX_NESTING + 1));
    assert!(expr_window(&negations, T, T, LOOKBACK).is_err());
    let at_most = format!("x{}", " or x[1h]".repeat(MAX_NESTING / 2));
    assert!(expr_window(&at_most, T, T, LOOKBACK).is_err(), "matrix operands are refused by Prometheus too");
    let matchers = format!("x{{{}}}", (0..MAX_NESTING).map(|i| format!("l{i}!~\"a\"")).collect::<Vec<_>>().join(","));
    assert_eq!(at_t(&matchers), window(T - LOOKBACK, T), "matchers add no level");
    let at_most = format!("x{}", " or rate(x[1h])".repeat(MAX_NESTING / 4));
    assert_eq!(at_t(&at_most), window(T - HOUR, T));
}

#[test]
fn deep_queries_within_the_limits_fit_a_small_stack() {
    let deep = format!("{}x[1h]{}", "sum(rate(".repeat(MAX_NESTING / 4), "[1m:]))".repeat(MAX_NESTING / 4));
    let handle = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || expr_window(&deep, T, T, LOOKBACK))
        .expect("spawns a thread");
    assert!(handle.join().expect("no stack overflow").is_err(), "rate of a subquery of a matrix");
    let deep = format!("{}x{}", "abs(".repeat(MAX_NESTING / 2), ")".repeat(MAX_NESTING / 2));
    let handle = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || expr_window(&deep, T, T, LOOKBACK))
        .expect("spawns a thread");
    assert_eq!(handle.join().expect("no stack overflow"), Ok(window(T - LOOKBACK, T)));
}

#[test]
fn no_input_panics() {
    let queries = [
        "",
        "%",
        "%%",
        "%2",
        "query",
        "query=",
        "query=%FF%FE",
        "query=x%00",
        "query=\u{0}",
        "query=é[5m]",
        "query=x[1e400]",
        "query=x offset 1e400",
        "query=x[0x7fffffffffffffff]",
        "query=x offset 0xffffffffffffffffff",
        "query=x[99999999999999999999y]",
        "query=x @ 1e400",
        "query=x @ NaN",
        "query=x @ -Inf",
        "query=x[5m:0]",
        "query=((((",
        "query=))))",
        "query={}",
        "query={__name__=~\".*\"}",
        "query=x offset 5m offset 5m",
        "query=sum(x) by (",
        "query=#comment",
        "query=x # comment",
        "query=`raw`",
        "query='unterminated",
    ];
    let times =
        ["", "time=", "time=-0", "time=1e-300", "time=-1e308", "time=1.7976931348623157e308", "time=0x10", "time=+1"];
    for path in [Endpoint::Query, Endpoint::QueryRange, Endpoint::Series, Endpoint::Exemplars] {
        for query in queries {
            for time in times {
                let url = format!("{query}&{time}&{}", time.replace("time", "start"));
                let _ = read_window(path, Some(&url), Some(url.as_bytes()), NOW, LOOKBACK, EARLIEST);
                let _ = read_window(path, Some(&url), None, i64::MIN, i64::MAX, i64::MIN);
                let _ = read_window(path, Some(&url), None, i64::MAX, i64::MIN, i64::MAX);
            }
        }
    }
    for expr in queries.iter().filter_map(|q| q.strip_prefix("query=")) {
        let _ = expr_window(expr, i64::MIN, i64::MAX, i64::MAX);
    }
}

#[test]
fn remembered_windows_are_the_parsed_ones_at_other_times() {
    let exprs = [
        "up",
        "rate(x[5m]) offset 1h",
        "max_over_time(rate(x[1m])[30m:1m] offset -10m)",
        "x @ 1700000000",
        "x @ start() - x @ end()",
        "vector(1)",
        "histogram_quantile(0.9, sum by (le) (rate(b[5m])))",
        "up[",
    ];
    for expr in exprs {
        for (start, end, lookback) in [(1_000_000, 1_000_000, 300_000), (5_000, 900_000, 2_000), (0, 0, 0)] {
            for _ in 0..2 {
                assert_eq!(
                    remembered_window(expr, start, end, lookback),
                    expr_window(expr, start, end, lookback),
                    "{expr} at {start}..{end}, lookback {lookback}"
                );
            }
        }
    }
}

#[test]
fn regular_expressions_cost_nothing_and_do_not_move_the_window() {
    // Each `\w{200}` takes the regex crate about 45 ms to compile; 100 of them, seconds.
    let matchers: Vec<String> = (0..100).map(|i| format!("l{i}=~\"\\\\w{{200}}\"")).collect();
    let heavy = format!("rate(x{{{}}}[5m] offset 1h)", matchers.join(","));
    // What the parser is given holds none of them (no wall-clock bound: the machine may be busy).
    let given = check_cost(&heavy).unwrap();
    assert!(!given.contains("\\w{200}") && given.matches("=~\".\"").count() == 100, "{given}");
    let window = expr_window(&heavy, 10_000_000, 10_000_000, 300_000).unwrap();
    assert_eq!(window, expr_window("rate(x[5m] offset 1h)", 10_000_000, 10_000_000, 300_000).unwrap());
    assert!(expr_window(r#"{job=~".+"}"#, 0, 0, 1).is_ok(), "a selector of regexes alone stays valid");
    assert!(expr_window(r#"x{a!~'b', c=~`d`}"#, 0, 0, 1).is_ok());
}

#[test]
fn each_step_reads_each_selectors_own_window_and_what_an_at_fixes() {
    let steps = step_reads("x - x offset 1h", T, T + HOUR, 60_000, LOOKBACK, NOW).unwrap();
    // Two reads an hour apart, not the hour between them.
    assert_eq!(steps.moving, vec![(-HOUR - LOOKBACK, -HOUR), (-LOOKBACK, 0)]);
    let at = T + 10 * MINUTE;
    let windows: Vec<Window> = steps.windows_at(at).collect();
    assert_eq!(windows, vec![window(at - HOUR - LOOKBACK, at - HOUR), window(at - LOOKBACK, at)]);

    let steps = step_reads(
        "rate(x[5m] @ start()) + y @ end() + sum_over_time(z[10m:1m] offset -2m)",
        T,
        T + HOUR,
        60_000,
        LOOKBACK,
        NOW,
    )
    .unwrap();
    assert_eq!(steps.fixed, vec![window(T - 5 * MINUTE, T), window(T + HOUR - LOOKBACK, T + HOUR)]);
    assert_eq!(steps.moving, vec![(-10 * MINUTE + 2 * MINUTE - LOOKBACK, 2 * MINUTE)]);

    // Nothing is stored after now: a window reaching past it is cut, one wholly after it goes.
    let steps = step_reads("x offset -10m", NOW - MINUTE, NOW, 60_000, LOOKBACK, NOW).unwrap();
    assert_eq!(steps.windows_at(NOW - MINUTE).collect::<Vec<_>>(), Vec::<Window>::new());
    let steps = step_reads("x offset -1m", NOW - 10 * MINUTE, NOW, 60_000, LOOKBACK, NOW).unwrap();
    assert_eq!(
        steps.windows_at(NOW - 2 * MINUTE).collect::<Vec<_>>(),
        vec![window(NOW - MINUTE - LOOKBACK, NOW - MINUTE)]
    );
    assert_eq!(steps.windows_at(NOW).collect::<Vec<_>>(), vec![window(NOW + MINUTE - LOOKBACK, NOW)]);
}

#[test]
fn a_query_that_reads_no_data_has_no_window_at_any_step() {
    for expr in ["42", "time()", "vector(1)", "scalar(vector(1)) * 2"] {
        let steps = step_reads(expr, T, T + HOUR, 60_000, LOOKBACK, NOW).unwrap();
        assert!(steps.moving.is_empty() && steps.fixed.is_empty(), "{expr}");
        assert_eq!(steps.windows_at(T).count(), 0, "{expr}");
        let read =
            get("/api/v1/query_range", &format!("query={expr}&start=1700000000&end=1700003600&step=60")).unwrap();
        assert!(read.unwrap().window.is_empty(), "{expr}");
    }
}

#[test]
fn holt_winters_reads_as_double_exponential_smoothing() {
    assert_eq!(expr_window("holt_winters(x[10m], 0.5, 0.5)", T, T, LOOKBACK), Ok(window(T - 10 * MINUTE, T)));
    assert_eq!(
        expr_window("holt_winters(x[10m], 0.5, 0.5)", T, T, LOOKBACK),
        expr_window("double_exponential_smoothing(x[10m], 0.5, 0.5)", T, T, LOOKBACK)
    );
}

#[test]
fn step_parameters_prometheus_refuses_give_no_steps() {
    for step in ["0", "-15", "abc", "0.0001"] {
        let query = format!("query=up&start=1700000000&end=1700003600&step={step}");
        let read = get("/api/v1/query_range", &query).unwrap().unwrap();
        assert_eq!(read.steps, None, "step={step}");
    }
    let read = get("/api/v1/query_range", "query=up&start=1700000000&end=1700003600&step=1m").unwrap().unwrap();
    assert_eq!(read.steps.map(|s| s.step), Some(MINUTE));
}

#[test]
fn at_start_and_end_are_pinned_to_the_querys_times() {
    assert_eq!(pin_start_end("x @ start() - x @ end()", 1_500, -2_250).unwrap(), "x @ 1.500 - x @ -2.250");
    assert_eq!(pin_start_end("x @ 100", 0, 0).unwrap(), "x @ 100");
    assert_eq!(pin_start_end("rate(x[5m])", 0, 0).unwrap(), "rate(x[5m])");
    // A label or metric named start is not an `@`.
    assert_eq!(pin_start_end("start{a=\"@ start()\"} @ start()", 1_000, 0).unwrap(), "start{a=\"@ start()\"} @ 1.000");
    let pinned = pin_start_end("sum(rate(x[1m] @ end()))", T, T + HOUR).unwrap();
    assert_eq!(expr_window(&pinned, T, T, LOOKBACK), expr_window("sum(rate(x[1m] @ end()))", T, T + HOUR, LOOKBACK));
}
