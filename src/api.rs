//! The parts of Prometheus's HTTP API that mpp treats apart from plain forwarding, named from a
//! request's path once, as the request arrives ([`Api::of`]).
//!
//! Every such path is known by its last segment (`query`, `write`, `reload`, ...) and what
//! comes before it, matched at the end of the path so that any prefix (a replica's
//! `--web.route-prefix`) is allowed. One look at the last segment tells the usual request,
//! `/api/v1/query`, apart from the rest; no path is scanned whole unless it could be a write
//! or an admin request in disguise (percent-encoded, or with `.`, `..` or empty segments, which
//! Prometheus's router resolves).
//!
//! This module owns the names only; what is done with each lives with its doer: routing by
//! window in `window` and `proxy::route`, unions in `merge`, writes for every replica in
//! `proxy::broadcast`.

/// The API endpoints mpp routes by window: `/api/v1/query`, `/api/v1/query_range`,
/// `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`, `/api/v1/query_exemplars`
/// (answered with JSON), and remote read's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/v1/query`: an instant query at `time`.
    Query,
    /// `/api/v1/query_range`: a query evaluated from `start` to `end`.
    QueryRange,
    /// `/api/v1/series`: the series `match[]` selects between `start` and `end`.
    Series,
    /// `/api/v1/labels`: label names between `start` and `end`.
    Labels,
    /// `/api/v1/label/<name>/values`: a label's values between `start` and `end`.
    LabelValues,
    /// `/api/v1/query_exemplars`: the exemplars of `query`'s series between `start` and `end`.
    Exemplars,
    /// `/api/v1/read` (remote read, answered with samples): raw data over its queries' time
    /// ranges (`window::remote_read`; the path is [`Api::RemoteRead`], whose answer may be
    /// samples or streamed chunks).
    RemoteRead,
}

impl Endpoint {
    /// Its name in metrics: the path's last part (`label_values` for label values).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Query => "query",
            Endpoint::QueryRange => "query_range",
            Endpoint::Series => "series",
            Endpoint::Labels => "labels",
            Endpoint::LabelValues => "label_values",
            Endpoint::Exemplars => "query_exemplars",
            Endpoint::RemoteRead => "read",
        }
    }
}

/// The answers about the replicas' own state that are united across them (`merge::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreed {
    /// `/api/v1/alerts`.
    Alerts,
    /// `/api/v1/rules`.
    Rules,
    /// `/api/v1/metadata`.
    Metadata,
    /// `/api/v1/targets/metadata`.
    TargetsMetadata,
}

impl Agreed {
    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Agreed::Alerts => "alerts",
            Agreed::Rules => "rules",
            Agreed::Metadata => "metadata",
            Agreed::TargetsMetadata => "targets_metadata",
        }
    }
}

/// What a request path asks of Prometheus's API, as far as mpp cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// A read routed by the window of data it reads.
    Read(Endpoint),
    /// `/api/v1/read`: remote read (snappy protobuf).
    RemoteRead,
    /// Another read that newer Prometheus versions take as a POST too: `/api/v1/format_query`,
    /// `/api/v1/parse_query`, `/api/v1/search/<what>`.
    OtherRead,
    /// About the replicas' own state, united across them.
    Agreed(Agreed),
    /// TSDB admin (`/api/v1/admin/tsdb/{delete_series,clean_tombstones,snapshot}`) or lifecycle
    /// (`/-/reload`, `/-/quit`), whatever the method: judged as Prometheus's router reads the
    /// path (percent-decoded, `.`, `..` and empty segments resolved).
    Admin,
    /// Samples written (`/api/v1/write`, OTLP's `/api/v1/otlp/v1/metrics`), judged as
    /// [`Api::Admin`] is; a write only when it is a POST, which the caller checks.
    Write,
    /// Anything else: forwarded to one replica as it is.
    Other,
}

impl Api {
    /// What `path` (a request's path, without its query) asks.
    pub fn of(path: &str) -> Api {
        // The queries dashboards send, told at once (neither may be a write in disguise:
        // their last segment is not one that changes state).
        if path.ends_with("/api/v1/query_range") {
            return Api::Read(Endpoint::QueryRange);
        }
        if path.ends_with("/api/v1/query") {
            return Api::Read(Endpoint::Query);
        }
        let (head, last) = split_last(path);
        let odd = matches!(last, "" | "." | "..") || last.bytes().any(|b| b == b'%');
        if odd || (may_change_state(last) && !plain(path)) {
            // Prometheus sees the path cleaned: what changes state is judged on that.
            let cleaned = clean(path);
            let api = Api::of_plain(&cleaned);
            if matches!(api, Api::Admin | Api::Write) {
                return api;
            }
        }
        Api::of_parts(head, last)
    }

