//! How far a query may read, from its text alone: a bound that is never narrower than the
//! parsed window, found in a fraction of a microsecond per query where parsing takes tens.
//!
//! Dashboards with template variables and ad-hoc queries send expressions never seen before,
//! so the remembered windows of [`super::remembered`] do not help them, and a full parse of
//! each one halves what mpp serves while any replica has a hole anywhere. Yet almost every
//! such query reads the last minutes, far from a hole: a bound is enough to know that the
//! replica it would go to holds everything it reads. Only when the bound meets a hole is the
//! query parsed for its exact window.
//!
//! The bound adds up, along every path at once, what moves a read away from its evaluation
//! time: each range (`x[5m]`), each subquery's range (`[1h:1m]`), each offset and the
//! lookback. A selector's read lies within the sum of the ranges and offsets on its own path
//! through the expression, plus one lookback, so within the sum over all of them. Steps of a
//! subquery never widen it (they fall inside the subquery's range), nor do function
//! arguments (a number, never a duration, in the functions that take one).
//!
//! What the scan does not know it does not guess at: an `@` (which fixes times), a bracket or
//! an offset whose duration it cannot read, or text it cannot tokenise gives no bound, and the
//! query is parsed as before.

/// How far before and after its evaluation times `expr` reads at most (milliseconds, both at
/// least 0), with `lookback` as the lookback delta. `None` when the text alone does not tell
/// (see the module's documentation): the caller parses the query instead.
pub fn reach(expr: &str, lookback: i64) -> Option<(i64, i64)> {
    let bytes = expr.as_bytes();
    let (mut before, mut after) = (lookback.max(0), 0i64);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => i = after_quoted(bytes, i)?,
            b'`' => i += 1 + bytes[i + 1..].iter().position(|&b| b == b'`')? + 1,
            // A comment runs to the end of its line, which `\r` ends as `\n` does.
            b'#' => i = bytes[i..].iter().position(|&b| b == b'\n' || b == b'\r').map_or(bytes.len(), |end| i + end),
            // An `@` modifier fixes the evaluation time: only the parser can tell which.
            b'@' => return None,
            b'[' => {
                let close = i + bytes[i..].iter().position(|&b| b == b']')?;
                let inside = &expr[i + 1..close];
                // `x[5m]`, or a subquery's `[1h:1m]` or `[1h:]`: the range reads back.
                let range = inside.split_once(':').map_or(inside, |(range, _step)| range);
                // A millisecond more: a number of seconds is rounded where mpp truncates.
                before = before.saturating_add(duration(range)?).saturating_add(1);
                i = close + 1;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let end = i + bytes[i..].iter().position(|&b| !is_word(b)).unwrap_or(bytes.len() - i);
                let word = &expr[i..end];
                i = end;
                // `smoothed` and `anchored` (Prometheus 3's extended range selectors) read
                // past the evaluation time: the parser tells (or refuses, and mpp routes the
                // query by everything it holds).
                if word.eq_ignore_ascii_case("smoothed") || word.eq_ignore_ascii_case("anchored") {
                    return None;
                }
                // Keywords are read in any case, as Prometheus reads them. A label or metric
                // named `offset` is followed by no duration: the parser then tells.
                if word.eq_ignore_ascii_case("offset") {
                    let (offset, next) = offset_after(expr, i)?;
                    if offset >= 0 {
                        before = before.saturating_add(offset).saturating_add(1);
                    } else {
                        after = after.saturating_add(offset.saturating_neg()).saturating_add(1);
                    }
                    i = next;
                }
            }
            _ => i += 1,
        }
    }
    Some((before, after))
}

/// Whether `b` continues an identifier (`rate`, `http_requests_total`, `job:up:sum`).
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// The index just after the string opened at `open` (`"` or `'`, with backslash escapes).
fn after_quoted(bytes: &[u8], open: usize) -> Option<usize> {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The signed duration after an `offset` keyword that ends at `from`, and the index after it.
fn offset_after(expr: &str, from: usize) -> Option<(i64, usize)> {
    let bytes = expr.as_bytes();
    let skip_space = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = skip_space(from);
    let negative = match bytes.get(i) {
        Some(b'-') => true,
        Some(b'+') => false,
        _ => return offset_duration(expr, i),
    };
    i = skip_space(i + 1);
    let (duration, end) = offset_duration(expr, i)?;
    Some((if negative { duration.saturating_neg() } else { duration }, end))
}

/// The duration token starting at `start` (`5m`, `1h30m`, `300`, `1.5`), and its end; `None`
/// when it runs on into an identifier's characters.
fn offset_duration(expr: &str, start: usize) -> Option<(i64, usize)> {
    let bytes = expr.as_bytes();
    let len =
        bytes[start..].iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'.')).unwrap_or(bytes.len() - start);
    // Go reads `1_000` as a thousand: a token running on into an identifier's characters is
    // the parser's to read.
    if bytes.get(start + len).is_some_and(|&b| is_word(b)) {
        return None;
    }
    Some((duration(&expr[start..start + len])?, start + len))
}

