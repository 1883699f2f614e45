use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

use super::body::{MAX_CHUNK_LINE, MAX_EXTENSION_BYTES, MAX_TRAILER_BYTES};
use super::request::{
    HeadError, MAX_HEADERS as MAX_REQUEST_HEADERS, MAX_TARGET, RequestHead, parse_request, write_head,
};
use super::response::{Head, MAX_HEAD_BYTES, MAX_HEADERS, parse_head, parse_head_as};
use super::*;

fn head_of(text: &str, method: &Method) -> Result<Option<Head>, ProtocolError> {
    parse_head(&mut BytesMut::from(text), method)
}

/// `text` parsed into a map; parsed with its lines kept as bytes as well, and those put in a
/// map, which must hold the same.
fn complete(text: &str) -> Head {
    let head = head_of(text, &Method::GET).expect("a valid head").expect("a complete head");
    let mut kept = kept(text);
    if let Some(lines) = &kept.lines {
        // The length and date it notes are those of the lines it keeps.
        let mut length = Length::default();
        for value in head.response.headers().get_all("content-length") {
            length.note(value.as_bytes());
        }
        assert_eq!(lines.length(), length.get().expect("a valid length"), "the kept lines' length");
        assert_eq!(lines.dated(), head.response.headers().contains_key("date"), "the kept lines' date");
    }
    if let Some(lines) = kept.lines.take() {
        lines::unpack_into(lines, kept.response.headers_mut());
    }
    assert_eq!(kept.response.headers(), head.response.headers(), "the same headers either way");
    assert!(head.lines.is_none(), "kept only when asked");
    head
}

/// `text` parsed with its lines kept as bytes where they may be.
fn kept(text: &str) -> Head {
    parse_head_as(&mut BytesMut::from(text), &Method::GET, true).expect("a valid head").expect("a complete head")
}

/// The lines `head` kept as bytes, as text.
fn kept_lines(head: &Head) -> Option<&str> {
    Some(std::str::from_utf8(head.lines.as_ref()?.as_bytes()).expect("ASCII"))
}

/// Feeds `wire` to a decoder for `framing` one byte at a time (the worst split a network can
/// make) and returns the body and what is left after it.
fn decode_bytewise(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = wire.iter();
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => {
                let mut left = buf.to_vec();
                left.extend(rest);
                return Ok((body, left));
            }
            Decoded::NeedMore => match rest.next() {
                Some(b) => buf.extend_from_slice(&[*b]),
                None => return Err(ProtocolError::Incomplete),
            },
        }
    }
}

#[test]
fn a_request_head_carries_the_headers_the_host_and_the_body_length() {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    let host = HeaderValue::from_static("replica:9090");
    let mut out = Vec::new();
    let added = [(header::VIA, HeaderValue::from_static("1.1 mpp"))];
    write_head(&mut out, &Method::POST, &["/prefix", "/api/v1/query"], &headers, &added, &host, 12);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /prefix/api/v1/query HTTP/1.1\r\nhost: replica:9090\r\nx-forwarded-for: 10.0.0.1\r\nvia: 1.1 mpp\r\ncontent-length: 12\r\n\r\n"
    );

    headers.insert(header::HOST, HeaderValue::from_static("named"));
    let mut out = Vec::new();
    write_head(&mut out, &Method::GET, &["/api/v1/query?query=up"], &headers, &[], &host, 0);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("GET /api/v1/query?query=up HTTP/1.1\r\nx-forwarded-for: 10.0.0.1\r\nhost: named\r\n"),
        "{text}"
    );
    assert!(!text.contains("content-length"), "a GET without a body names no length: {text}");

    let mut out = Vec::new();
    write_head(&mut out, &Method::POST, &["/"], &HeaderMap::new(), &[], &host, 0);
    assert!(String::from_utf8(out).unwrap().contains("content-length: 0\r\n"), "an empty POST says so");
}