    /// Whether a request to it only reads, and may be sent again to another replica once it
    /// may have reached one: any GET, HEAD or OPTIONS, and the POSTs of the read API.
    pub fn replayable(self, method: &http::Method) -> bool {
        use http::Method;
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => true,
            Method::POST => matches!(self, Api::Read(_) | Api::RemoteRead | Api::OtherRead),
            _ => false,
        }
    }

    /// What `path` names, taken as it is.
    fn of_plain(path: &str) -> Api {
        let (head, last) = split_last(path);
        Api::of_parts(head, last)
    }

    /// What a path of `head`, `/` and `last` names, taken as it is.
    fn of_parts(head: &str, last: &str) -> Api {
        let under_v1 = || head.ends_with("/api/v1");
        match last {
            "query" if under_v1() => Api::Read(Endpoint::Query),
            "query_range" if under_v1() => Api::Read(Endpoint::QueryRange),
            "series" if under_v1() => Api::Read(Endpoint::Series),
            "labels" if under_v1() => Api::Read(Endpoint::Labels),
            "query_exemplars" if under_v1() => Api::Read(Endpoint::Exemplars),
            "values" => {
                let (head, name) = split_last(head);
                if !name.is_empty() && head.ends_with("/api/v1/label") {
                    Api::Read(Endpoint::LabelValues)
                } else {
                    Api::Other
                }
            }
            "read" if under_v1() => Api::RemoteRead,
            "format_query" | "parse_query" if under_v1() => Api::OtherRead,
            _ if !last.is_empty() && head.ends_with("/api/v1/search") => Api::OtherRead,
            "alerts" if under_v1() => Api::Agreed(Agreed::Alerts),
            "rules" if under_v1() => Api::Agreed(Agreed::Rules),
            "metadata" if under_v1() => Api::Agreed(Agreed::Metadata),
            "metadata" if head.ends_with("/api/v1/targets") => Api::Agreed(Agreed::TargetsMetadata),
            "delete_series" | "clean_tombstones" | "snapshot" if head.ends_with("/api/v1/admin/tsdb") => Api::Admin,
            "reload" | "quit" if head.ends_with("/-") => Api::Admin,
            "write" if under_v1() => Api::Write,
            "metrics" if head.ends_with("/api/v1/otlp/v1") => Api::Write,
            _ => Api::Other,
        }
    }
}

/// `path` before its last `/`, and after it.
fn split_last(path: &str) -> (&str, &str) {
    // A plain loop: the last segment is short, and a search routine costs more to set up.
    match path.bytes().rposition(|b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => ("", path),
    }
}

/// Whether a path ending in `last` may be an admin request or a write once cleaned.
fn may_change_state(last: &str) -> bool {
    matches!(last, "delete_series" | "clean_tombstones" | "snapshot" | "reload" | "quit" | "write" | "metrics")
}

/// Whether Prometheus's router reads `path` as it is: no `%`, no `.` or `..` segment (nor
/// anything else starting with a dot), no empty segment.
fn plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.contains(&b'%') && !bytes.windows(2).any(|pair| pair[0] == b'/' && (pair[1] == b'.' || pair[1] == b'/'))
}

