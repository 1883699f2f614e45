//! A replica's `/metrics` answer: the exposition parser never panics, and an error names a
//! line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match mpp::fuzzing::exposition::parse(text) {
        Ok(samples) => {
            let _ = mpp::fuzzing::exposition::sum(&samples, mpp::fuzzing::SAMPLES_METRIC);
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count()),
    }
});
