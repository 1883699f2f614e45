//! Basic auth against `basic_auth_users` (bcrypt hashes), as exporter-toolkit does it: an
//! unknown user costs a bcrypt check too (so that timing does not tell which users exist),
//! and outcomes are cached so that a client sending the same credentials on every request
//! pays bcrypt once.
//!
//! bcrypt is slow by design (about 57 ms a check at cost 10), which makes it a lever for a
//! flood of wrong passwords. So that a flood can neither refuse nor starve the right password:
//! - verified successes are cached apart from failures, and failures never evict them: a user
//!   who was admitted once is admitted at once, whatever else arrives;
//! - checks run on as many blocking threads as mpp serves on (they are CPU-heavy), and at most
//!   [`PER_CLIENT`] checks per client address wait or run at a time, so that one flooding
//!   address cannot take all the checking capacity;
//! - a request that cannot have its check (its address is over its share, or the queue is
//!   full, or its turn does not come within [`CHECK_PATIENCE`]) is told to come back
//!   ([`Verdict::Busy`]: 429 or 503 with `Retry-After`), never that its password is wrong.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use http::{HeaderMap, header};
use lru::LruCache;
use tokio::sync::Semaphore;

use super::config::Secret;

/// How many verified successes are remembered (exporter-toolkit keeps 100 outcomes of either
/// kind; successes are few, one per user and password in use).
const ADMITTED_CACHE: usize = 1024;
/// How many refused credentials are remembered, so that a client repeating one wrong
/// password costs one check; a flood of new ones only churns this cache.
const REFUSED_CACHE: usize = 1024;
/// The most checks one client address may have waiting or running at a time.
pub const PER_CLIENT: usize = 2;
/// How many checks may wait for their turn, per thread that checks: past it, a new one is
/// told to come back at once rather than queue behind a flood.
const QUEUE_PER_CHECKER: usize = 8;
/// How long a request waits for its turn at a check before it is told to come back.
pub const CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// A bcrypt hash (cost 10, as exporter-toolkit's stand-in) of a password nobody knows,
/// checked for unknown users so that they take as long as known ones.
const DUMMY_HASH: &str = "$2b$10$.eIbP2FepOy8WoRYDyQ3yuqVhC3fP1NAov2/HiLP8GEPValEfavMm";

/// What a check of a request's credentials found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The credentials are one of the users'.
    Admitted,
    /// They are not (or there are none).
    Refused,
    /// Not checked: too many checks are waiting, for this client (`per_client`) or in all.
    Busy { per_client: bool },
}