/// `path` percent-decoded, its empty and `.` segments dropped and each `..` taking the
/// segment before it away (Go's `path.Clean`, which Prometheus's router applies).
fn clean(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut cleaned = String::with_capacity(decoded.len());
    for segment in segments {
        cleaned.push('/');
        cleaned.push_str(segment);
    }
    if cleaned.is_empty() {
        cleaned.push('/');
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn read_endpoints_are_named_by_the_end_of_the_path() {
        let cases = [
            ("/api/v1/query", Api::Read(Endpoint::Query)),
            ("/prom/api/v1/query", Api::Read(Endpoint::Query)),
            ("/api/v1/query_range", Api::Read(Endpoint::QueryRange)),
            ("/api/v1/series", Api::Read(Endpoint::Series)),
            ("/api/v1/labels", Api::Read(Endpoint::Labels)),
            ("/api/v1/label/job/values", Api::Read(Endpoint::LabelValues)),
            ("/prom/api/v1/label/__name__/values", Api::Read(Endpoint::LabelValues)),
            ("/api/v1/query_exemplars", Api::Read(Endpoint::Exemplars)),
            ("/api/v1/read", Api::RemoteRead),
            ("/api/v1/format_query", Api::OtherRead),
            ("/api/v1/parse_query", Api::OtherRead),
            ("/api/v1/search/metric_names", Api::OtherRead),
            ("/api/v1/alerts", Api::Agreed(Agreed::Alerts)),
            ("/api/v1/rules", Api::Agreed(Agreed::Rules)),
            ("/api/v1/metadata", Api::Agreed(Agreed::Metadata)),
            ("/api/v1/targets/metadata", Api::Agreed(Agreed::TargetsMetadata)),
            ("/api/v1/label//values", Api::Other),
            ("/api/v1/label/a/b/values", Api::Other),
            ("/api/v1/query/", Api::Other),
            ("/api/v1/search/", Api::Other),
            ("/api/v1/status/buildinfo", Api::Other),
            ("/api/v1/targets", Api::Other),
            ("/xapi/v1/query", Api::Other),
            ("/query", Api::Other),
            ("/", Api::Other),
            ("", Api::Other),
        ];
        for (path, api) in cases {
            assert_eq!(Api::of(path), api, "{path}");
        }
    }

    #[test]
    fn admin_lifecycle_and_write_paths_are_told_apart_from_the_rest() {
        for path in
            ["/api/v1/admin/tsdb/delete_series", "/api/v1/admin/tsdb/snapshot", "/api/v1/admin/tsdb/clean_tombstones"]
        {
            assert_eq!(Api::of(path), Api::Admin, "{path}");
        }
        assert_eq!(Api::of("/-/reload"), Api::Admin);
        assert_eq!(Api::of("/-/quit"), Api::Admin);
        assert_eq!(Api::of("/api/v1/write"), Api::Write);
        assert_eq!(Api::of("/api/v1/otlp/v1/metrics"), Api::Write);
        for path in ["/-/ready", "/-/healthy", "/api/v1/admin", "/api/v1/writer", "/federate", "/metrics", "/reload"] {
            assert_eq!(Api::of(path), Api::Other, "{path}");
        }
    }

    #[test]
    fn encoded_and_unclean_paths_are_judged_as_prometheus_routes_them() {
        for path in [
            "/api/v1/admin%2Ftsdb/delete_series",
            "/api/v1/%61dmin/tsdb/snapshot",
            "/api/v1/admin%2Ftsdb%2Fsnapshot",
            "/api/v1/admin/tsdb/snap%73hot",
            "//api/v1/admin/tsdb/snapshot",
            "/api/v1/admin/tsdb//snapshot",
            "/api/v1/admin/tsdb/snapshot/",
            "/api/v1/admin/tsdb/snapshot/.",
            "/api/v1/admin/tsdb/snapshot/x/..",
            "/api/v1/query/../admin/tsdb/clean_tombstones",
            "/-/./reload",
            "/-/x/../reload",
            "/-/%71uit",
        ] {
            assert_eq!(Api::of(path), Api::Admin, "{path}");
        }
        assert_eq!(Api::of("/api/v1/%77rite"), Api::Write);
        assert_eq!(Api::of("/api/v1/x/../write"), Api::Write);
        assert_eq!(Api::of("/api/v1/admin%2F..%2Fquery"), Api::Other, "reads are taken as they come");
        // Under a route prefix too.
        assert_eq!(Api::of("/prom/api/v1/admin/tsdb/snapshot"), Api::Admin);
        assert_eq!(Api::of("/prom/-/reload"), Api::Admin);
        assert_eq!(Api::of("/prom/api/v1/write"), Api::Write);
    }

    #[test]
    fn only_reads_are_replayable() {
        assert!(Api::of("/api/v1/query").replayable(&Method::POST));
        assert!(Api::of("/api/v1/read").replayable(&Method::POST));
        assert!(Api::of("/prom/api/v1/query_range").replayable(&Method::POST));
        assert!(Api::of("/api/v1/format_query").replayable(&Method::POST));
        assert!(Api::of("/api/v1/search/label_values").replayable(&Method::POST));
        assert!(!Api::of("/api/v1/searches").replayable(&Method::POST));
        assert!(Api::of("/api/v1/write").replayable(&Method::GET), "a GET is Prometheus's to refuse");
        assert!(!Api::of("/api/v1/write").replayable(&Method::POST));
        assert!(!Api::of("/-/reload").replayable(&Method::POST));
        assert!(!Api::of("/api/v1/query").replayable(&Method::PUT));
        assert!(!Api::of("/api/v1/admin/tsdb/snapshot").replayable(&Method::POST));
    }
}
