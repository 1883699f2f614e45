//! Answers that stream (Prometheus 3's server-sent events on `/api/v1/notifications/live`)
//! go through mpp as they come: not cut by `--request-timeout` once their head arrived, not
//! buffered, and ended when the client or the replica leaves.
//!
//! The replica is a real Prometheus (2.42, which has no notifications stream) behind a small
//! front of the test's own that serves `/api/v1/notifications/live` as Prometheus 3 does
//! (`text/event-stream`, one `data:` line per notification) and passes every other request
//! to the real server, so that mpp probes and selects it as any replica.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Mpp, Prometheus, endpoints_file, send, wait_until};
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

type Events = mpsc::Sender<Bytes>;

/// The front: the streams it opened, each as the sender of its events.
struct Front {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<Events>>>,
}

async fn front(prometheus: &Prometheus) -> Front {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams: Arc<Mutex<Vec<Events>>> = Arc::default();
    let (upstream, opened) = (prometheus.url(), streams.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (upstream, opened) = (upstream.clone(), opened.clone());
            let service = service_fn(move |request: Request<Incoming>| {
                let (upstream, opened) = (upstream.clone(), opened.clone());
                async move { Ok::<_, Infallible>(answer(request, &upstream, &opened).await) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Front { addr, streams }
}

async fn answer(
    request: Request<Incoming>,
    upstream: &str,
    opened: &Mutex<Vec<Events>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    if request.uri().path() == "/api/v1/notifications/live" {
        let (events, receive) = mpsc::channel::<Bytes>(16);
        opened.lock().unwrap().push(events);
        let body = StreamBody::new(tokio_stream_of(receive).map(|event| Ok::<_, Infallible>(Frame::data(event))));
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut forwarded = Request::builder().method(parts.method).uri(format!("{upstream}{}", parts.uri));
    for (name, value) in &parts.headers {
        if name != "host" {
            forwarded = forwarded.header(name, value);
        }
    }
    match send(forwarded, body).await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status);
            for (name, value) in &answer.headers {
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    response = response.header(name, value);
                }
            }
            response.body(Full::new(answer.body).boxed()).unwrap()
        }
        Err(e) => Response::builder().status(502).body(Full::new(Bytes::from(e)).boxed()).unwrap(),
    }
}

/// The receiver as a stream of events.
fn tokio_stream_of(mut receive: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| receive.poll_recv(cx))
}

/// The stream the front opened, once it has, taken from it: the stream ends when this is
/// dropped.
async fn opened(front: &Front) -> Events {
    wait_until("the replica's stream opened", Duration::from_secs(10), || async {
        !front.streams.lock().unwrap().is_empty()
    })
    .await;
    front.streams.lock().unwrap().remove(0)
}

/// The next piece of the body, within 10 s.
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("the next event in time")?;
        if let Ok(data) = frame.expect("the stream goes on").into_data() {
            return Some(data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_request_timeout_unbuffered_and_ends_with_either_side() {
    let prometheus = Prometheus::start().await;
    let front = front(&prometheus).await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[format!("http://{}", front.addr)]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--request-timeout", "1s"]).await;
    wait_until("the replica selected", Duration::from_secs(20), || async { mpp.selected().await.len() == 1 }).await;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let live = || Request::get(mpp.url("/api/v1/notifications/live")).body(Full::new(Bytes::new())).unwrap();

    // The replica ends the stream: the client gets every event, the last after the request's
    // time ran out, and each before the next was even sent (nothing is buffered).
    let response = client.request(live()).await.expect("the stream's head");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let events = opened(&front).await;
    events.send(Bytes::from_static(b"data: {\"text\":\"one\"}\n\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.as_deref(), Some(&b"data: {\"text\":\"one\"}\n\n"[..]));
    // Past --request-timeout, on purpose: the stream must outlive it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    events.send(Bytes::from_static(b"data: {\"text\":\"two\"}\n\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.as_deref(), Some(&b"data: {\"text\":\"two\"}\n\n"[..]));
    drop(events);
    assert_eq!(next_chunk(&mut body).await, None, "the stream ends when the replica ends it");

    // The client leaves: the replica's stream is closed too, not held open by mpp.
    let response = client.request(live()).await.expect("the stream's head");
    let mut body = response.into_body();
    let events = opened(&front).await;
    events.send(Bytes::from_static(b"data: {}\n\n")).await.unwrap();
    assert!(next_chunk(&mut body).await.is_some());
    drop(body);
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), events.closed())
        .await
        .expect("the replica's stream is closed once the client left");
}
