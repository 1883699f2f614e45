//! The retry policy, all of it: how an attempt can fail ([`AttemptError`]), what an answer
//! means for the attempt ([`judge`]: a 503 outside the API is a replica not ready, a 508 a
//! loop), which failures count against a replica (recorded in its health, which ejects it)
//! and which may be retried, which requests may be replayed, how many attempts a request
//! gets, where the next one goes ([`Target`]), and when an attempt waiting on a replica
//! found down gives up on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use rand::RngExt;
use tokio::time::Instant;

use super::headers;
use crate::error::error_chain;
use crate::registry::{Health, Replica};
use crate::selection::Snapshot;

/// Attempts per request: the first plus up to two retries, as the original promises.
pub const MAX_ATTEMPTS: usize = 3;
/// Consecutive failed attempts (of the kinds that count, [`AttemptError::counts_against_replica`])
/// after which a replica is ejected until it passes a probe.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How often a waiting attempt looks whether its replica has been found down.
const DOWN_CHECK: Duration = Duration::from_millis(200);

/// How the replica an attempt goes to was chosen, which decides what the attempt and its
/// answer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// By affinity or by strategy, among the usable replicas: the answer pins the client.
    Replica,
    /// Among every candidate, usable or not, because no usable one is left: the attempt gives
    /// the replica [`LAST_RESORT_PATIENCE`] before it moves on, and a failure says so.
    LastResort,
    /// For its data (coverage routing, a merge, a slice), over the client's affinity: the
    /// client's pin stays as it was.
    Diverted,
}

impl Target {
    /// Whether the replica is tried although nothing usable is left.
    pub fn is_last_resort(self) -> bool {
        self == Target::LastResort
    }
}

/// How long a last-resort attempt (on a replica already found down, because no other is
/// left) waits for an answer before a query moves on.
pub const LAST_RESORT_PATIENCE: Duration = Duration::from_secs(5);

/// Where the next attempt goes after `failure`, if anywhere, and how it was chosen. `tried`
/// holds every replica tried so far, the failed one included; `target`: how the failed
/// attempt's replica was chosen. Only after a last resort may the next be one too; a
/// replica chosen for its data is followed by another chosen so.
pub fn next_attempt(
    snapshot: &Snapshot,
    tried: &[Arc<Replica>],
    failure: &AttemptError,
    replayable: bool,
    target: Target,
) -> Option<(Arc<Replica>, Target)> {
    if tried.len() >= MAX_ATTEMPTS || !failure.retryable(replayable) {
        return None;
    }
    match (next_backend(snapshot, tried), target) {
        (Some(next), Target::LastResort) => Some((next, Target::Replica)),
        (Some(next), target) => Some((next, target)),
        (None, Target::LastResort) => self::last_resort(snapshot, tried).map(|next| (next, Target::LastResort)),
        (None, _) => None,
    }
}

/// How one attempt ended; `A` is the answer (with whatever it holds, such as its
/// connection slot).
pub enum Outcome<A> {
    /// An answer for the client (a Prometheus API error answer included).
    Answer(A),
    /// A failure; with the replica's own answer when it gave one (a 503 while not ready, to
    /// a request that may be replayed), which the client gets if no other replica does better.
    Failed(AttemptError, Option<A>),
}

impl<A> Outcome<A> {
    /// The same outcome, its answer made into another (given what it holds).
    pub fn map<T>(self, f: impl FnOnce(A) -> T) -> Outcome<T> {
        match self {
            Outcome::Answer(answer) => Outcome::Answer(f(answer)),
            Outcome::Failed(failure, answer) => Outcome::Failed(failure, answer.map(f)),
        }
    }
}

/// What an attempt on `replica` brought back (`sent`), judged, and recorded in the replica's
/// health: an answer resets its count of failures; a failure that counts against it adds to
/// the count, and ejects it after [`EJECT_AFTER_FAILURES`] (logged once, when it flips). A
/// 503 that is not the API's own is the replica not ready; a 508 is a loop.
pub fn judge<B>(sent: Result<Response<B>, AttemptError>, replayable: bool, replica: &Replica) -> Outcome<Response<B>> {
    let outcome = match sent {
        Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE && !headers::is_api_answer(&response) => {
            Outcome::Failed(AttemptError::Unavailable, replayable.then_some(response))
        }
        Ok(response) if response.status() == StatusCode::LOOP_DETECTED => Outcome::Failed(AttemptError::Loop, None),
        Ok(response) => Outcome::Answer(response),
        Err(failure) => Outcome::Failed(failure, None),
    };
    match &outcome {
        Outcome::Answer(_) => replica.health().record_success(),
        Outcome::Failed(failure, _) if failure.counts_against_replica() => {
            if replica.health().record_failure(EJECT_AFTER_FAILURES) {
                tracing::warn!(backend = %replica, "replica failed live traffic repeatedly; ejected until it passes a probe");
            }
        }
        Outcome::Failed(..) => {}
    }
    outcome
}

