//! Remote read (`POST /api/v1/read`): the window of stored data a request asks for (the union
//! of its queries' time ranges), the same request cut to a time slice, and the answers of
//! several slices joined. Bodies are protobuf (Prometheus's `prompb/remote.proto` and
//! `types.proto`; the messages below keep their field numbers) compressed with snappy's
//! block format. Fields mpp does not change are carried as they are: a message it does not
//! read (a label matcher, an exemplar, a native histogram) as its encoded bytes, which
//! protobuf writes the same way.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use prost::Message;

use super::{Steps, Window};
use crate::coverage::Millis;

/// The largest remote-read request decoded for routing, uncompressed. Prometheus sends one
/// query per series selection, a few hundred bytes; a larger body is routed as one whose
/// window is unknown, and the replica judges it.
const MAX_DECODED: usize = 64 << 10;

/// `prompb.ReadRequest`.
#[derive(Clone, PartialEq, Message)]
struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    queries: Vec<Query>,
    /// `prompb.ReadRequest.ResponseType`: 0 `SAMPLES`, 1 `STREAMED_XOR_CHUNKS`.
    #[prost(int32, repeated, tag = "2")]
    accepted_response_types: Vec<i32>,
}

/// `prompb.Query`.
#[derive(Clone, PartialEq, Message)]
struct Query {
    #[prost(int64, tag = "1")]
    start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    end_timestamp_ms: i64,
    /// `prompb.LabelMatcher`s, as they came.
    #[prost(bytes = "vec", repeated, tag = "3")]
    matchers: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "4")]
    hints: Option<ReadHints>,
}

/// `prompb.ReadHints`: its `start_ms` and `end_ms` bound what the replica's storage reads.
#[derive(Clone, PartialEq, Message)]
struct ReadHints {
    #[prost(int64, tag = "1")]
    step_ms: i64,
    #[prost(string, tag = "2")]
    func: String,
    #[prost(int64, tag = "3")]
    start_ms: i64,
    #[prost(int64, tag = "4")]
    end_ms: i64,
    #[prost(string, repeated, tag = "5")]
    grouping: Vec<String>,
    #[prost(bool, tag = "6")]
    by: bool,
    #[prost(int64, tag = "7")]
    range_ms: i64,
}

/// `prompb.ReadResponse`.
#[derive(Clone, PartialEq, Message)]
struct ReadResponse {
    #[prost(message, repeated, tag = "1")]
    results: Vec<QueryResult>,
}

/// `prompb.QueryResult`.
#[derive(Clone, PartialEq, Message)]
struct QueryResult {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

/// `prompb.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
    /// `prompb.Exemplar`s, as they came.
    #[prost(bytes = "vec", repeated, tag = "3")]
    exemplars: Vec<Vec<u8>>,
    /// `prompb.Histogram`s (native histograms), as they came.
    #[prost(bytes = "vec", repeated, tag = "4")]
    histograms: Vec<Vec<u8>>,
}

/// `prompb.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// `prompb.Sample`.
#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// What a remote read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRead {
    /// The union of its queries' time ranges, cut at `now`.
    pub window: Window,
    /// Whether the reader takes streamed chunks (Thanos), which are never merged.
    pub streamed: bool,
}

/// The finest stretch a remote read is cut into, and the most stretches.
const FINEST: Millis = 1_000;
const MOST_STRETCHES: Millis = 10_000;

impl RemoteRead {
    /// How long each stretch of [`RemoteRead::steps`] is: a second, or longer for a window
    /// of more than 10,000 seconds.
    pub fn resolution(&self) -> Millis {
        let length = self.window.end.saturating_sub(self.window.start).saturating_add(1);
        FINEST.max(length.saturating_add(MOST_STRETCHES - 1) / MOST_STRETCHES)
    }

    /// The window as the steps of a range query, for routing by coverage: step `t` reads the
    /// stretch `[t - resolution + 1, t]`, and the steps together read the whole window once.
    pub fn steps(&self, now: Millis) -> Steps {
        let resolution = self.resolution();
        Steps {
            start: self.window.start.saturating_add(resolution - 1),
            end: self.window.end.saturating_add(resolution - 1),
            step: resolution,
            moving: vec![(1 - resolution, 0)],
            fixed: Vec::new(),
            now,
        }
    }

