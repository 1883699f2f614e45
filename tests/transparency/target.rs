//! The test's own scrape target: a counter that resets, a gauge that changes sign and a series
//! that comes and goes (so that Prometheus writes staleness markers), each a function of the
//! second it is scraped in, so that both replicas record the same story.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The target's server, stopped when dropped.
pub struct Target {
    /// `host:port`, as a scrape config names it.
    pub host: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The exposition at Unix second `second`.
fn exposition(second: u64) -> String {
    let mut text = String::from("# TYPE mpp_test_ticks_total counter\n# TYPE mpp_test_wave gauge\n");
    text.push_str(&format!("mpp_test_ticks_total{{kind=\"resetting\"}} {}\n", (second % 10) * 3 + 1));
    text.push_str(&format!("mpp_test_wave{{phase=\"a\"}} {}\n", ((second % 7) as f64 - 3.0) * 0.75));
    text.push_str(&format!("mpp_test_wave{{phase=\"b\"}} {}\n", ((second % 5) as f64 - 2.0) * 1.5));
    if (second / 4) % 2 == 0 {
        text.push_str("mpp_test_flapping{state=\"on\"} 1\n");
    }
    text
}

impl Target {
    /// Serves `/metrics` (any path, in fact) on a loopback port.
    pub async fn start() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the target");
        let host = listener.local_addr().expect("the target's address").to_string();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let service = service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                        let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                        let mut response = hyper::Response::new(Full::new(Bytes::from(exposition(second))));
                        response.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Target { host, server }
    }
}
