//! The web config file (`--web.config.file`), as an operator or a template writes it. Never
//! panics; an error always names the file, and a valid config never holds a header that
//! exporter-toolkit would not allow.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new("/etc/mpp/web.yml");
    match mpp::fuzzing::WebConfig::parse(file, text) {
        Ok(config) => {
            for (name, _) in &config.headers {
                assert!(
                    ["strict-transport-security", "x-content-type-options", "x-frame-options", "x-xss-protection", "content-security-policy"]
                        .contains(&name.as_str())
                );
            }
        }
        Err(error) => assert!(error.to_string().starts_with("web config file /etc/mpp/web.yml")),
    }
});