/// Waits for `send` (an attempt's answer) until `deadline`. A query waiting on a replica
/// that the liveness check or other requests have since found down moves on (`Abandoned`),
/// after `patience` at the earliest (a last-resort attempt gives a replica already known
/// down some time), but only while `movable` says there is somewhere to move to: a query on
/// the only replica left waits for its answer, as writes always do. The replica's health is
/// an atomic read every [`DOWN_CHECK`] rather than a wake-up, so that no request registers
/// with anything the background tasks lock; `movable` is asked only then.
///
/// `started` is when the attempt started (the caller has just read the clock).
///
/// `send` comes pinned where the caller keeps it: an `async fn` keeps a future it is given
/// by value twice in its state (as given, and where it is pinned), and this one is large.
pub async fn wait_for_answer<F, T, E>(
    mut send: Pin<&mut F>,
    movable: impl Fn() -> bool,
    health: &Health,
    patience: Duration,
    started: Instant,
    deadline: Instant,
) -> Result<T, AttemptError>
where
    F: Future<Output = Result<T, E>>,
    E: Into<AttemptError>,
{
    let mut check_at = started + DOWN_CHECK;
    loop {
        match tokio::time::timeout_at(deadline.min(check_at), &mut send).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if Instant::now() >= deadline => return Err(AttemptError::TimedOut),
            Err(_) if health.is_down() && started.elapsed() >= patience && movable() => {
                return Err(AttemptError::Abandoned);
            }
            Err(_) => {}
        }
        check_at = Instant::now() + DOWN_CHECK;
    }
}

/// The replica for the next attempt: a selected one not tried yet and not down, chosen at
/// random; else any such viable one (for `single-most-data`, whose selection is one replica).
pub fn next_backend(snapshot: &Snapshot, tried: &[Arc<Replica>]) -> Option<Arc<Replica>> {
    let untried = |b: &&Arc<Replica>| !tried.contains(b) && !b.health().is_down();
    pick_random(snapshot.selected.iter().filter(untried))
        .or_else(|| pick_random(snapshot.viable.iter().filter(untried)))
}

/// The replica for an attempt when no selected or viable replica is left (every probe and
/// liveness check is failing): any candidate not tried yet, down or not. A replica too busy
/// to answer its probes within their deadline may still answer queries; one that is gone
/// refuses the connection at once.
pub fn last_resort(snapshot: &Snapshot, tried: &[Arc<Replica>]) -> Option<Arc<Replica>> {
    pick_random(snapshot.candidates.iter().map(|c| &c.replica).filter(|b| !tried.contains(b)))
}

/// Whether an attempt on `current` that fails could be followed by another, as
/// [`next_attempt`] would choose it: a selected or viable replica not tried yet and not
/// down, or for a last-resort attempt any candidate not tried yet; and attempts left.
pub fn has_alternative(snapshot: &Snapshot, tried: &[Arc<Replica>], current: &Replica, target: Target) -> bool {
    if tried.len() + 1 >= MAX_ATTEMPTS {
        return false;
    }
    let other = |b: &Arc<Replica>| !tried.contains(b) && **b != *current;
    snapshot.selected.iter().chain(&snapshot.viable).any(|b| other(b) && !b.health().is_down())
        || (target.is_last_resort() && snapshot.candidates.iter().any(|c| other(&c.replica)))
}

/// A random one of `pool`, without collecting it (this runs on every request).
fn pick_random<'a>(pool: impl Iterator<Item = &'a Arc<Replica>> + Clone) -> Option<Arc<Replica>> {
    let index = match pool.clone().count() {
        0 => return None,
        1 => 0,
        n => rand::rng().random_range(0..n),
    };
    pool.into_iter().nth(index).cloned()
}

