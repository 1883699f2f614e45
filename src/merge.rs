//! Merging the answers of two or more replicas to one Prometheus HTTP API request, for the rare
//! query whose time window no single replica's data covers (issue 9).
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
    if let Some(warning) = warning {
        notes.warn(warning.into());
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
        if name.0 == "warnings" && !added {
            let mut warnings: Vec<Text> = serde_json::from_str(value.get())
                .map_err(|e| MergeError::NotJson(format!("`warnings` is not a list of strings: {e}")))?;
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
        out.push_str(r#""warnings":"#);
        push_strings(&mut out, &[Text(warning.into())]);
    }
    out.push('}');
    Ok(out.into_bytes())
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
mod tests {
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
            let wanted: HashSet<i64> =
                mine.into_iter().chain(find(&other, metric)).flatten().map(|(t, _)| *t).collect();
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
        let (answer, merged) =
            merge_ok(Endpoint::QueryRange, fixture!("b-range-up-down"), &[fixture!("a-range-up-down")]);
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
        let (answer, merged) =
            merge_ok(Endpoint::Exemplars, fixture!("hand-b-exemplars"), &[fixture!("hand-a-exemplars")]);
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
        let merged =
            merge(Endpoint::QueryRange, part(fixture!("b-range-up")), &others, Some("merged")).expect("merges");
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
            (
                r#"{"status":"success","data":[],"warnings":["w"]}"#,
                r#"{"status":"success","data":[],"warnings":["w"]}"#,
            ),
            (
                r#"{ "status" : "error", "error": "x\u0041" }"#,
                r#"{"status":"error","error":"x\u0041","warnings":["w"]}"#,
            ),
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
}
