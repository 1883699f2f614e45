//! A response body that holds something until the body is done: a connection's count of
//! requests in flight, or a replica's connection slot. hyper drops a body once it has been
//! sent whole (or the client went away), which is exactly when such a hold must end.
//! Also [`BoxError`], the one error type of bodies and connections on both sides.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

use crate::http1::lines::{CarriesLines, HeaderLines};

/// The error of a body or a connection, on the listener's side and the client's alike: only
/// reported (logged, or wrapped in a typed error), never branched on, so boxed as hyper does.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body`, holding `guard` until it is dropped; optionally with what was already read of it
/// in front (an answer read to merge or annotate, found too long for that, streams on whole).
#[derive(Debug)]
pub struct Guarded<B: Body, G> {
    prefix: Option<B::Data>,
    body: B,
    _guard: G,
}

impl<B: Body, G> Guarded<B, G> {
    /// Wraps `body` so that `guard` lives as long as it.
    pub fn new(body: B, guard: G) -> Self {
        Guarded { prefix: None, body, _guard: guard }
    }

    /// Wraps the rest of a body whose first part, `prefix`, was already read from it.
    pub fn with_prefix(prefix: B::Data, body: B, guard: G) -> Self {
        Guarded { prefix: Some(prefix), body, _guard: guard }
    }

    /// What was read of the body already (if anything), the rest of it, and the guard.
    pub fn into_inner(self) -> (Option<B::Data>, B, G) {
        (self.prefix, self.body, self._guard)
    }

    /// The body and the guard, apart again.
    pub fn into_parts(self) -> (B, G) {
        (self.body, self._guard)
    }
}

impl<B: Body + CarriesLines, G> CarriesLines for Guarded<B, G> {
    fn lines_mut(&mut self) -> Option<&mut HeaderLines> {
        self.body.lines_mut()
    }

    fn take_lines(&mut self) -> Option<HeaderLines> {
        self.body.take_lines()
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G>
where
    B::Data: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.body.size_hint();
        let Some(prefix) = &self.prefix else { return rest };
        use hyper::body::Buf;
        let extra = prefix.remaining() as u64;
        // The upper bound first: `SizeHint` refuses a lower bound above its upper one.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_prefix_comes_first_and_counts_in_the_size() {
        let body = Guarded::with_prefix(Bytes::from_static(b"ab"), Full::new(Bytes::from_static(b"cde")), ());
        let hint = body.size_hint();
        assert_eq!((hint.lower(), hint.upper()), (5, Some(5)));
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from_static(b"abcde"));
        let plain = Guarded::new(Full::new(Bytes::from_static(b"x")), ());
        assert_eq!(plain.size_hint().exact(), Some(1));
    }
}
