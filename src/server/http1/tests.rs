use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, DuplexStream};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::Frame;

use super::*;

/// Serves one connection's client end with `service`; the test holds the other end.
fn serve_with<S: Service + Sync + Send + 'static>(service: S) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move {
        let control = Control::default();
        let _ = serve(Reader::new(Box::new(server)), &service, &control).await;
    });
    (client, task)
}

/// Echoes the method, path and body (or, for `/refuse`, answers 413 without reading it);
/// counts answers dropped before they were complete.
struct Echo {
    dropped: Arc<AtomicUsize>,
    stall: bool,
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Service for Echo {
    type Body = Full<Bytes>;
    fn call(&self, request: Request<RequestBody>) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        let dropped = CountDrop(self.dropped.clone());
        let stall = self.stall;
        async move {
            let (parts, body) = request.into_parts();
            if parts.uri == "/refuse" {
                std::mem::forget(dropped);
                let mut refusal = Response::new(Full::new(Bytes::from_static(b"too large")));
                *refusal.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return refusal;
            }
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_else(|e| Bytes::from(e.to_string()));
            if stall {
                std::future::pending::<()>().await;
            }
            // Not ready on the first poll, as no proxied answer is.
            tokio::task::yield_now().await;
            std::mem::forget(dropped);
            let text = format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&body));
            Response::new(Full::new(Bytes::from(text)))
        }
    }
}

fn echo() -> Echo {
    Echo { dropped: Arc::default(), stall: false }
}

/// Everything the server sends until it closes the connection.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(client: &mut R) -> String {
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

async fn read_until(client: &mut DuplexStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n =
            tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk)).await.expect("no answer").unwrap();
        assert!(n > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
    let (mut client, _task) = serve_with(echo());
    client
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
              POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz",
        )
        .await
        .unwrap();
    let answers = read_until(&mut client, "POST /three xyz").await;
    let one = answers.find("GET /one ").unwrap();
    let two = answers.find("POST /two abcde").unwrap();
    assert!(one < two, "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answers}");
    assert!(answers.contains("content-length: 9\r\n") && answers.contains("date: "), "{answers}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (mut client, _task) = serve_with(echo());
    client
        .write_all(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut client, "HTTP/1.1 100 Continue\r\n\r\n").await;
    client.write_all(b"body").await.unwrap();
    read_until(&mut client, "POST /b body").await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (mut client, task) = serve_with(Echo { dropped: dropped.clone(), stall: true });
    client.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::task::yield_now().await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("the loop ended").unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the request's future was dropped");
}

#[tokio::test]
async fn http_1_0_and_bodies_of_unknown_length_are_framed_as_each_client_can_take() {
    struct Streamed;
    impl Service for Streamed {
        type Body = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, io::Error>>>>;
        fn call(&self, request: Request<RequestBody>) -> impl Future<Output = Response<Self::Body>> + Send {
            let status = if request.uri() == "/none" { StatusCode::NO_CONTENT } else { StatusCode::OK };
            async move {
                let frames =
                    vec![Ok(Frame::data(Bytes::from_static(b"hello "))), Ok(Frame::data(Bytes::from_static(b"world")))];
                let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                *response.status_mut() = status;
                response
            }
        }
    }
    let (mut client, _task) = serve_with(Streamed);
    client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until(&mut client, "0\r\n\r\n").await;
    assert!(answer.contains("transfer-encoding: chunked\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"), "{answer}");

    client.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /none HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answers = read_until(&mut client, "204 No Content").await;
    let answers = read_until_blank_line_after(&mut client, answers, "204 No Content").await;
    assert!(!answers.contains("hello"), "HEAD and 204 carry no body: {answers}");

    client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let rest = read_to_close(&mut client).await;
    assert!(rest.contains("connection: close\r\n") && rest.ends_with("\r\n\r\nhello world"), "until the close: {rest}");
}

async fn read_until_blank_line_after(client: &mut DuplexStream, mut got: String, marker: &str) -> String {
    while !got[got.find(marker).unwrap()..].contains("\r\n\r\n") {
        got.push_str(&read_until(client, "\r\n").await);
    }
    got
}

#[tokio::test]
async fn refused_heads_get_a_status_and_a_reason_and_the_connection_closes() {
    let (mut client, _task) = serve_with(echo());
    client.write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.contains("Content-Length is invalid"), "{answer}");
}

#[tokio::test]
async fn an_http2_preface_is_told_from_an_http1_request() {
    let control = Control::default();
    let (mut client, server) = tokio::io::duplex(1024);
    let mut reader = Reader::new(Box::new(server));
    client.write_all(&HTTP2_PREFACE[..10]).await.unwrap();
    let detect =
        tokio::spawn(async move { (matches!(detect_http2(&mut reader, &control).await, Http2Preface::Yes), reader) });
    client.write_all(&HTTP2_PREFACE[10..]).await.unwrap();
    let (yes, reader) = detect.await.unwrap();
    assert!(yes);
    let (_, prefix) = reader.into_parts();
    assert_eq!(&prefix[..], HTTP2_PREFACE, "the preface is kept for hyper");

    let (mut client, server) = tokio::io::duplex(1024);
    let mut reader = Reader::new(Box::new(server));
    client.write_all(b"PRX").await.unwrap();
    assert!(matches!(detect_http2(&mut reader, &Control::default()).await, Http2Preface::No));
}

#[tokio::test]
async fn a_body_refused_unread_gets_no_interim_answer_and_closes_the_connection() {
    let (mut client, _task) = serve_with(echo());
    client
        .write_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "no 100 Continue first: {answer}");
    assert!(answer.contains("connection: close\r\n"), "the unread body cannot be told from a request: {answer}");
}

#[tokio::test]
async fn a_half_close_leaves_the_requests_buffered_before_it_answered_and_cancels_the_last() {
    // As hyper by default: the end of input cannot be told from a client that left.
    let (client, _task) = serve_with(echo());
    let (mut read, mut write) = tokio::io::split(client);
    write
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    write.shutdown().await.unwrap();
    let answers = read_to_close(&mut read).await;
    assert!(answers.contains("GET /a "), "answered with /b buffered behind it: {answers}");
    assert!(!answers.contains("GET /b "), "the last one is cancelled: {answers}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_an_http_1_0_status_line() {
    let (mut client, _task) = serve_with(echo());
    client.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
}
