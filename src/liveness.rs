//! Liveness: a cheap check (`/-/ready`) of every candidate on its own short cadence
//! (`--liveness-interval`, 1 s by default), separate from the selection interval, so that a
//! replica that dies or hangs is out of traffic within about a second, and one that comes
//! back is noticed as soon. It flips each replica's [`Health`](crate::registry::Health)
//! (requests waiting on a replica poll it and move on when it goes down) and asks the
//! selection loop for a round whenever something changed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::probe::{Prober, READY_TIMEOUT};
use crate::selection::Snapshot;

/// The readiness check, behind a trait so that the loop can be tested with paused time.
pub trait ReadyCheck: Send + Sync {
    /// `Ok` when `backend` answers `/-/ready` with 2xx within `timeout`.
    fn ready(&self, backend: &Backend, timeout: Duration) -> impl Future<Output = Result<(), String>> + Send;
}

impl ReadyCheck for Prober {
    async fn ready(&self, backend: &Backend, timeout: Duration) -> Result<(), String> {
        Prober::ready(self, backend, timeout).await
    }
}

/// Checks every candidate of the published snapshot each `interval`, forever.
pub async fn run<C: ReadyCheck>(
    snapshot: Arc<ArcSwap<Snapshot>>,
    check: C,
    interval: Duration,
    reselect: mpsc::Sender<()>,
) {
    let timeout = interval.min(READY_TIMEOUT);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = snapshot.load_full();
        let check = &check;
        let checks =
            current.candidates.iter().map(|c| async move { (c, check.ready(c.replica.backend(), timeout).await) });
        let mut changed = false;
        for (candidate, result) in join_all(checks).await {
            let replica = &candidate.replica;
            match result {
                Ok(()) if replica.health().is_down() => {
                    // Answering again: a full probe decides whether it may serve again.
                    changed = true;
                }
                Ok(()) => {}
                Err(error) => {
                    if replica.health().mark_down() {
                        tracing::warn!(backend = %replica, %error, "replica failed its liveness check; out of traffic");
                        changed = true;
                    }
                }
            }
        }
        if changed {
            let _ = reselect.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::registry::tests::replicas;
    use crate::selection::CandidateState;

    /// Answers as told: the URLs in `failing` fail their check.
    #[derive(Default)]
    struct Scripted {
        failing: Mutex<Vec<String>>,
    }

    impl ReadyCheck for Arc<Scripted> {
        async fn ready(&self, backend: &Backend, _timeout: Duration) -> Result<(), String> {
            let failing = self.failing.lock().unwrap().contains(&backend.url().to_string());
            if failing { Err("connection refused".into()) } else { Ok(()) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_takes_the_replica_out_and_a_passing_one_asks_for_a_round() {
        let all = replicas(&["http://a:1", "http://b:1"]);
        let mut snapshot = Snapshot::empty();
        snapshot.candidates = all
            .iter()
            .map(|r| CandidateState {
                replica: r.clone(),
                probe: Default::default(),
                selected: true,
                data: Default::default(),
            })
            .collect();
        let script = Arc::new(Scripted::default());
        let (reselect, mut rounds) = mpsc::channel(1);
        let published = Arc::new(ArcSwap::from_pointee(snapshot));
        tokio::spawn(run(published, script.clone(), Duration::from_secs(1), reselect));

        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(rounds.try_recv().is_err(), "nothing changed: no round asked for");
        script.failing.lock().unwrap().push("http://b:1".into());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(all[1].health().is_down() && !all[0].health().is_down());
        assert!(rounds.try_recv().is_ok(), "a round is asked for at once");

        script.failing.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rounds.try_recv().is_ok(), "answering again: a probe decides");
        assert!(all[1].health().is_down(), "only a full probe puts it back");
    }
}
