//! The query log (`--query-log-file`) and the slow-query log (`--slow-query-threshold`): one
//! JSON line per API query in the shape of Prometheus's own query log (`httpRequest`,
//! `params`, `stats.timings`, `ts`), with what mpp knows besides (`mpp`: the replica or
//! replicas that answered, the ones that failed first, whether the answer was merged or
//! sliced, its status and warning).
//!
//! Nothing here runs unless one of the two is turned on. The request path only builds the
//! line and hands it to a bounded queue; a thread of its own writes the file, so a slow disk
//! never holds a request: a line that finds the queue full is dropped and counted
//! (`mpp_query_log_dropped_total`). The file is opened again on SIGHUP, as Prometheus does,
//! so that it can be rotated.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Response, header};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::headers::{self, FAILOVER_FROM, MERGED_FROM, MPP_WARNING, SERVED_BY};
use super::slice::SLICES;
use crate::api::Api;

/// Lines waiting to be written at most; more are dropped.
const QUEUE: usize = 4096;

/// What the query log and the slow-query log were asked for.
#[derive(Debug)]
pub struct QueryLog {
    /// The queue to the file's writer, when `--query-log-file` is given.
    file: Option<SyncSender<String>>,
    /// `--slow-query-threshold`: queries at least this slow are logged at warn.
    slow: Option<Duration>,
    dropped: Counter,
}

/// A query on its way, as the log will tell it: taken from the request when it arrives.
#[derive(Debug)]
pub struct Pending {
    ts: SystemTime,
    /// An instant query, whose `time` Prometheus's log gives as `start` and `end`, `step` 0.
    instant: bool,
    method: String,
    path: String,
    query: Option<String>,
    client: IpAddr,
    user: Option<String>,
    /// The form body, when the query came as a form POST (set once it has been read).
    form: std::sync::OnceLock<Bytes>,
}

impl QueryLog {
    /// The logs as asked: `None` when neither is. Opens the file (an error names it), and
    /// starts its writer, which opens it again whenever `reopen` changes (SIGHUP).
    pub fn start(
        file: Option<&Path>,
        slow: Option<Duration>,
        dropped: Counter,
        reopen: watch::Receiver<u64>,
    ) -> anyhow::Result<Option<QueryLog>> {
        if file.is_none() && slow.is_none() {
            return Ok(None);
        }
        let file = match file {
            Some(path) => {
                let out = open(path)?;
                let (lines, queue) = sync_channel(QUEUE);
                let path = path.to_path_buf();
                std::thread::Builder::new()
                    .name("mpp-query-log".into())
                    .spawn(move || write_lines(&path, out, &queue, reopen))
                    .map_err(|e| anyhow::anyhow!("cannot start the query log's writer: {e}"))?;
                Some(lines)
            }
            None => None,
        };
        Ok(Some(QueryLog { file, slow, dropped }))
    }

    /// A query about to be answered, if it is one the log tells of (the API's reads).
    pub fn begin(
        &self,
        api: Api,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Option<Pending> {
        let Api::Read(endpoint) = api else { return None };
        Some(Pending {
            ts: SystemTime::now(),
            instant: endpoint == crate::api::Endpoint::Query,
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            client,
            user: basic_auth_user(headers),
            form: std::sync::OnceLock::new(),
        })
    }

    /// Logs the query `pending` with its answer, `took` after it arrived.
    pub fn finish<B>(&self, pending: &Pending, answer: &Response<B>, took: Duration) {
        let slow = self.slow.is_some_and(|threshold| took >= threshold);
        if self.file.is_none() && !slow {
            return;
        }
        let line = pending.line(answer, took);
        if slow {
            tracing::warn!(query = %line, took = ?took, "slow query");
        }
        if let Some(file) = &self.file {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = file.try_send(line.to_string()) {
                self.dropped.inc();
            }
        }
    }
}

impl Pending {
    /// Keeps the body of a form POST, for its parameters.
    pub fn read_body(&self, headers: &HeaderMap, body: &Bytes) {
        if headers::form_body(headers, body).is_some() {
            let _ = self.form.set(body.clone());
        }
    }