/// Verified credentials, remembered by a digest of user, hash and password (never the
/// password itself), shared by every serving thread.
pub(crate) struct Verifier {
    admitted: Mutex<LruCache<[u8; 32], ()>>,
    refused: Mutex<LruCache<[u8; 32], ()>>,
    checkers: Arc<Semaphore>,
    queue_bound: usize,
    waiting: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Verifier {
    /// A verifier running up to `checkers` bcrypt checks at a time (the cores mpp serves on).
    pub fn new(checkers: usize) -> Arc<Verifier> {
        let checkers = checkers.max(1);
        let size = |n: usize| NonZeroUsize::new(n).expect("the cache sizes are not zero");
        Arc::new(Verifier {
            admitted: Mutex::new(LruCache::new(size(ADMITTED_CACHE))),
            refused: Mutex::new(LruCache::new(size(REFUSED_CACHE))),
            checkers: Arc::new(Semaphore::new(checkers)),
            queue_bound: checkers * QUEUE_PER_CHECKER,
            waiting: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `headers`, sent from `client`, carry the credentials of one of `users`.
    pub async fn admits(&self, users: &BTreeMap<String, Secret>, headers: &HeaderMap, client: IpAddr) -> Verdict {
        let Some((user, password)) = basic_credentials(headers) else { return Verdict::Refused };
        let known = users.get(&user);
        let hash = known.map_or(DUMMY_HASH, Secret::expose).to_owned();
        let key = cache_key(&user, &hash, &password);
        if known.is_some() && self.admitted.lock().expect("the cache lock is never poisoned").get(&key).is_some() {
            return Verdict::Admitted;
        }
        if self.refused.lock().expect("the cache lock is never poisoned").get(&key).is_some() {
            return Verdict::Refused;
        }
        let Some(_share) = ClientShare::take(&self.per_client, client) else {
            return Verdict::Busy { per_client: true };
        };
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_bound {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Verdict::Busy { per_client: false };
        }
        let turn = tokio::time::timeout(CHECK_PATIENCE, self.checkers.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(Ok(turn)) = turn else { return Verdict::Busy { per_client: false } };
        // Off the serving thread: a check takes tens of milliseconds by design. The turn goes
        // with the check, so a client that hangs up does not free it while bcrypt still runs.
        // Go's bcrypt refuses passwords over 72 bytes rather than truncating them; so does this.
        let matches = tokio::task::spawn_blocking(move || {
            let matches = bcrypt::non_truncating_verify(password, &hash).unwrap_or(false);
            drop(turn);
            matches
        })
        .await
        .unwrap_or(false);
        if matches && known.is_some() {
            self.admitted.lock().expect("the cache lock is never poisoned").put(key, ());
            Verdict::Admitted
        } else {
            self.refused.lock().expect("the cache lock is never poisoned").put(key, ());
            Verdict::Refused
        }
    }
}

/// One of a client address's [`PER_CLIENT`] places for checks, given back when dropped.
struct ClientShare<'a> {
    shares: &'a Mutex<HashMap<IpAddr, usize>>,
    client: IpAddr,
}

impl<'a> ClientShare<'a> {
    fn take(shares: &'a Mutex<HashMap<IpAddr, usize>>, client: IpAddr) -> Option<Self> {
        let mut taken = shares.lock().expect("the share lock is never poisoned");
        let count = taken.entry(client).or_insert(0);
        if *count >= PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(ClientShare { shares, client })
    }
}

impl Drop for ClientShare<'_> {
    fn drop(&mut self) {
        let mut taken = self.shares.lock().expect("the share lock is never poisoned");
        if let Some(count) = taken.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.client);
            }
        }
    }
}

