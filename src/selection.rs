//! The selection loop: the one background task that owns all mutable routing state. Each
//! round it asks discovery for the candidates (keeping the last good set when discovery
//! fails), probes them all concurrently, lets the strategy choose the selection and
//! publishes the result as one immutable [`Snapshot`] that the request path loads without
//! locks. Rounds run every selection interval and at once when something signals a change
//! (the endpoints file changed, a request failed); signals that arrive while a round is due
//! collapse into that round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::discovery::Discovery;
use crate::metrics::{BackendLabels, Metrics, RoundLabels};
use crate::probe::{Probe, Prober};
use crate::strategy::Strategy;

/// Triggered rounds start at least this far apart, so that a storm of failing requests
/// (every replica down, say) costs a few rounds a second, not hundreds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(250);

/// One candidate as the last round saw it.
#[derive(Debug, Clone)]
pub struct CandidateState {
    /// The replica.
    pub backend: Arc<Backend>,
    /// What its probe found.
    pub probe: Probe,
    /// Whether it is in the selection.
    pub selected: bool,
}

/// Everything the request path and the admin pages need, as of one selection round.
/// Published whole; never changed after publication.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The round that produced it (0: none yet).
    pub round: u64,
    /// When the round ended.
    pub taken_at: SystemTime,
    /// How long the round took.
    pub round_took: Duration,
    /// Every candidate, in discovery order.
    pub candidates: Vec<CandidateState>,
    /// The replicas allowed to serve, in candidate order.
    pub selected: Vec<Arc<Backend>>,
    /// Every viable replica (selected or not), in candidate order: where a retry goes when
    /// the selection has nowhere left.
    pub viable: Vec<Arc<Backend>>,
    /// Why the selection is what it is.
    pub reason: String,
    /// The discovery error of this round, if it failed (the candidates are then the last
    /// good set).
    pub discovery_error: Option<String>,
    /// Whether discovery has given a complete answer in this round or an earlier one: until
    /// then an empty selection means "not known yet" rather than "nothing to serve".
    pub settled: bool,
}

impl Snapshot {
    /// The state before the first round: nothing selected.
    pub fn empty() -> Self {
        Snapshot {
            round: 0,
            taken_at: SystemTime::now(),
            round_took: Duration::ZERO,
            candidates: Vec::new(),
            selected: Vec::new(),
            viable: Vec::new(),
            reason: "no selection round has run yet".into(),
            discovery_error: None,
            settled: false,
        }
    }

    /// The selected replica with this opaque id, if there is one.
    pub fn selected_by_id(&self, id: &str) -> Option<&Arc<Backend>> {
        self.selected.iter().find(|b| b.id() == id)
    }
}

/// The owner of the routing state; see the module documentation.
pub struct Selector {
    discovery: Discovery,
    prober: Prober,
    strategy: Strategy,
    interval: Duration,
    published: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    last_good: Vec<Arc<Backend>>,
    incumbent: Option<Arc<Backend>>,
    /// Whether each replica (by URL) was viable in the last round, to log changes only.
    viability: HashMap<Arc<str>, bool>,
    round: u64,
    settled: bool,
}

impl Selector {
    /// Builds the loop's state; nothing runs until [`Selector::round`] or [`Selector::run`].
    pub fn new(
        discovery: Discovery,
        prober: Prober,
        strategy: Strategy,
        interval: Duration,
        published: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Selector {
            discovery,
            prober,
            strategy,
            interval,
            published,
            metrics,
            last_good: Vec::new(),
            incumbent: None,
            viability: HashMap::new(),
            round: 0,
            settled: false,
        }
    }

