//! Tests of [`super`].

use super::*;
use serde_json::Value;

/// An answer recorded from a real Prometheus by `scripts/record-merge-fixtures.sh` (`a-*`
/// from the replica that stayed up, `b-*` from the one stopped for a few seconds), or
/// written by hand in the documented format (`hand-*`: what the recording cannot produce,
/// such as one series with float and histogram steps, NaN in a histogram, exemplars whose
/// labels differ in order or whose timestamps differ in spelling).
macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/merge/", $name, ".json"))
    };
}

fn part(body: &str) -> Part<'_> {
    Part { body: body.as_bytes(), replica: "other" }
}

fn merge_ok(endpoint: Endpoint, primary: &str, others: &[&str]) -> (Value, Merged) {
    let others: Vec<Part> = others.iter().map(|o| part(o)).collect();
    let merged = merge(endpoint, part(primary), &others, None).expect("the primary merges");
    (serde_json::from_slice(&merged.body).expect("the merged body is JSON"), merged)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("the fixture is JSON")
}

fn millis_of(timestamp: &Value) -> i64 {
    (timestamp.as_f64().expect("a numeric timestamp") * 1000.0).round() as i64
}

/// A matrix as (label set, steps), the steps as (millis, value or histogram as JSON text).
fn steps(answer: &Value) -> Vec<(String, Vec<(i64, String)>)> {
    let series = answer["data"]["result"].as_array().expect("a matrix");
    series
        .iter()
        .map(|s| {
            let mut points: Vec<(i64, String)> = ["values", "histograms"]
                .iter()
                .flat_map(|field| s[field].as_array().cloned().unwrap_or_default())
                .map(|p| (millis_of(&p[0]), p[1].to_string()))
                .collect();
            points.sort();
            (s["metric"].to_string(), points)
        })
        .collect()
}

fn find<'v>(matrix: &'v [(String, Vec<(i64, String)>)], metric: &str) -> Option<&'v Vec<(i64, String)>> {
    matrix.iter().find(|(m, _)| m == metric).map(|(_, points)| points)
}

/// Asserts that `merged` is `primary` filled from `other`: every step of either, the
/// primary's value wherever it has the step, the primary's series first.
fn assert_filled(primary: &str, other: &str, merged: &Value) {
    let (primary, other, merged) = (steps(&json(primary)), steps(&json(other)), steps(merged));
    for (i, (metric, points)) in merged.iter().enumerate() {
        let mine = find(&primary, metric);
        if i < primary.len() {
            assert_eq!(metric, &primary[i].0, "the primary's series come first, in its order");
        }
        for (millis, value) in points {
            let from_primary = mine.and_then(|m| m.iter().find(|(t, _)| t == millis));
            let expected = from_primary.or_else(|| find(&other, metric)?.iter().find(|(t, _)| t == millis));
            assert_eq!(Some(value), expected.map(|(_, v)| v), "{metric} at {millis}");
        }
        let wanted: HashSet<i64> = mine.into_iter().chain(find(&other, metric)).flatten().map(|(t, _)| *t).collect();
        assert_eq!(points.len(), wanted.len(), "{metric}: every step of either, once");
    }
}

#[test]
fn fills_the_steps_missing_in_the_primary_from_the_other() {
    for (primary, other) in [
        (fixture!("b-range-up"), fixture!("a-range-up")),
        (fixture!("b-range-count"), fixture!("a-range-count")),
        (fixture!("b-range-rate"), fixture!("a-range-rate")),
    ] {
        let (answer, merged) = merge_ok(Endpoint::QueryRange, primary, &[other]);
        assert_filled(primary, other, &answer);
        let before: usize = steps(&json(primary)).iter().map(|(_, p)| p.len()).sum();
        let after: usize = steps(&answer).iter().map(|(_, p)| p.len()).sum();
        assert!(merged.filled > 0, "the recorded hole is filled");
        assert_eq!(merged.filled, after - before);
    }
}

