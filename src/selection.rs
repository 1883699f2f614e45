//! The selection loop: the one background task that owns all mutable routing state (the
//! [`Registry`] of replicas). Each round has two parts. *Gathering* is the I/O: ask
//! discovery for the candidates (keeping the last good set when discovery fails) and probe
//! them all concurrently. *Deciding* is a pure function, [`decide`], from the previous
//! snapshot, the candidates, the probe results and the strategy to the next [`Snapshot`],
//! which is published whole and read by the request path without locks. Rounds run every
//! selection interval and soon after something signals a change (the endpoints file
//! changed, a request failed); signals that arrive while a round is due collapse into it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::discovery::{Discovery, DiscoveryError};
use crate::metrics::{BackendLabels, Metrics, RoundLabels};
use crate::probe::{Probe, Prober};
use crate::registry::{Registry, Replica};
use crate::strategy::Strategy;

/// Triggered rounds start at least this far apart, so that a storm of failing requests
/// (every replica down, say) costs a few rounds a second, not hundreds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(250);

/// One candidate as the last round saw it.
#[derive(Debug, Clone)]
pub struct CandidateState {
    /// The replica.
    pub replica: Arc<Replica>,
    /// What its probe found.
    pub probe: Probe,
    /// Whether it is in the selection.
    pub selected: bool,
    /// Whether its data keeps up with its peers'.
    pub data: DataHealth,
}

/// Whether a replica's data keeps up with its peers', judged once per round with hysteresis:
/// [`EJECT_AFTER_ROUNDS`] bad rounds in a row take it out of the selection,
/// [`READMIT_AFTER_ROUNDS`] good ones bring it back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataHealth {
    /// Bad rounds in a row (ingestion stalled or lagging).
    pub bad_rounds: u32,
    /// Good rounds in a row.
    pub good_rounds: u32,
    /// Why it is out of the selection, while it is.
    pub ejected: Option<String>,
    /// Its samples-appended counter at the start of the current stall window, and when.
    pub baseline: Option<(f64, SystemTime)>,
}

/// The shortest stretch over which a replica's ingestion is judged stalled: every target is
/// scraped within it at scrape intervals up to a minute, so a replica that ingests shows
/// growth, whatever the timing of rounds (triggered ones come four a second).
pub const STALL_WINDOW: Duration = Duration::from_secs(60);

/// Rounds in a row with stalled or lagging ingestion before a replica leaves the selection.
pub const EJECT_AFTER_ROUNDS: u32 = 2;
/// Rounds in a row of healthy ingestion before an ejected replica is selected again.
pub const READMIT_AFTER_ROUNDS: u32 = 3;

/// What makes a replica's data unhealthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataRules {
    /// How far its newest sample may trail its peers' newest (zero: no limit).
    pub max_lag: Duration,
}

