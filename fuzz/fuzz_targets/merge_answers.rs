//! Merging replicas' API answers (`merge::merge`, `merge::add_warning`): two bodies as any
//! replica may send them, for every endpoint. Never panics; what it produces is JSON (by the
//! grammar: a number too large for an f64, which a replica may send, passes through as sent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::{Endpoint, Part};

const ENDPOINTS: [Endpoint; 6] = [
    Endpoint::Query,
    Endpoint::QueryRange,
    Endpoint::Series,
    Endpoint::Labels,
    Endpoint::LabelValues,
    Endpoint::Exemplars,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let endpoint = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (primary, other) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let parts = [Part { body: other, replica: "b" }];
    if let Ok(merged) = mpp::fuzzing::merge(endpoint, Part { body: primary, replica: "a" }, &parts, Some("w")) {
        serde_json::from_slice::<Box<serde_json::value::RawValue>>(&merged.body).expect("a merge is JSON");
    }
    if let Ok(warned) = mpp::fuzzing::add_warning(primary, "w") {
        serde_json::from_slice::<Box<serde_json::value::RawValue>>(&warned).expect("a warned answer is JSON");
    }
});