    /// The log line.
    fn line<B>(&self, answer: &Response<B>, took: Duration) -> Value {
        let answered = answer.headers();
        let text = |name: &http::HeaderName| answered.get(name).and_then(|v| v.to_str().ok());
        let list = |name: &http::HeaderName| -> Vec<&str> {
            text(name).map(|v| v.split(", ").filter(|s| !s.is_empty()).collect()).unwrap_or_default()
        };
        let merged = list(&MERGED_FROM);
        let sliced = list(&SLICES);
        let failed = list(&FAILOVER_FROM);
        let (how, replicas) = if !merged.is_empty() {
            ("merged", merged)
        } else if !sliced.is_empty() {
            ("sliced", sliced)
        } else {
            ("one", text(&SERVED_BY).into_iter().collect())
        };
        let mut request = Map::new();
        request.insert("clientIP".into(), json!(self.client.to_string()));
        request.insert("method".into(), json!(self.method));
        request.insert("path".into(), json!(self.path));
        if let Some(user) = &self.user {
            request.insert("user".into(), json!(user));
        }
        let mut mpp = Map::new();
        mpp.insert("status".into(), json!(answer.status().as_u16()));
        mpp.insert("answered".into(), json!(how));
        mpp.insert("replicas".into(), json!(replicas));
        mpp.insert("attempts".into(), json!(failed.len() + 1));
        if !failed.is_empty() {
            mpp.insert("failedReplicas".into(), json!(failed));
        }
        if let Some(warning) = text(&MPP_WARNING) {
            mpp.insert("warning".into(), json!(warning));
        }
        json!({
            "httpRequest": request,
            "params": self.params(),
            "stats": {"timings": {"execTotalTime": took.as_secs_f64()}},
            "ts": rfc3339(self.ts),
            "mpp": mpp,
        })
    }

    /// The query's parameters, from its query string and form body: times as RFC 3339,
    /// `step` in whole seconds, as Prometheus writes them (an instant query's `time` as `start` and
    /// `end`, with `step` 0; the arrival when it names none); `match[]` as a list; anything
    /// that does not read as its kind as it was sent.
    fn params(&self) -> Map<String, Value> {
        let mut params = self.sent_params();
        if self.instant {
            let time = params.remove("time").unwrap_or_else(|| json!(rfc3339(self.ts)));
            params.insert("start".into(), time.clone());
            params.insert("end".into(), time);
            params.insert("step".into(), json!(0));
        }
        params
    }

