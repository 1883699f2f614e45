//! Merging the answers of two or more replicas to one Prometheus HTTP API request, for the rare
//! query whose time window no single replica's data covers.
//!
//! It owns the answer formats of `query`, `query_range`, `series`, `labels`,
//! `label/<name>/values` and `query_exemplars` (<https://prometheus.io/docs/prometheus/latest/querying/api/>),
//! and the `warnings` that say an answer was merged. It does not decide when to merge or which
//! replicas to ask (routing by coverage does), and it does not bound memory: the caller bounds
//! the bodies before it calls [`merge`].
//!
//! The primary's answer is the answer; the others only fill what it lacks (a step of a range
//! query, a series, a label name), in their order of preference. Nothing is recomputed.
//!
//! Values, timestamps, label sets and histograms are copied from the replicas' answers byte
//! for byte (`serde_json`'s `RawValue`, its `raw_value` feature): a timestamp such as
//! `1700000000.540` or a value such as `"1e+300"` comes out exactly as Prometheus sent it,
//! which a trip through `f64` or `serde_json::Value` would not guarantee. Only the structure is
//! parsed, borrowing from the bodies; the one copy is the merged body written at the end.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

mod concat;
pub mod state;
pub use concat::{concatenate, concatenate_steps};

/// Which API answer is being merged: the endpoints routed by window.
pub use crate::window::Endpoint;

/// One replica's answer body (plain JSON, not compressed) and how to name it in warnings.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The body as the replica sent it.
    pub body: &'a [u8],
    /// The replica's name in warnings (its URL or id).
    pub replica: &'a str,
}

/// A merged answer.
#[derive(Debug)]
pub struct Merged {
    /// The answer to send: compact JSON `{"status":"success","data":...,"warnings":[...]}`.
    pub body: Vec<u8>,
    /// Points (steps of a matrix, samples of a vector, exemplars) or entries (series, label
    /// names or values) taken from the others, those of added series included.
    pub filled: usize,
    /// Series (of a matrix, vector, `series` answer or exemplar answer) the primary did not
    /// have at all, taken whole from the others.
    pub added_series: usize,
}

/// Why an answer cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeError {
    /// The body is not JSON, or not shaped like a Prometheus API answer (what is wrong).
    NotJson(String),
    /// The answer's `status` is not `success` (an error answer is sent as it is).
    NotSuccess,
    /// The answer does not fit the endpoint or the primary's answer (what differs).
    Mismatch(String),
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeError::NotJson(why) => write!(f, "not a Prometheus API answer: {why}"),
            MergeError::NotSuccess => f.write_str("its status is not success"),
            MergeError::Mismatch(why) => write!(f, "answers do not match: {why}"),
        }
    }
}

impl std::error::Error for MergeError {}

/// Merges `primary` with `others` (in order of preference) for `endpoint`; appends `warning`
/// (if Some) to the answer's `warnings`.
///
/// The primary's data is kept as it is; the others only add what it lacks. An other that is
/// not a success, not JSON or of another result type is skipped with a warning naming it.
/// Errors only when the primary cannot be merged (the caller then sends it as it is).
pub fn merge<'a>(
    endpoint: Endpoint,
    primary: Part<'a>,
    others: &[Part<'a>],
    warning: Option<&str>,
) -> Result<Merged, MergeError> {
    merge_with(endpoint, primary, others, Extra { warning, ..Extra::default() })
}

/// What mpp adds to a merged answer besides the replicas' own notes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// An `infos` entry: how a whole answer was made.
    pub info: Option<&'a str>,
    /// A `warnings` entry: why the answer may be incomplete.
    pub warning: Option<&'a str>,
    /// The client's `limit` on a `series`, `labels` or label values answer: the union is cut
    /// to it, with Prometheus's own warning, as one Prometheus holding both answers would.
    pub limit: Option<usize>,
}

/// Prometheus's warning on an answer cut to the client's `limit`.
pub const TRUNCATED: &str = "results truncated due to limit";

