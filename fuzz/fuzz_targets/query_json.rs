//! A replica's answer to an instant query: never panics, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mpp::fuzzing::query_has_result(data);
});
