//! What a request reads (`window::read_window`): its path, query string and form body, as
//! any client may send them. Never panics; a window it finds is a window (start before end),
//! ends by `now`, and an instant query's window holds its evaluation time unless it reads
//! nothing. A range query's steps: each step's windows end by `now` and lie within the whole
//! query's window, the span arithmetic of a replica's coverage over them never overflows, and
//! pinning `@ start()`/`@ end()` never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 7] = [
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/label/job/values",
    "/api/v1/query_exemplars",
    "/prefix/api/v1/query",
];
const NOW: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let path = PATHS[usize::from(which) % PATHS.len()];
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (query, form) = rest.split_at(split);
    let Ok(query) = std::str::from_utf8(query) else { return };
    let form = form.get(1..).filter(|f| !f.is_empty());
    let mpp::fuzzing::Api::Read(endpoint) = mpp::fuzzing::Api::of(path) else { panic!("{path} is routed by window") };
    if let Ok(Some(read)) = mpp::fuzzing::read_window(endpoint, Some(query), form, NOW, 300_000, i64::MIN / 4) {
        let window = read.window;
        assert!(window.is_empty() || window.end <= NOW, "{window:?} ends after now");
        if let (Some(at), false) = (read.eval_time, window.is_empty()) {
            assert!(window.start <= at.min(NOW), "{window:?} starts after its evaluation time {at}");
        }
        if let Some(steps) = &read.steps {
            let mut coverage = mpp::fuzzing::Coverage::default();
            coverage.scanned(mpp::fuzzing::Span::new(i64::MIN, i64::MAX), &[mpp::fuzzing::Span::new(-5, 5)]);
            coverage.open_from = Some(NOW - 1);
            let count = steps.count();
            for index in [0, count / 2, count.saturating_sub(1)] {
                for step in steps.windows_at(steps.time(index)) {
                    assert!(step.end <= NOW && step.start <= step.end, "{step:?} at step {index}");
                    assert!(window.start <= step.start && step.end <= window.end, "{step:?} outside {window:?}");
                    let _ = coverage.covers(step.start, step.end);
                    assert!(coverage.missing(step.start, step.end) >= 0);
                }
            }
            let _ = mpp::fuzzing::pin_start_end(query, steps.start, steps.end);
        }
    }
});