#[test]
fn a_replica_that_was_down_gets_its_hole_filled_to_the_healthy_answer() {
    // B was stopped for six seconds; `count_over_time(up[2s])` has no step there in B's
    // answer (and a count of 1 at its edges), and every step in A's. Merged, B's answer
    // has every step A has, and its own counts at the edges.
    let times = |answer: &Value| -> Vec<Vec<i64>> {
        steps(answer).into_iter().map(|(_, points)| points.into_iter().map(|(t, _)| t).collect()).collect()
    };
    let (primary, other) = (fixture!("b-range-count"), fixture!("a-range-count"));
    let (answer, merged) = merge_ok(Endpoint::QueryRange, primary, &[other]);
    assert!(times(&json(primary)) != times(&json(other)), "B has a hole");
    assert_eq!(times(&answer), times(&json(other)));
    assert_eq!(merged.added_series, 0);
}

#[test]
fn keeps_the_primarys_value_where_both_have_the_step() {
    let (primary, other) = (fixture!("b-range-rate"), fixture!("a-range-rate"));
    let (a, b) = (steps(&json(other)), steps(&json(primary)));
    let conflicts = b
        .iter()
        .flat_map(|(metric, points)| points.iter().map(move |p| (metric, p)))
        .filter(|(metric, (t, v))| find(&a, metric).is_some_and(|a| a.iter().any(|(at, av)| at == t && av != v)))
        .count();
    assert!(conflicts > 0, "the replicas' rates differ (they scrape at different times)");
    let (answer, _) = merge_ok(Endpoint::QueryRange, primary, &[other]);
    assert_filled(primary, other, &answer);
}

#[test]
fn adds_the_series_only_the_other_has_after_the_primarys() {
    // `up == 0` has a series in A (B, seen down) and none in B.
    let (answer, merged) = merge_ok(Endpoint::QueryRange, fixture!("b-range-up-down"), &[fixture!("a-range-up-down")]);
    assert_eq!(answer, json(fixture!("a-range-up-down")));
    let points = steps(&json(fixture!("a-range-up-down")))[0].1.len();
    assert_eq!((merged.added_series, merged.filled), (1, points));
    // A series missing from an answer that has others goes after them.
    let mut primary = json(fixture!("b-range-up"));
    let removed = primary["data"]["result"].as_array_mut().expect("a matrix").remove(0);
    let primary = primary.to_string();
    let (answer, merged) = merge_ok(Endpoint::QueryRange, &primary, &[fixture!("a-range-up")]);
    assert_eq!(merged.added_series, 1);
    assert_filled(&primary, fixture!("a-range-up"), &answer);
    let last = answer["data"]["result"].as_array().expect("a matrix").last().expect("a series");
    assert_eq!(last["metric"], removed["metric"]);
}

/// `answer` without the steps of each series that `keep` rejects (by index), written
/// again by serde_json (timestamps in its own spelling).
fn without_steps(answer: &str, keep: impl Fn(usize) -> bool) -> String {
    let mut answer = json(answer);
    for series in answer["data"]["result"].as_array_mut().expect("a matrix") {
        let values = series["values"].as_array_mut().expect("values");
        let kept: Vec<Value> = values.drain(..).enumerate().filter(|(i, _)| keep(*i)).map(|(_, v)| v).collect();
        *values = kept;
    }
    answer.to_string()
}

#[test]
fn keeps_nan_inf_and_big_values_as_sent() {
    let whole = fixture!("a-range-special");
    let holed = without_steps(whole, |i| i % 3 == 0);
    let (_, merged) = merge_ok(Endpoint::QueryRange, &holed, &[whole]);
    assert!(merged.filled > 0);
    assert_eq!(String::from_utf8(merged.body).expect("UTF-8"), whole, "every value and timestamp verbatim");
    for value in [r#""NaN""#, r#""+Inf""#, r#""-Inf""#, r#""1e+300""#] {
        assert!(whole.contains(value), "the fixture has {value}");
    }
}

/// `answer` with `000` added to every timestamp (`.000` to whole seconds): the same numbers.
fn with_padded_timestamps(answer: &str) -> String {
    let pad = |segment: &str| match segment.split_once(',') {
        Some((number, rest)) if number.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            format!("{number}{}{rest}", if number.contains('.') { "000," } else { ".000," })
        }
        _ => segment.to_string(),
    };
    answer.split('[').map(pad).collect::<Vec<_>>().join("[")
}

