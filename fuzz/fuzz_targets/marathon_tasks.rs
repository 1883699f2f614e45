//! Marathon's task list and a DC/OS principal secret: never panic; every candidate is an
//! http URL that parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(backends) = mpp::fuzzing::candidates_from_tasks(data) {
        for b in backends {
            assert!(b.url().starts_with("http://"));
            mpp::fuzzing::Backend::parse(b.url()).expect("a candidate URL parses again");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if text.trim_start().starts_with('{') {
            let _ = mpp::fuzzing::PrincipalSecret::parse(text);
        }
    }
});
