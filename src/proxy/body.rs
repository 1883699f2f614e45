//! Reading a request body so that it can be replayed: capped in size (`--max-request-body`),
//! held to a minimum rate (`--request-body-min-rate`, after a grace period), and paid for,
//! byte by byte as it arrives, from one budget shared by every request in the process
//! (`--request-body-budget`), so that many clients (or many HTTP/2 streams of one) cannot
//! buffer mpp out of memory, and a slow client holds no more of it than it has sent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{ProxyError, error_chain};

/// The most a body buffer allocates before its bytes arrive, whatever length is declared.
const INITIAL_CAPACITY: u64 = 64 << 10;

/// How request bodies are read.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// The largest body, in bytes.
    pub max: u64,
    /// The slowest average rate accepted once `grace` has passed, in bytes per second.
    pub min_rate: u64,
    /// How long a body may take regardless of its rate.
    pub grace: Duration,
    /// The shared budget, one permit a byte.
    pub budget: Arc<Semaphore>,
    /// The budget's size, for messages.
    pub budget_bytes: u64,
}

/// A body read whole, with its share of the budget (returned when this is dropped).
#[derive(Debug)]
pub struct Buffered {
    /// The bytes.
    pub bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

impl Buffered {
    /// Bytes mpp made itself (a rewritten form), paid for by the request they came from.
    pub fn made(bytes: Bytes) -> Self {
        Buffered { bytes, _reserved: None }
    }
}

impl BodyLimits {
    /// Reads `body` whole, or refuses: 413 over the size (from a declared length at once),
    /// 408 too slow, 503 over budget.
    /// Without a body (most queries), decided at once: a future of its own only for a body
    /// that is read.
    pub fn read<B>(
        &self,
        headers: &HeaderMap,
        body: B,
    ) -> impl Future<Output = Result<Buffered, ProxyError>> + use<'_, B>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max) {
            return Either::Left(std::future::ready(Err(ProxyError::BodyTooLarge { limit: self.max })));
        }
        if body.is_end_stream() {
            return Either::Left(std::future::ready(Ok(Buffered { bytes: Bytes::new(), _reserved: None })));
        }
        Either::Right(self.read_arriving(declared, body))
    }

    async fn read_arriving<B>(&self, declared: Option<u64>, body: B) -> Result<Buffered, ProxyError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // The budget pays for bytes as they arrive, not for a declared length: a client that
        // declares 16 MiB and sends a byte a second holds a byte a second, not 16 MiB.
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        let started = Instant::now();
        let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_CAPACITY) as usize);
        let mut body = body;
        loop {
            let deadline = started + self.grace + rate_time(buffer.len() as u64, self.min_rate);
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ProxyError::BodyTooSlow(format!(
                        "{} bytes in {:?}, slower than the minimum of {} bytes/s (--request-body-min-rate)",
                        buffer.len(),
                        started.elapsed(),
                        self.min_rate
                    )));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ProxyError::BadRequestBody(error_chain(&e))),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if buffer.len() as u64 + data.len() as u64 > self.max {
                return Err(ProxyError::BodyTooLarge { limit: self.max });
            }
            let more = self.reserve(data.len() as u64)?;
            match &mut reserved {
                Some(permit) => permit.merge(more),
                None => reserved = Some(more),
            }
            buffer.extend_from_slice(&data);
        }
        Ok(Buffered { bytes: buffer.freeze(), _reserved: reserved })
    }

    fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ProxyError> {
        let over = || {
            ProxyError::Overloaded(format!(
                "request bodies being buffered have reached the budget of {} bytes (--request-body-budget)",
                self.budget_bytes
            ))
        };
        let permits = u32::try_from(bytes).map_err(|_| over())?;
        self.budget.clone().try_acquire_many_owned(permits).map_err(|_| over())
    }
}

/// How long `bytes` take at `rate` bytes per second.
fn rate_time(bytes: u64, rate: u64) -> Duration {
    if rate == 0 { Duration::from_secs(u64::MAX / 4) } else { Duration::from_secs_f64(bytes as f64 / rate as f64) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    fn limits(max: u64, budget: u64) -> BodyLimits {
        BodyLimits {
            max,
            min_rate: 1000,
            grace: Duration::from_secs(2),
            budget: Arc::new(Semaphore::new(budget as usize)),
            budget_bytes: budget,
        }
    }

    fn length(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, n.into());
        h
    }

    #[tokio::test]
    async fn bodies_are_paid_from_the_budget_until_dropped() {
        let limits = limits(100, 150);
        let first = limits.read(&length(100), Full::new(Bytes::from(vec![b'a'; 100]))).await.unwrap();
        assert_eq!(first.bytes.len(), 100);
        let refused = limits.read(&length(100), Full::new(Bytes::from(vec![b'b'; 100]))).await.unwrap_err();
        assert_eq!(refused.status(), 503, "{refused}");
        drop(first);
        assert!(limits.read(&length(100), Full::new(Bytes::from(vec![b'c'; 100]))).await.is_ok());
        assert_eq!(limits.budget.available_permits(), 150, "everything is returned");
    }

    #[tokio::test]
    async fn bodies_over_the_size_are_refused_declared_or_not() {
        let limits = limits(10, 1000);
        let declared = limits.read(&length(11), Full::new(Bytes::from(vec![0; 11]))).await.unwrap_err();
        assert_eq!(declared.status(), 413);
        let chunks =
            futures_util::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0; 5])))));
        let undeclared = limits.read(&HeaderMap::new(), StreamBody::new(chunks)).await.unwrap_err();
        assert_eq!(undeclared.status(), 413);
        assert_eq!(limits.budget.available_permits(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_holds_only_the_budget_of_what_it_has_sent() {
        let limits = limits(1 << 20, 100);
        let budget = limits.budget.clone();
        let (mut sender, body) = futures_channel_body();
        let reader = tokio::spawn(async move { limits.read(&length(1 << 20), body).await.map(|b| b.bytes.len()) });
        sender.send(Bytes::from_static(b"0123456789")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(budget.available_permits(), 90, "a declared megabyte reserves nothing up front");
        drop(sender);
        assert_eq!(reader.await.unwrap().unwrap(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_after_the_grace_period_is_refused() {
        let limits = limits(1000, 1000);
        let (mut sender, body) = futures_channel_body();
        let reader = tokio::spawn(async move { limits.read(&length(100), body).await.map(|b| b.bytes.len()) });
        sender.send(Bytes::from_static(b"q")).await;
        // One byte, then nothing: cut off at the grace period (plus a millisecond of rate).
        tokio::time::advance(Duration::from_millis(2100)).await;
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.status(), 408, "{error}");
    }

    /// A body fed through a channel, one frame per send.
    fn futures_channel_body() -> (Feeder, StreamBody<tokio_stream_like::Receiver>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Feeder(tx), StreamBody::new(tokio_stream_like::Receiver(rx)))
    }

    struct Feeder(tokio::sync::mpsc::Sender<Bytes>);

    impl Feeder {
        async fn send(&mut self, bytes: Bytes) {
            self.0.send(bytes).await.unwrap();
        }
    }

    mod tokio_stream_like {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        use bytes::Bytes;
        use hyper::body::Frame;

        pub struct Receiver(pub tokio::sync::mpsc::Receiver<Bytes>);

        impl futures_util::Stream for Receiver {
            type Item = Result<Frame<Bytes>, std::io::Error>;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
            }
        }
    }
}