#[test]
fn matches_steps_whatever_the_spelling_of_their_timestamps() {
    // Prometheus writes `1795632459.540`, serde_json `1795632459.54`, another server
    // perhaps `1795632459.54000`: one step.
    let recorded = fixture!("a-instant-matrix");
    let primary = without_steps(recorded, |i| i != 2);
    let padded = with_padded_timestamps(recorded);
    let (answer, merged) = merge_ok(Endpoint::Query, &primary, &[&padded]);
    let series = steps(&json(recorded));
    assert_eq!(merged.filled, series.iter().filter(|(_, points)| points.len() > 2).count());
    assert_eq!(steps(&answer), series);
    let body = String::from_utf8(merged.body).expect("UTF-8");
    assert_eq!(body.matches("000,").count(), merged.filled, "the filled steps as sent: {body}");
}

#[test]
fn treats_a_matrix_from_an_instant_query_like_a_range() {
    let (answer, merged) = merge_ok(Endpoint::Query, fixture!("b-instant-matrix"), &[fixture!("a-instant-matrix")]);
    let series = steps(&json(fixture!("a-instant-matrix")));
    assert_eq!(answer, json(fixture!("a-instant-matrix")));
    assert_eq!((merged.added_series, merged.filled), (series.len(), series.iter().map(|(_, p)| p.len()).sum()));
}

#[test]
fn takes_from_an_other_that_is_not_compact() {
    let pretty = serde_json::to_string_pretty(&json(fixture!("a-range-up"))).expect("JSON");
    let (answer, merged) = merge_ok(Endpoint::QueryRange, fixture!("b-range-up"), &[&pretty]);
    assert_filled(fixture!("b-range-up"), fixture!("a-range-up"), &answer);
    assert!(merged.filled > 0);
}

#[test]
fn fills_native_histogram_steps_from_the_other() {
    let (primary, other) = (fixture!("b-range-histogram"), fixture!("a-range-histogram"));
    let (answer, merged) = merge_ok(Endpoint::QueryRange, primary, &[other]);
    assert_filled(primary, other, &answer);
    assert!(merged.filled > 0, "the recorded hole is filled");
    let series = &answer["data"]["result"][0];
    assert!(series["values"].is_null() && series["histograms"].is_array(), "{series}");
}

#[test]
fn a_float_step_and_a_histogram_step_are_one_step() {
    let (primary, other) = (fixture!("hand-b-range-histogram"), fixture!("hand-a-range-histogram"));
    let (answer, merged) = merge_ok(Endpoint::QueryRange, primary, &[other]);
    assert_filled(primary, other, &answer);
    assert_eq!((merged.filled, merged.added_series), (4, 0));
    let result = &answer["data"]["result"];
    let timestamps = |series: &Value, field: &str| -> Vec<i64> {
        series[field].as_array().map(|p| p.iter().map(|p| millis_of(&p[0])).collect()).unwrap_or_default()
    };
    assert_eq!(
        timestamps(&result[0], "histograms"),
        [1795632452014, 1795632453014, 1795632454014, 1795632455014, 1795632456014]
    );
    assert_eq!(result[0]["histograms"][1][1]["count"], "11", "the primary's histogram where both have the step");
    assert_eq!(result[0]["histograms"][3][1]["count"], "NaN");
    assert_eq!(result[0]["histograms"][3][1]["sum"], "+Inf");
    // A float step and a histogram step are one step: 452 stays a float, 455 a histogram.
    assert_eq!(timestamps(&result[1], "values"), [1795632452014, 1795632453014]);
    assert_eq!(timestamps(&result[1], "histograms"), [1795632454014, 1795632455014]);
}

/// A label set as a JSON object with its names in reverse order.
fn reversed(labels: &Value) -> String {
    let fields: Vec<String> = labels
        .as_object()
        .expect("a label set")
        .iter()
        .rev()
        .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[test]
fn unions_instant_vectors_by_label_set_primary_first() {
    // B was down at that time: its vector is empty.
    let (answer, merged) = merge_ok(Endpoint::Query, fixture!("b-instant-up"), &[fixture!("a-instant-up")]);
    let a = json(fixture!("a-instant-up"));
    let count = a["data"]["result"].as_array().expect("a vector").len();
    assert_eq!(answer, a);
    assert_eq!((merged.filled, merged.added_series), (count, count));
    // The other: A's second series (its labels in another order, another value) and a new one.
    let other = format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[
            {{"metric":{},"value":[1,"7"]}},
            {{"metric":{{"__name__":"up","instance":"127.0.0.1:1"}},"value":[1,"8"]}}]}}}}"#,
        reversed(&a["data"]["result"][1]["metric"])
    );
    let (answer, merged) = merge_ok(Endpoint::Query, fixture!("a-instant-up"), &[&other]);
    let values = |answer: &Value| -> Vec<Value> {
        answer["data"]["result"].as_array().expect("a vector").iter().map(|s| s["value"][1].clone()).collect()
    };
    assert_eq!(values(&answer), [values(&a), vec!["8".into()]].concat(), "the primary's samples, then the new");
    assert_eq!((merged.filled, merged.added_series), (1, 1));
}