    /// The parameters as sent, read as [`Pending::params`] says.
    fn sent_params(&self) -> Map<String, Value> {
        let mut params = Map::new();
        let query = self.query.as_deref().unwrap_or_default().as_bytes();
        let form = self.form.get().map_or(&[][..], |body| &body[..]);
        for (name, value) in form_urlencoded::parse(query).chain(form_urlencoded::parse(form)) {
            let value = match &*name {
                "start" | "end" | "time" => crate::window::parse_time(&value)
                    .ok()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(|| json!(value), |t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                // Whole seconds, as Prometheus writes them (`int64(step / time.Second)`).
                "step" => crate::window::parse_duration(&value).map_or_else(|_| json!(value), |ms| json!(ms / 1000)),
                _ => json!(value),
            };
            if name == "match[]" {
                let list = params.entry("match[]").or_insert_with(|| json!([]));
                if let Value::Array(list) = list {
                    list.push(value);
                }
            } else {
                params.insert(name.into_owned(), value);
            }
        }
        params
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The user of a basic auth `Authorization` header (the web config's users; never the
/// password).
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    Some(decoded.split_once(':').map_or(decoded.as_str(), |(user, _)| user).to_owned())
}

fn open(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the query log file {}: {e}", path.display()))?;
    Ok(BufWriter::new(file))
}

/// The writer's thread: writes each line as it comes, flushing when the queue is empty;
/// opens the file again when `reopen` changes. Ends when mpp does.
fn write_lines(path: &Path, mut out: BufWriter<File>, queue: &Receiver<String>, mut reopen: watch::Receiver<u64>) {
    let mut failing = false;
    while let Ok(line) = queue.recv() {
        if reopen.has_changed().unwrap_or(false) {
            reopen.mark_unchanged();
            let _ = out.flush();
            match open(path) {
                Ok(reopened) => out = reopened,
                Err(error) => {
                    tracing::error!(%error, "cannot open the query log file again; writing on to the old one")
                }
            }
        }
        let mut written = writeln!(out, "{line}");
        while let Ok(line) = queue.try_recv() {
            written = written.and_then(|()| writeln!(out, "{line}"));
        }
        written = written.and_then(|()| out.flush());
        match written {
            Err(error) if !failing => {
                tracing::error!(%error, file = %path.display(), "cannot write the query log");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt as _;

    use http::{HeaderValue, Method, Uri};

    use super::*;

    fn pending(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Pending {
        let log = QueryLog { file: None, slow: None, dropped: Counter::default() };
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        let api = Api::of(uri.path());
        let pending = log
            .begin(api, &Method::from_bytes(method.as_bytes()).unwrap(), &uri, &map, "10.0.0.7".parse().unwrap())
            .expect("an API read");
        pending.read_body(&map, &Bytes::from(body.to_owned()));
        pending
    }

    #[test]
    fn params_are_written_as_prometheus_writes_them() {
        let range = pending(
            "POST",
            "/api/v1/query_range",
            &[("content-type", "application/x-www-form-urlencoded")],
            "query=rate(up%5B5m%5D)&start=1700000000&end=2023-11-14T23:13:20.5Z&step=1m",
        );
        let params = range.params();
        assert_eq!(params["query"], "rate(up[5m])");
        assert_eq!(params["start"], "2023-11-14T22:13:20.000Z");
        assert_eq!(params["end"], "2023-11-14T23:13:20.500Z");
        assert_eq!(params["step"], 60);

        let instant = pending("GET", "/api/v1/query?query=up&time=1700000000.25", &[], "");
        let params = instant.params();
        assert_eq!(
            (params["start"].as_str(), params["end"].as_str()),
            (Some("2023-11-14T22:13:20.250Z"), Some("2023-11-14T22:13:20.250Z"))
        );
        assert_eq!(params["step"], 0);
        assert!(!params.contains_key("time"));

        let series =
            pending("GET", "/api/v1/series?match[]=up&match[]=process_start_time_seconds&start=garbage", &[], "");
        let params = series.params();
        assert_eq!(params["match[]"], json!(["up", "process_start_time_seconds"]));
        assert_eq!(params["start"], "garbage", "what does not read as a time is given as sent");

        let json_body = pending("POST", "/api/v1/query", &[("content-type", "application/json")], "query=secret");
        assert!(!json_body.params().contains_key("query"), "only a form body holds parameters");
    }

    #[test]
    fn only_the_apis_reads_are_logged() {
        let log = QueryLog { file: None, slow: None, dropped: Counter::default() };
        let (uri, headers, ip) = ("/api/v1/write".parse().unwrap(), HeaderMap::new(), "::1".parse().unwrap());
        assert!(log.begin(Api::of("/api/v1/write"), &Method::POST, &uri, &headers, ip).is_none());
        assert!(log.begin(Api::of("/federate"), &Method::GET, &"/federate".parse().unwrap(), &headers, ip).is_none());
    }

    #[test]
    fn a_line_names_the_client_the_user_and_what_mpp_did() {
        // "grafana:open sesame" in base64.
        let query =
            pending("GET", "/api/v1/query?query=up", &[("authorization", "Basic Z3JhZmFuYTpvcGVuIHNlc2FtZQ==")], "");
        let answer = Response::builder()
            .status(200)
            .header(&MERGED_FROM, "http://a:9090, http://b:9090")
            .header(&FAILOVER_FROM, "http://c:9090")
            .header(&MPP_WARNING, "merged over its bound")
            .body(())
            .unwrap();
        let line = query.line(&answer, Duration::from_millis(1500));
        assert_eq!(
            line["httpRequest"],
            json!({"clientIP": "10.0.0.7", "method": "GET", "path": "/api/v1/query", "user": "grafana"})
        );
        assert_eq!(line["stats"]["timings"]["execTotalTime"], 1.5);
        assert_eq!(line["mpp"]["answered"], "merged");
        assert_eq!(line["mpp"]["replicas"], json!(["http://a:9090", "http://b:9090"]));
        assert_eq!(line["mpp"]["failedReplicas"], json!(["http://c:9090"]));
        assert_eq!(line["mpp"]["attempts"], 2);
        assert_eq!(line["mpp"]["warning"], "merged over its bound");
        assert!(!line.to_string().contains("sesame"), "never the password");

        let one = Response::builder().status(422).header(&SERVED_BY, "http://a:9090").body(()).unwrap();
        let line = query.line(&one, Duration::ZERO);
        assert_eq!((line["mpp"]["answered"].as_str(), line["mpp"]["status"].as_u64()), (Some("one"), Some(422)));
        assert_eq!(line["mpp"]["replicas"], json!(["http://a:9090"]));
    }

    #[test]
    fn a_writer_that_cannot_keep_up_drops_lines_and_counts_them_and_never_blocks() {
        // A FIFO that nobody reads: the writer blocks once the pipe is full, as on a dead disk.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("queries");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo (coreutils) is installed");
        assert!(made.success());
        // Opened for reading first (without blocking), so that the log's open does not wait.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_nonblock())
            .open(&fifo)
            .expect("open the FIFO for reading");
        let dropped = Counter::default();
        let (_asks, reopen) = watch::channel(0);
        let log = QueryLog::start(Some(&fifo), None, dropped.clone(), reopen).unwrap().unwrap();
        let query = pending("GET", "/api/v1/query?query=up", &[], "");
        let answer = Response::builder().status(200).body(()).unwrap();
        for _ in 0..(QUEUE + 2000) {
            log.finish(&query, &answer, Duration::ZERO);
        }
        assert!(dropped.get() > 0, "lines beyond the queue and the pipe are dropped");
    }

    /// `O_NONBLOCK` on Linux.
    fn libc_nonblock() -> i32 {
        0o4000
    }
}