impl DataRules {
    /// Each candidate's data health this round, from the previous round's: a replica is bad
    /// when its samples-appended counter did not grow while a peer's did (ingestion stalled),
    /// or when its newest sample trails the best peer's by more than `max_lag`. Never ejects
    /// every viable replica: answers with holes beat no answers.
    fn judge(
        &self,
        previous: &Snapshot,
        candidates: &[Arc<Replica>],
        probes: &[Probe],
        now: SystemTime,
    ) -> Vec<DataHealth> {
        let before = |replica: &Arc<Replica>| previous.candidates.iter().find(|c| Arc::ptr_eq(&c.replica, replica));
        let mut health: Vec<DataHealth> =
            candidates.iter().map(|r| before(r).map(|c| c.data.clone()).unwrap_or_default()).collect();
        // Growth over a full stall window, for the replicas whose window ends now; a window
        // starts afresh after it, and after a restart (the counter went down) or an outage.
        let growth: Vec<Option<f64>> = health
            .iter_mut()
            .zip(probes)
            .map(|(health, probe)| {
                let samples = probe.samples.filter(|_| probe.viable());
                let Some(samples) = samples else {
                    health.baseline = None;
                    return None;
                };
                match health.baseline {
                    Some((was, since)) if samples >= was => {
                        if now.duration_since(since).unwrap_or_default() < STALL_WINDOW {
                            return None;
                        }
                        health.baseline = Some((samples, now));
                        Some(samples - was)
                    }
                    _ => {
                        health.baseline = Some((samples, now));
                        None
                    }
                }
            })
            .collect();
        // The peers' newest sample: the upper median (so that one replica's future-stamped
        // sample does not make the others lag), never later than now.
        let unix_now = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut newest: Vec<f64> =
            probes.iter().filter(|p| p.viable()).filter_map(|p| p.head_max_time).map(|t| t.min(unix_now)).collect();
        newest.sort_by(f64::total_cmp);
        let newest = newest.get(newest.len() / 2).copied().unwrap_or(f64::MIN);
        for (i, (health, probe)) in health.iter_mut().zip(probes).enumerate() {
            {
                if !probe.viable() {
                    continue;
                }
                let peers_grew = growth.iter().enumerate().any(|(j, g)| j != i && g.is_some_and(|g| g > 0.0));
                let problem = if growth[i] == Some(0.0) && peers_grew {
                    Some("its ingestion stalled (no samples appended while its peers appended)".to_string())
                } else {
                    probe
                        .head_max_time
                        .map(|own| newest - own)
                        .filter(|&lag| !self.max_lag.is_zero() && lag > self.max_lag.as_secs_f64())
                        .map(|lag| {
                            format!(
                                "its newest sample is {} behind its peers' (--data-lag-threshold {})",
                                crate::units::format_duration(Duration::from_secs_f64(lag)),
                                crate::units::format_duration(self.max_lag)
                            )
                        })
                };
                match problem {
                    Some(problem) => {
                        health.bad_rounds += 1;
                        health.good_rounds = 0;
                        if health.ejected.is_some() || health.bad_rounds >= EJECT_AFTER_ROUNDS {
                            health.ejected = Some(problem);
                        }
                    }
                    None => {
                        health.good_rounds += 1;
                        health.bad_rounds = 0;
                        if health.good_rounds >= READMIT_AFTER_ROUNDS {
                            health.ejected = None;
                        }
                    }
                }
            }
        }
        let serving = probes.iter().zip(&health).filter(|(p, h)| p.viable() && h.ejected.is_none()).count();
        if serving == 0 {
            for h in &mut health {
                h.ejected = None;
            }
        }
        health
    }
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
    pub selected: Vec<Arc<Replica>>,
    /// Every viable replica (selected or not), in candidate order: where a retry goes when
    /// the selection has nowhere left.
    pub viable: Vec<Arc<Replica>>,
    /// Why the selection is what it is.
    pub reason: String,
    /// The discovery error of this round, if it failed (the candidates are then the last
    /// good set).
    pub discovery_error: Option<String>,
    /// What went wrong with parts of discovery's answer that still counts (a DNS name that did
    /// not resolve), a line each.
    pub discovery_problems: Vec<String>,
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
            discovery_problems: Vec::new(),
            settled: false,
        }
    }

    /// The selected replica with this opaque id, if there is one.
    pub fn selected_by_id(&self, id: &str) -> Option<&Arc<Replica>> {
        self.selected.iter().find(|b| b.id() == id)
    }
}

/// What a round gathers: the I/O half of a round, behind a trait so that the loop's timing
/// can be tested with paused time and scripted answers.
pub trait Gather: Send {
    /// Discovery's current answer.
    fn candidates(&mut self) -> impl Future<Output = Result<Vec<Backend>, DiscoveryError>> + Send;
    /// What went wrong with parts of that answer, a line each.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// One replica's probe; never fails (what went wrong is in the [`Probe`]).
    fn probe(&self, backend: &Backend) -> impl Future<Output = Probe> + Send;
}

/// The production gathering: the configured discovery and the prober.
pub struct Sources {
    /// Where candidates come from.
    pub discovery: Discovery,
    /// How they are probed.
    pub prober: Prober,
}

impl Gather for Sources {
    async fn candidates(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        self.discovery.candidates().await
    }

    fn problems(&self) -> Vec<String> {
        self.discovery.problems()
    }

    async fn probe(&self, backend: &Backend) -> Probe {
        self.prober.probe(backend).await
    }
}

