//! Concatenating the time slices of one range query: each slice is the same query over other
//! steps, answered by one replica, so that every step of the answer comes from a replica that
//! held that step's whole read window. Nothing is recomputed and nothing is filled: a series
//! has exactly the points its slices have, in time order, and the series come in
//! Prometheus's own order (sorted by label set, as its engine sorts a range query's matrix),
//! so that the answer is byte for byte what one replica holding every step would have written.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Answer, Data, Endpoint, LabelSet, MergeError, Merged, Part, Series, Text, parse, push_list};

/// Concatenates `slices` (in time order, their steps disjoint) of a `query_range` answer;
/// appends `warning` (if Some) to the answer's `warnings`, after those of the slices.
///
/// A series' points are not parsed one by one: each slice's `values` (and `histograms`) array
/// is copied as its replica wrote it, after the previous slice's, so that an answer of
/// millions of points takes little more memory than the slices' text and the answer's.
///
/// Errors when a slice is not a successful matrix answer (the caller then sends that slice's
/// answer, an error Prometheus gave, as it is).
pub fn concatenate(slices: &[Part<'_>], warning: Option<&str>) -> Result<Merged, MergeError> {
    /// One slice's data, its series' points left as text.
    #[derive(Deserialize)]
    struct Matrix<'a> {
        #[serde(borrow, rename = "resultType")]
        result_type: Text<'a>,
        #[serde(borrow)]
        result: Vec<Run<'a>>,
    }
    /// One series in one slice.
    #[derive(Deserialize)]
    struct Run<'a> {
        #[serde(borrow)]
        metric: &'a RawValue,
        #[serde(borrow, default)]
        values: Option<&'a RawValue>,
        #[serde(borrow, default)]
        histograms: Option<&'a RawValue>,
    }
    /// A series of the answer: its label set as first written, and the inside of each
    /// slice's `values` and `histograms` arrays, in time order.
    type Joined<'a> = (&'a RawValue, Vec<&'a str>, Vec<&'a str>);
    let mut notes: Option<super::Notes> = None;
    let mut series: BTreeMap<LabelSet, Joined> = BTreeMap::new();
    for slice in slices {
        let answer = Answer::parse(slice.body)?;
        let matrix: Matrix = parse(answer.data.get())?;
        if matrix.result_type.0 != "matrix" {
            return Err(MergeError::Mismatch(format!("replica {} did not answer a matrix", slice.replica)));
        }
        match &mut notes {
            Some(notes) => notes.extend(answer.notes),
            None => notes = Some(answer.notes),
        }
        for run in matrix.result {
            let joined = series.entry(parse(run.metric.get())?).or_insert_with(|| (run.metric, Vec::new(), Vec::new()));
            joined.1.extend(run.values.and_then(inside));
            joined.2.extend(run.histograms.and_then(inside));
        }
    }
    let mut notes = notes.ok_or_else(|| MergeError::NotJson("no slice to concatenate".into()))?;
    if let Some(warning) = warning {
        notes.warn(warning.into());
    }
    let mut out = String::with_capacity(slices.iter().map(|s| s.body.len()).sum::<usize>());
    out.push_str(r#"{"status":"success","data":{"resultType":"matrix","result":"#);
    // A series without a point in any slice is left out, as Prometheus leaves it out.
    let kept = series.values().filter(|(_, values, histograms)| !values.is_empty() || !histograms.is_empty());
    let mut points = 0;
    push_list(&mut out, kept, |out, (metric, values, histograms)| {
        out.push_str(r#"{"metric":"#);
        out.push_str(metric.get());
        for (name, runs) in [("values", values), ("histograms", histograms)] {
            if !runs.is_empty() {
                out.push_str(&format!(r#","{name}":"#));
                push_list(out, runs, |out, run| out.push_str(run));
                points += runs.iter().map(|run| elements(run)).sum::<usize>();
            }
        }
        out.push('}');
    });
    out.push('}');
    notes.write(&mut out);
    out.push('}');
    Ok(Merged { body: out.into_bytes(), filled: points, added_series: 0 })
}

/// The inside of a JSON array (`[a,b]` gives `a,b`), `None` when it is empty (or not an array).
fn inside(array: &RawValue) -> Option<&str> {
    let inner = array.get().trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    (!inner.is_empty()).then_some(inner)
}

/// How many elements the inside of a JSON array holds: its commas outside strings and nested
/// arrays and objects, plus one.
fn elements(inner: &str) -> usize {
    let (mut depth, mut in_string, mut escaped, mut commas) = (0usize, false, false, 0);
    for b in inner.bytes() {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => depth += 1,
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, b',') if depth == 0 => commas += 1,
            _ => {}
        }
    }
    commas + 1
}

/// [`concatenate`] keeping of each part only the points whose time (milliseconds) is within
/// its bounds (first and last, inclusive): parts of a `query_range` answer held by the cache
/// hold more steps than a request asks for, so each point is parsed here. A series left
/// without points is left out, as Prometheus leaves out a series with no point in a range.
pub fn concatenate_steps(slices: &[(Part<'_>, (i64, i64))], warning: Option<&str>) -> Result<Merged, MergeError> {
    let mut notes: Option<super::Notes> = None;
    let mut series: BTreeMap<LabelSet, Series> = BTreeMap::new();
    let mut points = 0;
    for &(slice, (first, last)) in slices {
        let within = |p: &super::Point| (first..=last).contains(&p.millis);
        let answer = Answer::parse(slice.body)?;
        let Data::Matrix(matrix, _) = Data::parse(Endpoint::QueryRange, answer.data)? else {
            return Err(MergeError::Mismatch(format!("replica {} did not answer a matrix", slice.replica)));
        };
        match &mut notes {
            Some(notes) => notes.extend(answer.notes),
            None => notes = Some(answer.notes),
        }
        for (labels, mut part) in matrix.into_pairs() {
            if first != i64::MIN || last != i64::MAX {
                part.values.retain(within);
                part.histograms.retain(within);
                if part.values.is_empty() && part.histograms.is_empty() {
                    continue;
                }
            }
            points += part.values.len() + part.histograms.len();
            match series.get_mut(&labels) {
                Some(kept) => {
                    kept.values.append(&mut part.values);
                    kept.histograms.append(&mut part.histograms);
                }
                None => {
                    series.insert(labels, part);
                }
            }
        }
    }
    let mut notes = notes.ok_or_else(|| MergeError::NotJson("no slice to concatenate".into()))?;
    if let Some(warning) = warning {
        notes.warn(warning.into());
    }
    let mut out = String::with_capacity(slices.iter().map(|(s, _)| s.body.len()).sum::<usize>());
    out.push_str(r#"{"status":"success","data":{"resultType":"matrix","result":"#);
    push_list(&mut out, series.values(), Series::write);
    out.push('}');
    notes.write(&mut out);
    out.push('}');
    Ok(Merged { body: out.into_bytes(), filled: points, added_series: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(body: &str) -> Part<'_> {
        Part { body: body.as_bytes(), replica: "r" }
    }

    #[test]
    fn slices_join_byte_for_byte_into_the_answer_one_replica_would_give() {
        let whole = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a"},"values":[[1,"1"],[2,"1"],[3,"1e+300"]]},{"metric":{"__name__":"up","job":"a","x":"y"},"values":[[3,"2"]]},{"metric":{"__name__":"up","job":"b"},"values":[[1,"0"],[3,"0"]],"histograms":[[2,{"count":"1","sum":"2","buckets":[[0,"0","1","1"]]}]]}]}}"#;
        let first = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a"},"values":[[1,"1"],[2,"1"]]},{"metric":{"__name__":"up","job":"b"},"values":[[1,"0"]],"histograms":[[2,{"count":"1","sum":"2","buckets":[[0,"0","1","1"]]}]]}]}}"#;
        let second = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a"},"values":[[3,"1e+300"]]},{"metric":{"__name__":"up","job":"a","x":"y"},"values":[[3,"2"]]},{"metric":{"__name__":"up","job":"b"},"values":[[3,"0"]]}]}}"#;
        let joined = concatenate(&[part(first), part(second)], None).unwrap();
        assert_eq!(String::from_utf8(joined.body).unwrap(), whole);
        let alone = concatenate(&[part(whole)], None).unwrap();
        assert_eq!(String::from_utf8(alone.body).unwrap(), whole, "one slice is its own answer");
    }

    #[test]
    fn copied_runs_and_parsed_points_make_the_same_answer() {
        let first = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"b"},"values":[[1,"1"],[2,"NaN"]],"histograms":[[1,{"count":"2","buckets":[[0,"0","1","1"],[0,"1","2","1"]]}]]}]},"warnings":["a \"q\", [x]"]}"#;
        let second = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"a"},"values":[[3,"+Inf"]]},{"metric":{"job":"b"},"values":[[3,"2"]]}]}}"#;
        let parts = [part(first), part(second)];
        let copied = concatenate(&parts, Some("w")).unwrap();
        let bounded: Vec<(Part, (i64, i64))> = parts.iter().map(|&p| (p, (i64::MIN, i64::MAX))).collect();
        let parsed = concatenate_steps(&bounded, Some("w")).unwrap();
        assert_eq!(String::from_utf8(copied.body).unwrap(), String::from_utf8(parsed.body).unwrap());
        assert_eq!(copied.filled, 5);
        assert_eq!(copied.filled, parsed.filled);
    }

    #[test]
    fn series_come_in_prometheus_label_order_whatever_slice_brought_them() {
        let first = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"b"},"values":[[1,"1"]]}]}}"#;
        let second = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"Z":"1"},"values":[[2,"1"]]},{"metric":{"job":"a"},"values":[[2,"1"]]},{"metric":{"job":"b"},"values":[[2,"2"]]}]}}"#;
        let joined = String::from_utf8(concatenate(&[part(first), part(second)], Some("w")).unwrap().body).unwrap();
        assert_eq!(
            joined,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"Z":"1"},"values":[[2,"1"]]},{"metric":{"job":"a"},"values":[[2,"1"]]},{"metric":{"job":"b"},"values":[[1,"1"],[2,"2"]]}]},"warnings":["w"]}"#
        );
    }

    #[test]
    fn warnings_of_every_slice_are_kept_once_and_an_error_is_refused() {
        let a = r#"{"status":"success","data":{"resultType":"matrix","result":[]},"warnings":["x"],"infos":["i"]}"#;
        let b = r#"{"status":"success","data":{"resultType":"matrix","result":[]},"warnings":["x","y"]}"#;
        let joined = String::from_utf8(concatenate(&[part(a), part(b)], None).unwrap().body).unwrap();
        assert_eq!(
            joined,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]},"warnings":["x","y"],"infos":["i"]}"#
        );
        let error = r#"{"status":"error","errorType":"bad_data","error":"nope"}"#;
        assert_eq!(concatenate(&[part(a), part(error)], None).unwrap_err(), MergeError::NotSuccess);
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(concatenate(&[part(vector)], None), Err(MergeError::Mismatch(_))));
    }
}
