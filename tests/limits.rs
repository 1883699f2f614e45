//! Limits with clear answers: oversized heads and bodies, ambiguous framing, slow clients,
//! the connection cap, and every replica down.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Mpp, Prometheus, endpoints_file, get, one_replica, wait_until};

/// Sends raw bytes on a new connection and returns the status line of the answer.
fn raw(mpp: &Mpp, request: &[u8]) -> String {
    raw_to(mpp.addr, request)
}

fn raw_to(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string()
}

/// Sends raw bytes on a new connection and reads everything until mpp closes it.
fn all_answers(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_and_ambiguous_framing_get_clear_answers() {
    let (_replica, mpp, _dir) = one_replica(&["--max-request-body", "64KiB"]).await;
    let huge_header =
        format!("GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(2 << 20));
    assert!(raw(&mpp, huge_header.as_bytes()).contains(" 431 "));
    let lines = |n: usize| {
        let headers: String = (0..n).map(|i| format!("X-Line-{i}: {i}\r\n")).collect();
        format!("GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
    };
    let most = 256; // server::MAX_HEADERS
    assert!(raw(&mpp, lines(most - 1).as_bytes()).contains(" 200 "), "{most} header lines, Host included");
    assert!(raw(&mpp, lines(most).as_bytes()).contains(" 431 "), "one line more");

    // Refused from the declared length alone, without waiting for the body.
    let declared = b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nquery=up";
    assert!(raw(&mpp, declared).contains(" 413 "));

    let chunked_too_long = format!(
        "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        100_000,
        "q".repeat(100_000)
    );
    assert!(raw(&mpp, chunked_too_long.as_bytes()).contains(" 413 "));

    // Both lengths: the chunked framing wins (Content-Length is dropped, RFC 9112 6.3), the
    // body is re-framed for the replica, and the connection closes after the answer, so a
    // request hidden behind the body is never read as a second one.
    let smuggle = b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nquery=up\r\n0\r\n\r\nGET /api/v1/query?query=smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let answers = all_answers(mpp.addr, smuggle);
    assert_eq!(answers.matches("HTTP/1.1 ").count(), 1, "one answer, then the connection closes: {answers}");
    assert!(
        answers.starts_with("HTTP/1.1 200") && answers.to_ascii_lowercase().contains("connection: close"),
        "{answers}"
    );
    let two_lengths =
        b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nContent-Length: 9\r\n\r\nquery=up";
    assert!(raw(&mpp, two_lengths).contains(" 400 "));

    let fine = b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\nquery=up";
    assert!(raw(&mpp, fine).contains(" 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_cut_off_and_do_not_starve_other_clients() {
    let (_replica, mpp, _dir) = one_replica(&["--header-read-timeout", "1s"]).await;
    let addr = mpp.addr;
    // 300 slowloris connections, each dribbling a header byte every 100 ms.
    let slow = tokio::task::spawn_blocking(move || {
        let mut streams: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = Instant::now();
        let mut cut_off = 0;
        while started.elapsed() < Duration::from_secs(4) && !streams.is_empty() {
            streams.retain_mut(|s| {
                let alive = s.write_all(b"X").is_ok() && s.flush().is_ok();
                if !alive {
                    cut_off += 1;
                }
                alive
            });
            std::thread::sleep(Duration::from_millis(100));
        }
        (cut_off, streams.len())
    });
    for _ in 0..30 {
        let started = Instant::now();
        let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1), "a normal client waited {:?}", started.elapsed());
    }
    let (cut_off, still_open) = slow.await.unwrap();
    assert_eq!((cut_off, still_open), (300, 0), "slow clients were not all cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let args = ["--endpoints-file", file.to_str().unwrap(), "--max-connections", "2", "--header-read-timeout", "30s"];
    let mpp = Mpp::start(&args).await;
    // Only raw connections that close after one answer: no pooled client holds a slot.
    let query = b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let first = tokio::task::spawn_blocking({
        let mpp_addr = mpp.addr;
        move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if raw_to(mpp_addr, query).contains(" 200 ") {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }
    });
    assert!(first.await.unwrap(), "mpp never answered");

    // Two clients busy sending a head, slowly: both slots are taken.
    let mut busy: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(mpp.addr).unwrap()).collect();
    for stream in &mut busy {
        stream.write_all(b"GET /api/v1/query?query=up HTTP/1.1\r\n").unwrap();
    }
    let addr = mpp.addr;
    let third = tokio::task::spawn_blocking(move || raw_to(addr, query));
    // A third client is not served...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a connection beyond the cap was served");
    // ...until one of them leaves.
    drop(busy);
    let answer = tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once a slot freed");
    assert!(answer.unwrap().contains(" 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_gives_503_within_a_second_and_service_resumes_by_itself() {
    let (mut a, mut b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;

    a.kill();
    b.kill();
    for _ in 0..10 {
        let started = Instant::now();
        let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(answer.status, 503, "{}", answer.text());
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!((body["status"].as_str(), body["errorType"].as_str()), (Some("error"), Some("unavailable")));
    }

    b.start_again().await;
    wait_until("queries to succeed again without touching mpp", Duration::from_secs(5), || async {
        get(&mpp.url("/api/v1/query?query=up")).await.is_ok_and(|a| a.status == 200)
    })
    .await;
}