/// How one attempt on one backend failed, and so whether another attempt is safe.
#[derive(Debug)]
pub enum AttemptError {
    /// The connection could not be made: nothing was sent, so any request may be retried.
    Connect(String),
    /// The request may have reached the backend; only a read-only request may be replayed.
    Sent(String),
    /// The backend answered 503 (typically: not ready, replaying its WAL).
    Unavailable,
    /// The replica was found down (liveness, ejection) while this attempt waited on it.
    Abandoned,
    /// The replica answered 508: the request came back to this mpp (the candidate is mpp
    /// itself, or forwards to it). Nothing ran.
    Loop,
    /// The request's time (`--request-timeout`) ran out while waiting.
    TimedOut,
    /// Every connection to the replica (`--max-backend-connections`) stayed in use while the
    /// request queued for one. Nothing was sent.
    Busy,
}

impl AttemptError {
    /// Its name in a trace (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Sent(_) => "sent",
            AttemptError::Unavailable => "unavailable",
            AttemptError::Abandoned => "abandoned",
            AttemptError::Loop => "loop",
            AttemptError::TimedOut => "timeout",
            AttemptError::Busy => "busy",
        }
    }

    /// Whether another backend may be tried. `replayable`: the request is read-only. A
    /// request whose time ran out is never run again: a query heavy enough to time out on
    /// one replica would only cost the next one as much.
    pub fn retryable(&self, replayable: bool) -> bool {
        match self {
            AttemptError::Connect(_) | AttemptError::Loop | AttemptError::Busy => true,
            AttemptError::Sent(_) | AttemptError::Unavailable | AttemptError::Abandoned => replayable,
            AttemptError::TimedOut => false,
        }
    }

    /// Whether this failure counts against the replica's health. Only the replica's own
    /// signals do: it refused or dropped the connection, it answered 503 outside the API
    /// (not ready: replaying its WAL), or it is mpp itself. A Prometheus API error answer is
    /// not a failure at all (it reaches the client as it is), nor is a slow query.
    pub fn counts_against_replica(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect(_) | AttemptError::Sent(_) | AttemptError::Unavailable | AttemptError::Loop
        )
    }

    /// Whether the replica is known not to have handled the request (so the client's
    /// answer is "unavailable", 503, rather than "failed", 502).
    pub fn nothing_answered(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect(_)
                | AttemptError::Unavailable
                | AttemptError::Abandoned
                | AttemptError::Loop
                | AttemptError::Busy
        )
    }
}