    /// Runs rounds forever: every interval, and soon after any signal on `triggers`.
    pub async fn run(mut self, mut triggers: mpsc::Receiver<()>) {
        let mut last_start = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                Some(()) = triggers.recv() => {
                    tokio::time::sleep_until((last_start + MIN_ROUND_GAP).into()).await;
                }
            }
            // Signals that came in meanwhile are answered by the round about to run.
            while triggers.try_recv().is_ok() {}
            last_start = Instant::now();
            self.round().await;
        }
    }

    /// One round: discover, probe, select, publish.
    pub async fn round(&mut self) {
        let started = Instant::now();
        self.round += 1;
        let discovery_error = match self.discovery.candidates().await {
            Ok(found) => {
                // The same replica keeps its Arc, and so its health, across rounds.
                let known = std::mem::take(&mut self.last_good);
                self.last_good = found
                    .into_iter()
                    .map(|b| known.iter().find(|k| ***k == b).cloned().unwrap_or_else(|| Arc::new(b)))
                    .collect();
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, kept = self.last_good.len(), "discovery failed; keeping the last good candidates");
                Some(e.to_string())
            }
        };
        self.settled |= discovery_error.is_none();
        let result = if discovery_error.is_some() { "discovery_error" } else { "ok" };
        self.metrics.selection_rounds.get_or_create(&RoundLabels { result }).inc();

        let candidates = self.last_good.clone();
        let probes = join_all(candidates.iter().map(|b| self.prober.probe(b))).await;
        self.report_viability(&candidates, &probes);

        let incumbent = self.incumbent.as_ref().and_then(|inc| candidates.iter().position(|b| b == inc));
        let probe_refs: Vec<&Probe> = probes.iter().collect();
        let choice = self.strategy.select(&probe_refs, incumbent);
        let selected: Vec<Arc<Backend>> = choice.selected.iter().map(|&i| candidates[i].clone()).collect();
        let viable: Vec<Arc<Backend>> =
            candidates.iter().zip(&probes).filter(|(_, p)| p.viable()).map(|(b, _)| b.clone()).collect();

        let previous = self.published.load();
        if previous.selected != selected || previous.round == 0 {
            let names: Vec<&str> = selected.iter().map(|b| b.url()).collect();
            if selected.is_empty() {
                tracing::warn!(candidates = candidates.len(), reason = %choice.reason, "no replica selected; clients get 503");
            } else {
                tracing::info!(selected = ?names, reason = %choice.reason, "selection changed");
            }
        }
        self.incumbent = selected.first().cloned();
        self.metrics.selected_backends.set(selected.len() as i64);
        self.metrics.candidates.set(candidates.len() as i64);

        let states = candidates
            .into_iter()
            .zip(probes)
            .enumerate()
            .map(|(i, (backend, probe))| CandidateState { backend, probe, selected: choice.selected.contains(&i) })
            .collect();
        self.published.store(Arc::new(Snapshot {
            round: self.round,
            taken_at: SystemTime::now(),
            round_took: started.elapsed(),
            candidates: states,
            selected,
            viable,
            reason: choice.reason,
            discovery_error,
            settled: self.settled,
        }));
    }

    /// Whether discovery has given a complete answer yet.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Counts failed probes and logs each replica's change between viable and not.
    fn report_viability(&mut self, candidates: &[Arc<Backend>], probes: &[Probe]) {
        let mut now = HashMap::with_capacity(candidates.len());
        for (backend, probe) in candidates.iter().zip(probes) {
            let viable = probe.viable();
            // A full probe is the freshest word on a replica: it ends an ejection or makes one.
            if viable {
                backend.health().mark_up();
            } else {
                backend.health().mark_down();
            }
            if !viable {
                self.metrics.probe_failures.get_or_create(&BackendLabels { backend: backend.url_label() }).inc();
            }
            match (self.viability.get(backend.url()), viable) {
                (Some(true), false) | (None, false) => tracing::warn!(
                    backend = %backend,
                    error = probe.error.as_deref().unwrap_or("not ready"),
                    "replica is not viable"
                ),
                (Some(false), true) => tracing::info!(backend = %backend, "replica is viable again"),
                (None, true) => tracing::info!(backend = %backend, "new replica is viable"),
                _ => {}
            }
            now.insert(backend.url_label(), viable);
        }
        for gone in self.viability.keys().filter(|url| !now.contains_key(*url)) {
            tracing::info!(backend = %gone, "replica is no longer a candidate");
            self.metrics.forget_backend(gone);
        }
        self.viability = now;
    }
}
