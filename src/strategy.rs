//! The routing strategies: from what the probes learned about every candidate to the
//! *selection*, the replicas allowed to serve. Choosing one replica among the selection for a
//! given request is the proxy's job (affinity, then `proxy::retry`); this module decides who is eligible.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::probe::Probe;

/// How the selection is made, as given by `--routing-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One replica: the viable one that has ingested the most samples.
    SingleMostData,
    /// Every viable replica holding at least this much history; one at random per request.
    MinimumHistory(Duration),
    /// Every viable replica; one at random per request.
    Random,
}

/// A challenger must exceed the serving replica's sample count by this fraction to replace
/// it. Replicas that scrape the same targets grow in step; without a margin the lead would
/// flip with every scrape and clients would jump between replicas for nothing.
const MOST_DATA_MARGIN: f64 = 0.01;

impl Strategy {
    /// One sentence for the status page and the start-up log.
    pub fn description(&self) -> String {
        match self {
            Strategy::SingleMostData => "all traffic goes to the one viable replica that has \
                                         ingested the most samples"
                .to_string(),
            Strategy::MinimumHistory(d) => format!(
                "each request goes to a random viable replica holding at least {} of history",
                crate::units::format_duration(*d)
            ),
            Strategy::Random => "each request goes to a random viable replica".to_string(),
        }
    }

    /// What the strategy compares replicas by, as shown on the status page.
    pub fn comparison(&self) -> &'static str {
        match self {
            Strategy::SingleMostData => "samples appended (prometheus_tsdb_head_samples_appended_total)",
            Strategy::MinimumHistory(_) => "has `up` samples at now minus the minimum history",
            Strategy::Random => "none (every viable replica is selected)",
        }
    }

    /// Whether probes must ask for history (only `minimum-history` needs the extra query).
    pub fn history_needed(&self) -> Option<Duration> {
        match self {
            Strategy::MinimumHistory(d) => Some(*d),
            _ => None,
        }
    }

    /// Chooses the selection among `probes` (one per candidate, in candidate order).
    /// `incumbent` is the index of the replica `single-most-data` served from until now.
    pub fn select(&self, probes: &[&Probe], incumbent: Option<usize>) -> Choice {
        let viable: Vec<usize> = (0..probes.len()).filter(|&i| probes[i].viable()).collect();
        if viable.is_empty() {
            return Choice { selected: vec![], reason: "no candidate is viable".into() };
        }
        match self {
            Strategy::Random => {
                Choice { reason: format!("{} of {} candidates viable", viable.len(), probes.len()), selected: viable }
            }
            Strategy::MinimumHistory(d) => {
                let old_enough: Vec<usize> =
                    viable.iter().copied().filter(|&i| probes[i].has_history == Some(true)).collect();
                if old_enough.is_empty() {
                    // Serving from every viable replica beats refusing every query until one
                    // of them has aged (after a fresh deploy of all replicas, say).
                    Choice {
                        reason: format!(
                            "no viable replica holds {} of history yet; serving from all {} viable",
                            crate::units::format_duration(*d),
                            viable.len()
                        ),
                        selected: viable,
                    }
                } else {
                    Choice {
                        reason: format!(
                            "{} of {} viable replicas hold {} of history",
                            old_enough.len(),
                            viable.len(),
                            crate::units::format_duration(*d)
                        ),
                        selected: old_enough,
                    }
                }
            }
            Strategy::SingleMostData => select_most_data(probes, &viable, incumbent),
        }
    }
}

fn select_most_data(probes: &[&Probe], viable: &[usize], incumbent: Option<usize>) -> Choice {
    let samples = |i: usize| probes[i].samples.unwrap_or(0.0);
    // Highest count first; equal counts fall back to candidate order, which is stable.
    let best =
        viable.iter().copied().reduce(|a, b| if samples(b) > samples(a) { b } else { a }).expect("viable is not empty");
    if let Some(inc) = incumbent.filter(|&i| i != best && viable.contains(&i)) {
        if samples(best) <= samples(inc) * (1.0 + MOST_DATA_MARGIN) {
            return Choice {
                selected: vec![inc],
                reason: format!("most data: {} samples (kept within the 1% margin)", samples(inc)),
            };
        }
    }
    Choice { selected: vec![best], reason: format!("most data: {} samples", samples(best)) }
}