/// What one round gathered, for [`decide`].
#[derive(Debug)]
pub struct Gathered {
    /// The round's number.
    pub round: u64,
    /// The candidates (the last good set when discovery failed), in discovery's order.
    pub candidates: Vec<Arc<Replica>>,
    /// One probe per candidate, in the same order.
    pub probes: Vec<Probe>,
    /// Discovery's error this round, if it failed.
    pub discovery_error: Option<String>,
    /// What went wrong with parts of discovery's answer.
    pub discovery_problems: Vec<String>,
    /// Whether discovery has answered completely in this round or an earlier one.
    pub settled: bool,
    /// When the round ended, and how long it took.
    pub taken_at: SystemTime,
    pub took: Duration,
}

/// The next snapshot: a pure function of the previous one (its first selected replica is
/// the incumbent that `single-most-data` keeps within its margin), what the round gathered
/// and the strategy.
pub fn decide(previous: &Snapshot, gathered: Gathered, strategy: &Strategy, rules: &DataRules) -> Snapshot {
    let Gathered { round, candidates, probes, discovery_error, discovery_problems, settled, taken_at, took } = gathered;
    let incumbent = previous.selected.first().and_then(|inc| candidates.iter().position(|c| c == inc));
    let data = rules.judge(previous, &candidates, &probes, taken_at);
    // The strategy sees an ejected replica as not viable; retries may still use it.
    let judged: Vec<Probe> = probes
        .iter()
        .zip(&data)
        .map(|(probe, health)| match health.ejected {
            Some(_) => Probe { answers_up: false, ..probe.clone() },
            None => probe.clone(),
        })
        .collect();
    let probe_refs: Vec<&Probe> = judged.iter().collect();
    let mut choice = strategy.select(&probe_refs, incumbent);
    let ejected = data.iter().filter(|h| h.ejected.is_some()).count();
    if ejected > 0 {
        choice.reason = format!("{}; {ejected} out for their data", choice.reason);
    }
    let selected = choice.selected.iter().map(|&i| candidates[i].clone()).collect();
    let viable = candidates.iter().zip(&probes).filter(|(_, p)| p.viable()).map(|(c, _)| c.clone()).collect();
    let candidates = candidates
        .into_iter()
        .zip(probes)
        .zip(data)
        .enumerate()
        .map(|(i, ((replica, probe), data))| CandidateState {
            replica,
            probe,
            selected: choice.selected.contains(&i),
            data,
        })
        .collect();
    Snapshot {
        round,
        taken_at,
        round_took: took,
        candidates,
        selected,
        viable,
        reason: choice.reason,
        discovery_error,
        discovery_problems,
        settled,
    }
}

/// The owner of the routing state; see the module documentation.
pub struct Selector<G: Gather = Sources> {
    gather: G,
    registry: Registry,
    strategy: Strategy,
    rules: DataRules,
    interval: Duration,
    published: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Whether each replica (by URL) was viable in the last round, to log changes only.
    viability: HashMap<Arc<str>, bool>,
    round: u64,
    settled: bool,
}

impl<G: Gather> Selector<G> {
    /// Builds the loop's state; nothing runs until [`Selector::round`] or [`Selector::run`].
    pub fn new(
        gather: G,
        registry: Registry,
        strategy: Strategy,
        interval: Duration,
        published: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Selector {
            gather,
            registry,
            strategy,
            rules: DataRules::default(),
            interval,
            published,
            metrics,
            viability: HashMap::new(),
            round: 0,
            settled: false,
        }
    }

    /// The same loop, judging the replicas' data by `rules`.
    pub fn with_rules(self, rules: DataRules) -> Self {
        Selector { rules, ..self }
    }

