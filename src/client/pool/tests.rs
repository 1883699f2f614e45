//! The pool against small replicas on loopback: plain hyper servers that count their
//! connections, raw sockets that misbehave on cue, and an https one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, Request, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::client::{BackendTls, Connector, TlsOptions};

/// A connector with `options`, its files read once.
fn connector(options: &TlsOptions) -> anyhow::Result<Connector> {
    BackendTls::load(options)?.connector()
}

fn pool() -> Pool {
    Pool::new(connector(&TlsOptions::default()).expect("a plain connector"), 16)
}

/// A request for `url`, to be sent by [`Sending::send`].
struct Sending {
    method: Method,
    url: Uri,
    body: Bytes,
}

fn get(url: &str) -> Sending {
    Sending { method: Method::GET, url: url.parse().expect("a test URL"), body: Bytes::new() }
}

fn post(url: &str, body: &'static str) -> Sending {
    Sending { method: Method::POST, url: url.parse().expect("a test URL"), body: Bytes::from_static(body.as_bytes()) }
}

/// Sends `request` through `pool`, with no headers of its own.
async fn send(pool: &Pool, request: Sending) -> Result<Response<Body>, Error> {
    let headers = HeaderMap::new();
    let url = &request.url;
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let replayable = request.method == Method::GET;
    let outgoing = Outgoing {
        method: &request.method,
        target: ["", target, ""],
        headers: &headers,
        added: &[],
        body: &request.body,
        replayable,
        keep_lines: false,
    };
    Pool::send(pool, url.scheme().unwrap(), url.authority().unwrap(), outgoing).await
}

/// The answer's body, read to its end.
async fn text(response: Response<Body>) -> String {
    let body = response.into_body().collect().await.expect("a whole body").to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8")
}

/// A replica answering every request with the number of the connection it came on (1, 2, …)
/// and the request's `Host`; `/hold` answers its head at once and its body only when the
/// test sends on the returned channel.
async fn counting_replica() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedSender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (release, released) = mpsc::unbounded_channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(released));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let number = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let released = released.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let released = released.clone();
                async move {
                    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap().to_owned());
                    let text = format!("{number} {}", host.unwrap_or_default());
                    if request.uri().path() == "/hold" {
                        let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            released.lock().await.recv().await;
                            let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(text)))).await;
                        });
                        let body = http_body_util::StreamBody::new(tokio_stream(rx));
                        return Ok::<_, Infallible>(Response::new(BoxBody::new(body)));
                    }
                    Ok(Response::new(BoxBody::new(Full::new(Bytes::from(text)))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (address, connections, release)
}

/// The receiving half of a channel as a stream of body frames.
fn tokio_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn consecutive_requests_reuse_one_connection_and_name_the_replica_as_host() {
    let (address, connections, _) = counting_replica().await;
    let pool = pool();
    let url = format!("http://{address}/api/v1/query");
    for _ in 0..3 {
        let answer = text(send(&pool, get(&url)).await.expect("an answer")).await;
        assert_eq!(answer, format!("1 {address}"));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(pool.held(&url), 1);
}

#[tokio::test]
async fn a_request_while_an_answer_still_streams_gets_a_connection_of_its_own() {
    let (address, connections, release) = counting_replica().await;
    let pool = pool();
    let held = send(&pool, get(&format!("http://{address}/hold"))).await.expect("a head");
    let other = text(send(&pool, get(&format!("http://{address}/"))).await.expect("an answer")).await;
    assert_eq!(other, format!("2 {address}"), "a second connection, not a queue behind the first");
    release.send(()).unwrap();
    assert_eq!(text(held).await, format!("1 {address}"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// A replica on a thread of its own that answers the first request of its first connection
/// and then closes it (without saying so in the answer), telling the test once it has; later
/// connections get their answers normally. Answers name the connection they came on. The
/// signal is a blocking one, so that the test's runtime gets no turn in which it could read
/// the close before the pool is asked for a connection.
fn closing_replica() -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (closed, closed_rx) = std::sync::mpsc::channel();
    let serve = move |stream: std::net::TcpStream, text: &str, once: bool| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let (mut line, mut length) = (String::new(), 0);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            std::io::Read::read_exact(&mut reader, &mut vec![0; length]).unwrap();
            writer.write_all(&answer(text)).unwrap();
            if once {
                return;
            }
        }
    };
    std::thread::spawn(move || {
        let (first, _) = listener.accept().unwrap();
        serve(first.try_clone().unwrap(), "first", true);
        first.shutdown(std::net::Shutdown::Both).unwrap();
        drop(first);
        closed.send(()).unwrap();
        for next in listener.incoming() {
            let next = next.unwrap();
            std::thread::spawn(move || serve(next, "second", false));
        }
    });
    (address, closed_rx)
}

fn answer(text: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len()).into_bytes()
}

/// Sends `request` through a pool whose one idle connection the replica has just closed,
/// whether or not the runtime has seen the close yet, and returns the answer's text.
async fn after_the_replica_closed(request: impl FnOnce(SocketAddr) -> Sending) -> String {
    let (address, closed) = closing_replica();
    let pool = pool();
    let first = send(&pool, get(&format!("http://{address}/api/v1/query"))).await.unwrap();
    assert_eq!(text(first).await, "first");
    closed.recv().unwrap();
    text(send(&pool, request(address)).await.expect("an answer, on a new connection")).await
}

/// A write never goes on a connection the replica has closed: the kernel is asked
/// (`MSG_PEEK`) before a write is sent.
#[tokio::test]
async fn a_connection_the_replica_closed_is_not_reused_for_a_write() {
    let write = after_the_replica_closed(|address| post(&format!("http://{address}/api/v1/write"), "samples")).await;
    assert_eq!(write, "second");
}

/// A query on a connection whose close crossed it (the runtime had not seen the close) goes
/// again on a new connection instead of failing.
#[tokio::test]
async fn a_query_on_a_connection_the_replica_closed_goes_again_on_a_new_one() {
    let query = after_the_replica_closed(|address| get(&format!("http://{address}/api/v1/query?query=up"))).await;
    assert_eq!(query, "second");
}

/// A replica that reads a request's head, answers `413`, and then reads no more: closing
/// the connection (the kernel then resets it, most of the body unread) or holding it open.
async fn refusing_replica(close: bool) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = vec![0u8; 4096];
        let _ = stream.read(&mut head).await;
        let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo much";
        stream.write_all(answer.as_bytes()).await.unwrap();
        if !close {
            std::future::pending::<()>().await;
        }
    });
    address
}