#[test]
fn a_head_is_taken_off_the_buffer_and_the_body_bytes_stay() {
    let mut buf = BytesMut::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\nX-Many: a\r\nx-many: b\r\n\r\nbody",
    );
    let head = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
    assert_eq!(&buf[..], b"body");
    assert_eq!(head.response.status(), StatusCode::OK);
    assert_eq!(head.response.version(), Version::HTTP_11);
    assert_eq!(head.response.headers()[header::CONTENT_TYPE], "application/json");
    let many: Vec<_> = head.response.headers().get_all("x-many").iter().collect();
    assert_eq!(many, ["a", "b"]);
    assert_eq!(head.framing, Framing::Length(4));
    assert!(head.keep_alive);
}

#[test]
fn an_incomplete_head_waits_for_more_and_an_oversized_one_is_refused() {
    assert!(head_of("HTTP/1.1 200 OK\r\nContent-Le", &Method::GET).unwrap().is_none());
    let long = format!("HTTP/1.1 200 OK\r\nx-long: {}", "a".repeat(MAX_HEAD_BYTES));
    assert!(matches!(head_of(&long, &Method::GET), Err(ProtocolError::HeadTooLarge)));
}

#[test]
fn interim_answers_are_skipped_and_a_protocol_switch_is_refused() {
    let head = complete(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    );
    assert_eq!(head.response.status(), StatusCode::NO_CONTENT);
    assert_eq!(head.framing, Framing::Empty);
    assert!(matches!(
        head_of("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", &Method::GET),
        Err(ProtocolError::SwitchingProtocols)
    ));
}

#[test]
fn the_body_is_framed_as_rfc_9112_says() {
    let head = head_of("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", &Method::HEAD).unwrap().unwrap();
    assert_eq!(head.framing, Framing::Empty, "an answer to HEAD has no body");
    assert_eq!(complete("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").framing, Framing::Empty);
    assert_eq!(complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Chunked);
    assert_eq!(complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").framing, Framing::Chunked);
    let gzip = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(gzip.framing, Framing::UntilClose, "not chunked last: read to the close");
    assert!(!gzip.keep_alive);
    assert_eq!(complete("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").framing, Framing::Length(7));
    let neither = complete("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(neither.framing, Framing::UntilClose);
    assert!(!neither.keep_alive, "a body read to the close ends the connection");
    let both = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(both.framing, Framing::Chunked, "Transfer-Encoding wins");
    assert!(!both.keep_alive, "and the connection is not reused after it");
    assert!(!both.response.headers().contains_key("content-length"), "nor does the length travel on");
    for bad in
        ["Content-Length: 7, 8", "Content-Length: -1", "Content-Length: 1e3", "Content-Length: 7\r\nContent-Length: 9"]
    {
        let text = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
        assert!(matches!(head_of(&text, &Method::GET), Err(ProtocolError::InvalidContentLength)), "{bad}");
    }
}

#[test]
fn keep_alive_follows_the_version_and_the_connection_header() {
    assert!(!complete("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n").keep_alive);
    assert!(!complete("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
    assert!(complete("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
    let chunked_10 = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(head_of(chunked_10, &Method::GET), Err(ProtocolError::TransferEncodingInHttp10)));
}

#[test]
fn a_head_with_the_most_headers_is_parsed_whole_and_one_more_is_refused() {
    let mut text = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..(MAX_HEADERS - 1) {
        text.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    let over = format!("{text}x-one-more: 1\r\nContent-Length: 0\r\n\r\n");
    text.push_str("Content-Length: 0\r\n\r\n");
    let head = complete(&text);
    assert_eq!(head.response.headers().len(), MAX_HEADERS);
    assert_eq!(head.response.headers()["x-h98"], "98");
    assert!(
        matches!(head_of(&over, &Method::GET), Err(ProtocolError::Malformed(httparse::Error::TooManyHeaders))),
        "{:?}",
        head_of(&over, &Method::GET)
    );
}

#[test]
fn a_malformed_head_is_an_error_not_a_panic() {
    for bad in [
        "not HTTP at all\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",
    ] {
        assert!(head_of(bad, &Method::GET).is_err(), "{bad:?}");
    }
}

#[test]
fn a_length_delimited_body_ends_at_its_length_and_leaves_what_follows() {
    let (body, rest) = decode_bytewise(Framing::Length(5), b"helloHTTP/1.1").unwrap();
    assert_eq!((body.as_slice(), rest.as_slice()), (&b"hello"[..], &b"HTTP/1.1"[..]));
    let mut buf = BytesMut::from("hello world");
    let mut decoder = Decoder::new(Framing::Length(5));
    assert_eq!(decoder.remaining(), Some(5));
    assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"hello")));
    assert!(decoder.is_done(), "done with the last byte, before anyone asks again");
    assert!(Decoder::new(Framing::Empty).is_done());
    assert!(Decoder::new(Framing::Length(0)).is_done());
}

#[test]
fn a_chunked_body_is_decoded_across_any_split_with_extensions_and_trailers() {
    let wire = b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nExpires: never\r\n\r\nNEXT";
    let (body, rest) = decode_bytewise(Framing::Chunked, wire).unwrap();
    assert_eq!(String::from_utf8(body).unwrap(), "hello 0123456789");
    assert_eq!(rest, b"NEXT");
    let (body, _) = decode_bytewise(Framing::Chunked, b"3 ;ext\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!(body, b"abc", "whitespace before an extension is taken");
}

#[test]
fn a_malformed_chunked_body_is_an_error() {
    let cases: [&[u8]; 10] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        // A bare CR, which another parser in front might take for a line end.
        b"3;a\rb\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX-T: a\rb\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"\r\n",
        b"-1\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",
    ];
    for wire in cases {
        let failed = decode_bytewise(Framing::Chunked, wire);
        assert!(
            matches!(failed, Err(ProtocolError::InvalidChunk(_))),
            "{:?}: {failed:?}",
            String::from_utf8_lossy(wire)
        );
    }
    let mut extended = Vec::new();
    for _ in 0..(MAX_EXTENSION_BYTES / 1000 + 1) {
        extended.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(1000)).as_bytes());
    }
    let too_much = decode_bytewise(Framing::Chunked, &extended);
    assert!(matches!(too_much, Err(ProtocolError::InvalidChunk("the chunk extensions are too long"))), "{too_much:?}");
    let endless = vec![b'1'; MAX_CHUNK_LINE + 10];
    assert!(matches!(decode_bytewise(Framing::Chunked, &endless), Err(ProtocolError::InvalidChunk(_))));
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..(MAX_TRAILER_BYTES / 10 + 1) {
        trailers.extend_from_slice(b"x: 123456\r\n");
    }
    assert!(matches!(decode_bytewise(Framing::Chunked, &trailers), Err(ProtocolError::InvalidChunk(_))));
}

#[test]
fn a_body_until_the_close_takes_everything() {
    let mut decoder = Decoder::new(Framing::UntilClose);
    let mut buf = BytesMut::from("all of it");
    assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"all of it")));
    assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::NeedMore);
    assert_eq!(decoder.remaining(), None);
}

