//! The window of stored data a remote read (`POST /api/v1/read`) asks for: the union of its
//! queries' time ranges. The body is a `ReadRequest` (Prometheus's `prompb/remote.proto`),
//! protobuf compressed with snappy's block format; only the fields routing needs are decoded.

use prost::Message;

use super::Window;
use crate::coverage::Millis;

/// The largest remote-read request decoded for routing, uncompressed. Prometheus sends one
/// query per series selection, a few hundred bytes; a larger body is routed as one whose
/// window is unknown, and the replica judges it.
const MAX_DECODED: usize = 64 << 10;

/// `prompb.ReadRequest`, the fields mpp reads.
#[derive(Clone, PartialEq, Message)]
struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    queries: Vec<Query>,
    /// `prompb.ReadRequest.ResponseType`: 0 `SAMPLES`, 1 `STREAMED_XOR_CHUNKS`.
    #[prost(int32, repeated, tag = "2")]
    accepted_response_types: Vec<i32>,
}

/// `prompb.Query`, the fields mpp reads.
#[derive(Clone, PartialEq, Message)]
struct Query {
    #[prost(int64, tag = "1")]
    start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    end_timestamp_ms: i64,
}

/// What a remote read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRead {
    /// The union of its queries' time ranges, cut at `now`.
    pub window: Window,
    /// Whether the reader takes streamed chunks (Thanos), which are never merged.
    pub streamed: bool,
}

/// Reads a remote-read request's body. Errs, saying why, on a body that is not a snappy
/// `ReadRequest`, is over [`MAX_DECODED`], or holds no query: the replica answers such a
/// request itself.
pub fn remote_read(body: &[u8], now: Millis) -> Result<RemoteRead, String> {
    let length = snap::raw::decompress_len(body).map_err(|e| format!("not snappy: {e}"))?;
    if length > MAX_DECODED {
        return Err(format!("{length} bytes uncompressed, over {MAX_DECODED}"));
    }
    let decoded = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("not snappy: {e}"))?;
    let request = ReadRequest::decode(decoded.as_slice()).map_err(|e| format!("not a ReadRequest: {e}"))?;
    let start = request.queries.iter().map(|q| q.start_timestamp_ms).min().ok_or("no query")?;
    let end = request.queries.iter().map(|q| q.end_timestamp_ms).max().ok_or("no query")?;
    Ok(RemoteRead {
        window: Window { start, end: end.min(now) },
        streamed: request.accepted_response_types.contains(&1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(queries: &[(i64, i64)], types: &[i32]) -> Vec<u8> {
        let request = ReadRequest {
            queries: queries
                .iter()
                .map(|&(start, end)| Query { start_timestamp_ms: start, end_timestamp_ms: end })
                .collect(),
            accepted_response_types: types.to_vec(),
        };
        snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).unwrap()
    }

    #[test]
    fn the_window_is_the_union_of_the_queries_cut_at_now() {
        let read = remote_read(&body(&[(1_000, 5_000), (3_000, 9_000)], &[0]), 8_000).unwrap();
        assert_eq!(read.window, Window { start: 1_000, end: 8_000 });
        assert!(!read.streamed);
        assert!(remote_read(&body(&[(0, 1)], &[1, 0]), 8_000).unwrap().streamed);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason_never_a_panic() {
        assert!(remote_read(b"", 0).unwrap_err().contains("snappy"), "empty");
        assert!(remote_read(b"\xff\xff\xff\xff\x0f", 0).is_err(), "a length over the limit");
        assert!(remote_read(&body(&[], &[]), 0).unwrap_err().contains("no query"));
        let mut truncated = body(&[(1, 2)], &[]);
        truncated.truncate(truncated.len() - 1);
        assert!(remote_read(&truncated, 0).is_err(), "truncated");
        // Snappy that holds something other than a ReadRequest.
        let garbage = snap::raw::Encoder::new().compress_vec(b"\x0a\xff\xff\xff\xff\xff").unwrap();
        assert!(remote_read(&garbage, 0).unwrap_err().contains("ReadRequest"));
        // A hundred thousand queries decompress past the limit: refused before decoding.
        let many = body(&vec![(1, 2); 100_000], &[]);
        assert!(remote_read(&many, 0).unwrap_err().contains("over"));
    }
}
