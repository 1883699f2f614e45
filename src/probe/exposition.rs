//! A parser for the Prometheus text exposition format (version 0.0.4, and the OpenMetrics
//! text that Prometheus also serves), enough to read sample values out of a replica's
//! `/metrics`. The crates on offer drop samples whose label values hold `,` or `}`, or reject
//! valid input; a reader for this small grammar is shorter than working around them.

use std::fmt;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (for histograms and summaries, with its `_bucket`/`_sum`/... suffix).
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value; `NaN`, `+Inf` and `-Inf` included.
    pub value: f64,
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses every sample of an exposition; comments, `HELP`, `TYPE` and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError { line: index + 1, message })?;
        samples.push(sample);
    }
    Ok(samples)
}

/// Sums the values of every sample named `name` (over all its label sets); `None` when the
/// exposition has no such sample.
pub fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).reduce(|a, b| a + b)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let mut cursor = Cursor { rest: line };
    let mut name = if cursor.rest.starts_with('{') { String::new() } else { cursor.metric_name()? };
    let mut labels = Vec::new();
    if cursor.eat('{') {
        loop {
            cursor.skip_spaces();
            if cursor.eat('}') {
                break;
            }
            // A quoted name alone inside the braces is a UTF-8 metric name (Prometheus 3).
            if cursor.rest.starts_with('"') {
                if !name.is_empty() {
                    return Err("a quoted metric name after the metric name".into());
                }
                name = cursor.quoted()?;
            } else {
                let label = cursor.label_name()?;
                cursor.skip_spaces();
                if !cursor.eat('=') {
                    return Err(format!("expected '=' after label name '{label}'"));
                }
                cursor.skip_spaces();
                labels.push((label, cursor.quoted()?));
            }
            cursor.skip_spaces();
            if cursor.eat('}') {
                break;
            }
            if !cursor.eat(',') {
                return Err("expected ',' or '}' in the label set".into());
            }
        }
    }
    if name.is_empty() {
        return Err("missing metric name".into());
    }
    let mut fields = cursor.rest.split_ascii_whitespace();
    let value = fields.next().ok_or("missing sample value")?;
    let value = parse_value(value)?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>().map_err(|_| format!("bad timestamp '{ts}'"))?;
    }
    // OpenMetrics exemplars follow a '#'; nothing else may.
    match fields.next() {
        None | Some("#") => {}
        Some(extra) => return Err(format!("unexpected '{extra}' after the value")),
    }
    Ok(Sample { name, labels, value })
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => text.parse::<f64>().map_err(|_| format!("bad sample value '{text}'")),
    }
}

struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn take_while(&mut self, first: fn(char) -> bool, more: fn(char) -> bool) -> Option<String> {
        let mut chars = self.rest.char_indices();
        match chars.next() {
            Some((_, c)) if first(c) => {}
            _ => return None,
        }
        let end = chars.find(|&(_, c)| !more(c)).map_or(self.rest.len(), |(i, _)| i);
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word.to_string())
    }

    fn metric_name(&mut self) -> Result<String, String> {
        self.take_while(
            |c| c.is_ascii_alphabetic() || c == '_' || c == ':',
            |c| c.is_ascii_alphanumeric() || c == '_' || c == ':',
        )
        .ok_or_else(|| "expected a metric name".to_string())
    }

    fn label_name(&mut self) -> Result<String, String> {
        self.take_while(|c| c.is_ascii_alphabetic() || c == '_', |c| c.is_ascii_alphanumeric() || c == '_')
            .ok_or_else(|| "expected a label name".to_string())
    }

    /// A double-quoted string with `\\`, `\"` and `\n` escapes.
    fn quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err("expected '\"'".into());
        }
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, other)) => {
                        // The format leaves other escapes undefined; keep them as written.
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_2_split_counters() {
        let text = "# HELP prometheus_tsdb_head_samples_appended_total Total.\n\
            # TYPE prometheus_tsdb_head_samples_appended_total counter\n\
            prometheus_tsdb_head_samples_appended_total{type=\"float\"} 1.5e3\n\
            prometheus_tsdb_head_samples_appended_total{type=\"histogram\"} 20\n\
            process_start_time_seconds 1.7e9\n";
        let samples = parse(text).unwrap();
        assert_eq!(sum(&samples, "prometheus_tsdb_head_samples_appended_total"), Some(1520.0));
        assert_eq!(sum(&samples, "process_start_time_seconds"), Some(1.7e9));
        assert_eq!(sum(&samples, "absent"), None);
    }

    #[test]
    fn label_values_keep_commas_braces_and_escapes() {
        let s = parse(r#"m{a="x,}{y",b="q\"uote\\n\n",} 1 1700000000000"#).unwrap();
        assert_eq!(s[0].labels[0], ("a".into(), "x,}{y".into()));
        assert_eq!(s[0].labels[1], ("b".into(), "q\"uote\\n\n".into()));
    }

    #[test]
    fn special_values_and_openmetrics_eof() {
        let s = parse("a NaN\nb +Inf\nc -Inf\n# EOF\n").unwrap();
        assert!(s[0].value.is_nan());
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, f64::NEG_INFINITY);
    }

    #[test]
    fn utf8_metric_names_in_braces() {
        let s = parse(r#"{"my.metric",job="x"} 3"#).unwrap();
        assert_eq!(s[0].name, "my.metric");
        assert_eq!(s[0].labels, vec![("job".into(), "x".into())]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("ok 1\nbad{a=\"x\" 1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("m{a=x} 1").is_err());
        assert!(parse("m one").is_err());
        assert!(parse("m{a=\"unterminated} 1").is_err());
    }

    #[test]
    fn missing_final_newline_and_untyped_metrics_are_fine() {
        assert_eq!(parse("untyped_metric 4").unwrap()[0].value, 4.0);
    }
}
