use super::*;
use crate::coverage::{Coverage, Span};
use crate::metrics::CacheMetrics;
use crate::registry::tests::replicas;

const SECOND: Millis = 1000;

fn cache() -> Cache {
    Cache::new(1 << 20, 5 * SECOND, CacheMetrics::default())
}

/// `query_range` of `expr` from `start` to `end` (seconds), every `step` seconds.
fn range(cache: &Cache, expr: &str, start: i64, end: i64, step: i64, headers: &HeaderMap) -> Option<Query> {
    let query_string = format!("query={expr}&start={start}&end={end}&step={step}");
    cache.query(Endpoint::QueryRange, "/api/v1/query_range", Some(&query_string), None, headers, || 10_000 * SECOND)
}

/// A matrix answer of one series with a point at each of `times` (seconds).
fn answer(times: impl Iterator<Item = i64>) -> Bytes {
    let points: Vec<String> = times.map(|t| format!("[{t},\"{t}\"]")).collect();
    Bytes::from(format!(
        r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"job":"a"}},"values":[{}]}}]}}}}"#,
        points.join(",")
    ))
}

/// A snapshot in which every one of `replicas` is a viable candidate.
fn serving(replicas: &[Arc<crate::registry::Replica>]) -> Snapshot {
    let candidates = replicas
        .iter()
        .map(|replica| crate::selection::CandidateState {
            replica: replica.clone(),
            probe: Default::default(),
            selected: true,
            data: Default::default(),
        })
        .collect();
    Snapshot { candidates, viable: replicas.to_vec(), ..Snapshot::empty() }
}

fn urls(replicas: &[Arc<crate::registry::Replica>]) -> Arc<[Box<str>]> {
    replicas.iter().map(|r| Box::<str>::from(r.url())).collect()
}

fn scanned(replica: &crate::registry::Replica, from: Millis, holes: &[(Millis, Millis)]) {
    let mut coverage = Coverage::default();
    (coverage.bucket, coverage.lookback) = (SECOND, SECOND);
    let holes: Vec<Span> = holes.iter().map(|&(s, e)| Span::new(s, e)).collect();
    coverage.scanned(Span::new(from, 9_000 * SECOND), &holes);
    replica.set_coverage(coverage);
}

#[test]
fn a_sliding_range_asks_only_for_the_steps_it_lacks() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let snapshot = serving(&replicas);
    let none = HeaderMap::new();
    let first = range(&cache, "up", 1000, 1600, 60, &none).unwrap();
    assert_eq!((first.start, first.last, first.step), (1_000_000, 1_600_000, 60_000));
    let plan = cache.plan(&first, &snapshot);
    assert_eq!(plan.missing, [(1_000_000, 1_600_000)]);
    cache.store(&first, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas), plan.oldest);

    // Two steps on: the cached ones, and the two new.
    let slid = range(&cache, "up", 1120, 1720, 60, &none).unwrap();
    assert_eq!(slid.key, first.key, "the same query at the same alignment");
    let plan = cache.plan(&slid, &snapshot);
    assert_eq!(plan.cached.len(), 1);
    assert_eq!(plan.cached[0].1, (1_120_000, 1_600_000));
    assert_eq!(plan.missing, [(1_660_000, 1_720_000)]);

    // Inside what is held: a hit.
    let inside = range(&cache, "up", 1060, 1500, 60, &none).unwrap();
    let plan = cache.plan(&inside, &snapshot);
    assert!(plan.hit(), "{plan:?}");
    assert_eq!(plan.cached[0].1, (1_060_000, 1_480_000), "the last step at or before end");

    // Other alignment, step, expression or credentials: other entries.
    for other in [
        range(&cache, "up", 1030, 1630, 60, &none),
        range(&cache, "up", 1000, 1600, 30, &none),
        range(&cache, "up%20%3E%200", 1000, 1600, 60, &none),
    ] {
        assert_ne!(other.unwrap().key, first.key);
    }
    let mut authorized = HeaderMap::new();
    authorized.insert(http::header::AUTHORIZATION, "Bearer other".parse().unwrap());
    assert_ne!(range(&cache, "up", 1000, 1600, 60, &authorized).unwrap().key, first.key);
    // `timeout` changes no answer.
    let query_string = "query=up&start=1000&end=1600&step=60&timeout=5s";
    let timed =
        cache.query(Endpoint::QueryRange, "/api/v1/query_range", Some(query_string), None, &none, || 10_000_000);
    assert_eq!(timed.unwrap().key, first.key);
}