#[test]
fn scalar_and_string_answers_are_the_primarys() {
    for (primary, other) in [
        (fixture!("a-instant-scalar"), fixture!("b-instant-scalar-neg")),
        (fixture!("a-instant-string"), r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#),
    ] {
        let (_, merged) = merge_ok(Endpoint::Query, primary, &[other]);
        assert_eq!(String::from_utf8(merged.body).expect("UTF-8"), primary);
        assert_eq!((merged.filled, merged.added_series), (0, 0));
    }
}

#[test]
fn unions_series_whatever_the_order_of_their_labels() {
    let (a, b) = (json(fixture!("a-series")), json(fixture!("b-series")));
    let reordered = format!(r#"{{"status":"success","data":[{}]}}"#, reversed(&b["data"][0]));
    let (answer, merged) = merge_ok(Endpoint::Series, fixture!("b-series"), &[fixture!("a-series"), &reordered]);
    let (sets, b) = (answer["data"].as_array().expect("a list"), b["data"].as_array().expect("a list"));
    assert_eq!(sets.len(), b.len() + 1);
    assert_eq!(sets[..b.len()], b[..], "the primary's first");
    assert_eq!(sets[b.len()], a["data"][0], "the series only A saw (a handler used during B's hole)");
    assert_eq!((merged.filled, merged.added_series), (1, 1));
}

#[test]
fn label_names_and_values_are_a_sorted_union() {
    let other = r#"{"status":"success","data":["zone","aaa","job","\u006ae"]}"#;
    let (answer, merged) = merge_ok(Endpoint::Labels, fixture!("a-labels"), &[other, fixture!("b-labels")]);
    let mut expected: Vec<String> =
        serde_json::from_value(json(fixture!("a-labels"))["data"].clone()).expect("strings");
    expected.extend(["zone", "aaa", "je"].map(String::from));
    expected.sort();
    assert_eq!(answer["data"], serde_json::to_value(&expected).expect("strings"));
    assert_eq!(merged.filled, 3);
    // `\/metrics` is `/metrics`: not added again.
    let other = r#"{"status":"success","data":["\/metrics","/a"]}"#;
    let (answer, merged) = merge_ok(Endpoint::LabelValues, fixture!("a-label-values"), &[other]);
    assert_eq!(answer["data"][0], "/-/ready");
    assert_eq!(answer["data"][1], "/a");
    assert_eq!(merged.filled, 1);
}

#[test]
fn unions_exemplars_by_series_and_sorts_them_by_time() {
    let (answer, merged) = merge_ok(Endpoint::Exemplars, fixture!("hand-b-exemplars"), &[fixture!("hand-a-exemplars")]);
    let series = answer["data"].as_array().expect("a list");
    assert_eq!(series.len(), 2);
    let traces: Vec<&Value> =
        series[0]["exemplars"].as_array().expect("a list").iter().map(|e| &e["labels"]["trace_id"]).collect();
    assert_eq!(traces, ["a1", "b2", "c3"], "one c3: same time and labels in both");
    assert_eq!(series[1]["exemplars"][0]["labels"]["trace_id"], "d4");
    assert_eq!((merged.filled, merged.added_series), (2, 1));
    assert!(String::from_utf8(merged.body).expect("UTF-8").contains("1795632454.500"), "the primary's c3");
}

#[test]
fn fills_the_exemplars_missing_in_the_primary_from_the_other() {
    let exemplars = |answer: &Value| -> Vec<(i64, Value)> {
        let series = answer["data"].as_array().expect("a list");
        let list = series.iter().flat_map(|s| s["exemplars"].as_array().expect("a list"));
        list.map(|e| (millis_of(&e["timestamp"]), e["labels"].clone())).collect()
    };
    let (primary, other) = (json(fixture!("b-exemplars")), json(fixture!("a-exemplars")));
    let (answer, merged) = merge_ok(Endpoint::Exemplars, fixture!("b-exemplars"), &[fixture!("a-exemplars")]);
    let mut expected = exemplars(&primary);
    expected.extend(exemplars(&other).into_iter().filter(|e| !exemplars(&primary).contains(e)));
    expected.sort_by_key(|(millis, _)| *millis);
    assert_eq!(exemplars(&answer), expected);
    assert!(merged.filled > 0, "the exemplars of B's hole");
    assert_eq!(merged.filled, expected.len() - exemplars(&primary).len());
}

#[test]
fn skips_others_that_cannot_be_merged_and_names_them() {
    let others = [
        Part { body: fixture!("a-instant-error").as_bytes(), replica: "r-error" },
        Part { body: b"<html>bad gateway</html>", replica: "r-html" },
        Part { body: fixture!("a-instant-up").as_bytes(), replica: "r-vector" },
        Part { body: fixture!("a-range-up").as_bytes(), replica: "r-good" },
    ];
    let merged = merge(Endpoint::QueryRange, part(fixture!("b-range-up")), &others, Some("merged")).expect("merges");
    let answer: Value = serde_json::from_slice(&merged.body).expect("JSON");
    assert_filled(fixture!("b-range-up"), fixture!("a-range-up"), &answer);
    let warnings: Vec<&str> =
        answer["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    for (warning, replica) in warnings.iter().zip(["r-error", "r-html", "r-vector"]) {
        assert!(warning.contains(replica), "{warning} names {replica}");
    }
    assert_eq!(warnings[3], "merged");
}

#[test]
fn a_primary_that_cannot_be_merged_is_an_error() {
    let error = fixture!("b-instant-error");
    assert_eq!(
        merge(Endpoint::Query, part(error), &[part(fixture!("a-instant-up"))], None).err(),
        Some(MergeError::NotSuccess)
    );
    let vector = part(fixture!("a-instant-up"));
    assert!(matches!(merge(Endpoint::QueryRange, vector, &[], None), Err(MergeError::Mismatch(_))));
    assert!(matches!(merge(Endpoint::Labels, part("{"), &[], None), Err(MergeError::NotJson(_))));
}

#[test]
fn keeps_every_warning_and_info_once() {
    let primary = r#"{"status":"success","data":[],"warnings":["w1"],"infos":["i1"]}"#;
    let other = r#"{"status":"success","data":["x"],"warnings":["w1","say \"w2\""],"infos":["i1","i2"]}"#;
    let merged = merge(Endpoint::Labels, part(primary), &[part(other)], Some("w1")).expect("merges");
    assert_eq!(
        String::from_utf8(merged.body).expect("UTF-8"),
        r#"{"status":"success","data":["x"],"warnings":["w1","say \"w2\""],"infos":["i1","i2"]}"#
    );
}

#[test]
fn add_warning_appends_to_the_array_or_creates_it() {
    let cases = [
        (r#"{"status":"success","data":[]}"#, r#"{"status":"success","data":[],"warnings":["w"]}"#),
        (
            r#"{"status":"success","warnings":["a"],"data":[]}"#,
            r#"{"status":"success","warnings":["a","w"],"data":[]}"#,
        ),
        (r#"{"status":"success","data":[],"warnings":["w"]}"#, r#"{"status":"success","data":[],"warnings":["w"]}"#),
        (r#"{ "status" : "error", "error": "x\u0041" }"#, r#"{"status":"error","error":"x\u0041","warnings":["w"]}"#),
        ("{}", r#"{"warnings":["w"]}"#),
    ];
    for (body, expected) in cases {
        let added = add_warning(body.as_bytes(), "w").expect("an object");
        assert_eq!(String::from_utf8(added).expect("UTF-8"), expected);
    }
    let answer = fixture!("b-range-up");
    let added = add_warning(answer.as_bytes(), "from \"b\"").expect("an object");
    let (mut with, without) = (json(std::str::from_utf8(&added).expect("UTF-8")), json(answer));
    assert_eq!(with["warnings"], json(r#"["from \"b\""]"#));
    with.as_object_mut().expect("an object").remove("warnings");
    assert_eq!(with, without);
}

#[test]
fn add_warning_refuses_what_is_not_an_object() {
    for body in ["", "[]", "\"x\"", "null", "{", r#"{"warnings":"x"}"#, r#"{"warnings":[1]}"#, "{} x"] {
        assert!(matches!(add_warning(body.as_bytes(), "w"), Err(MergeError::NotJson(_))), "{body}");
    }
}

/// Every recorded or written success answer, with the endpoint it answers.
const ANSWERS: &[(Endpoint, &str)] = &[
    (Endpoint::QueryRange, fixture!("a-range-up")),
    (Endpoint::QueryRange, fixture!("b-range-up")),
    (Endpoint::QueryRange, fixture!("a-range-up-down")),
    (Endpoint::QueryRange, fixture!("b-range-up-down")),
    (Endpoint::QueryRange, fixture!("a-range-count")),
    (Endpoint::QueryRange, fixture!("b-range-count")),
    (Endpoint::QueryRange, fixture!("a-range-rate")),
    (Endpoint::QueryRange, fixture!("b-range-rate")),
    (Endpoint::QueryRange, fixture!("a-range-special")),
    (Endpoint::QueryRange, fixture!("b-range-special")),
    (Endpoint::QueryRange, fixture!("a-range-histogram")),
    (Endpoint::QueryRange, fixture!("b-range-histogram")),
    (Endpoint::QueryRange, fixture!("hand-a-range-histogram")),
    (Endpoint::QueryRange, fixture!("hand-b-range-histogram")),
    (Endpoint::Query, fixture!("a-instant-up")),
    (Endpoint::Query, fixture!("b-instant-up")),
    (Endpoint::Query, fixture!("a-instant-up-down")),
    (Endpoint::Query, fixture!("b-instant-up-down")),
    (Endpoint::Query, fixture!("a-instant-matrix")),
    (Endpoint::Query, fixture!("b-instant-matrix")),
    (Endpoint::Query, fixture!("a-instant-histogram")),
    (Endpoint::Query, fixture!("b-instant-histogram")),
    (Endpoint::Query, fixture!("a-instant-nan")),
    (Endpoint::Query, fixture!("b-instant-nan")),
    (Endpoint::Query, fixture!("a-instant-scalar")),
    (Endpoint::Query, fixture!("b-instant-scalar")),
    (Endpoint::Query, fixture!("a-instant-scalar-neg")),
    (Endpoint::Query, fixture!("a-instant-string")),
    (Endpoint::Query, fixture!("b-instant-string")),
    (Endpoint::Series, fixture!("a-series")),
    (Endpoint::Series, fixture!("b-series")),
    (Endpoint::Labels, fixture!("a-labels")),
    (Endpoint::Labels, fixture!("b-labels")),
    (Endpoint::LabelValues, fixture!("a-label-values")),
    (Endpoint::LabelValues, fixture!("b-label-values")),
    (Endpoint::LabelValues, fixture!("a-label-job-values")),
    (Endpoint::LabelValues, fixture!("b-label-job-values")),
    (Endpoint::Exemplars, fixture!("a-exemplars")),
    (Endpoint::Exemplars, fixture!("b-exemplars")),
    (Endpoint::Exemplars, fixture!("hand-a-exemplars")),
    (Endpoint::Exemplars, fixture!("hand-b-exemplars")),
];

#[test]
fn merging_an_answer_with_itself_changes_nothing() {
    for &(endpoint, answer) in ANSWERS {
        let merged = merge(endpoint, part(answer), &[part(answer)], None).expect("merges");
        assert_eq!(std::str::from_utf8(&merged.body).expect("UTF-8"), answer, "byte for byte");
        assert_eq!((merged.filled, merged.added_series), (0, 0), "{answer}");
    }
}

#[test]
fn malformed_answers_are_errors() {
    let success = |data: &str| format!(r#"{{"status":"success","data":{data}}}"#);
    let matrix = |series: &str| success(&format!(r#"{{"resultType":"matrix","result":[{series}]}}"#));
    let cases: Vec<(Endpoint, String)> = vec![
        (Endpoint::Query, String::new()),
        (Endpoint::Query, "null".into()),
        (Endpoint::Query, "[]".into()),
        (Endpoint::Query, r#"{"status":"success"}"#.into()),
        (Endpoint::Query, r#"{"status":1,"data":[]}"#.into()),
        (Endpoint::Query, r#"{"status":"success","status":"success","data":[]}"#.into()),
        (Endpoint::Query, success(r#"{"resultType":"vector"}"#)),
        (Endpoint::Query, success(r#"{"resultType":"vector","result":[{"value":[1,"1"]}]}"#)),
        (Endpoint::Query, success(r#"{"resultType":"vector","result":[{"metric":{"a":1}}]}"#)),
        (Endpoint::Query, success(r#"{"resultType":"histogram","result":[]}"#)),
        (Endpoint::QueryRange, success("[]")),
        (Endpoint::QueryRange, matrix(r#"{"metric":{},"values":[["1","1"]]}"#)),
        (Endpoint::QueryRange, matrix(r#"{"metric":{},"values":[[1e300,"1"]]}"#)),
        (Endpoint::QueryRange, matrix(r#"{"metric":{},"values":[[1]]}"#)),
        (Endpoint::QueryRange, matrix(r#"{"metric":{},"values":[[1,"1",2]]}"#)),
        (Endpoint::QueryRange, matrix(r#"{"metric":[],"values":[]}"#)),
        (Endpoint::QueryRange, matrix(r#"{"values":[[1,"1"]]}"#)),
        (Endpoint::QueryRange, matrix(&"[".repeat(10_000))),
        (Endpoint::Series, success(r#"[["a"]]"#)),
        (Endpoint::Series, success("{}")),
        (Endpoint::Labels, success("[1]")),
        (Endpoint::LabelValues, success(r#"{"a":"b"}"#)),
        (Endpoint::Exemplars, success(r#"[{"seriesLabels":{},"exemplars":[{"labels":{},"value":"1"}]}]"#)),
        (Endpoint::Exemplars, success(r#"[{"exemplars":[]}]"#)),
    ];
    let good = r#"{"status":"success","data":[]}"#;
    for (endpoint, body) in &cases {
        let result = merge(*endpoint, part(body), &[], None);
        assert!(matches!(result, Err(MergeError::NotJson(_) | MergeError::Mismatch(_))), "{body:.80}: {result:?}");
        // As an other, it is skipped with a warning naming it.
        let primary = match endpoint {
            Endpoint::Query | Endpoint::QueryRange => fixture!("a-range-up"),
            _ => good,
        };
        let other = Part { body: body.as_bytes(), replica: "r-bad" };
        let merged = merge(*endpoint, part(primary), &[other], None).expect("the primary merges");
        let answer: Value = serde_json::from_slice(&merged.body).expect("JSON");
        assert!(answer["warnings"][0].as_str().is_some_and(|w| w.contains("r-bad")), "{body:.80}");
    }
    let not_utf8 = b"{\"status\":\"success\",\"data\":[\"\xff\"]}";
    assert!(matches!(
        merge(Endpoint::Labels, Part { body: not_utf8, replica: "x" }, &[], None),
        Err(MergeError::NotJson(_))
    ));
}

#[test]
fn truncated_or_corrupted_answers_never_panic() {
    for &(endpoint, answer) in ANSWERS {
        let bytes = answer.as_bytes();
        // At every byte of a small answer, at some 500 places in a bigger one.
        for cut in (0..bytes.len()).step_by(1 + bytes.len() / 500) {
            let truncated = &bytes[..cut];
            let result = merge(endpoint, Part { body: truncated, replica: "x" }, &[], None);
            assert!(result.is_err(), "a truncated primary is refused: {cut}");
            let other = Part { body: truncated, replica: "x" };
            assert!(merge(endpoint, part(answer), &[other], None).is_ok());
            let _ = add_warning(truncated, "w");
        }
        // A byte replaced at a time, by one of JSON's structural characters or a digit.
        for (i, byte) in bytes.iter().enumerate().step_by(7) {
            let mut corrupted = bytes.to_vec();
            corrupted[i] = b"{}[]\",:0."[i % 9];
            if corrupted[i] == *byte {
                continue;
            }
            let _ = merge(endpoint, Part { body: &corrupted, replica: "x" }, &[part(answer)], None);
            let other = Part { body: &corrupted, replica: "x" };
            assert!(merge(endpoint, part(answer), &[other], None).is_ok());
        }
    }
}
