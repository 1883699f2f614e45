//! The replica registry: every replica discovery lists, with its live state: its [`Health`],
//! its request-path metric handles, its connection slots and its data's [`Coverage`]. The selection loop owns it and
//! is the only one to add or remove replicas; snapshots share each [`Replica`] by `Arc`, so
//! the request path and the liveness checks reach the same state without a lookup.
//!
//! A replica is registered the first time discovery lists it and removed when discovery no
//! longer does; its metric series go with it. Identity is the [`Backend`] (plain data, its
//! URL); what happens to a replica lives here.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::backend::Backend;
use crate::coverage::Coverage;
use crate::metrics::{BackendMetrics, Metrics};

/// One replica: who it is, and its live state.
#[derive(Debug)]
pub struct Replica {
    backend: Backend,
    health: Health,
    metrics: BackendMetrics,
    /// One permit per request in flight to it (`--max-backend-connections`).
    connection_slots: Arc<Semaphore>,
    /// Which stretches of time it holds complete data for; replaced whole by the coverage
    /// tracker, read by the request path.
    coverage: ArcSwap<Coverage>,
}

impl Replica {
    /// Its identity.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// What the liveness checks, the probes and live traffic say about it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Its request-path metric handles (counted without a lookup).
    pub fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }

    /// Its connection slots.
    pub fn connection_slots(&self) -> &Arc<Semaphore> {
        &self.connection_slots
    }

    /// What is known about its data. A guard rather than a counted reference: the request
    /// path reads it without touching a count that every serving thread shares.
    pub fn coverage(&self) -> arc_swap::Guard<Arc<Coverage>> {
        self.coverage.load()
    }

    /// Publishes what is now known about its data (the coverage tracker's job).
    pub fn set_coverage(&self, coverage: Coverage) {
        self.coverage.store(Arc::new(coverage));
    }
}

/// A replica reads as its backend (`replica.url()`), since that is most of what is asked.
impl Deref for Replica {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        &self.backend
    }
}

impl PartialEq for Replica {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend
    }
}

impl Eq for Replica {}

impl std::fmt::Display for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

/// The replicas discovery lists now, and their state. Owned by the selection loop.
pub struct Registry {
    replicas: Vec<Arc<Replica>>,
    metrics: Arc<Metrics>,
    max_backend_connections: u32,
}

impl Registry {
    /// An empty registry; replicas get `max_backend_connections` slots each.
    pub fn new(metrics: Arc<Metrics>, max_backend_connections: u32) -> Self {
        Registry { replicas: Vec::new(), metrics, max_backend_connections }
    }

    /// Makes `found` (discovery's complete answer, in its order) the registered replicas: a
    /// replica listed before keeps its state, a new one is registered, one no longer listed
    /// is removed with its metric series. Returns the departed ones' URLs.
    pub fn update(&mut self, found: Vec<Backend>) -> Vec<String> {
        let mut known: HashMap<String, Arc<Replica>> =
            self.replicas.drain(..).map(|r| (r.url().to_string(), r)).collect();
        self.replicas = found
            .into_iter()
            .map(|backend| match known.remove(backend.url()) {
                Some(replica) => replica,
                None => Arc::new(Replica {
                    metrics: self.metrics.backend(backend.url_label()),
                    health: Health::default(),
                    connection_slots: Arc::new(Semaphore::new(self.max_backend_connections as usize)),
                    coverage: ArcSwap::default(),
                    backend,
                }),
            })
            .collect();
        let departed: Vec<String> = known.into_keys().collect();
        for url in &departed {
            self.metrics.forget_backend(&Arc::from(url.as_str()));
        }
        departed
    }

    /// The registered replicas, in discovery's order.
    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.replicas
    }
}

/// A replica's health between selection rounds: whether it is *down* (a liveness check
/// failed, a probe found it not viable, or live traffic failed on it repeatedly). Written
/// by the liveness loop, the selection loop and the request path alike, so it is only
/// atomics: nobody locks or waits for anybody to change it.
#[derive(Debug, Default)]
pub struct Health {
    down: AtomicBool,
    failures: AtomicU32,
}

impl Health {
    /// Whether requests must stay away from this replica.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Takes the replica out (requests waiting on it notice within 200 ms); `true` if it
    /// was up.
    pub fn mark_down(&self) -> bool {
        !self.down.swap(true, Ordering::AcqRel)
    }

    /// Puts the replica back after a passing probe; `true` if it was down.
    pub fn mark_up(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.down.swap(false, Ordering::AcqRel)
    }

    /// Counts a failed attempt; `true` if this failure, the `eject_after`th in a row,
    /// ejected the replica.
    pub fn record_failure(&self, eject_after: u32) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= eject_after && self.mark_down()
    }

    /// Counts a successful attempt (ends a run of failures).
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Replicas registered for `urls`, in a registry of their own (for tests elsewhere).
    pub(crate) fn replicas(urls: &[&str]) -> Vec<Arc<Replica>> {
        let mut registry = Registry::new(Arc::new(Metrics::new()), 8);
        registry.update(urls.iter().map(|u| Backend::parse(u).unwrap()).collect());
        registry.replicas().to_vec()
    }

    #[test]
    fn a_replica_keeps_its_state_while_listed_and_loses_it_with_its_series_when_not() {
        let metrics = Arc::new(Metrics::new());
        let mut registry = Registry::new(metrics.clone(), 4);
        let parse = |u: &str| Backend::parse(u).unwrap();
        registry.update(vec![parse("http://a:1"), parse("http://b:1")]);
        let b = registry.replicas()[1].clone();
        b.health().mark_down();
        b.metrics().ok.inc();
        assert!(metrics.encode().contains("http://b:1"));

        let departed = registry.update(vec![parse("http://b:1"), parse("http://c:1")]);
        assert_eq!(departed, vec!["http://a:1".to_string()]);
        assert!(Arc::ptr_eq(&registry.replicas()[0], &b), "the same replica, state and all");
        assert!(registry.replicas()[0].health().is_down());
        assert!(!metrics.encode().contains("http://a:1"), "the departed replica's series are gone");

        registry.update(vec![parse("http://c:1")]);
        registry.update(vec![parse("http://b:1")]);
        assert!(!registry.replicas()[0].health().is_down(), "a replica that comes back starts afresh");
    }

    #[test]
    fn consecutive_failures_eject_until_a_passing_probe() {
        let health = Health::default();
        assert!(!health.record_failure(3));
        health.record_success();
        assert!(!health.record_failure(3) && !health.record_failure(3));
        assert!(health.record_failure(3), "the third failure in a row ejects");
        assert!(health.is_down());
        assert!(health.mark_up() && !health.is_down());
    }
}
