//! Basic auth against `basic_auth_users` (bcrypt hashes), as exporter-toolkit does it: an
//! unknown user costs a bcrypt check too (so that timing does not tell which users exist),
//! one bcrypt check runs at a time (they are CPU-heavy by design), and outcomes are cached
//! so that a client sending the same credentials on every request pays bcrypt once.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http::{HeaderMap, header};
use lru::LruCache;
use tokio::sync::Semaphore;

use super::config::Secret;

/// How many outcomes are remembered (exporter-toolkit keeps 100).
const CACHE_SIZE: usize = 100;

/// A bcrypt hash (cost 10, as exporter-toolkit's stand-in) of a password nobody knows,
/// checked for unknown users so that they take as long as known ones.
const DUMMY_HASH: &str = "$2b$10$.eIbP2FepOy8WoRYDyQ3yuqVhC3fP1NAov2/HiLP8GEPValEfavMm";

/// Verified credentials, remembered by a digest of user, hash and password (never the
/// password itself), shared by every serving thread.
pub(crate) struct Verifier {
    outcomes: Mutex<LruCache<[u8; 32], bool>>,
    one_at_a_time: Arc<Semaphore>,
}

/// How long a request waits for its turn at a bcrypt check before it is refused (401): a
/// flood of wrong passwords queues behind itself, not forever.
const CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

impl Verifier {
    pub fn new() -> Arc<Verifier> {
        Arc::new(Verifier {
            outcomes: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_SIZE).expect("the cache size is not zero"))),
            one_at_a_time: Arc::new(Semaphore::new(1)),
        })
    }

    /// Whether `headers` carry the credentials of one of `users`.
    pub async fn admits(&self, users: &BTreeMap<String, Secret>, headers: &HeaderMap) -> bool {
        let Some((user, password)) = basic_credentials(headers) else { return false };
        let known = users.get(&user);
        let hash = known.map_or(DUMMY_HASH, Secret::expose).to_owned();
        let key = cache_key(&user, &hash, &password);
        if let Some(&outcome) = self.outcomes.lock().expect("the cache lock is never poisoned").get(&key) {
            return outcome && known.is_some();
        }
        let turn = tokio::time::timeout(CHECK_PATIENCE, self.one_at_a_time.clone().acquire_owned()).await;
        let Ok(Ok(turn)) = turn else { return false };
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
        let outcome = matches && known.is_some();
        // Only known users' outcomes are kept: random names cannot push them out of the cache.
        if known.is_some() {
            self.outcomes.lock().expect("the cache lock is never poisoned").put(key, outcome);
        }
        outcome
    }
}

/// The user and password of an `Authorization: Basic` header, as Go's `Request.BasicAuth`
/// reads it (scheme in any case, standard base64, split at the first colon).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
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

    #[tokio::test]
    async fn right_password_is_admitted_and_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (users, verifier) = (users(&hash), Verifier::new());
        assert!(verifier.admits(&users, &basic("alice:s3cret")).await);
        assert!(verifier.admits(&users, &basic("alice:s3cret")).await);
        assert_eq!(verifier.outcomes.lock().unwrap().len(), 1);
        assert!(!verifier.admits(&users, &basic("alice:wrong")).await);
        assert!(!verifier.admits(&users, &basic("alice:wrong")).await);
    }

    #[tokio::test]
    async fn unknown_users_are_refused_even_with_the_dummy_password() {
        let (users, verifier) = (users(&bcrypt::hash("s3cret", 4).unwrap()), Verifier::new());
        assert!(!verifier.admits(&users, &basic("bob:s3cret")).await);
        assert!(!verifier.admits(&users, &HeaderMap::new()).await);
    }

    #[tokio::test]
    async fn a_changed_hash_is_not_answered_from_the_cache() {
        let verifier = Verifier::new();
        assert!(verifier.admits(&users(&bcrypt::hash("old", 4).unwrap()), &basic("alice:old")).await);
        assert!(!verifier.admits(&users(&bcrypt::hash("new", 4).unwrap()), &basic("alice:old")).await);
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
