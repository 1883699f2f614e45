//! The request path's own connections to the replicas: one [`Pool`] per serving thread,
//! holding hyper `client::conn::http1` connections. Probes and discovery keep the pooled
//! legacy client ([`super::HttpClient`]); this pool exists because that client costs the
//! request path a lock and a map keyed by a freshly hashed authority, a boxed future, a
//! oneshot and a spawned task for every request whose answer has a body (to put the
//! connection back once the body is read). Here a request takes the oldest connection of
//! its replica that is ready, sends on it, and puts it straight back behind the others once
//! the answer's head is in: a connection still streaming an answer is not ready, and is
//! passed over until it is.
//!
//! Each connection's hyper task runs on the serving thread that opened it (each serving
//! thread runs a single-threaded runtime), so a request and its connection never leave
//! their thread.
//!
//! What it keeps exact for the retry policy ([`Error`]): whether the request may have been
//! written. A reused connection found closed before anything was written is passed over for
//! another (or a new one), as the legacy client does. hyper's connection task reads before it
//! writes, so a close the replica has already sent is seen before a queued request goes out:
//! the request comes back unsent and takes another connection (a write included).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::time::Instant;
use tower_service::Service;

use super::Connector;

/// A connection that has not carried a request for this long is closed (as the legacy
/// client's `pool_idle_timeout`); Prometheus would otherwise keep it open for good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked at for [`IDLE_TIMEOUT`]: one found idle at this many
/// looks in a row has been idle for between `IDLE_TIMEOUT - SWEEP_INTERVAL` and `IDLE_TIMEOUT`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
const IDLE_SWEEPS: u32 = (IDLE_TIMEOUT.as_secs() / SWEEP_INTERVAL.as_secs()) as u32;

type Sender = SendRequest<Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How sending a request failed, and whether it may have been written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing was written: the connection could not be made (TCP, TLS), or it closed
    /// before the request was handed to it.
    #[error("{0}")]
    NotSent(BoxError),
    /// The request may have reached the replica (the connection failed while writing it or
    /// waiting for the answer).
    #[error("{0}")]
    Sent(hyper::Error),
}

/// One serving thread's connections to the replicas. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    http1: http1::Builder,
    max_per_replica: usize,
    /// Per replica, looked up by a scan: a thread talks to a handful of replicas, and
    /// comparing a short authority is cheaper than hashing it.
    replicas: Mutex<Vec<Connections>>,
    /// Whether the idle sweep has been started (on the serving thread's runtime, at first use).
    sweeping: std::sync::atomic::AtomicBool,
}

/// Connections are shared by the replicas that have the same scheme and authority.
type Key = (Scheme, Authority);

/// One replica's connections, oldest first, and its `Host` header.
struct Connections {
    key: Key,
    host: HeaderValue,
    queue: VecDeque<Pooled>,
}

impl Connections {
    /// `key`'s entry in `replicas`, made if there is none.
    fn of<'a>(replicas: &'a mut Vec<Connections>, key: &Key) -> &'a mut Connections {
        let index = match replicas.iter().position(|c| c.key == *key) {
            Some(index) => index,
            None => {
                replicas.push(Connections { key: key.clone(), host: host(key), queue: VecDeque::new() });
                replicas.len() - 1
            }
        };
        &mut replicas[index]
    }
}

struct Pooled {
    sender: Sender,
    /// How many sweeps in a row have found it idle (counted rather than timed, so that a
    /// request reads no clock for it).
    idle_sweeps: u32,
}

