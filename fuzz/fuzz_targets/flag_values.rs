//! Flag values: the strategy, durations, sizes and affinity options never panic, and what
//! parses prints back to something that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::AffinityOptions;
use mpp::fuzzing::Strategy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(strategy) = text.parse::<Strategy>() {
        assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
    }
    let _ = mpp::fuzzing::parse_duration(text);
    if let Ok(size) = mpp::fuzzing::parse_size(text) {
        assert!(size > 0);
    }
    if let Ok(options) = text.parse::<AffinityOptions>() {
        assert_eq!(options.to_string().parse::<AffinityOptions>(), Ok(options));
    }
});
