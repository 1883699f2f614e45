//! Asking a replica or mpp a query, and comparing answers as the suite does.

use serde_json::Value;

use crate::common::{Answer, get, post_form};
use crate::shapes::{Refused, Shape};

/// Unix milliseconds as Prometheus reads them in a parameter.
pub fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// What is asked: a range query (1 s steps) or an instant query.
#[derive(Debug, Clone, Copy)]
pub enum Ask {
    Range { start: i64, end: i64 },
    Instant { time: i64 },
}

impl Ask {
    pub fn path(self) -> &'static str {
        match self {
            Ask::Range { .. } => "/api/v1/query_range",
            Ask::Instant { .. } => "/api/v1/query",
        }
    }

    pub fn form(self, query: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("query", query);
        match self {
            Ask::Range { start, end } => {
                form.append_pair("start", &seconds(start)).append_pair("end", &seconds(end)).append_pair("step", "1")
            }
            Ask::Instant { time } => form.append_pair("time", &seconds(time)),
        };
        form.finish()
    }

    pub fn refused(self, shape: &Shape) -> bool {
        match self {
            Ask::Range { .. } => shape.refused != Refused::Never,
            Ask::Instant { .. } => shape.refused == Refused::Always,
        }
    }
}

/// Asks `base` (a replica or mpp) `query`, with GET or with a form POST.
pub async fn ask(base: &str, query: &str, what: Ask, post: bool) -> Result<Answer, String> {
    let form = what.form(query);
    let answer = if post {
        post_form(&format!("{base}{}", what.path()), &form).await
    } else {
        get(&format!("{base}{}?{form}", what.path())).await
    };
    answer.map_err(|e| format!("{query}: {base} did not answer: {e}"))
}

pub fn json(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
}

/// Whether two answers are the same: status and body byte for byte, except that the series of
/// an instant vector may come in any order. Prometheus writes those in the order of its own
/// hash maps, which changes from one evaluation to the next (`histogram_quantile` shows it),
/// so only the set is compared; `sort` and `sort_desc` are checked for their order apart.
pub fn same(ours: &Answer, theirs: &Answer) -> bool {
    ours.status == theirs.status && (ours.body == theirs.body || unordered(ours) == unordered(theirs))
}

/// An answer as JSON, with an instant vector's series sorted (see [`same`]).
pub fn unordered(answer: &Answer) -> Value {
    let mut answer = json(answer);
    if answer["data"]["resultType"] == "vector"
        && let Some(result) = answer["data"]["result"].as_array_mut()
    {
        result.sort_by_key(Value::to_string);
    }
    answer
}

/// Whether an instant answer of `sort(…)` or `sort_desc(…)` is in the order asked for (`NaN`
/// aside, which Prometheus places last); any other answer is.
pub fn in_order(query: &str, answer: &Answer) -> bool {
    let descending = query.starts_with("sort_desc(");
    if !descending && !query.starts_with("sort(") {
        return true;
    }
    let values: Vec<f64> = json(answer)["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| !v.is_nan())
        .collect();
    values.windows(2).all(|w| if descending { w[0] >= w[1] } else { w[0] <= w[1] })
}

/// The first difference of two bodies, with some context, for a failure message.
pub fn difference(ours: &[u8], theirs: &[u8]) -> String {
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
    let context =
        |body: &[u8]| String::from_utf8_lossy(&body[at.saturating_sub(60)..(at + 100).min(body.len())]).into_owned();
    format!(
        "{} vs {} bytes, first difference at byte {at}: mpp «{}» replica «{}»",
        ours.len(),
        theirs.len(),
        context(ours),
        context(theirs)
    )
}