    /// Runs rounds forever: every interval, and soon after any signal on `triggers`.
    pub async fn run(mut self, mut triggers: mpsc::Receiver<()>) {
        let mut last_start = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                Some(()) = triggers.recv() => {
                    tokio::time::sleep_until(last_start + MIN_ROUND_GAP).await;
                }
            }
            // Signals that came in meanwhile are answered by the round about to run.
            while triggers.try_recv().is_ok() {}
            last_start = Instant::now();
            self.round().await;
        }
    }

    /// One round: gather (discover, probe), decide, publish.
    pub async fn round(&mut self) {
        let started = Instant::now();
        self.round += 1;
        let discovery_error = match self.gather.candidates().await {
            Ok(found) => {
                for gone in self.registry.update(found) {
                    tracing::info!(backend = %gone, "replica is no longer a candidate");
                }
                None
            }
            Err(e) => {
                let kept = self.registry.replicas().len();
                tracing::warn!(error = %e, kept, "discovery failed; keeping the last good candidates");
                Some(e.to_string())
            }
        };
        let discovery_problems = self.gather.problems();
        self.settled |= discovery_error.is_none();
        let result = if discovery_error.is_some() { "discovery_error" } else { "ok" };
        self.metrics.selection_rounds.get_or_create(&RoundLabels { result }).inc();

        let candidates = self.registry.replicas().to_vec();
        let probes = join_all(candidates.iter().map(|r| self.gather.probe(r.backend()))).await;
        self.report_viability(&candidates, &probes);

        let previous = self.published.load_full();
        let gathered = Gathered {
            round: self.round,
            candidates,
            probes,
            discovery_error,
            discovery_problems,
            settled: self.settled,
            taken_at: SystemTime::now(),
            took: started.elapsed(),
        };
        let next = decide(&previous, gathered, &self.strategy, &self.rules);
        self.report_data_health(&previous, &next);
        if previous.selected != next.selected || previous.round == 0 {
            let names: Vec<&str> = next.selected.iter().map(|r| r.url()).collect();
            if next.selected.is_empty() {
                tracing::warn!(candidates = next.candidates.len(), reason = %next.reason, "no replica selected; clients get 503");
            } else {
                tracing::info!(selected = ?names, reason = %next.reason, "selection changed");
            }
        }
        self.metrics.selected_backends.set(next.selected.len() as i64);
        self.metrics.candidates.set(next.candidates.len() as i64);
        self.published.store(Arc::new(next));
    }

    /// Whether discovery has given a complete answer yet.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Logs and exports each replica's ejection for its data, when it changes.
    fn report_data_health(&self, previous: &Snapshot, next: &Snapshot) {
        for candidate in &next.candidates {
            let was = previous
                .candidates
                .iter()
                .find(|c| Arc::ptr_eq(&c.replica, &candidate.replica))
                .and_then(|c| c.data.ejected.as_ref());
            match (was, &candidate.data.ejected) {
                (None, Some(why)) => {
                    tracing::warn!(backend = %candidate.replica, reason = %why, "replica out of the selection for its data")
                }
                (Some(_), None) => {
                    tracing::info!(backend = %candidate.replica, "replica's data keeps up again; back in the selection")
                }
                _ => {}
            }
            let labels = BackendLabels { backend: candidate.replica.url_label() };
            self.metrics.data_ejected.get_or_create(&labels).set(i64::from(candidate.data.ejected.is_some()));
        }
    }

    /// Marks each replica up or down by its probe, counts failed probes and logs each
    /// replica's change between viable and not.
    fn report_viability(&mut self, candidates: &[Arc<Replica>], probes: &[Probe]) {
        let mut now = HashMap::with_capacity(candidates.len());
        for (replica, probe) in candidates.iter().zip(probes) {
            let viable = probe.viable();
            // A full probe is the freshest word on a replica: it ends an ejection or makes one.
            if viable {
                replica.health().mark_up();
            } else {
                replica.health().mark_down();
                self.metrics.probe_failures.get_or_create(&BackendLabels { backend: replica.url_label() }).inc();
            }
            match (self.viability.get(replica.url()), viable) {
                (Some(true), false) | (None, false) => tracing::warn!(
                    backend = %replica,
                    error = probe.error.as_deref().unwrap_or("not ready"),
                    "replica is not viable"
                ),
                (Some(false), true) => tracing::info!(backend = %replica, "replica is viable again"),
                (None, true) => tracing::info!(backend = %replica, "new replica is viable"),
                _ => {}
            }
            now.insert(replica.url_label(), viable);
        }
        self.viability = now;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Scripted gathering: discovery lists `listed` (or fails while `failing`), every probe
    /// finds a viable replica with `samples[url]` samples; rounds are counted.
    #[derive(Clone, Default)]
    struct Script {
        listed: Arc<Mutex<Vec<&'static str>>>,
        failing: Arc<Mutex<bool>>,
        samples: Arc<Mutex<HashMap<String, f64>>>,
        rounds: Arc<AtomicUsize>,
    }

    impl Gather for Script {
        async fn candidates(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
            self.rounds.fetch_add(1, Ordering::SeqCst);
            if *self.failing.lock().unwrap() {
                return Err(DiscoveryError::Kubernetes("the API server is away".into()));
            }
            Ok(self.listed.lock().unwrap().iter().map(|u| Backend::parse(u).unwrap()).collect())
        }

        async fn probe(&self, backend: &Backend) -> Probe {
            let samples = self.samples.lock().unwrap().get(backend.url()).copied();
            Probe { ready: true, answers_up: true, samples, ..Probe::default() }
        }
    }

    fn selector(script: &Script, strategy: Strategy) -> (Selector<Script>, Arc<ArcSwap<Snapshot>>) {
        let metrics = Arc::new(Metrics::new());
        let published = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let registry = Registry::new(metrics.clone(), 8);
        let selector =
            Selector::new(script.clone(), registry, strategy, Duration::from_secs(10), published.clone(), metrics);
        (selector, published)
    }

    fn selected(published: &ArcSwap<Snapshot>) -> Vec<String> {
        published.load().selected.iter().map(|r| r.url().to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_run_every_interval_and_signals_collapse_into_one_soon_after() {
        let script = Script::default();
        script.listed.lock().unwrap().push("http://a:1");
        let (selector, _published) = selector(&script, Strategy::Random);
        let (signal, signals) = mpsc::channel(1);
        tokio::spawn(selector.run(signals));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(script.rounds.load(Ordering::SeqCst), 3, "one round each 10s");

        // Five signals within 40 ms: a round at once, and one more a gap later that answers
        // the other four together.
        let before = script.rounds.load(Ordering::SeqCst);
        for _ in 0..5 {
            let _ = signal.try_send(());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(MIN_ROUND_GAP / 2).await;
        assert_eq!(script.rounds.load(Ordering::SeqCst), before + 1, "the second waits for the gap");
        tokio::time::sleep(MIN_ROUND_GAP).await;
        assert_eq!(script.rounds.load(Ordering::SeqCst), before + 2, "five signals, two rounds");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(script.rounds.load(Ordering::SeqCst), before + 2, "and nothing until the interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_discovery_keeps_the_last_good_set_and_its_state() {
        let script = Script::default();
        script.listed.lock().unwrap().extend(["http://a:1", "http://b:1"]);
        let (mut selector, published) = selector(&script, Strategy::Random);
        selector.round().await;
        let a = published.load().candidates[0].replica.clone();
        *script.failing.lock().unwrap() = true;
        selector.round().await;
        let snapshot = published.load();
        assert!(snapshot.discovery_error.as_deref().is_some_and(|e| e.contains("away")));
        assert_eq!(selected(&published), vec!["http://a:1", "http://b:1"]);
        assert!(Arc::ptr_eq(&snapshot.candidates[0].replica, &a), "the same replica, not a new one");
        assert!(snapshot.settled, "settled once, settled for good");
    }

    #[tokio::test(start_paused = true)]
    async fn the_incumbent_keeps_serving_until_another_has_clearly_more_data() {
        let script = Script::default();
        script.listed.lock().unwrap().extend(["http://a:1", "http://b:1"]);
        script.samples.lock().unwrap().extend([("http://a:1".to_string(), 1000.0), ("http://b:1".to_string(), 900.0)]);
        let (mut selector, published) = selector(&script, Strategy::SingleMostData);
        selector.round().await;
        assert_eq!(selected(&published), vec!["http://a:1"]);
        // b catches up to within the margin: a stays.
        script.samples.lock().unwrap().insert("http://b:1".into(), 1005.0);
        selector.round().await;
        assert_eq!(selected(&published), vec!["http://a:1"]);
        script.samples.lock().unwrap().insert("http://b:1".into(), 2000.0);
        selector.round().await;
        assert_eq!(selected(&published), vec!["http://b:1"]);
    }

    #[test]
    fn a_replica_whose_ingestion_stalls_or_lags_leaves_with_hysteresis_but_never_the_last() {
        let replicas = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        // Rounds a minute apart; times in seconds from a fixed start.
        const T0: f64 = 1_000_000.0;
        let probe = |samples: f64, newest: f64| Probe {
            ready: true,
            answers_up: true,
            samples: Some(samples),
            head_max_time: Some(T0 + newest),
            ..Probe::default()
        };
        let rules = DataRules { max_lag: Duration::from_secs(120) };
        let round = |snapshot: &Snapshot, at: f64, a: Probe, b: Probe| {
            let gathered = Gathered {
                round: snapshot.round + 1,
                candidates: replicas.clone(),
                probes: vec![a, b],
                discovery_error: None,
                discovery_problems: Vec::new(),
                settled: true,
                taken_at: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(T0 + at),
                took: Duration::ZERO,
            };
            decide(snapshot, gathered, &Strategy::Random, &rules)
        };
        let names = |s: &Snapshot| s.selected.iter().map(|r| r.url().to_string()).collect::<Vec<_>>();
        let mut snapshot = round(&Snapshot::empty(), 0.0, probe(100.0, 0.0), probe(100.0, 0.0));
        // b stops appending. Rounds within the minute judge nothing.
        snapshot = round(&snapshot, 1.0, probe(110.0, 1.0), probe(100.0, 0.0));
        snapshot = round(&snapshot, 30.0, probe(150.0, 30.0), probe(100.0, 0.0));
        assert!(snapshot.candidates[1].data.bad_rounds == 0, "{:?}", snapshot.candidates[1].data);
        // One bad minute is not enough; the second ejects it.
        snapshot = round(&snapshot, 60.0, probe(200.0, 60.0), probe(100.0, 0.0));
        assert_eq!(names(&snapshot), ["http://a:1", "http://b:1"]);
        snapshot = round(&snapshot, 120.0, probe(300.0, 120.0), probe(100.0, 0.0));
        assert_eq!(names(&snapshot), ["http://a:1"]);
        assert!(snapshot.candidates[1].data.ejected.as_deref().unwrap().contains("stalled"));
        assert!(snapshot.reason.contains("1 out for their data"));
        // It appends again, but three minutes behind: still out, now for the lag.
        snapshot = round(&snapshot, 180.0, probe(400.0, 180.0), probe(110.0, 0.0));
        assert!(snapshot.candidates[1].data.ejected.as_deref().unwrap().contains("behind"));
        // Caught up: back after three good rounds.
        for i in 0..3 {
            assert_eq!(names(&snapshot), ["http://a:1"], "round {i}");
            let t = 240.0 + f64::from(i) * 60.0;
            snapshot = round(&snapshot, t, probe(500.0 + t, t), probe(200.0 + t, t));
        }
        assert_eq!(names(&snapshot), ["http://a:1", "http://b:1"]);
        // One replica's sample stamped a day ahead makes nobody lag.
        for i in 0..3 {
            let t = 420.0 + f64::from(i) * 60.0;
            snapshot = round(&snapshot, t, probe(1000.0 + t, t + 86_400.0), probe(1000.0 + t, t));
        }
        assert_eq!(names(&snapshot), ["http://a:1", "http://b:1"]);
        // Both stall, or the only other one is down: nobody is ejected.
        let down = Probe::default();
        for i in 0..3 {
            let t = 600.0 + f64::from(i) * 60.0;
            snapshot = round(&snapshot, t, probe(2000.0, 600.0), down.clone());
        }
        assert_eq!(names(&snapshot), ["http://a:1"]);
        assert!(snapshot.candidates[0].data.ejected.is_none());
    }

    #[test]
    fn decide_is_a_function_of_its_inputs() {
        let replicas = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        let viable = Probe { ready: true, answers_up: true, samples: Some(5.0), ..Probe::default() };
        let gathered = |probes: Vec<Probe>| Gathered {
            round: 7,
            candidates: replicas.clone(),
            probes,
            discovery_error: None,
            discovery_problems: Vec::new(),
            settled: true,
            taken_at: SystemTime::UNIX_EPOCH,
            took: Duration::from_millis(3),
        };
        let next = decide(
            &Snapshot::empty(),
            gathered(vec![viable.clone(), Probe::default()]),
            &Strategy::Random,
            &DataRules::default(),
        );
        assert_eq!((next.round, next.selected.len(), next.viable.len()), (7, 1, 1));
        assert!(next.candidates[0].selected && !next.candidates[1].selected);
        let again = decide(
            &Snapshot::empty(),
            gathered(vec![viable.clone(), Probe::default()]),
            &Strategy::Random,
            &DataRules::default(),
        );
        assert_eq!(again.selected, next.selected);
        let none =
            decide(&next, gathered(vec![Probe::default(), Probe::default()]), &Strategy::Random, &DataRules::default());
        assert!(none.selected.is_empty() && none.reason.contains("no candidate is viable"));
    }
}
