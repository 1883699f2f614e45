//! A response body that holds something until the body is done: a connection's count of
//! requests in flight, or a replica's connection slot. hyper drops a body once it has been
//! sent whole (or the client went away), which is exactly when such a hold must end.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// `body`, holding `guard` until it is dropped.
#[derive(Debug)]
pub struct Guarded<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    /// Wraps `body` so that `guard` lives as long as it.
    pub fn new(body: B, guard: G) -> Self {
        Guarded { body, _guard: guard }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