#[test]
fn an_extent_with_a_hole_found_later_is_dropped() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090", "http://b:9090"]);
    let snapshot = serving(&replicas);
    let query = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    scanned(&replicas[0], 0, &[]);
    cache.store(&query, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas[..1]), None);
    assert!(cache.plan(&query, &snapshot).hit());
    // A hole on another replica changes nothing; on the one that answered, the extent goes.
    scanned(&replicas[1], 0, &[(1_200_000, 1_260_000)]);
    assert!(cache.plan(&query, &snapshot).hit());
    scanned(&replicas[0], 0, &[(1_200_000, 1_260_000)]);
    let plan = cache.plan(&query, &snapshot);
    assert!(plan.cached.is_empty());
    assert_eq!(plan.missing, [(1_000_000, 1_600_000)]);
    assert_eq!(cache.summary(1).entries, 0, "dropped from the cache too");
}

#[test]
fn a_hole_found_on_a_replica_that_is_down_now_drops_what_it_answered() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090", "http://b:9090"]);
    let query = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    scanned(&replicas[0], 0, &[]);
    cache.store(&query, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas[..1]), None);
    // Its last scan found a hole, then it stopped answering probes: a candidate, not viable.
    scanned(&replicas[0], 0, &[(1_200_000, 1_260_000)]);
    let snapshot = Snapshot { viable: replicas[1..].to_vec(), ..serving(&replicas) };
    let plan = cache.plan(&query, &snapshot);
    assert_eq!(plan.missing, [(1_000_000, 1_600_000)]);
}

#[test]
fn steps_that_read_data_the_replicas_no_longer_hold_are_not_served() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let snapshot = serving(&replicas);
    scanned(&replicas[0], 500 * SECOND, &[]);
    let query = range(&cache, "rate(x[2m])", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    let plan = cache.plan(&query, &snapshot);
    assert_eq!(plan.oldest, Some(500 * SECOND));
    cache.store(&query, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas), plan.oldest);
    assert!(cache.plan(&query, &snapshot).hit(), "as held when kept");
    // Retention moves the oldest data to 1,000 s: a step reads two minutes back.
    scanned(&replicas[0], 1000 * SECOND, &[]);
    let plan = cache.plan(&query, &snapshot);
    assert_eq!(plan.missing, [(1_000_000, 1_060_000)]);
    assert_eq!(plan.cached[0].1, (1_120_000, 1_600_000));
}

#[test]
fn queries_the_cache_cannot_keep_are_left_alone() {
    let cache = cache();
    let none = HeaderMap::new();
    assert!(range(&cache, "up", 1000, 1600, 0, &none).is_none(), "step 0");
    assert!(range(&cache, "up", 1600, 1000, 60, &none).is_none(), "start after end");
    assert!(range(&cache, "up", 0, 3_153_600_000, 1, &none).is_none(), "over 11,000 steps");
    assert!(range(&cache, "up%20%40%20start()", 1000, 1600, 60, &none).is_none(), "@ start()");
    assert!(range(&cache, "sum(", 1000, 1600, 60, &none).is_none(), "not PromQL");
    let instant = |time: &str| {
        let query_string = format!("query=up&time={time}");
        cache.query(Endpoint::Query, "/api/v1/query", Some(&query_string), None, &none, || 10_000 * SECOND)
    };
    assert!(instant("9999").is_none(), "within the fresh window");
    assert!(instant("9000").is_some());
    let now = cache.query(Endpoint::Query, "/api/v1/query", Some("query=up"), None, &none, || 10_000 * SECOND);
    assert!(now.is_none(), "no time: now");
}