/// [`merge`], with `extra` added to the answer.
pub fn merge_with<'a>(
    endpoint: Endpoint,
    primary: Part<'a>,
    others: &[Part<'a>],
    extra: Extra<'_>,
) -> Result<Merged, MergeError> {
    let answer = Answer::parse(primary.body)?;
    let mut data = Data::parse(endpoint, answer.data)?;
    let mut notes = answer.notes;
    let mut counts = Counts::default();
    for other in others {
        let taken = Answer::parse(other.body).and_then(|answer| {
            data.absorb(Data::parse(endpoint, answer.data)?, &mut counts)?;
            Ok(answer.notes)
        });
        match taken {
            Ok(other_notes) => notes.extend(other_notes),
            Err(e) => notes.warn(format!("mpp: the answer of replica {} was not merged: {e}", other.replica).into()),
        }
    }
    if let Some(limit) = extra.limit
        && data.truncate(limit)
    {
        notes.warn(TRUNCATED.into());
    }
    if let Some(warning) = extra.warning {
        notes.warn(warning.to_string().into());
    }
    if let Some(info) = extra.info {
        push_new(&mut notes.infos, Text(info.to_string().into()));
    }
    let mut out = String::with_capacity(primary.body.len() + others.iter().map(|o| o.body.len()).sum::<usize>());
    out.push_str(r#"{"status":"success","data":"#);
    data.write(&mut out);
    notes.write(&mut out);
    out.push('}');
    Ok(Merged { body: out.into_bytes(), filled: counts.filled, added_series: counts.added_series })
}

/// Adds one entry to a Prometheus answer's `warnings` array (creating it), leaving the rest as it
/// was. Err if the body is not a JSON object.
///
/// A warning already in the array is not added twice. Works on error answers too.
pub fn add_warning(body: &[u8], warning: &str) -> Result<Vec<u8>, MergeError> {
    add_note(body, "warnings", warning)
}

/// Adds one entry to a Prometheus answer's `infos` array (creating it), as [`add_warning`]
/// does to `warnings`. Prometheus 2.54 split `infos` (the answer is whole; a note on how it was
/// made) from `warnings` (it may not be), and Grafana shows them apart; a client that knows
/// no `infos` ignores the field.
pub fn add_info(body: &[u8], info: &str) -> Result<Vec<u8>, MergeError> {
    add_note(body, "infos", info)
}

fn add_note(body: &[u8], field: &str, warning: &str) -> Result<Vec<u8>, MergeError> {
    let Fields(fields) = serde_json::from_slice(body).map_err(not_json)?;
    let mut out = String::with_capacity(body.len() + warning.len() + 16);
    let mut added = false;
    out.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, &name.0);
        out.push(':');
        if name.0 == field && !added {
            let mut warnings: Vec<Text> = serde_json::from_str(value.get())
                .map_err(|e| MergeError::NotJson(format!("`{field}` is not a list of strings: {e}")))?;
            if !warnings.iter().any(|w| w.0 == warning) {
                warnings.push(Text(warning.into()));
            }
            push_strings(&mut out, &warnings);
            added = true;
        } else {
            out.push_str(value.get());
        }
    }
    if !added {
        if !fields.is_empty() {
            out.push(',');
        }
        push_string(&mut out, field);
        out.push(':');
        push_strings(&mut out, &[Text(warning.into())]);
    }
    out.push('}');
    Ok(out.into_bytes())
}

/// Whether a successful answer carries `warnings` or `infos`.
pub fn notes(body: &[u8]) -> Result<bool, MergeError> {
    let answer = Answer::parse(body)?;
    Ok(!answer.notes.warnings.is_empty() || !answer.notes.infos.is_empty())
}

/// What was taken from the others.
#[derive(Default)]
struct Counts {
    filled: usize,
    added_series: usize,
}

/// A JSON string, borrowed from the body unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A label set, equal to another whatever the order of its names in the JSON text.
type LabelSet<'a> = BTreeMap<Text<'a>, Text<'a>>;

/// The envelope of an answer: `{"status":...,"data":...,"warnings":[...],"infos":[...]}`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    status: Text<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    warnings: Vec<Text<'a>>,
    #[serde(borrow, default)]
    infos: Vec<Text<'a>>,
}

/// A successful answer: its data, still unparsed, and its notes.
struct Answer<'a> {
    data: &'a RawValue,
    notes: Notes<'a>,
}

impl<'a> Answer<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, MergeError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(not_json)?;
        if envelope.status.0 != "success" {
            return Err(MergeError::NotSuccess);
        }
        let data = envelope.data.ok_or_else(|| MergeError::NotJson("a success without `data`".into()))?;
        Ok(Answer { data, notes: Notes { warnings: envelope.warnings, infos: envelope.infos } })
    }
}

