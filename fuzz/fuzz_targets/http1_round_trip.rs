//! The listener's answer writer read back by the client's answer parser: whatever answer
//! the proxy hands the writer (any status, headers, body pieces, declared or exact length,
//! HTTP/1.0 or 1.1, `HEAD` or not), the parser reads the same status, version and headers
//! (the same whether it keeps the header lines as bytes or puts them in a map),
//! the same body, and the same decision on keeping the connection. An answer whose body
//! does not match its own `Content-Length` is refused by the writer, never sent.
//!
//! Input: a flags byte, two bytes of status, then header lines (`name:value`, `\n`-ended)
//! up to a `\0`, then the body in pieces separated by `\xff`.
#![no_main]

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::{Decoded, Decoder, Encoder, Framing, Role, parse_head, parse_head_as, unpack_into, write_head};

fuzz_target!(|data: &[u8]| {
    let [flags, high, low, rest @ ..] = data else { return };
    let version = if flags & 1 == 0 { Version::HTTP_11 } else { Version::HTTP_10 };
    let answer_head = flags & 2 != 0;
    let keep_alive = flags & 4 != 0;
    let exact_known = flags & 8 != 0;
    // Final answers only: interim ones are not what a proxied request ends with.
    let status = StatusCode::from_u16(200 + u16::from_be_bytes([*high, *low]) % 400).unwrap();
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (lines, body) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let mut response = Response::new(());
    *response.status_mut() = status;
    for line in lines.split(|&b| b == b'\n').take(90) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        response.headers_mut().append(name, value);
    }
    let pieces: Vec<&[u8]> = body.split(|&b| b == 0xff).collect();
    let whole: Vec<u8> = pieces.concat();
    let (parts, ()) = response.into_parts();

    let mut out = Vec::new();
    let exact = exact_known.then_some(whole.len() as u64);
    let plan = write_head(&mut out, &parts, None, exact, answer_head, version, keep_alive);
    let mut sent = Vec::new();
    if plan.framing != Framing::Empty && plan.framing != Framing::Length(0) {
        let mut encoder = Encoder::new(plan.framing);
        for piece in pieces.iter().filter(|p| !p.is_empty()) {
            let Ok(tail) = encoder.piece(&mut out, piece.len()) else {
                assert!(matches!(plan.framing, Framing::Length(n) if n < whole.len() as u64), "refused only when too long");
                return;
            };
            out.extend_from_slice(piece);
            out.extend_from_slice(tail);
            sent.extend_from_slice(piece);
        }
        if encoder.finish(&mut out).is_err() {
            assert!(matches!(plan.framing, Framing::Length(n) if n > whole.len() as u64), "refused only when too short");
            return;
        }
        assert_eq!(sent, whole, "the whole body is written");
    }

    let method = if answer_head { Method::HEAD } else { Method::GET };
    let mut wire = BytesMut::from(&out[..]);
    let head = match parse_head(&mut wire, &method) {
        Ok(Some(head)) => head,
        other => panic!("the writer's head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    };
    // Read with its lines kept as bytes, the head holds the same headers.
    let mut again = BytesMut::from(&out[..]);
    let mut kept = parse_head_as(&mut again, &method, true).expect("a valid head").expect("a complete head");
    if let Some(lines) = kept.lines.take() {
        unpack_into(lines, kept.response.headers_mut());
    }
    assert_eq!(kept.response.headers(), head.response.headers(), "the same headers, kept as bytes or not");
    assert_eq!(head.response.status(), status);
    assert_eq!(head.response.version(), version);
    assert_eq!(head.keep_alive, plan.keep_alive && plan.framing != Framing::UntilClose, "the same connection decision");
    for name in parts.headers.keys() {
        let framing_header = [header::TRANSFER_ENCODING, header::CONNECTION, header::CONTENT_LENGTH, header::DATE];
        if framing_header.contains(name) {
            continue;
        }
        if Role::of(name.as_str().as_bytes()) != Role::Plain || (name == "close" && !plan.keep_alive) {
            // The connection's own (and what the writer's `Connection: close` names): the
            // client keeps them out of the answer it hands on.
            assert!(!head.response.headers().contains_key(name), "hop-by-hop header {name} handed on");
            continue;
        }
        let wrote: Vec<&[u8]> = parts.headers.get_all(name).iter().map(|v| v.as_bytes().trim_ascii()).collect();
        let read: Vec<&[u8]> = head.response.headers().get_all(name).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(wrote, read, "header {name}");
    }
    let mut decoder = Decoder::new(head.framing);
    let mut read = Vec::new();
    loop {
        match decoder.decode(&mut wire) {
            Ok(Decoded::Data(data)) => read.extend_from_slice(&data),
            Ok(Decoded::End) => break,
            // Up to the close: the close is the end.
            Ok(Decoded::NeedMore) if head.framing == Framing::UntilClose => break,
            other => panic!("the body does not decode: {other:?} ({:?})", head.framing),
        }
    }
    assert_eq!(read, sent, "the same body");
    assert!(wire.is_empty(), "nothing after the answer");
});