#[test]
fn no_cache_asks_again_and_fresh_steps_are_not_kept() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let snapshot = serving(&replicas);
    let query = range(&cache, "up", 9000, 9998, 1, &HeaderMap::new()).unwrap();
    // Now is 10,000 s and the fresh window 5 s: up to 9,995 s.
    assert_eq!(cache.keepable_until(&query, 10_000 * SECOND, None), Some(9_995 * SECOND));
    // A replica that had ingested only up to 9,990 s when last probed: up to there.
    assert_eq!(cache.keepable_until(&query, 10_000 * SECOND, Some(9_990 * SECOND)), Some(9_990 * SECOND));
    cache.store(&query, 9_995 * SECOND, answer(9000..=9995), urls(&replicas), None);
    let mut fresh = HeaderMap::new();
    fresh.insert(http::header::CACHE_CONTROL, "no-cache".parse().unwrap());
    let asked = range(&cache, "up", 9000, 9998, 1, &fresh).unwrap();
    assert!(asked.refresh);
    assert_eq!(cache.plan(&asked, &snapshot).missing, [(9_000_000, 9_998_000)]);
    assert_eq!(cache.plan(&query, &snapshot).missing, [(9_996_000, 9_998_000)]);
}

#[test]
fn an_answer_over_a_tenth_of_the_budget_is_not_kept() {
    let cache = Cache::new(30_000, 0, CacheMetrics::default());
    let replicas = replicas(&["http://a:9090"]);
    let query = range(&cache, "up", 1000, 1600, 1, &HeaderMap::new()).unwrap();
    cache.store(&query, 1_600_000, answer(1000..=1600), urls(&replicas), None);
    assert_eq!(cache.summary(1).entries, 0);
    cache.store(&query, 1_010_000, answer(1000..=1010), urls(&replicas), None);
    assert_eq!(cache.summary(1).entries, 1);
}

#[test]
fn what_the_key_cannot_tell_apart_is_not_kept() {
    let cache = cache();
    let none = HeaderMap::new();
    for expr in ["x%20%40%20END%20(%20)", "x%20%40%20start%20()", "sum(x%20%40%20end())"] {
        assert!(range(&cache, expr, 1000, 1600, 60, &none).is_none(), "{expr}");
    }
    // Hostile times: no overflow, nothing kept.
    let huge = "query=up&start=-1e300&end=1e300&step=60";
    assert!(cache.query(Endpoint::QueryRange, "/api/v1/query_range", Some(huge), None, &none, || 0).is_none());
    // `@` a time within the fresh window (now is 10,000 s): not kept; long before: kept.
    assert!(range(&cache, "x%20%40%209998", 1000, 1600, 60, &none).is_none());
    let fixed = range(&cache, "x%20%40%205000", 1000, 1600, 60, &none).unwrap();
    assert_eq!(fixed.fixed.len(), 1);
}

#[test]
fn who_asks_is_part_of_the_key_but_the_affinity_cookie_is_not() {
    let cache = cache();
    let plain = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    let with = |name: &'static str, value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        range(&cache, "up", 1000, 1600, 60, &headers).unwrap().key
    };
    assert_ne!(with("x-scope-orgid", "tenant-a"), plain.key);
    assert_ne!(with("x-scope-orgid", "tenant-a"), with("x-scope-orgid", "tenant-b"));
    assert_ne!(with("cookie", "session=1"), plain.key);
    assert_eq!(with("cookie", "MPP.Route=abc"), plain.key);
    assert_eq!(with("cookie", "a=1; MPP.Route=abc; b=2"), with("cookie", "b=2; a=1"));
}

#[test]
fn an_answer_asked_for_before_the_cache_was_emptied_is_not_kept() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let query = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    cache.clear();
    cache.store(&query, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas), None);
    assert_eq!(cache.summary(1).entries, 0);
}

