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

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::headers::{FAILOVER_FROM, MERGED_FROM, MPP_CACHE, MPP_WARNING, SERVED_BY};
use super::slice::SLICES;
use crate::api::Api;

/// Lines waiting to be written at most; more are dropped.
const QUEUE: usize = 4096;
/// The most of a query's line the slow-query log writes.
const SLOW_LINE_MAX: usize = 4096;

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
                let lost = dropped.clone();
                std::thread::Builder::new()
                    .name("mpp-query-log".into())
                    .spawn(move || write_lines(&path, out, &queue, reopen, &lost))
                    .map_err(|e| anyhow::anyhow!("cannot start the query log's writer: {e}"))?;
                Some(lines)
            }
            None => None,
        };
        Ok(Some(QueryLog { file, slow, dropped }))
    }

    /// A query about to be answered, if it is one the log tells of (the API's reads); `user`
    /// is the one the web config's basic auth admitted, if any.
    pub fn begin(
        &self,
        api: Api,
        method: &http::Method,
        uri: &http::Uri,
        user: Option<&str>,
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
            user: user.map(str::to_owned),
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
            // Cut: a client's padded parameters must not make log lines (queued while standard
            // error is slow) of a hundred KiB each.
            let mut text = line.to_string();
            if text.len() > SLOW_LINE_MAX {
                let cut = (0..=SLOW_LINE_MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                text.truncate(cut);
                text.push_str("...(cut)");
            }
            tracing::warn!(query = %text, took = ?took, "slow query");
        }
        if let Some(file) = &self.file {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = file.try_send(line.to_string()) {
                self.dropped.inc();
            }
        }
    }
}

