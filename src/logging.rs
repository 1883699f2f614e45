//! mpp's log lines, as every Prometheus project writes them: `--log.level` and
//! `--log.format logfmt|json`, one line per event on standard error, each with `ts` (RFC 3339,
//! UTC, milliseconds), `level`, `msg` and the event's fields. `MPP_LOG` (a `tracing` filter,
//! `mpp=debug,hyper=info`) and `-V` keep working and win over `--log.level`.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=... level=info msg="..." key=value`, Prometheus's default.
    #[default]
    Logfmt,
    /// One JSON object a line.
    Json,
}

/// Lines waiting for standard error at most; more are dropped and counted. With lines of at
/// most a few KiB (the slow-query line is cut at 4 KiB), a few tens of MiB.
const QUEUED_LINES: usize = 4_096;

/// The count of lines dropped because standard error did not take them in time, once
/// logging has started.
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> = std::sync::OnceLock::new();

/// Log lines dropped so far because standard error was blocked (`mpp_log_lines_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Keeps the thread that writes log lines; dropping it writes what is queued.
#[must_use = "dropping it stops the log's writer"]
pub struct Logging {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

/// Starts logging to standard error: `MPP_LOG`'s filter if set, else debug for mpp with
/// `verbose`, else `level`. A thread of its own writes the lines, so that a blocked standard
/// error (a full pipe to a slow log collector) holds no request: the lines that find its queue
/// full are dropped and counted ([`dropped_lines`]). Keep what it returns until exit.
pub fn init(level: LogLevel, format: LogFormat, verbose: bool) -> Logging {
    let default = match (verbose, level) {
        (true, _) | (_, LogLevel::Debug) => "mpp=debug,info",
        (false, LogLevel::Info) => "info",
        (false, LogLevel::Warn) => "warn",
        (false, LogLevel::Error) => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MPP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("mpp-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).event_format(Lines(format)).init();
    Logging { _writer: guard }
}

/// Formats each event as a line of `format`.
struct Lines(LogFormat);

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let level = level_name(*event.metadata().level());
        let line = match self.0 {
            LogFormat::Logfmt => logfmt(&ts, level, &fields),
            LogFormat::Json => json(&ts, level, &fields),
        };
        writer.write_str(&line)?;
        writeln!(writer)
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// An event's message and other fields, in the order given.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), serde_json::Value::String(format!("{value:?}"))));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name(), serde_json::Value::String(value.to_string())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.others.push((field.name(), value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.others.push((field.name(), value.into()));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.others.push((field.name(), value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.others.push((field.name(), value.into()));
    }
}

/// `ts=... level=... msg=... key=value ...`, values quoted where they hold a space, `=` or `"`.
fn logfmt(ts: &str, level: &str, fields: &Fields) -> String {
    let mut line = format!("ts={ts} level={level} msg={}", logfmt_value(&fields.message));
    for (name, value) in &fields.others {
        let text = match value {
            serde_json::Value::String(text) => logfmt_value(text),
            other => other.to_string(),
        };
        let _ = write!(line, " {name}={text}");
    }
    line
}

fn logfmt_value(text: &str) -> String {
    let plain = !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if plain { text.to_string() } else { serde_json::Value::String(text.to_string()).to_string() }
}

/// `{"ts": ..., "level": ..., "msg": ..., key: value, ...}`, in that order.
fn json(ts: &str, level: &str, fields: &Fields) -> String {
    let quoted = |text: &str| serde_json::Value::String(text.to_string()).to_string();
    let mut line = format!(r#"{{"ts":{},"level":{},"msg":{}"#, quoted(ts), quoted(level), quoted(&fields.message));
    for (name, value) in &fields.others {
        let _ = write!(line, ",{}:{value}", quoted(name));
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            message: "selection changed".into(),
            others: vec![
                ("reason", "most data: 12 samples".into()),
                ("backend", "http://a:9090".into()),
                ("count", 3.into()),
                ("quote", "say \"hi\"".into()),
            ],
        }
    }

    #[test]
    fn logfmt_quotes_what_needs_quoting() {
        let line = logfmt("2026-12-04T00:00:00.000Z", "info", &fields());
        assert_eq!(
            line,
            r#"ts=2026-12-04T00:00:00.000Z level=info msg="selection changed" reason="most data: 12 samples" backend=http://a:9090 count=3 quote="say \"hi\"""#
        );
    }

    #[test]
    fn json_lines_are_one_object_with_ts_level_msg_and_the_fields() {
        let line = json("2026-12-04T00:00:00.000Z", "warn", &fields());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["ts"], "2026-12-04T00:00:00.000Z");
        assert_eq!(value["level"], "warn");
        assert_eq!(value["msg"], "selection changed");
        assert_eq!(value["count"], 3);
        assert_eq!(value["backend"], "http://a:9090");
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"ts":"2026-12-04T00:00:00.000Z","level":"warn","msg":"#), "{line}");
    }
}
