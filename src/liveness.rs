//! Liveness: a cheap check (`/-/ready`) of every candidate on its own short cadence
//! (`--liveness-interval`, 1 s by default), separate from the selection interval, so that a
//! replica that dies or hangs is out of traffic within about a second, and one that comes
//! back is noticed as soon. It flips each replica's [`Health`](crate::backend::Health)
//! (which wakes requests waiting on a replica that went down) and asks the selection loop
//! for a round whenever something changed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use crate::probe::{Prober, READY_TIMEOUT};
use crate::selection::Snapshot;

/// Checks every candidate of the published snapshot each `interval`, forever.
pub async fn run(snapshot: Arc<ArcSwap<Snapshot>>, prober: Prober, interval: Duration, reselect: mpsc::Sender<()>) {
    let timeout = interval.min(READY_TIMEOUT);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = snapshot.load_full();
        let prober = &prober;
        let checks = current.candidates.iter().map(|c| async move {
            let result = prober.ready(&c.backend, timeout).await;
            (c, result)
        });
        let mut changed = false;
        for (candidate, result) in join_all(checks).await {
            let backend = &candidate.backend;
            match result {
                Ok(()) if backend.health().is_down() => {
                    // Answering again: a full probe decides whether it may serve again.
                    changed = true;
                }
                Ok(()) => {}
                Err(error) => {
                    if backend.health().mark_down() {
                        tracing::warn!(backend = %backend, %error, "replica failed its liveness check; out of traffic");
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