/// A duration as PromQL writes one in a bracket or after `offset`, in milliseconds; `None` for
/// anything else (a negative one included: the parser tells what it means).
fn duration(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    super::parse_duration(text).ok().filter(|&millis| millis >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;
    const LOOKBACK: i64 = 5 * M;

    #[test]
    fn ranges_offsets_and_the_lookback_add_up() {
        assert_eq!(reach("up", LOOKBACK), Some((LOOKBACK, 0)));
        // Each range and offset counts a millisecond more (see `reach`).
        assert_eq!(reach("rate(x[5m])", LOOKBACK), Some((LOOKBACK + 5 * M + 1, 0)));
        assert_eq!(reach("x offset 1h", LOOKBACK), Some((LOOKBACK + 60 * M + 1, 0)));
        assert_eq!(reach("x offset -1h", LOOKBACK), Some((LOOKBACK, 60 * M + 1)));
        assert_eq!(reach("x OFFSET - 2m + y Offset +3m", LOOKBACK), Some((LOOKBACK + 3 * M + 1, 2 * M + 1)));
        assert_eq!(reach("x offset -1.005", 0), Some((0, 1005)), "1004 ms truncated, and one more");
        assert_eq!(
            reach("max_over_time(rate(x[5m])[1h:1m] offset 1d)", LOOKBACK),
            Some((LOOKBACK + 5 * M + 60 * M + 24 * 60 * M + 3, 0))
        );
        assert_eq!(reach("min_over_time(x[1h30m:])", 0), Some((90 * M + 1, 0)));
        assert_eq!(reach("x[300]", 0), Some((300_001, 0)), "a number is seconds");
        assert_eq!(reach("vector(1)", LOOKBACK), Some((LOOKBACK, 0)));
    }

    #[test]
    fn strings_and_comments_are_not_read() {
        let expr = "sum by (offset) (x{a=\"[1y] offset 1y @\", b='\\'[2y]', c=`[3y]`}) # x[4y] @\n + y[1m]";
        assert_eq!(reach(expr, 0), None, "`by (offset)`: a label named offset, which the parser tells");
        let expr = "x{a=\"[1y] offset 1y @\", b='\\'[2y]', c=`[3y]`} # x[4y] @\n + y[1m]";
        assert_eq!(reach(expr, 0), Some((M + 1, 0)));
        assert_eq!(reach("x # a comment\roffset 1d", 0), Some((24 * 60 * M + 1, 0)), "`\\r` ends a comment");
    }

    #[test]
    fn what_the_text_does_not_tell_is_left_to_the_parser() {
        for expr in [
            "x @ 1700000000",
            "x[5m] @ end()",
            "x[$__interval]",
            "x[-5m]",
            "x offset",
            "x offset foo",
            "x[5m",
            "x{a=\"unterminated}",
            "x{a=`unterminated}",
            "rate(x[5m] smoothed)",
            "x anchored",
            "x offset 1_000",
            "x # c\r@ 1700000000",
        ] {
            assert_eq!(reach(expr, LOOKBACK), None, "{expr}");
        }
    }

    /// The bound holds the parsed window of every expression the window tests use, and of
    /// nested and combined ones.
    #[test]
    fn the_bound_holds_the_parsed_window() {
        const T: i64 = 1_700_000_000_000;
        for expr in [
            "up",
            "rate(http_requests_total{job=\"api\"}[5m])",
            "sum by (job) (rate(x[5m] offset 1h)) / sum(rate(x[10m] offset -30m))",
            "max_over_time(rate(x[5m])[1h:1m] offset 1d)",
            "max_over_time((max_over_time(x[2m] offset -1m))[30m:5m] offset -10m)[2h:]",
            "x - x offset 1w",
            "histogram_quantile(0.9, sum by (le) (rate(h_bucket[1m])))",
            "absent_over_time(x[1d])",
            "label_replace(x offset 5m, \"a\", \"$1\", \"b\", \"(.*)\")",
            "predict_linear(x[1h], 3600)",
            "-x offset 2m",
            "1 + 2",
        ] {
            let window = super::super::expr_window(expr, T, T + 60 * M, LOOKBACK).unwrap();
            let (before, after) = reach(expr, LOOKBACK).unwrap_or_else(|| panic!("{expr}: no bound"));
            if !window.is_empty() {
                assert!(T - before <= window.start && window.end <= T + 60 * M + after, "{expr}: {window:?}");
            }
        }
    }

    #[test]
    fn no_input_panics() {
        for expr in [
            "[",
            "]",
            "[:",
            "x[:]",
            "offset",
            "offset -",
            "\"",
            "'\\",
            "`",
            "#",
            "x[5m:1m:1m]",
            "é[ü]",
            "x offset 9999999999999y",
        ] {
            let _ = reach(expr, LOOKBACK);
        }
    }
}