/// A replica that answers a large write before reading its body (an error, typically) gets
/// its answer to the client, whether it then resets the connection or leaves the rest unread.
#[tokio::test]
async fn an_answer_to_a_large_write_sent_before_its_body_was_read_is_the_answer() {
    let body: &'static str = Box::leak("s".repeat(8 << 20).into_boxed_str());
    for close in [true, false] {
        let address = refusing_replica(close).await;
        let pool = pool();
        let write = send(&pool, post(&format!("http://{address}/api/v1/write"), body));
        let answer = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .unwrap_or_else(|_| panic!("no answer while the body was unread (close: {close})"))
            .expect("the answer");
        assert_eq!(answer.status(), 413);
        assert_eq!(text(answer).await, "too much");
    }
}

#[tokio::test]
async fn a_refused_connection_sent_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let failure = send(&pool(), post(&format!("http://{address}/api/v1/write"), "x")).await.unwrap_err();
    assert!(matches!(failure, Error::NotSent(_)), "{failure:?}");
}

#[tokio::test]
async fn a_connection_cut_after_the_request_was_written_may_have_sent_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 64];
        let _ = stream.read(&mut head).await;
        // Gone without an answer: the replica may have acted on it.
    });
    let failure = send(&pool(), post(&format!("http://{address}/api/v1/write"), "x")).await.unwrap_err();
    assert!(matches!(failure, Error::Sent(_)), "{failure:?}");
}

#[tokio::test]
async fn https_replicas_are_verified_against_the_ca_file_by_server_name_and_reused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["replica.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let Ok(stream) = acceptor.accept(stream).await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"secure"))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    let url = format!("https://{address}/api/v1/query");
    let verified = TlsOptions {
        ca_file: Some(ca_file.clone()),
        server_name: Some("replica.test".try_into().unwrap()),
        ..TlsOptions::default()
    };
    let pool = Pool::new(connector(&verified).unwrap(), 4);
    for _ in 0..2 {
        assert_eq!(text(send(&pool, get(&url)).await.expect("an answer over TLS")).await, "secure");
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "one TLS connection for both");
    let wrong_name = TlsOptions { ca_file: Some(ca_file), ..TlsOptions::default() };
    let refused = send(&Pool::new(connector(&wrong_name).unwrap(), 4), get(&url)).await.unwrap_err();
    assert!(matches!(refused, Error::NotSent(_)), "a failed handshake sent nothing: {refused:?}");
}

#[tokio::test]
async fn a_connection_idle_for_the_idle_timeout_is_closed_and_one_in_use_comes_back_when_its_answer_is_read() {
    let (address, _, release) = counting_replica().await;
    let pool = pool();
    let url = format!("http://{address}/api/v1/query");
    assert_eq!(text(send(&pool, get(&url)).await.unwrap()).await, format!("1 {address}"));
    for _ in 1..IDLE_SWEEPS {
        pool.sweep_now();
    }
    assert_eq!(pool.held(&url), 1, "idle for less than the timeout");
    pool.sweep_now();
    assert_eq!(pool.held(&url), 0, "idle for the timeout");

    let held = send(&pool, get(&format!("http://{address}/hold"))).await.expect("a head");
    for _ in 0..IDLE_SWEEPS {
        pool.sweep_now();
    }
    assert_eq!(pool.held(&url), 0, "still streaming an answer: not idle");
    release.send(()).unwrap();
    assert_eq!(text(held).await, format!("2 {address}"));
    assert_eq!(pool.held(&url), 1, "back once its answer was read whole");
    let again = text(send(&pool, get(&url)).await.unwrap()).await;
    assert_eq!(again, format!("2 {address}"), "and reused");
}