impl Pool {
    /// A pool over `connector` (http and https, the replicas' TLS options), keeping at most
    /// `max_per_replica` connections to each replica.
    pub fn new(connector: Connector, max_per_replica: u32) -> Self {
        let mut http1 = http1::Builder::new();
        // As the legacy client: answers with spaces before the colon are taken, not refused.
        http1.allow_spaces_after_header_name_in_responses(true);
        Pool {
            shared: Arc::new(Shared {
                connector,
                http1,
                max_per_replica: max_per_replica.max(1) as usize,
                replicas: Mutex::new(Vec::new()),
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (its URI absolute: the replica's scheme and authority) and waits for
    /// the answer's head.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        let key = origin_form(&mut request)?;
        self.start_sweeping();
        loop {
            let Some(mut sender) = self.checkout(&key, &mut request) else { break };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(&key, sender);
                    return Ok(response);
                }
                Err(mut failure) => match failure.take_message() {
                    // Closed before it took the request: try another connection.
                    Some(unsent) => request = unsent,
                    None => return Err(Error::Sent(failure.into_error())),
                },
            }
        }
        // Boxed: opening a connection is rare, and its future (the TCP and TLS handshakes)
        // would otherwise triple the size of every request's future, which is moved about.
        let mut sender = Box::pin(self.connect(&key)).await?;
        match sender.try_send_request(request).await {
            Ok(response) => {
                self.checkin(&key, sender);
                Ok(response)
            }
            Err(mut failure) => match failure.take_message() {
                Some(_) => Err(Error::NotSent(failure.into_error().into())),
                None => Err(Error::Sent(failure.into_error())),
            },
        }
    }

    /// The oldest ready connection to `key`, dropping closed ones on the way and passing
    /// over busy ones (still streaming an answer). Also sets `request`'s `Host`.
    fn checkout(&self, key: &Key, request: &mut Request<Full<Bytes>>) -> Option<Sender> {
        let mut replicas = self.shared.replicas.lock().expect("no code panics holding the pool's lock");
        let connections = Connections::of(&mut replicas, key);
        if !request.headers().contains_key(header::HOST) {
            request.headers_mut().insert(header::HOST, connections.host.clone());
        }
        for _ in 0..connections.queue.len() {
            let pooled = connections.queue.pop_front()?;
            if pooled.sender.is_ready() {
                return Some(pooled.sender);
            }
            if !pooled.sender.is_closed() {
                connections.queue.push_back(pooled);
            }
        }
        None
    }

    /// Puts a connection back behind the others, if there is room.
    fn checkin(&self, key: &Key, sender: Sender) {
        let mut replicas = self.shared.replicas.lock().expect("no code panics holding the pool's lock");
        let connections = Connections::of(&mut replicas, key);
        if connections.queue.len() < self.shared.max_per_replica {
            connections.queue.push_back(Pooled { sender, idle_sweeps: 0 });
        }
    }

    /// Opens a connection to `key` and starts its task on this thread.
    async fn connect(&self, key: &Key) -> Result<Sender, Error> {
        let uri = Uri::builder()
            .scheme(key.0.clone())
            .authority(key.1.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Error::NotSent(e.into()))?;
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(Error::NotSent)?;
        let io = connector.call(uri).await.map_err(Error::NotSent)?;
        let (sender, connection) = self.shared.http1.handshake(io).await.map_err(|e| Error::NotSent(e.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Debug, not Display: it carries the cause (`client` sits below `error`).
                tracing::debug!(error = ?error, "a replica connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle for [`IDLE_TIMEOUT`]; it runs on
    /// this serving thread and ends with the pool.
    fn start_sweeping(&self) {
        use std::sync::atomic::Ordering;
        if self.shared.sweeping.load(Ordering::Relaxed) || self.shared.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(sweep(shared));
    }

    /// Runs one sweep now, for tests.
    #[cfg(test)]
    fn sweep_now(&self) {
        sweep_once(&mut self.shared.replicas.lock().expect("no code panics holding the pool's lock"));
    }

    /// How many connections the pool holds to `uri`'s replica (busy or idle), for tests.
    #[cfg(test)]
    fn held(&self, uri: &str) -> usize {
        let uri: Uri = uri.parse().expect("a test URI");
        let key = (uri.scheme().expect("scheme").clone(), uri.authority().expect("authority").clone());
        let replicas = self.shared.replicas.lock().expect("no code panics holding the pool's lock");
        let connections = replicas.iter().find(|c| c.key == key);
        connections.map_or(0, |c| c.queue.iter().filter(|p| !p.sender.is_closed()).count())
    }
}

/// Closes idle connections past [`IDLE_TIMEOUT`] and forgets replicas with none, until the
/// pool is dropped.
async fn sweep(shared: Weak<Shared>) {
    let mut interval = tokio::time::interval_at(Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        sweep_once(&mut shared.replicas.lock().expect("no code panics holding the pool's lock"));
    }
}

/// One look at every connection: a closed one goes, an idle one counts one more sweep and
/// goes at [`IDLE_SWEEPS`], a busy one starts again from zero.
fn sweep_once(replicas: &mut Vec<Connections>) {
    replicas.retain_mut(|connections| {
        connections.queue.retain_mut(|pooled| {
            pooled.idle_sweeps = if pooled.sender.is_ready() { pooled.idle_sweeps + 1 } else { 0 };
            !pooled.sender.is_closed() && pooled.idle_sweeps < IDLE_SWEEPS
        });
        !connections.queue.is_empty()
    });
}

/// Turns `request`'s absolute URI into the origin form sent on the wire, and returns the
/// replica's key.
fn origin_form(request: &mut Request<Full<Bytes>>) -> Result<Key, Error> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    let (Some(scheme), Some(authority)) = (parts.scheme.take(), parts.authority.take()) else {
        return Err(Error::NotSent("the request's URI names no replica".into()));
    };
    let path = parts.path_and_query.take().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    Ok((scheme, authority))
}

/// The `Host` header for `key`: the authority without its scheme's default port, as the
/// legacy client sends it.
fn host(key: &Key) -> HeaderValue {
    let (scheme, authority) = key;
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let text = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(text).expect("an authority is a valid header value")
}

#[cfg(test)]
mod tests;