/// The user and password of an `Authorization: Basic` header, as Go's `Request.BasicAuth`
/// reads it (scheme in any case, standard base64, split at the first colon).
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // Lengths first, so that no two different triples hash the same input.
    for part in [user, hash, password] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part.as_bytes());
    }
    context.finish().as_ref().try_into().expect("SHA-256 digests are 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(hash: &str) -> BTreeMap<String, Secret> {
        serde_yaml::from_str(&format!("alice: '{hash}'")).unwrap()
    }

    fn basic(credentials: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn right_password_is_admitted_and_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (users, verifier) = (users(&hash), Verifier::new(1));
        assert_eq!(verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await, Verdict::Admitted);
        assert_eq!(verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await, Verdict::Admitted);
        assert_eq!(verifier.admitted.lock().unwrap().len(), 1);
        assert_eq!(verifier.admits(&users, &basic("alice:wrong"), CLIENT).await, Verdict::Refused);
        assert_eq!(verifier.admits(&users, &basic("alice:wrong"), CLIENT).await, Verdict::Refused);
        assert_eq!(verifier.refused.lock().unwrap().len(), 1, "a repeated wrong password costs one check");
    }

    #[tokio::test]
    async fn unknown_users_are_refused_even_with_the_dummy_password() {
        let (users, verifier) = (users(&bcrypt::hash("s3cret", 4).unwrap()), Verifier::new(1));
        assert_eq!(verifier.admits(&users, &basic("bob:s3cret"), CLIENT).await, Verdict::Refused);
        assert_eq!(verifier.admits(&users, &HeaderMap::new(), CLIENT).await, Verdict::Refused);
    }

    #[tokio::test]
    async fn a_changed_hash_is_not_answered_from_the_cache() {
        let verifier = Verifier::new(1);
        let old = users(&bcrypt::hash("old", 4).unwrap());
        assert_eq!(verifier.admits(&old, &basic("alice:old"), CLIENT).await, Verdict::Admitted);
        let new = users(&bcrypt::hash("new", 4).unwrap());
        assert_eq!(verifier.admits(&new, &basic("alice:old"), CLIENT).await, Verdict::Refused);
    }

    #[tokio::test]
    async fn a_flood_of_wrong_passwords_never_evicts_an_admitted_one() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (users, verifier) = (users(&hash), Verifier::new(2));
        assert_eq!(verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await, Verdict::Admitted);
        for i in 0..REFUSED_CACHE + 50 {
            let verdict = verifier.admits(&users, &basic(&format!("alice:wrong{i}")), CLIENT).await;
            assert_eq!(verdict, Verdict::Refused, "attempt {i}");
        }
        assert_eq!(verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await, Verdict::Admitted);
        assert_eq!(verifier.admitted.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_address_gets_at_most_its_share_of_checks_and_then_busy_not_refused() {
        let hash = bcrypt::hash("s3cret", 10).unwrap();
        let (users, verifier) = (Arc::new(users(&hash)), Verifier::new(1));
        // Hold the only checker, so that checks queue.
        let held = verifier.checkers.clone().acquire_owned().await.unwrap();
        let flood: Vec<_> = (0..PER_CLIENT)
            .map(|i| {
                let (users, verifier) = (users.clone(), verifier.clone());
                tokio::spawn(async move { verifier.admits(&users, &basic(&format!("alice:w{i}")), CLIENT).await })
            })
            .collect();
        while verifier.waiting.load(Ordering::Relaxed) < PER_CLIENT {
            tokio::task::yield_now().await;
        }
        // Over its share: told to come back, not refused; another address still queues.
        let over = verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await;
        assert_eq!(over, Verdict::Busy { per_client: true });
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        let (users2, verifier2) = (users.clone(), verifier.clone());
        let elsewhere = tokio::spawn(async move { verifier2.admits(&users2, &basic("alice:s3cret"), other).await });
        drop(held);
        assert_eq!(elsewhere.await.unwrap(), Verdict::Admitted);
        for attempt in flood {
            assert_eq!(attempt.await.unwrap(), Verdict::Refused);
        }
        assert!(verifier.per_client.lock().unwrap().is_empty(), "every share was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_whose_turn_does_not_come_is_busy_not_refused() {
        let (users, verifier) = (users(&bcrypt::hash("s3cret", 4).unwrap()), Verifier::new(1));
        let _held = verifier.checkers.clone().acquire_owned().await.unwrap();
        let verdict = verifier.admits(&users, &basic("alice:s3cret"), CLIENT).await;
        assert_eq!(verdict, Verdict::Busy { per_client: false });
        assert_eq!(verifier.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_dummy_hash_costs_as_much_as_a_real_one() {
        // A malformed stand-in would fail at once, and so tell unknown users apart by time.
        let parts: bcrypt::HashParts = DUMMY_HASH.parse().unwrap();
        assert_eq!(parts.get_cost(), 10);
    }

    #[test]
    fn credentials_parse_as_go_reads_them() {
        assert_eq!(basic_credentials(&basic("a:b:c")), Some(("a".into(), "b:c".into())));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bAsIc YTpi".parse().unwrap());
        assert_eq!(basic_credentials(&headers), Some(("a".into(), "b".into())));
        for bad in ["Bearer YTpi", "Basic !!!", "Basic", "Basic YWI=", "Básic YTpi"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, http::HeaderValue::from_bytes(bad.as_bytes()).unwrap());
            assert_eq!(basic_credentials(&headers), None, "{bad}");
        }
    }
}