/// The result of one [`Strategy::select`]: indices into the candidates, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The selected candidates, by index, in candidate order.
    pub selected: Vec<usize>,
    /// A short human explanation, for the log and the status page.
    pub reason: String,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        match value {
            "single-most-data" => Ok(Strategy::SingleMostData),
            "random" => Ok(Strategy::Random),
            "minimum-history" => Err("'minimum-history' needs a duration, e.g. 'minimum-history:1h'".into()),
            _ => match value.strip_prefix("minimum-history:") {
                Some(d) => {
                    let d = crate::units::parse_duration(d)?;
                    if d.is_zero() {
                        return Err("the minimum history must be more than 0s".into());
                    }
                    Ok(Strategy::MinimumHistory(d))
                }
                None => Err(format!(
                    "unknown strategy '{value}'; valid: single-most-data, random, minimum-history:DURATION"
                )),
            },
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::SingleMostData => f.write_str("single-most-data"),
            Strategy::Random => f.write_str("random"),
            Strategy::MinimumHistory(d) => write!(f, "minimum-history:{}", crate::units::format_duration(*d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(viable: bool, samples: f64, history: bool) -> Probe {
        Probe {
            ready: viable,
            answers_up: viable,
            samples: Some(samples),
            has_history: Some(history),
            ..Probe::default()
        }
    }

    #[test]
    fn strategies_parse_and_print() {
        assert_eq!("random".parse::<Strategy>().unwrap(), Strategy::Random);
        let s: Strategy = "minimum-history:1h30m".parse().unwrap();
        assert_eq!(s, Strategy::MinimumHistory(Duration::from_secs(5400)));
        assert_eq!(s.to_string(), "minimum-history:1h30m");
        assert!("minimum-history".parse::<Strategy>().unwrap_err().contains("needs a duration"));
        assert!("minimum-history:soon".parse::<Strategy>().is_err());
        assert!("minimum-history:0s".parse::<Strategy>().is_err());
        assert!("fastest".parse::<Strategy>().unwrap_err().contains("'fastest'"));
        // Found by fuzzing: 30h printed as "1day 6h", which did not parse back.
        let s: Strategy = "minimum-history:0h30h".parse().unwrap();
        assert_eq!(s.to_string().parse::<Strategy>(), Ok(s));
    }

    #[test]
    fn most_data_picks_the_largest_viable() {
        let p = [probe(true, 10.0, false), probe(false, 99.0, false), probe(true, 20.0, false)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(Strategy::SingleMostData.select(&refs, None).selected, vec![2]);
    }

    #[test]
    fn most_data_keeps_the_incumbent_within_the_margin() {
        let p = [probe(true, 1000.0, false), probe(true, 1005.0, false)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(Strategy::SingleMostData.select(&refs, Some(0)).selected, vec![0]);
        let p = [probe(true, 1000.0, false), probe(true, 1100.0, false)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(Strategy::SingleMostData.select(&refs, Some(0)).selected, vec![1]);
    }

    #[test]
    fn most_data_ties_break_by_candidate_order() {
        let p = [probe(true, 5.0, false), probe(true, 5.0, false)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(Strategy::SingleMostData.select(&refs, None).selected, vec![0]);
    }

    #[test]
    fn minimum_history_prefers_old_replicas_and_falls_back_to_all() {
        let s = Strategy::MinimumHistory(Duration::from_secs(3600));
        let p = [probe(true, 0.0, true), probe(true, 0.0, false), probe(false, 0.0, true)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(s.select(&refs, None).selected, vec![0]);
        let p = [probe(true, 0.0, false), probe(true, 0.0, false)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert_eq!(s.select(&refs, None).selected, vec![0, 1]);
    }

    #[test]
    fn nothing_viable_selects_nothing() {
        let p = [probe(false, 1.0, true)];
        let refs: Vec<&Probe> = p.iter().collect();
        assert!(Strategy::Random.select(&refs, None).selected.is_empty());
    }
}