impl Pending {
    /// Keeps the body of a form, for its parameters: as Go's `ParseForm` reads one, a POST,
    /// PUT or PATCH whose media type is `application/x-www-form-urlencoded`.
    pub fn read_body(&self, headers: &HeaderMap, body: &Bytes) {
        let form_method = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        let media_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|v| {
            let media_type = v.split(';').next().unwrap_or_default();
            media_type.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        if form_method && media_type == Some(true) {
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
        // Each replica that took part answered one attempt; each failed one cost another. A
        // cache hit sent none (its replicas are those that answered when it was kept).
        let hit = text(&MPP_CACHE) == Some("hit");
        mpp.insert("attempts".into(), json!(if hit { 0 } else { failed.len() + replicas.len() }));
        if !failed.is_empty() {
            mpp.insert("failedReplicas".into(), json!(failed));
        }
        if let Some(warning) = text(&MPP_WARNING) {
            mpp.insert("warning".into(), json!(warning));
        }
        if let Some(cache) = text(&MPP_CACHE) {
            mpp.insert("cache".into(), json!(cache));
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

    /// The parameters as Prometheus reads them (Go's `FormValue`: the form body's first
    /// value, else the URL's; pairs Go skips skipped), read as [`Pending::params`] says; every
    /// value of `match[]`. Each value is cut at [`MAX_VALUE`] bytes and at most [`MAX_PARAMS`]
    /// names are kept, so that a line stays small whatever the request.
    fn sent_params(&self) -> Map<String, Value> {
        let mut params = Map::new();
        let query = self.query.as_deref().unwrap_or_default().as_bytes();
        let form = self.form.get().map_or(&[][..], |body| &body[..]);
        for (name, value) in crate::window::form_pairs(form).chain(crate::window::form_pairs(query)) {
            let value = match &*name {
                "start" | "end" | "time" => crate::window::parse_time(&value)
                    .ok()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(|| cut(&value), |t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                // Whole seconds, as Prometheus writes them (`int64(step / time.Second)`).
                "step" => crate::window::parse_duration(&value).map_or_else(|_| cut(&value), |ms| json!(ms / 1000)),
                _ => cut(&value),
            };
            if name == "match[]" {
                let list = params.entry("match[]").or_insert_with(|| json!([]));
                if let Value::Array(list) = list
                    && list.len() < MAX_PARAMS
                {
                    list.push(value);
                }
            } else if !params.contains_key(&*name) && params.len() < MAX_PARAMS {
                params.insert(cut(&name).as_str().unwrap_or_default().to_owned(), value);
            }
        }
        params
    }
}

/// The most bytes of one parameter's value (or name) a line gives; the rest is cut, and said.
const MAX_VALUE: usize = 4096;
/// The most parameters (and `match[]` values) a line gives.
const MAX_PARAMS: usize = 32;

/// `text` as a JSON string, cut at [`MAX_VALUE`] bytes with a note of its length.
fn cut(text: &str) -> Value {
    if text.len() <= MAX_VALUE {
        return json!(text);
    }
    let mut end = MAX_VALUE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!(format!("{}... (cut; {} bytes)", &text[..end], text.len()))
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The user the web config's basic auth admitted, kept in the request's extensions for the
/// query log (the `Authorization` header itself goes no further than the listener).
#[derive(Debug, Clone)]
pub struct VerifiedUser(pub String);

impl VerifiedUser {
    /// The user of a basic auth `Authorization` header (never the password), read as the web
    /// config's check reads it; `None` for any other header.
    pub fn of(headers: &HeaderMap) -> Option<VerifiedUser> {
        crate::web::basic_credentials(headers).map(|(user, _)| VerifiedUser(user))
    }
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
/// Lines that could not be written are counted in `lost`.
fn write_lines(
    path: &Path,
    mut out: BufWriter<File>,
    queue: &Receiver<String>,
    mut reopen: watch::Receiver<u64>,
    lost: &Counter,
) {
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
        let mut lines = 1;
        let mut written = writeln!(out, "{line}");
        while let Ok(line) = queue.try_recv() {
            lines += 1;
            written = written.and_then(|()| writeln!(out, "{line}"));
        }
        written = written.and_then(|()| out.flush());
        if written.is_err() {
            // What was buffered is lost with the error: counted as the batch's lines.
            lost.inc_by(lines);
        }
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
        let user = VerifiedUser::of(&map);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let pending = log
            .begin(api, &method, &uri, user.as_ref().map(|u| u.0.as_str()), "10.0.0.7".parse().unwrap())
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
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let get_with_body = pending("GET", "/api/v1/query?query=up", &form, "query=secret");
        assert_eq!(get_with_body.params()["query"], "up", "Go reads no body of a GET");
        let prefixed =
            pending("POST", "/api/v1/query", &[("content-type", "application/x-www-form-urlencodedX")], "query=x");
        assert!(!prefixed.params().contains_key("query"), "another media type");
    }

    #[test]
    fn the_query_logged_is_the_one_prometheus_runs_and_a_line_stays_small() {
        let form = [("content-type", "application/x-www-form-urlencoded; charset=utf-8")];
        // Go's FormValue: the body's first value, else the URL's first; pairs with a `;` or a
        // bad escape skipped.
        let twice = pending("POST", "/api/v1/query?query=from_url", &form, "query=first&query=second");
        assert_eq!(twice.params()["query"], "first");
        let url_only = pending("GET", "/api/v1/query?query=a;b&query=bad%zz&query=expensive&query=up", &[], "");
        assert_eq!(url_only.params()["query"], "expensive");

        let huge = "x".repeat(100_000);
        let many: String = (0..1000).map(|n| format!("p{n}=1&")).collect();
        let big = pending("POST", "/api/v1/query", &form, &format!("query={huge}&{many}"));
        let params = big.params();
        let query = params["query"].as_str().unwrap();
        assert!(query.len() < 5000 && query.ends_with("(cut; 100000 bytes)"), "{}", &query[4000..]);
        assert!(params.len() <= MAX_PARAMS + 3, "{} parameters", params.len());
    }

    #[test]
    fn only_the_apis_reads_are_logged() {
        let log = QueryLog { file: None, slow: None, dropped: Counter::default() };
        let (uri, ip) = ("/api/v1/write".parse().unwrap(), "::1".parse().unwrap());
        assert!(log.begin(Api::of("/api/v1/write"), &Method::POST, &uri, None, ip).is_none());
        assert!(log.begin(Api::of("/federate"), &Method::GET, &"/federate".parse().unwrap(), None, ip).is_none());
    }

    #[test]
    fn a_line_names_the_client_the_verified_user_and_what_mpp_did() {
        // "grafana:open sesame" in base64.
        let query =
            pending("GET", "/api/v1/query?query=up", &[("authorization", "Basic Z3JhZmFuYTpvcGVuIHNlc2FtZQ==")], "");
        let answer = Response::builder()
            .status(200)
            .header(&MERGED_FROM, "http://a:9090, http://b:9090")
            .header(&FAILOVER_FROM, "http://c:9090")
            .header(&MPP_WARNING, "merged over its bound")
            .header(&MPP_CACHE, "partial")
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
        assert_eq!(line["mpp"]["attempts"], 3, "one for each replica merged, one for the failed one");
        assert_eq!(line["mpp"]["warning"], "merged over its bound");
        assert_eq!(line["mpp"]["cache"], "partial");
        assert!(!line.to_string().contains("sesame"), "never the password");
        let bare = HeaderMap::from_iter([(header::AUTHORIZATION, HeaderValue::from_static("Basic c2VjcmV0LXRva2Vu"))]);
        assert!(VerifiedUser::of(&bare).is_none(), "a credential without a user is not logged");

        let one = Response::builder().status(422).header(&SERVED_BY, "http://a:9090").body(()).unwrap();
        let line = query.line(&one, Duration::ZERO);
        assert_eq!((line["mpp"]["answered"].as_str(), line["mpp"]["status"].as_u64()), (Some("one"), Some(422)));
        assert_eq!(line["mpp"]["replicas"], json!(["http://a:9090"]));
        assert_eq!(line["mpp"]["attempts"], 1);
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
