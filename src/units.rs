//! Units of the command line: durations in Go's syntax and byte sizes, parsed and printed.
//! Their own module because the configuration, the strategies, the web config and the
//! answers' error texts all need them, and none of those should depend on another for it.

use std::time::Duration;

/// Parses a duration in Go's syntax (`500ms`, `10s`, `1m30s`, `2h`, `1.5h`; units `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), as the original mpp's flags take them. Written here rather
/// than taken from `humantime`, which accepts other syntax (`2 days`) and panicked on
/// overflowing input found by fuzzing.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const HINT: &str = "expected e.g. 10s, 500ms, 1m30s";
    let text = value.trim();
    let bad = |why: &str| format!("'{text}' is not a duration ({why}); {HINT}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(bad("negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        rest = after;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad(&format!("unknown unit '{unit}'"))),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(bad("expected a number before the unit"));
        }
        let too_long = || bad("out of range");
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_long())? };
        // Digits beyond the 18th of a fraction are below a nanosecond for any unit here.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| too_long())?;
            digits * scale / 10u128.pow(fraction.len() as u32)
        };
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .filter(|n| *n <= u128::from(u64::MAX))
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats a duration the way [`parse_duration`] reads it, without zero parts: `30h`,
/// `1h30m`, `1m0.5s` is written `1m500ms`. `parse_duration(&format_duration(d)) == d`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        if nanos % 1_000_000 == 0 {
            out.push_str(&format!("{}ms", nanos / 1_000_000));
        } else if nanos % 1_000 == 0 {
            out.push_str(&format!("{}us", nanos / 1_000));
        } else {
            out.push_str(&format!("{nanos}ns"));
        }
    }
    out
}

/// A size in bytes as a person reads it: `512 B`, `3.2 KiB`, `250.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a byte size: a plain number of bytes, or a number with `KiB`, `MiB`, `GiB` (also
/// `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: u64 =
        digits.parse().map_err(|_| format!("'{value}' is not a size; expected e.g. 16MiB, 512KiB, 1048576"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("'{value}' has an unknown unit '{other}'; use KiB, MiB or GiB")),
    };
    number.checked_mul(factor).filter(|n| *n > 0).ok_or_else(|| format!("'{value}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("300us").unwrap(), Duration::from_micros(300));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["-1s", "ten", "10", "1d", "1h 30m", "", "s", ".s", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_print_as_they_parse() {
        for (d, text) in [
            (Duration::from_secs(108_000), "30h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_millis(60_500), "1m500ms"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }

    #[test]
    fn overflowing_durations_are_errors_not_panics() {
        // Found by fuzzing: humantime 2.4 panicked on this.
        let input = format!("{}50s0.50s3.50s70000088z627n2662726w", "0".repeat(221));
        assert!(parse_duration(&input).is_err());
        assert!(parse_duration("99999999999999999999999999999999999999999h").unwrap_err().contains("out of range"));
        assert!(parse_duration("5124096h").unwrap_err().contains("out of range"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }
}
