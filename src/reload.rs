//! Rereading files that may change under a running mpp (the endpoints file, the web config
//! file and what it names, the replicas' password or token file): one loop for all of them,
//! so that they agree on the pace and on how a broken file is reported, and one account of
//! how the last rereads went ([`Reloads`]: SIGHUP asks every loop to read at once, and
//! `mpp_config_last_reload_successful` says whether every file reads well).
//!
//! The loop only reads and reports; what a file holds, and keeping the last good value in use
//! while it is broken, is the caller's.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// How the rereads of every file mpp reads went, and the SIGHUP that asks for them at once.
/// Cheap to clone: every clone is the same account.
#[derive(Debug, Clone)]
pub struct Reloads {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Counts the asks (SIGHUP); every loop watches it.
    asked: watch::Sender<u64>,
    /// Each file (or set of files) by name, and whether its last reread failed.
    failing: Mutex<BTreeMap<&'static str, bool>>,
    /// `mpp_config_last_reload_successful`.
    successful: Gauge,
    /// `mpp_config_last_reload_success_timestamp_seconds`.
    success_time: Gauge<f64, AtomicU64>,
}

impl Reloads {
    /// An account kept in these gauges; every file reads well so far (mpp has just read them
    /// all to start).
    pub fn new(successful: Gauge, success_time: Gauge<f64, AtomicU64>) -> Self {
        successful.set(1);
        success_time.set(unix_now());
        let (asked, _) = watch::channel(0);
        Reloads { inner: Arc::new(Inner { asked, failing: Mutex::new(BTreeMap::new()), successful, success_time }) }
    }

    /// Asks every loop to read its files now (SIGHUP).
    pub fn ask(&self) {
        self.inner.asked.send_modify(|n| *n += 1);
    }

    /// Changes when [`Reloads::ask`] is called.
    pub fn asked(&self) -> watch::Receiver<u64> {
        self.inner.asked.subscribe()
    }

    /// Records a reread of `source`: `ok`, and whether it brought something new or was asked
    /// for (`fresh`). The time of the last success moves when every file reads well after a
    /// fresh reread, as Prometheus's does after a reload.
    pub fn report(&self, source: &'static str, ok: bool, fresh: bool) {
        let mut failing = self.inner.failing.lock().expect("the reloads lock is never poisoned");
        failing.insert(source, !ok);
        let all_ok = failing.values().all(|failing| !failing);
        self.inner.successful.set(i64::from(all_ok));
        if all_ok && ok && fresh {
            self.inner.success_time.set(unix_now());
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What one reread found, as [`every`] reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reread<'a, E> {
    /// The files read well; `changed`: they hold something new (now in use), `recovered`:
    /// the last reread had failed.
    Read { changed: bool, recovered: bool },
    /// The files fail in a way they did not on the last reread. A problem that persists is
    /// reported once, not every tick.
    Failed(&'a E),
}

/// Calls `reread` every `interval`, and at once when `reloads` is asked, forever (run it in
/// a task); tells `report` what came of it, and `reloads` how `source` reads. `reread`
/// returns whether what the files hold changed.
pub async fn every<E: PartialEq + std::fmt::Display>(
    interval: Duration,
    reloads: &Reloads,
    source: &'static str,
    mut reread: impl FnMut() -> Result<bool, E>,
    mut report: impl FnMut(Reread<'_, E>),
) {
    let mut ticks = tokio::time::interval(interval);
    // A tick missed while the runtime was busy is not made up for: one read sees the latest.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked = reloads.asked();
    let mut last_error = None;
    loop {
        let on_ask = tokio::select! {
            _ = ticks.tick() => false,
            Ok(()) = asked.changed() => true,
        };
        match reread() {
            Ok(changed) => {
                reloads.report(source, true, changed || on_ask);
                report(Reread::Read { changed, recovered: last_error.take().is_some() });
            }
            Err(error) => {
                reloads.report(source, false, on_ask);
                if last_error.as_ref() != Some(&error) {
                    report(Reread::Failed(&error));
                    last_error = Some(error);
                } else if on_ask {
                    // Asked for by hand: the answer is worth a line even if it is not news.
                    tracing::error!(%error, "{source} still fails to read");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_each_distinct_problem_once_and_the_recovery() {
        let results = [Ok(false), Ok(true), Err("gone"), Err("gone"), Err("bad"), Ok(false), Ok(false)];
        let mut results = results.into_iter();
        let mut seen = Vec::new();
        let reread = || results.next().unwrap_or(Ok(false));
        let report = |event: Reread<'_, &str>| {
            seen.push(match event {
                Reread::Read { changed, recovered } => format!("read changed={changed} recovered={recovered}"),
                Reread::Failed(error) => format!("failed {error}"),
            })
        };
        let reloads = reloads();
        let looping = every(Duration::from_secs(1), &reloads, "test file", reread, report);
        let _ = tokio::time::timeout(Duration::from_millis(6500), looping).await;
        assert_eq!(
            seen,
            [
                "read changed=false recovered=false",
                "read changed=true recovered=false",
                "failed gone",
                "failed bad",
                "read changed=false recovered=true",
                "read changed=false recovered=false",
            ]
        );
    }

    fn reloads() -> Reloads {
        Reloads::new(Gauge::default(), Gauge::default())
    }

    #[tokio::test(start_paused = true)]
    async fn an_ask_rereads_at_once_and_the_gauges_hold_every_file() {
        let reloads = reloads();
        let (successful, time) = (reloads.inner.successful.clone(), reloads.inner.success_time.clone());
        let started = time.get();
        assert_eq!(successful.get(), 1);
        let reads = Arc::new(Mutex::new(Vec::new()));
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let looping = {
            let (reloads, reads, broken) = (reloads.clone(), reads.clone(), broken.clone());
            async move {
                let reread = || {
                    reads.lock().unwrap().push(tokio::time::Instant::now());
                    if broken.load(std::sync::atomic::Ordering::Relaxed) { Err("broken") } else { Ok(false) }
                };
                every(Duration::from_secs(3600), &reloads, "endpoints", reread, |_| {}).await
            }
        };
        let task = tokio::spawn(looping);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(reads.lock().unwrap().len(), 1, "the first read, then an hour's wait");

        // The wall clock moves on for the timestamp (time is paused for the loop only).
        std::thread::sleep(Duration::from_millis(20));
        reloads.ask();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(reads.lock().unwrap().len(), 2, "asked: read at once");
        assert!(time.get() > started, "an asked-for reread that reads well is a successful reload");

        broken.store(true, std::sync::atomic::Ordering::Relaxed);
        reloads.ask();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(successful.get(), 0, "a file fails");
        reloads.report("web config", true, true);
        assert_eq!(successful.get(), 0, "another file reading well does not hide it");
        broken.store(false, std::sync::atomic::Ordering::Relaxed);
        reloads.ask();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(successful.get(), 1, "every file reads well again");
        task.abort();
    }
}