    /// The time range the steps from `first` to `last` (their times) of
    /// [`RemoteRead::steps`] read, within the window.
    pub fn stretch(&self, first: Millis, last: Millis) -> (Millis, Millis) {
        let start = first.saturating_sub(self.resolution() - 1).max(self.window.start);
        (start, last.min(self.window.end))
    }
}

/// Reads a remote-read request's body. Errs, saying why, on a body that is not a snappy
/// `ReadRequest`, is over [`MAX_DECODED`], or holds no query: the replica answers such a
/// request itself.
pub fn remote_read(body: &[u8], now: Millis) -> Result<RemoteRead, String> {
    let request = decode_request(body)?;
    let start = request.queries.iter().map(|q| q.start_timestamp_ms).min().ok_or("no query")?;
    let end = request.queries.iter().map(|q| q.end_timestamp_ms).max().ok_or("no query")?;
    // Nothing is stored before Prometheus's earliest time (nor after now): a read from the
    // beginning of time is a window of finite length.
    let (start, end) = (start.max(super::PROMETHEUS_MIN_TIME), end.min(now));
    if start > end {
        return Err("its queries' ranges end before they start".into());
    }
    Ok(RemoteRead { window: Window { start, end }, streamed: request.accepted_response_types.contains(&1) })
}

fn decode_request(body: &[u8]) -> Result<ReadRequest, String> {
    let length = snap::raw::decompress_len(body).map_err(|e| format!("not snappy: {e}"))?;
    if length > MAX_DECODED {
        return Err(format!("{length} bytes uncompressed, over {MAX_DECODED}"));
    }
    let decoded = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("not snappy: {e}"))?;
    ReadRequest::decode(decoded.as_slice()).map_err(|e| format!("not a ReadRequest: {e}"))
}

fn compress(message: &impl Message) -> Result<Vec<u8>, String> {
    snap::raw::Encoder::new().compress_vec(&message.encode_to_vec()).map_err(|e| format!("compressing: {e}"))
}

/// The same remote-read request asking only for `start..=end` (Unix milliseconds): each
/// query's range, and its hints' where they bound it, cut to the slice. A query outside the
/// slice stays in, with an empty range, so that answers keep one result per query.
pub fn slice_request(body: &[u8], start: Millis, end: Millis) -> Result<Vec<u8>, String> {
    let mut request = decode_request(body)?;
    for query in &mut request.queries {
        query.start_timestamp_ms = query.start_timestamp_ms.max(start);
        query.end_timestamp_ms = query.end_timestamp_ms.min(end);
        if let Some(hints) = &mut query.hints {
            // Prometheus reads its storage from the hints' start: a start of 0 would read the
            // time before the slice too.
            hints.start_ms = hints.start_ms.max(start);
            if hints.end_ms != 0 {
                hints.end_ms = hints.end_ms.min(end);
            }
        }
    }
    compress(&request)
}

