//! `rate_limit`: one token bucket over every request the listener gets, as exporter-toolkit's
//! (`rate.NewLimiter(rate.Every(interval), burst)`); a request finding it empty gets 429.

use std::sync::Mutex;
use std::time::Instant;

use super::config::RateLimit;

/// A token bucket: holds at most `burst` tokens, one more every `interval`.
pub(crate) struct Bucket {
    limit: RateLimit,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Bucket {
        Bucket { limit, state: Mutex::new(State { tokens: f64::from(limit.burst), at: Instant::now() }) }
    }

    /// Takes a token if there is one.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("the bucket lock is never poisoned");
        let refill = now.saturating_duration_since(state.at).as_secs_f64() / self.limit.interval.as_secs_f64();
        state.tokens = (state.tokens + refill).min(f64::from(self.limit.burst));
        state.at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({:?})", self.limit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_a_burst_then_one_per_interval() {
        let bucket = Bucket::new(RateLimit { burst: 2, interval: Duration::from_secs(1) });
        let start = Instant::now();
        assert!(bucket.allow_at(start));
        assert!(bucket.allow_at(start));
        assert!(!bucket.allow_at(start));
        assert!(!bucket.allow_at(start + Duration::from_millis(900)));
        assert!(bucket.allow_at(start + Duration::from_millis(1000)));
        assert!(!bucket.allow_at(start + Duration::from_millis(1001)));
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert!(bucket.allow_at(later) && bucket.allow_at(later) && !bucket.allow_at(later));
    }

    #[test]
    fn a_zero_burst_allows_nothing() {
        let bucket = Bucket::new(RateLimit { burst: 0, interval: Duration::from_secs(1) });
        assert!(!bucket.allow_at(Instant::now() + Duration::from_secs(5)));
    }
}
