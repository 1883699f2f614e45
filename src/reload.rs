//! Rereading files that may change under a running mpp (the web config file and what it
//! names, the replicas' password or token file): one loop for all of them, so that they
//! agree on the pace and on how a broken file is reported.
//!
//! The loop only reads and reports; what a file holds, and keeping the last good value in use
//! while it is broken, is the caller's.

use std::time::Duration;

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

/// Calls `reread` every `interval`, forever (run it in a task), and tells `report` what came
/// of it. `reread` returns whether what the files hold changed.
pub async fn every<E: PartialEq>(
    interval: Duration,
    mut reread: impl FnMut() -> Result<bool, E>,
    mut report: impl FnMut(Reread<'_, E>),
) {
    let mut ticks = tokio::time::interval(interval);
    // A tick missed while the runtime was busy is not made up for: one read sees the latest.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        ticks.tick().await;
        match reread() {
            Ok(changed) => report(Reread::Read { changed, recovered: last_error.take().is_some() }),
            Err(error) if last_error.as_ref() != Some(&error) => {
                report(Reread::Failed(&error));
                last_error = Some(error);
            }
            Err(_) => {}
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
        let _ = tokio::time::timeout(Duration::from_millis(6500), every(Duration::from_secs(1), reread, report)).await;
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
}