/// The `warnings` and `infos` of the merged answer, each once, in the order first seen.
struct Notes<'a> {
    warnings: Vec<Text<'a>>,
    infos: Vec<Text<'a>>,
}

impl<'a> Notes<'a> {
    fn warn(&mut self, warning: Cow<'a, str>) {
        push_new(&mut self.warnings, Text(warning));
    }

    fn extend(&mut self, other: Notes<'a>) {
        other.warnings.into_iter().for_each(|w| push_new(&mut self.warnings, w));
        other.infos.into_iter().for_each(|i| push_new(&mut self.infos, i));
    }

    fn write(&self, out: &mut String) {
        for (name, list) in [("warnings", &self.warnings), ("infos", &self.infos)] {
            if !list.is_empty() {
                out.push_str(&format!(r#","{name}":"#));
                push_strings(out, list);
            }
        }
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// One answer's data, parsed as far as merging needs.
enum Data<'a> {
    /// A matrix (`query_range`, or `query` with a range selector), and the primary's `stats`.
    Matrix(Union<LabelSet<'a>, Series<'a>>, Option<&'a RawValue>),
    /// An instant vector: samples by label set, and the primary's `stats`.
    Vector(Union<LabelSet<'a>, &'a RawValue>, Option<&'a RawValue>),
    /// A scalar or string result: the primary's data as it is, and its `resultType`.
    Single(&'a RawValue, &'static str),
    /// A `series` answer: label sets.
    Series(Union<LabelSet<'a>, &'a RawValue>),
    /// Label names or values, sorted, each with its text as first seen.
    Strings(BTreeMap<Text<'a>, &'a RawValue>),
    /// Exemplars by series.
    Exemplars(Union<LabelSet<'a>, ExemplarSeries<'a>>),
}

/// The data of a `query` or `query_range` answer.
#[derive(Deserialize)]
struct QueryData<'a> {
    #[serde(rename = "resultType", borrow)]
    result_type: Text<'a>,
    #[serde(borrow)]
    result: &'a RawValue,
    #[serde(borrow, default)]
    stats: Option<&'a RawValue>,
}

impl<'a> Data<'a> {
    fn parse(endpoint: Endpoint, data: &'a RawValue) -> Result<Self, MergeError> {
        let text = data.get();
        Ok(match endpoint {
            Endpoint::Query | Endpoint::QueryRange => {
                let query: QueryData = parse(text)?;
                let result = query.result.get();
                match &*query.result_type.0 {
                    "matrix" => Data::Matrix(Union::from(matrix(result)?), query.stats),
                    _ if endpoint == Endpoint::QueryRange => {
                        return Err(MergeError::Mismatch(format!(
                            "a query_range answer of resultType {}",
                            query.result_type.0
                        )));
                    }
                    "vector" => Data::Vector(Union::from(samples(result)?), query.stats),
                    "scalar" => Data::Single(data, "scalar"),
                    "string" => Data::Single(data, "string"),
                    kind => return Err(MergeError::Mismatch(format!("unknown resultType {kind}"))),
                }
            }
            Endpoint::Series => Data::Series(Union::from(label_sets(text)?)),
            Endpoint::Labels | Endpoint::LabelValues => Data::Strings(strings(text)?),
            Endpoint::Exemplars => Data::Exemplars(Union::from(exemplars(text)?)),
            Endpoint::RemoteRead => return Err(MergeError::Mismatch("a remote read's answer is not JSON".into())),
        })
    }

    /// Adds what `other` has and `self` lacks; `self` is unchanged when they do not match.
    fn absorb(&mut self, other: Data<'a>, counts: &mut Counts) -> Result<(), MergeError> {
        match (self, other) {
            (Data::Matrix(mine, _), Data::Matrix(theirs, _)) => {
                mine.absorb(theirs.into_pairs(), counts, Series::fill_from)
            }
            (Data::Vector(mine, _), Data::Vector(theirs, _)) | (Data::Series(mine), Data::Series(theirs)) => {
                mine.absorb(theirs.into_pairs(), counts, |_, _| 0)
            }
            (Data::Single(_, mine), Data::Single(_, theirs)) if *mine == theirs => {}
            (Data::Strings(mine), Data::Strings(theirs)) => {
                for (key, raw) in theirs {
                    if let std::collections::btree_map::Entry::Vacant(slot) = mine.entry(key) {
                        slot.insert(raw);
                        counts.filled += 1;
                    }
                }
            }
            (Data::Exemplars(mine), Data::Exemplars(theirs)) => {
                mine.absorb(theirs.into_pairs(), counts, ExemplarSeries::fill_from)
            }
            (mine, theirs) => {
                return Err(MergeError::Mismatch(format!("resultType {} and {}", mine.kind(), theirs.kind())));
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self {
            Data::Matrix(..) => "matrix",
            Data::Vector(..) => "vector",
            Data::Single(_, kind) => kind,
            Data::Series(_) => "series",
            Data::Strings(_) => "strings",
            Data::Exemplars(_) => "exemplars",
        }
    }

    /// Cuts a `series`, `labels` or label values answer to `limit` entries (in the order it
    /// is written: label names and values sorted); true when something was cut.
    fn truncate(&mut self, limit: usize) -> bool {
        match self {
            Data::Series(sets) if sets.items.len() > limit => {
                sets.items.truncate(limit);
                true
            }
            Data::Strings(strings) if strings.len() > limit => {
                while strings.len() > limit {
                    strings.pop_last();
                }
                true
            }
            _ => false,
        }
    }

    /// Writes the data in the field order Prometheus uses, so an answer merged with nothing
    /// comes out byte for byte as it came in.
    fn write(&self, out: &mut String) {
        match self {
            Data::Matrix(series, stats) => {
                out.push_str(r#"{"resultType":"matrix","result":"#);
                push_list(out, &series.items, Series::write);
                push_stats(out, *stats);
            }
            Data::Vector(samples, stats) => {
                out.push_str(r#"{"resultType":"vector","result":"#);
                push_list(out, &samples.items, |out, raw| out.push_str(raw.get()));
                push_stats(out, *stats);
            }
            Data::Single(data, _) => out.push_str(data.get()),
            Data::Series(sets) => push_list(out, &sets.items, |out, raw| out.push_str(raw.get())),
            Data::Strings(strings) => push_list(out, strings.values(), |out, raw| out.push_str(raw.get())),
            Data::Exemplars(series) => push_list(out, &series.items, ExemplarSeries::write),
        }
    }
}

/// Items keyed by identity (a label set), in the order first seen; a later item with a key
/// already present is handed to a fill function instead.
struct Union<K, T> {
    items: Vec<T>,
    index: HashMap<K, usize>,
}

impl<K: Hash + Eq, T: Len> Union<K, T> {
    fn from(keyed: Vec<(K, T)>) -> Self {
        let mut union = Union { items: Vec::with_capacity(keyed.len()), index: HashMap::with_capacity(keyed.len()) };
        union.absorb(keyed, &mut Counts::default(), |_, _| 0);
        union
    }

    /// Adds the items whose key is new; `fill(kept, item)` takes what it wants from the others
    /// and says how many points it took.
    fn absorb(&mut self, other: impl IntoIterator<Item = (K, T)>, counts: &mut Counts, fill: fn(&mut T, T) -> usize) {
        for (key, item) in other {
            match self.index.entry(key) {
                Entry::Occupied(kept) => counts.filled += fill(&mut self.items[*kept.get()], item),
                Entry::Vacant(slot) => {
                    slot.insert(self.items.len());
                    counts.added_series += 1;
                    counts.filled += item.len();
                    self.items.push(item);
                }
            }
        }
    }

    fn into_pairs(self) -> impl Iterator<Item = (K, T)> {
        let mut keys: Vec<(usize, K)> = self.index.into_iter().map(|(key, i)| (i, key)).collect();
        keys.sort_unstable_by_key(|(i, _)| *i);
        // Every item was pushed with exactly one key: the keys, in order, pair with the items.
        keys.into_iter().map(|(_, key)| key).zip(self.items)
    }
}

/// How many points an item holds, for [`Merged::filled`].
trait Len {
    fn len(&self) -> usize;
}

impl Len for &RawValue {
    fn len(&self) -> usize {
        1
    }
}

/// One series of a matrix.
struct Series<'a> {
    metric: &'a RawValue,
    values: Vec<Point<'a>>,
    histograms: Vec<Point<'a>>,
}

/// One step of a series: `[timestamp, "value"]` or `[timestamp, {histogram}]`.
struct Point<'a> {
    millis: i64,
    timestamp: &'a RawValue,
    value: &'a RawValue,
}

#[derive(Deserialize)]
struct RawSeries<'a> {
    #[serde(borrow)]
    metric: &'a RawValue,
    #[serde(borrow, default)]
    values: Vec<(&'a RawValue, &'a RawValue)>,
    #[serde(borrow, default)]
    histograms: Vec<(&'a RawValue, &'a RawValue)>,
}

impl Len for Series<'_> {
    fn len(&self) -> usize {
        self.values.len() + self.histograms.len()
    }
}

impl<'a> Series<'a> {
    /// Takes from `other` the steps `self` has in neither `values` nor `histograms`.
    fn fill_from(&mut self, other: Series<'a>) -> usize {
        let before = self.len();
        let mut present: HashSet<i64> = self.values.iter().chain(&self.histograms).map(|p| p.millis).collect();
        self.values.extend(other.values.into_iter().filter(|p| present.insert(p.millis)));
        self.histograms.extend(other.histograms.into_iter().filter(|p| present.insert(p.millis)));
        let taken = self.len() - before;
        if taken > 0 {
            self.values.sort_by_key(|p| p.millis);
            self.histograms.sort_by_key(|p| p.millis);
        }
        taken
    }

    fn write(out: &mut String, series: &Series) {
        out.push_str(r#"{"metric":"#);
        out.push_str(series.metric.get());
        for (name, points) in [("values", &series.values), ("histograms", &series.histograms)] {
            if !points.is_empty() {
                out.push_str(&format!(r#","{name}":"#));
                push_list(out, points, |out, p| {
                    out.push('[');
                    out.push_str(p.timestamp.get());
                    out.push(',');
                    out.push_str(p.value.get());
                    out.push(']');
                });
            }
        }
        out.push('}');
    }
}

fn matrix(text: &str) -> Result<Vec<(LabelSet<'_>, Series<'_>)>, MergeError> {
    let series: Vec<RawSeries> = parse(text)?;
    series
        .into_iter()
        .map(|raw| {
            let series =
                Series { metric: raw.metric, values: points(raw.values)?, histograms: points(raw.histograms)? };
            Ok((parse(raw.metric.get())?, series))
        })
        .collect()
}

fn points<'a>(raw: Vec<(&'a RawValue, &'a RawValue)>) -> Result<Vec<Point<'a>>, MergeError> {
    raw.into_iter().map(|(timestamp, value)| Ok(Point { millis: millis(timestamp)?, timestamp, value })).collect()
}

/// A timestamp (seconds, a JSON number) as whole milliseconds, Prometheus's resolution, so
/// that `1700000000.54` and `1700000000.540` are the same step. Rust's parse rounds
/// correctly, and at any plausible timestamp an f64 is far finer than a millisecond.
fn millis(timestamp: &RawValue) -> Result<i64, MergeError> {
    let text = timestamp.get().trim();
    let wrong = || MergeError::NotJson(format!("timestamp {text} is not a number of seconds"));
    let seconds: f64 = text.parse().map_err(|_| wrong())?;
    let millis = (seconds * 1000.0).round();
    // `is_finite` also rejects NaN and infinities (`parse` takes "inf"; JSON has no such number).
    if !millis.is_finite() || millis.abs() >= 1e15 {
        return Err(wrong());
    }
    Ok(millis as i64)
}

/// An instant vector's samples, by label set.
fn samples(text: &str) -> Result<Vec<(LabelSet<'_>, &RawValue)>, MergeError> {
    #[derive(Deserialize)]
    struct Sample<'a> {
        #[serde(borrow)]
        metric: LabelSet<'a>,
    }
    let raw: Vec<&RawValue> = parse(text)?;
    raw.into_iter().map(|sample| Ok((parse::<Sample>(sample.get())?.metric, sample))).collect()
}

/// A `series` answer's label sets; `null` is none.
fn label_sets(text: &str) -> Result<Vec<(LabelSet<'_>, &RawValue)>, MergeError> {
    let raw: Option<Vec<&RawValue>> = parse(text)?;
    raw.unwrap_or_default().into_iter().map(|set| Ok((parse(set.get())?, set))).collect()
}

/// Label names or values, sorted (as Prometheus sorts them: by bytes); `null` is none.
fn strings(text: &str) -> Result<BTreeMap<Text<'_>, &RawValue>, MergeError> {
    let raw: Option<Vec<&RawValue>> = parse(text)?;
    let mut strings = BTreeMap::new();
    for string in raw.unwrap_or_default() {
        strings.entry(parse(string.get())?).or_insert(string);
    }
    Ok(strings)
}

/// The exemplars of one series.
struct ExemplarSeries<'a> {
    labels: &'a RawValue,
    exemplars: Vec<Exemplar<'a>>,
}

/// One exemplar as sent, and what identifies it within its series.
struct Exemplar<'a> {
    millis: i64,
    labels: LabelSet<'a>,
    raw: &'a RawValue,
}

impl Len for ExemplarSeries<'_> {
    fn len(&self) -> usize {
        self.exemplars.len()
    }
}

impl<'a> ExemplarSeries<'a> {
    /// Takes from `other` the exemplars (timestamp and labels) `self` lacks, sorted by time.
    fn fill_from(&mut self, other: ExemplarSeries<'a>) -> usize {
        let mut present: HashSet<(i64, LabelSet)> =
            self.exemplars.iter().map(|e| (e.millis, e.labels.clone())).collect();
        let before = self.exemplars.len();
        self.exemplars.extend(other.exemplars.into_iter().filter(|e| present.insert((e.millis, e.labels.clone()))));
        let taken = self.exemplars.len() - before;
        if taken > 0 {
            self.exemplars.sort_by_key(|e| e.millis);
        }
        taken
    }

    fn write(out: &mut String, series: &ExemplarSeries) {
        out.push_str(r#"{"seriesLabels":"#);
        out.push_str(series.labels.get());
        out.push_str(r#","exemplars":"#);
        push_list(out, &series.exemplars, |out, e| out.push_str(e.raw.get()));
        out.push('}');
    }
}

/// A `query_exemplars` answer's series, by label set; `null` is none.
fn exemplars(text: &str) -> Result<Vec<(LabelSet<'_>, ExemplarSeries<'_>)>, MergeError> {
    #[derive(Deserialize)]
    struct RawExemplarSeries<'a> {
        #[serde(rename = "seriesLabels", borrow)]
        series_labels: &'a RawValue,
        #[serde(borrow, default)]
        exemplars: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct RawExemplar<'a> {
        #[serde(borrow, default)]
        labels: LabelSet<'a>,
        #[serde(borrow)]
        timestamp: &'a RawValue,
    }
    let raw: Option<Vec<RawExemplarSeries>> = parse(text)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|series| {
            let exemplars = series
                .exemplars
                .into_iter()
                .map(|raw| {
                    let exemplar: RawExemplar = parse(raw.get())?;
                    Ok(Exemplar { millis: millis(exemplar.timestamp)?, labels: exemplar.labels, raw })
                })
                .collect::<Result<_, MergeError>>()?;
            Ok((parse(series.series_labels.get())?, ExemplarSeries { labels: series.series_labels, exemplars }))
        })
        .collect()
}

/// A JSON object's fields in their order, values unparsed (for [`add_warning`]).
struct Fields<'a>(Vec<(Text<'a>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor(PhantomData))
    }
}

fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, MergeError> {
    serde_json::from_str(text).map_err(not_json)
}

fn not_json(e: serde_json::Error) -> MergeError {
    MergeError::NotJson(e.to_string())
}

/// Writes `[a,b,...]`.
fn push_list<T>(out: &mut String, items: impl IntoIterator<Item = T>, mut write: impl FnMut(&mut String, T)) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, item);
    }
    out.push(']');
}

/// Ends a `query` answer's data, with the primary's `stats` if it had them.
fn push_stats(out: &mut String, stats: Option<&RawValue>) {
    if let Some(stats) = stats {
        out.push_str(r#","stats":"#);
        out.push_str(stats.get());
    }
    out.push('}');
}

fn push_strings(out: &mut String, strings: &[Text]) {
    push_list(out, strings, |out, s| push_string(out, &s.0));
}

fn push_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str always serializes to JSON"));
}

#[cfg(test)]
mod tests;