/// The answers (`SAMPLES`, snappy protobuf) to the slices of one remote read, in time order,
/// joined: per query, each series (by label set, in label order as Prometheus sorts them)
/// with its samples, histograms and exemplars of every slice in turn. The largest answer
/// decoded is `limit` bytes uncompressed (the caller's budget).
pub fn join_answers(bodies: &[&[u8]], limit: usize) -> Result<Vec<u8>, String> {
    let mut total = 0usize;
    for body in bodies {
        total = total.saturating_add(snap::raw::decompress_len(body).map_err(|e| format!("not snappy: {e}"))?);
    }
    if total > limit {
        return Err(format!("answers of {total} bytes uncompressed together, over {limit}"));
    }
    let mut joined: Vec<BTreeMap<Vec<Label>, TimeSeries>> = Vec::new();
    for body in bodies {
        let decoded = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("not snappy: {e}"))?;
        let answer = ReadResponse::decode(decoded.as_slice()).map_err(|e| format!("not a ReadResponse: {e}"))?;
        if joined.is_empty() {
            joined.resize_with(answer.results.len(), Default::default);
        } else if joined.len() != answer.results.len() {
            return Err(format!("{} results where another slice had {}", answer.results.len(), joined.len()));
        }
        for (series_of_query, result) in joined.iter_mut().zip(answer.results) {
            for series in result.timeseries {
                match series_of_query.entry(series.labels.clone()) {
                    Entry::Vacant(slot) => {
                        slot.insert(series);
                    }
                    Entry::Occupied(mut kept) => {
                        let kept = kept.get_mut();
                        // Slices do not overlap; a sample at or before the last kept (a
                        // replica that read past its slice) is not counted twice.
                        let last = kept.samples.last().map_or(Millis::MIN, |s| s.timestamp);
                        kept.samples.extend(series.samples.into_iter().filter(|s| s.timestamp > last));
                        kept.histograms.extend(series.histograms);
                        kept.exemplars.extend(series.exemplars);
                    }
                }
            }
        }
    }
    let results = joined.into_iter().map(|series| QueryResult { timeseries: series.into_values().collect() }).collect();
    compress(&ReadResponse { results })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(queries: &[(i64, i64)], types: &[i32]) -> Vec<u8> {
        let request = ReadRequest {
            queries: queries
                .iter()
                .map(|&(start, end)| Query {
                    start_timestamp_ms: start,
                    end_timestamp_ms: end,
                    matchers: vec![b"\x12\x08__name__\x1a\x02up".to_vec()],
                    hints: Some(ReadHints { start_ms: start, end_ms: end, func: "rate".into(), ..Default::default() }),
                })
                .collect(),
            accepted_response_types: types.to_vec(),
        };
        compress(&request).unwrap()
    }

    fn series(job: &str, samples: &[i64]) -> TimeSeries {
        TimeSeries {
            labels: vec![
                Label { name: "__name__".into(), value: "up".into() },
                Label { name: "job".into(), value: job.into() },
            ],
            samples: samples.iter().map(|&t| Sample { value: t as f64, timestamp: t }).collect(),
            exemplars: vec![],
            histograms: vec![b"\x08\x01".to_vec()],
        }
    }

    fn answer(results: Vec<Vec<TimeSeries>>) -> Vec<u8> {
        compress(&ReadResponse { results: results.into_iter().map(|timeseries| QueryResult { timeseries }).collect() })
            .unwrap()
    }

    #[test]
    fn a_slice_asks_for_its_range_only_and_keeps_the_rest_as_it_was() {
        let original = body(&[(1_000, 9_000), (20_000, 30_000)], &[0]);
        let request = decode_request(&slice_request(&original, 4_000, 8_000).unwrap()).unwrap();
        let original = decode_request(&original).unwrap();
        assert_eq!((request.queries[0].start_timestamp_ms, request.queries[0].end_timestamp_ms), (4_000, 8_000));
        let hints = request.queries[0].hints.as_ref().unwrap();
        assert_eq!((hints.start_ms, hints.end_ms, hints.func.as_str()), (4_000, 8_000, "rate"));
        assert_eq!(request.queries[0].matchers, original.queries[0].matchers, "matchers byte for byte");
        let outside = &request.queries[1];
        assert!(outside.start_timestamp_ms > outside.end_timestamp_ms, "an empty range, still one query");
        assert_eq!(request.accepted_response_types, [0]);
    }

    #[test]
    fn slices_answers_join_series_by_series_in_time_order() {
        let first = answer(vec![vec![series("b", &[1, 2]), series("a", &[1])], vec![]]);
        let second = answer(vec![vec![series("a", &[3, 4]), series("c", &[4])], vec![series("x", &[3])]]);
        let joined = join_answers(&[&first, &second], 1 << 20).unwrap();
        let decoded =
            ReadResponse::decode(snap::raw::Decoder::new().decompress_vec(&joined).unwrap().as_slice()).unwrap();
        let first_query: Vec<(String, Vec<i64>, usize)> = decoded.results[0]
            .timeseries
            .iter()
            .map(|s| (s.labels[1].value.clone(), s.samples.iter().map(|x| x.timestamp).collect(), s.histograms.len()))
            .collect();
        assert_eq!(
            first_query,
            [("a".to_string(), vec![1, 3, 4], 2), ("b".to_string(), vec![1, 2], 1), ("c".to_string(), vec![4], 1)]
        );
        assert_eq!(decoded.results[1].timeseries.len(), 1);
        assert!(join_answers(&[&first, &answer(vec![vec![]])], 1 << 20).unwrap_err().contains("results"));
        assert!(join_answers(&[b"junk"], 1 << 20).is_err());
        assert!(join_answers(&[&first], 4).unwrap_err().contains("over"), "bounded by the budget");
    }

    #[test]
    fn the_steps_read_the_window_once_in_stretches_and_slices_map_back_to_it() {
        let read = RemoteRead { window: Window { start: 10_000, end: 19_999 }, streamed: false };
        let steps = read.steps(i64::MAX);
        assert_eq!(steps.count(), 10);
        let windows: Vec<Window> = (0..steps.count()).flat_map(|i| steps.windows_at(steps.time(i))).collect();
        assert_eq!(windows[0], Window { start: 10_000, end: 10_999 });
        assert_eq!(windows[9], Window { start: 19_000, end: 19_999 });
        assert!(windows.windows(2).all(|w| w[1].start == w[0].end + 1), "no gap, no overlap");
        assert_eq!(read.stretch(steps.time(2), steps.time(4)), (12_000, 14_999));
        // A day is cut into at most 10,000 stretches.
        let day = RemoteRead { window: Window { start: 0, end: 86_400_000 }, streamed: false };
        assert!(day.steps(i64::MAX).count() <= 10_001 && day.resolution() > 1_000);
    }

    #[test]
    fn a_read_from_the_beginning_of_time_is_cut_into_a_bounded_number_of_stretches() {
        let read = remote_read(&body(&[(i64::MIN, 5_000)], &[0]), 8_000).unwrap();
        assert!(read.steps(8_000).count() <= 10_001, "{}", read.steps(8_000).count());
        assert!(remote_read(&body(&[(9_000, 10_000)], &[0]), 8_000).is_err(), "wholly after now");
    }

    #[test]
    fn a_sample_two_slices_both_hold_is_kept_once() {
        let first = answer(vec![vec![series("a", &[1, 2, 3])]]);
        let second = answer(vec![vec![series("a", &[3, 4])]]);
        let joined = join_answers(&[&first, &second], 1 << 20).unwrap();
        let decoded =
            ReadResponse::decode(snap::raw::Decoder::new().decompress_vec(&joined).unwrap().as_slice()).unwrap();
        let times: Vec<i64> = decoded.results[0].timeseries[0].samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [1, 2, 3, 4]);
    }

    #[test]
    fn the_window_is_the_union_of_the_queries_cut_at_now() {
        let read = remote_read(&body(&[(1_000, 5_000), (3_000, 9_000)], &[0]), 8_000).unwrap();
        assert_eq!(read.window, Window { start: 1_000, end: 8_000 });
        assert!(!read.streamed);
        assert!(remote_read(&body(&[(0, 1)], &[1, 0]), 8_000).unwrap().streamed);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason_never_a_panic() {
        assert!(remote_read(b"", 0).unwrap_err().contains("snappy"), "empty");
        assert!(remote_read(b"\xff\xff\xff\xff\x0f", 0).is_err(), "a length over the limit");
        assert!(remote_read(&body(&[], &[]), 0).unwrap_err().contains("no query"));
        let mut truncated = body(&[(1, 2)], &[]);
        truncated.truncate(truncated.len() - 1);
        assert!(remote_read(&truncated, 0).is_err(), "truncated");
        // Snappy that holds something other than a ReadRequest.
        let garbage = snap::raw::Encoder::new().compress_vec(b"\x0a\xff\xff\xff\xff\xff").unwrap();
        assert!(remote_read(&garbage, 0).unwrap_err().contains("ReadRequest"));
        // A hundred thousand queries decompress past the limit: refused before decoding.
        let many = body(&vec![(1, 2); 100_000], &[]);
        assert!(remote_read(&many, 0).unwrap_err().contains("over"));
    }
}