impl From<crate::client::pool::Error> for AttemptError {
    /// Classifies a failure of the request path's pool: only one that wrote nothing
    /// (connecting, TLS, a connection that closed before it took the request) may be
    /// retried whatever the request.
    fn from(error: crate::client::pool::Error) -> Self {
        use crate::client::pool::Error;
        match error {
            Error::NotSent(e) => AttemptError::Connect(error_chain(e.as_ref())),
            Error::Sent(e) => AttemptError::Sent(error_chain(e.as_ref())),
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Connect(e) => write!(f, "connection failed: {e}"),
            AttemptError::Sent(e) => write!(f, "request failed: {e}"),
            AttemptError::Unavailable => f.write_str("answered 503 Service Unavailable"),
            AttemptError::Abandoned => f.write_str("was found down while the request waited"),
            AttemptError::Loop => f.write_str("answered 508 Loop Detected: it is this mpp, or forwards to it"),
            AttemptError::TimedOut => f.write_str("did not answer within the request's time"),
            AttemptError::Busy => f.write_str("had all its connections in use"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::pin;

    use crate::registry::tests::replicas;

    fn two() -> (Arc<Replica>, Arc<Replica>) {
        let all = replicas(&["http://a:1", "http://b:1"]);
        (all[0].clone(), all[1].clone())
    }

    #[test]
    fn next_backend_avoids_tried_and_falls_back_to_viable() {
        let (a, b) = two();
        let mut snapshot = Snapshot::empty();
        snapshot.selected = vec![a.clone()];
        snapshot.viable = vec![a.clone(), b.clone()];
        assert_eq!(next_backend(&snapshot, &[]), Some(a.clone()));
        assert_eq!(next_backend(&snapshot, std::slice::from_ref(&a)), Some(b.clone()));
        assert_eq!(next_backend(&snapshot, &[a.clone(), b.clone()]), None);
        b.health().mark_down();
        assert_eq!(next_backend(&snapshot, std::slice::from_ref(&a)), None, "a replica that is down is skipped");
    }

    #[test]
    fn last_resort_tries_every_candidate_down_or_not_once() {
        use crate::selection::CandidateState;
        let (a, b) = two();
        a.health().mark_down();
        let mut snapshot = Snapshot::empty();
        for backend in [&a, &b] {
            snapshot.candidates.push(CandidateState {
                replica: backend.clone(),
                probe: Default::default(),
                selected: false,
                data: Default::default(),
            });
        }
        assert_eq!(next_backend(&snapshot, &[]), None, "nothing selected or viable");
        let first = last_resort(&snapshot, &[]).expect("a candidate");
        let second = last_resort(&snapshot, std::slice::from_ref(&first)).expect("the other candidate");
        assert_ne!(first, second);
        assert_eq!(last_resort(&snapshot, &[first, second]), None);
        assert_eq!(last_resort(&Snapshot::empty(), &[]), None, "no candidates: nothing to try");
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_waiting_on_a_replica_found_down_moves_on_and_a_write_waits() {
        let (a, _) = two();
        let never = || std::future::pending::<Result<(), AttemptError>>();
        let deadline = Instant::now() + Duration::from_secs(120);
        let waiting = tokio::spawn({
            let a = a.clone();
            async move {
                wait_for_answer(pin!(never()), || true, a.health(), Duration::ZERO, Instant::now(), deadline).await
            }
        });
        let write = tokio::spawn({
            let a = a.clone();
            async move {
                wait_for_answer(pin!(never()), || false, a.health(), Duration::ZERO, Instant::now(), deadline).await
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        a.health().mark_down();
        let found_down = Instant::now();
        assert!(matches!(waiting.await.unwrap(), Err(AttemptError::Abandoned)));
        assert!(found_down.elapsed() <= DOWN_CHECK, "noticed within one check");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!write.is_finished(), "a write is never moved");
    }

    #[test]
    fn a_query_moves_on_only_where_another_attempt_could_follow() {
        let (a, b) = two();
        let mut snapshot = Snapshot::empty();
        snapshot.selected = vec![a.clone(), b.clone()];
        assert!(has_alternative(&snapshot, &[], &a, Target::Replica), "b is there");
        assert!(!has_alternative(&snapshot, std::slice::from_ref(&b), &a, Target::Replica), "b was tried already");
        b.health().mark_down();
        assert!(!has_alternative(&snapshot, &[], &a, Target::Replica), "b is down too: a is the only one left");
        b.health().mark_up();
        snapshot.selected = vec![a.clone()];
        assert!(!has_alternative(&snapshot, &[], &a, Target::Replica), "a lone replica");
        let c = replicas(&["http://c:1"]).remove(0);
        let tried = [b.clone(), c.clone()];
        snapshot.selected = vec![a.clone(), b, c];
        assert!(has_alternative(&snapshot, &tried[..1], &tried[1], Target::Replica), "a is a third attempt");
        assert!(!has_alternative(&snapshot, &tried, &a, Target::Replica), "no fourth attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_ends_at_the_deadline_and_is_not_retried() {
        let (a, _) = two();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        let never = std::future::pending::<Result<(), AttemptError>>();
        let failure = wait_for_answer(pin!(never), || true, a.health(), Duration::ZERO, Instant::now(), deadline)
            .await
            .unwrap_err();
        assert!(matches!(failure, AttemptError::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let mut snapshot = Snapshot::empty();
        snapshot.selected = replicas(&["http://c:1"]);
        assert!(next_attempt(&snapshot, std::slice::from_ref(&a), &failure, true, Target::Replica).is_none());
        let refused = AttemptError::Connect("refused".into());
        assert!(next_attempt(&snapshot, std::slice::from_ref(&a), &refused, false, Target::Replica).is_some());
    }

    #[test]
    fn a_pool_failure_that_sent_nothing_is_retried_for_any_request_and_one_that_may_have_only_for_reads() {
        use crate::client::pool::Error;
        let nothing_sent = AttemptError::from(Error::NotSent("connection refused".into()));
        assert!(nothing_sent.retryable(false) && nothing_sent.nothing_answered());

        // A replica that answers garbage to a request it has read: the pool's own error, after sending.
        let mut garbage = bytes::BytesMut::from("not HTTP at all\r\n\r\n");
        let failure = crate::http1::response::parse_head(&mut garbage, &http::Method::POST).unwrap_err();
        let may_have_sent = AttemptError::from(Error::Sent(failure.into()));
        assert!(!may_have_sent.retryable(false), "a write is not sent twice");
        assert!(may_have_sent.retryable(true), "a read may be");
    }

    #[test]
    fn api_answers_and_timeouts_never_count_against_a_replica() {
        assert!(AttemptError::Connect(String::new()).counts_against_replica());
        assert!(AttemptError::Unavailable.counts_against_replica());
        assert!(!AttemptError::TimedOut.counts_against_replica());
        assert!(!AttemptError::Busy.counts_against_replica());
        assert!(!AttemptError::Abandoned.counts_against_replica());
    }
}