#[test]
fn what_a_plan_keeps_of_an_entry_read_before_an_emptying_is_not_put_back_after_it() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let query = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    cache.store(&query, 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas), None);
    // The plan read the entry, and a delete emptied the cache before it put back the extents it
    // kept (say one of two had a hole found in it).
    let entry = cache.entries.get(&query.key).expect("kept");
    cache.clear();
    cache.replace(&query, &entry, entry.extents.clone());
    assert_eq!(cache.summary(1).entries, 0);
}

#[test]
fn a_kept_answer_is_held_apart_from_the_buffer_it_came_in() {
    let cache = cache();
    let replicas = replicas(&["http://a:9090"]);
    let snapshot = Snapshot { viable: replicas.clone(), ..Snapshot::empty() };
    let query = range(&cache, "up", 1000, 1600, 60, &HeaderMap::new()).unwrap();
    // The answer as a slice of a buffer ten times its size (read or stitched into one sized
    // for more): keeping the slice would keep the whole buffer.
    let body = answer((1000..=1600).step_by(60));
    let mut buffer = Vec::with_capacity(body.len() * 10);
    buffer.extend_from_slice(&body);
    buffer.resize(body.len() * 10, b' ');
    let buffer = Bytes::from(buffer);
    cache.store(&query, 1_600_000, buffer.slice(..body.len()), urls(&replicas), None);
    let plan = cache.plan(&query, &snapshot);
    let held = &plan.cached[0].0.body;
    assert_eq!(held, &body);
    let inside = buffer.as_ptr_range();
    assert!(!inside.contains(&held.as_ptr()), "the kept answer shares the big buffer");
}

#[test]
fn what_every_viable_replica_holds_is_the_least_of_their_newest_samples() {
    let replicas = replicas(&["http://a:9090", "http://b:9090", "http://c:9090"]);
    let candidate = |replica: &Arc<crate::registry::Replica>, newest: Option<f64>| crate::selection::CandidateState {
        replica: replica.clone(),
        probe: crate::probe::Probe { head_max_time: newest, ..Default::default() },
        selected: true,
        data: Default::default(),
    };
    // C is not viable: what it lacks does not count.
    let mut snapshot = Snapshot {
        candidates: vec![
            candidate(&replicas[0], Some(100.0)),
            candidate(&replicas[1], Some(90.5)),
            candidate(&replicas[2], Some(10.0)),
        ],
        viable: replicas[..2].to_vec(),
        ..Snapshot::empty()
    };
    assert_eq!(newest_held(&snapshot), Some(90_500));
    // A viable replica that did not say: nothing is known.
    snapshot.candidates[1].probe.head_max_time = None;
    assert_eq!(newest_held(&snapshot), None);
}

#[test]
fn over_its_budget_the_cache_evicts_the_least_recently_used_and_holds_no_more() {
    const BUDGET: u64 = 64 * 1024;
    let cache = Cache::new(BUDGET, 5 * SECOND, CacheMetrics::default());
    let replicas = replicas(&["http://a:9090"]);
    let snapshot = Snapshot { viable: replicas.clone(), ..Snapshot::empty() };
    let query = |n: usize| range(&cache, &format!("up%7Bn%3D%22{n}%22%7D"), 1000, 1600, 60, &HeaderMap::new()).unwrap();
    for n in 0..200 {
        cache.store(&query(n), 1_600_000, answer((1000..=1600).step_by(60)), urls(&replicas), None);
        // The first query is used all along: the most recently used is kept.
        assert!(cache.plan(&query(0), &snapshot).hit(), "query 0 evicted after {n}");
        let held = cache.summary(0).bytes;
        assert!(held <= BUDGET, "{held} bytes held after {n} queries");
    }
    assert!(!cache.plan(&query(1), &snapshot).hit(), "the least recently used are gone");
    assert!(cache.plan(&query(199), &snapshot).hit(), "the last one is held");
    assert!(cache.summary(0).entries < 200);
}
