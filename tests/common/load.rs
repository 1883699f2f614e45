//! The one load generator of the tests: client loops of alternating GET and form-POST
//! queries through mpp, each outcome recorded, on a pooled client of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Mpp;

/// What one request saw: when it was sent, how long it took, and the replica that answered
/// (`MPP.ServedBy`) or the error.
pub struct Outcome {
    pub sent: Instant,
    pub took: Duration,
    pub result: Result<String, String>,
}

/// Load running until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// `clients` loops of alternating GET and form-POST queries through `mpp`.
    pub fn start(mpp: &Mpp, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let clients = (0..clients)
            .map(|n| {
                let (get_url, post_url) = (mpp.url("/api/v1/query?query=up"), mpp.url("/api/v1/query"));
                let (stop, client) = (stop.clone(), client.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut n = n;
                    while !stop.load(Ordering::Relaxed) {
                        let request = if n % 2 == 0 {
                            Request::get(&get_url).body(Full::default())
                        } else {
                            Request::post(&post_url)
                                .header("content-type", "application/x-www-form-urlencoded")
                                .body(Full::new(Bytes::from_static(b"query=count(up)")))
                        };
                        n += 1;
                        let sent = Instant::now();
                        let result = query(&client, request.expect("a valid request")).await;
                        outcomes.push(Outcome { sent, took: sent.elapsed(), result });
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the load and returns every outcome; fails the test on any error.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for client in self.clients {
            outcomes.extend(client.await.expect("a load loop panicked"));
        }
        let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.result.as_ref().err()).collect();
        assert!(errors.is_empty(), "{} of {} requests failed: {errors:?}", errors.len(), outcomes.len());
        outcomes
    }
}

/// One query, within 10 s: the replica that answered it, or what went wrong.
async fn query(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<String, String> {
    let work = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        if parts.status == 200 && text.contains(r#""status":"success""#) {
            Ok(parts.headers.get("mpp.servedby").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string())
        } else {
            Err(format!("{}: {text}", parts.status))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "no answer within 10s".to_string())?
}
