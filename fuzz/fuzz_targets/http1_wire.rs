//! HTTP/1.1 on the wire, both ways: the listener's request-head parser and body decoder fed
//! a client's byte stream (heads and bodies one after another, as pipelined), and the
//! client's answer parser and body decoder fed a replica's. Never panics; a parsed head is
//! taken off the front of the stream; a body of known length decodes to exactly that length;
//! decoding always makes progress.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::{DEFAULT_MAX_HEADER_BYTES, Decoded, Decoder, RequestHead, parse_head, parse_request};

/// Decodes what `buf` holds of a body; the bytes it gave, or `None` when it is incomplete
/// or malformed.
fn decode(mut decoder: Decoder, buf: &mut BytesMut) -> Option<u64> {
    let expected = decoder.remaining();
    let mut total = 0u64;
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty() && buf.len() < before, "decoding makes progress");
                total += data.len() as u64;
            }
            Ok(Decoded::End) => {
                if let Some(expected) = expected {
                    assert_eq!(total, expected, "a body of known length ends at that length");
                }
                return Some(total);
            }
            Ok(Decoded::NeedMore) | Err(_) => return None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = BytesMut::from(data);
    for _ in 0..8 {
        let before = stream.len();
        match parse_request(&mut stream, DEFAULT_MAX_HEADER_BYTES) {
            Ok(Some(RequestHead { decoder, .. })) => {
                assert!(stream.len() < before, "a head is taken off the stream");
                if decode(decoder, &mut stream).is_none() {
                    break;
                }
            }
            Ok(None) => break,
            Err(refused) => {
                assert!(refused.status().is_client_error() && !refused.to_string().is_empty());
                break;
            }
        }
    }
    for method in [Method::GET, Method::HEAD] {
        let mut answer = BytesMut::from(data);
        if let Ok(Some(head)) = parse_head(&mut answer, &method) {
            decode(Decoder::new(head.framing), &mut answer);
        }
    }
});