// The listener's request heads.

/// Parses a head under the largest `--max-header-bytes` (1 MiB), so that the other limits show.
fn parse(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse_request(&mut BytesMut::from(text), 1 << 20)
}

#[test]
fn a_head_is_parsed_into_a_request_and_what_follows_it_stays() {
    let mut buf =
        BytesMut::from(&b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next"[..]);
    let head = parse_request(&mut buf, crate::server::DEFAULT_MAX_HEADER_BYTES).unwrap().unwrap();
    assert_eq!(head.parts.method, Method::GET);
    assert_eq!(head.parts.uri, "/api/v1/query?query=up");
    assert_eq!(head.parts.version, Version::HTTP_11);
    assert_eq!(head.parts.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(head.keep_alive && head.decoder.is_done() && !head.expects_continue);
    assert_eq!(&buf[..], b"GET /next");
    assert!(
        parse_request(&mut buf, crate::server::DEFAULT_MAX_HEADER_BYTES).unwrap().is_none(),
        "a partial head waits for more"
    );
}

#[test]
fn framing_follows_rfc_9112() {
    let post = |headers: &str| parse(format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes());
    let length = post("Content-Length: 5\r\n").unwrap().unwrap();
    assert_eq!(length.decoder.remaining(), Some(5));
    let same_twice = post("Content-Length: 5\r\nContent-Length: 5, 5\r\n").unwrap().unwrap();
    assert_eq!(same_twice.decoder.remaining(), Some(5));
    assert!(matches!(post("Content-Length: 5\r\nContent-Length: 6\r\n"), Err(HeadError::Invalid(_))));
    assert!(matches!(post("Content-Length: +5\r\n"), Err(HeadError::Invalid(_))));

    let both = post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").unwrap().unwrap();
    assert_eq!(both.decoder, Decoder::new(Framing::Chunked), "chunked wins");
    assert!(!both.parts.headers.contains_key(header::CONTENT_LENGTH), "the length is dropped");
    assert!(!both.keep_alive, "and nothing after the body is trusted");

    // The listener's head check answers 501 for codings it cannot pass on.
    assert!(post("Transfer-Encoding: gzip, chunked\r\n").unwrap().is_some());
    assert!(matches!(post("Transfer-Encoding: chunked, gzip\r\n"), Err(HeadError::Invalid(_))));
    let old = parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(matches!(old, Err(HeadError::Invalid(_))));

    let expecting = post("Content-Length: 5\r\nExpect: 100-Continue\r\n").unwrap().unwrap();
    assert!(expecting.expects_continue);
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let keep = |text: &[u8]| parse(text).unwrap().unwrap().keep_alive;
    assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!keep(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
}

#[test]
fn malformed_and_oversized_heads_are_refused_with_their_status() {
    let lines = |n: usize| {
        let headers: String = (0..n).map(|i| format!("X-{i}: {i}\r\n")).collect();
        format!("GET / HTTP/1.1\r\n{headers}\r\n")
    };
    assert!(parse(lines(MAX_REQUEST_HEADERS).as_bytes()).unwrap().is_some());
    let too_many = parse(lines(MAX_REQUEST_HEADERS + 1).as_bytes()).unwrap_err();
    assert_eq!(too_many.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    for bad in [
        &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
    ] {
        let error = parse(bad).err().unwrap_or_else(|| panic!("{:?} parsed", String::from_utf8_lossy(bad)));
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_huge_target_gets_414_unless_the_head_is_over_its_limit_first() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_TARGET));
    assert_eq!(parse(long.as_bytes()).unwrap_err().status(), StatusCode::URI_TOO_LONG);
    let mut buf = BytesMut::from(long.as_bytes());
    let by_default = parse_request(&mut buf, crate::server::DEFAULT_MAX_HEADER_BYTES).unwrap_err();
    assert_eq!(by_default.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "over the default head size first");
}

// The listener's answer heads, read back by the client's parser.

/// Writes `response` with `body` as the listener would, to a GET (or HEAD) request of
/// `version`, and parses it back: the head, the body read, and the plan.
fn round_trip(
    response: http::Response<()>,
    body: &[u8],
    exact: bool,
    answer_head: bool,
    version: Version,
) -> (Head, Vec<u8>, response::Plan) {
    let (parts, ()) = response.into_parts();
    let mut out = Vec::new();
    let plan =
        response::write_head(&mut out, &parts, None, exact.then_some(body.len() as u64), answer_head, version, true);
    if plan.framing != Framing::Empty {
        let mut encoder = response::Encoder::new(plan.framing);
        for piece in body.chunks(3) {
            let tail = encoder.piece(&mut out, piece.len()).expect("the body fits its length");
            out.extend_from_slice(piece);
            out.extend_from_slice(tail);
        }
        encoder.finish(&mut out).expect("the body ends at its length");
    }
    let method = if answer_head { Method::HEAD } else { Method::GET };
    let mut wire = BytesMut::from(&out[..]);
    let head = parse_head(&mut wire, &method).expect("a valid head").expect("a complete head");
    let mut decoder = Decoder::new(head.framing);
    let mut read = Vec::new();
    while let Ok(Decoded::Data(data)) = decoder.decode(&mut wire) {
        read.extend_from_slice(&data);
    }
    (head, read, plan)
}

#[test]
fn answers_are_framed_by_their_length_their_size_chunked_or_the_close() {
    let answer = || http::Response::builder().header("x-a", "1").header("x-a", "2");
    let (head, body, plan) = round_trip(answer().body(()).unwrap(), b"hello world", true, false, Version::HTTP_11);
    assert_eq!((plan.framing, body.as_slice()), (Framing::Length(11), &b"hello world"[..]));
    assert_eq!(head.response.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(head.keep_alive && head.response.headers().contains_key(http::header::DATE));

    let (head, body, plan) = round_trip(answer().body(()).unwrap(), b"hello world", false, false, Version::HTTP_11);
    assert_eq!(
        (plan.framing, head.framing, body.as_slice()),
        (Framing::Chunked, Framing::Chunked, &b"hello world"[..])
    );

    let (head, body, plan) = round_trip(answer().body(()).unwrap(), b"hello world", false, false, Version::HTTP_10);
    assert_eq!((plan.framing, body.as_slice()), (Framing::UntilClose, &b"hello world"[..]));
    assert!(!plan.keep_alive && !head.keep_alive, "HTTP/1.0 without a length ends at the close");

    let declared = answer().header("content-length", "11").header("transfer-encoding", "gzip").body(()).unwrap();
    let (head, _, plan) = round_trip(declared, b"hello world", false, true, Version::HTTP_11);
    assert_eq!((plan.framing, head.framing), (Framing::Empty, Framing::Empty), "a HEAD answer has no body");
    assert_eq!(head.response.headers()["content-length"], "11", "but says its length");
    assert!(!head.response.headers().contains_key("transfer-encoding"), "the framing is the writer's");
}

#[test]
fn lengths_that_cannot_frame_an_answer_are_not_passed_on() {
    let no_content = http::Response::builder().status(204).header("content-length", "5").body(()).unwrap();
    let (head, body, _) = round_trip(no_content, b"", true, false, Version::HTTP_11);
    assert!(body.is_empty() && !head.response.headers().contains_key("content-length"), "204 has no length");

    let garbled = http::Response::builder().header("content-length", "5, 6").body(()).unwrap();
    let (head, body, plan) = round_trip(garbled, b"hello", true, false, Version::HTTP_11);
    assert_eq!(plan.framing, Framing::Length(5), "framed by the body's own size");
    assert_eq!((head.response.headers()["content-length"].as_bytes(), body.as_slice()), (&b"5"[..], &b"hello"[..]));
}

#[test]
fn a_body_that_breaks_its_own_length_is_refused() {
    let mut encoder = response::Encoder::new(Framing::Length(4));
    let mut out = Vec::new();
    assert!(encoder.piece(&mut out, 3).is_ok());
    assert!(matches!(encoder.piece(&mut out, 2), Err(response::EncodeError::TooLong(4))));
    assert!(matches!(encoder.finish(&mut out), Err(response::EncodeError::TooShort { sent: 3, length: 4 })));
}

#[test]
fn an_answer_head_leaves_the_connections_headers_to_the_client() {
    let head = complete(concat!(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n",
        "Proxy-Connection: keep-alive\r\nTrailer: x\r\nUpgrade: h2c\r\nTE: trailers\r\nContent-Type: text/plain\r\n",
        "Vary: Origin\r\nContent-Length: 2\r\n\r\nok"
    ));
    let names: Vec<_> = head.response.headers().keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["content-type", "vary", "content-length"]);
    assert!(head.keep_alive);
    assert_eq!(head.framing, Framing::Length(2));
    let chunked = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n");
    let names: Vec<_> = chunked.response.headers().keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-kept"], "the framing is the client's to say again");

    let names = |text: &str| {
        let head = complete(text);
        let names: Vec<String> = head.response.headers().keys().map(|n| n.to_string()).collect();
        (names, head.keep_alive)
    };
    let (kept, keep_alive) = names("HTTP/1.1 200 OK\r\nConnection: close\r\nClose: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((kept, keep_alive), (vec!["content-length".to_string()], false), "a field named like the option goes");
    let (kept, _) = names("HTTP/1.1 200 OK\r\nCONNECTION: X-HOP\r\nx-hop: 1\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(kept, ["x-kept", "content-length"], "names and options in any case");
    let gzip = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\nX-Kept: 1\r\n\r\n");
    assert_eq!(gzip.framing, Framing::UntilClose);
    assert!(!gzip.response.headers().contains_key("content-length"), "any Transfer-Encoding wins over a length");
}

#[test]
fn common_names_are_made_as_any_other_name_in_any_case() {
    let names = [
        "Date",
        "HOST",
        "vary",
        "Accept",
        "SerVer",
        "Cookie",
        "User-Agent",
        "content-TYPE",
        "Authorization",
        "Content-Length",
        "Accept-Encoding",
        "Content-Encoding",
        "X-Other",
        "Dat3",
        "content_type",
        "Content-Typ",
    ];
    for raw in names {
        let slow = HeaderName::from_bytes(raw.as_bytes()).unwrap();
        assert_eq!(header_name(raw.as_bytes()).unwrap(), slow, "{raw}");
        assert_eq!(header_name(raw.as_bytes()).unwrap().as_str(), raw.to_ascii_lowercase(), "{raw}");
    }
    assert!(header_name(b"bad name").is_err());
    for (raw, role) in [
        ("Connection", Role::Connection),
        ("TRANSFER-ENCODING", Role::TransferEncoding),
        ("content-length", Role::ContentLength),
        ("Expect", Role::Plain),
        ("te", Role::HopByHop),
        ("Keep-Alive", Role::HopByHop),
        ("Proxy-Authorization", Role::HopByHop),
        ("Connectiom", Role::Plain),
        ("Content-Type", Role::Plain),
    ] {
        assert_eq!(Role::of(raw.as_bytes()), role, "{raw}");
    }
}

#[test]
fn lengths_and_codings_are_read_from_their_bytes() {
    let length = |lines: &[&str]| {
        let mut length = Length::default();
        lines.iter().for_each(|line| length.note(line.as_bytes()));
        length.get().ok()
    };
    assert_eq!(length(&[]), Some(None));
    assert_eq!(length(&["0"]), Some(Some(0)));
    assert_eq!(length(&["18446744073709551615"]), Some(Some(u64::MAX)));
    assert_eq!(length(&["18446744073709551616"]), None, "too large");
    assert_eq!(length(&["7, 7", "7"]), Some(Some(7)));
    for bad in [&["7, 8"][..], &["-1"], &["+1"], &[" "], &[""], &["7,"], &["7", "9"], &["1e3"]] {
        assert_eq!(length(bad), None, "{bad:?}");
    }
    assert!(ends_in_chunked(b"gzip, Chunked "));
    assert!(!ends_in_chunked(b"chunked, gzip"));
    assert!(!ends_in_chunked(b"chunkedx"));
}

#[test]
fn an_answer_relayed_whole_keeps_its_lines_as_they_came_and_is_written_with_them() {
    let text = concat!(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 17:00:00 GMT\r\n",
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
    );
    let head = kept(text);
    let run = "Server: nginx\r\nDate: Fri, 04 Dec 2026 17:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 2\r\n";
    assert_eq!(kept_lines(&head), Some(run), "one run of the head, the connection's line left out");
    assert!(head.response.headers().is_empty() && head.keep_alive);
    assert_eq!(head.framing, Framing::Length(2));

    let (mut parts, ()) = head.response.into_parts();
    let mut kept = head.lines.expect("kept lines");
    kept.add(Bytes::from_static(b"mpp.servedby: http://a:9090\r\n"));
    parts.headers.insert("x-mpp-added", HeaderValue::from_static("1"));
    let mut out = Vec::new();
    let plan = response::write_head(&mut out, &parts, Some(&kept), None, false, Version::HTTP_11, true);
    let written = format!("HTTP/1.1 200 OK\r\n{run}mpp.servedby: http://a:9090\r\nx-mpp-added: 1\r\n\r\n");
    assert_eq!(String::from_utf8(out).unwrap(), written, "its own length and date, nothing added");
    assert_eq!(plan, response::Plan { framing: Framing::Length(2), keep_alive: true });

    // HTTP/1.0 clients and HEAD requests: the same lines, framed for them.
    let mut out = Vec::new();
    let plan = response::write_head(&mut out, &parts, Some(&kept), None, true, Version::HTTP_10, true);
    let written = format!(
        "HTTP/1.0 200 OK\r\n{run}mpp.servedby: http://a:9090\r\nx-mpp-added: 1\r\nconnection: keep-alive\r\n\r\n"
    );
    assert_eq!((String::from_utf8(out).unwrap(), plan.framing), (written, Framing::Empty));

    // Put in the map, the added line comes after the replica's.
    lines::unpack_into(kept, &mut parts.headers);
    let names: Vec<_> = parts.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["server", "date", "content-type", "content-length", "mpp.servedby", "x-mpp-added"]);
}

#[test]
fn kept_lines_are_copied_well_formed_when_they_are_not_one_run() {
    let head = kept(concat!(
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\nX-B : 2\r\nX-Empty:\r\n",
        "Transfer-Encoding: chunked\r\nX-Named: 3\r\nConnection: X-Named\r\nX-C:\t4\r\n\r\n"
    ));
    assert_eq!(kept_lines(&head), Some("X-A: 1\r\nX-B: 2\r\nX-Empty: \r\nX-C: 4\r\n"));
    assert_eq!(head.framing, Framing::Chunked);
    let (parts, ()) = head.response.into_parts();
    let mut out = Vec::new();
    response::write_head(&mut out, &parts, head.lines.as_ref(), None, false, Version::HTTP_11, true);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with(
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nX-Empty: \r\nX-C: 4\r\ntransfer-encoding: chunked\r\ndate: "
    ));

    // A length beside a Transfer-Encoding does not travel on, and a Date named by
    // `Connection` is gone: the listener dates the answer itself.
    let head = kept(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nDate: x\r\nConnection: date\r\n\r\n",
    );
    assert_eq!(kept_lines(&head), Some(""));
    let (parts, ()) = head.response.into_parts();
    let mut out = Vec::new();
    response::write_head(&mut out, &parts, head.lines.as_ref(), None, false, Version::HTTP_11, true);
    assert!(String::from_utf8(out).unwrap().contains("\r\ndate: "), "dated by the listener");
}

#[test]
fn answers_mpp_must_change_or_that_have_no_body_keep_a_map() {
    let another_mpp = kept("HTTP/1.1 200 OK\r\nMPP.ServedBy: http://b:9090\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(kept_lines(&another_mpp), None, "its MPP.ServedBy is replaced, not repeated");
    assert_eq!(another_mpp.response.headers()["mpp.servedby"], "http://b:9090");
    for status in ["204 No Content", "304 Not Modified"] {
        let bodiless = kept(&format!("HTTP/1.1 {status}\r\nETag: x\r\nContent-Length: 5\r\n\r\n"));
        assert_eq!(kept_lines(&bodiless), None, "{status}");
        assert_eq!(bodiless.response.headers()["etag"], "x");
    }
}

#[test]
fn unpacked_lines_come_before_what_mpp_added() {
    let mut head = kept("HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\n\r\n");
    head.response.headers_mut().append("set-cookie", HeaderValue::from_static("mpp=x"));
    head.response.headers_mut().append("set-cookie", HeaderValue::from_static("mpp=y"));
    head.response.headers_mut().insert("mpp.servedby", HeaderValue::from_static("http://a:9090"));
    lines::unpack_into(head.lines.take().expect("kept lines"), head.response.headers_mut());
    let cookies: Vec<_> = head.response.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "mpp=x", "mpp=y"]);
    assert_eq!(head.response.headers()["content-length"], "0");
    assert_eq!(head.response.headers()["mpp.servedby"], "http://a:9090");
    assert_eq!(head.response.headers().len(), 5);
}

#[test]
fn a_length_connection_names_does_not_frame_the_answer_it_left() {
    // The replica's length frames what mpp reads; named by `Connection`, it does not travel
    // on, and the listener frames the answer itself.
    let head = kept("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\nConnection: Content-Length\r\n\r\n");
    assert_eq!(head.framing, Framing::Length(10));
    assert_eq!(kept_lines(&head), Some("X-A: 1\r\n"));
    assert_eq!(head.lines.as_ref().unwrap().length(), None);
    let (parts, ()) = head.response.into_parts();
    for (exact, framing) in [(Some(10), "content-length: 10\r\n"), (None, "transfer-encoding: chunked\r\n")] {
        let mut out = Vec::new();
        let plan = response::write_head(&mut out, &parts, head.lines.as_ref(), exact, false, Version::HTTP_11, true);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(&format!("HTTP/1.1 200 OK\r\nX-A: 1\r\n{framing}")), "{out}");
        assert_ne!(plan.framing, Framing::UntilClose);
    }
}
