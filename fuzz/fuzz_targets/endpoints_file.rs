//! The endpoints file: never panics; every backend it yields re-parses to itself and builds
//! request URLs; a DNS name keeps its line as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::{Backend, Line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (endpoints, problems) = mpp::fuzzing::parse_endpoints(text);
    for endpoint in &endpoints {
        let backend = match endpoint {
            Line::Url(backend) => backend,
            Line::Dns(name) => {
                assert!(text.contains(name.text()));
                continue;
            }
        };
        let again = Backend::parse(backend.url()).expect("a normalized URL parses again");
        assert_eq!(again.url(), backend.url());
        assert_eq!(again.id(), backend.id());
        backend.uri(&http::uri::PathAndQuery::from_static("/api/v1/query?query=up")).expect("request URL");
    }
    for (line, _) in problems {
        assert!(line >= 1 && line <= text.lines().count());
    }
});
