//! Fuzz target: the hint reader must never panic and never return a TTL above the cap.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let cap = Duration::from_secs(60);
    // Arbitrary text, and the same text as the body of a hint comment.
    let direct = strata_normalizer::read_hints(text, cap);
    let body = text.replace("*/", "").replace('\0', "");
    let wrapped = strata_normalizer::read_hints(&format!("SELECT 1 /* strata: {body} */"), cap);
    for h in [direct, wrapped] {
        if let Some(ttl) = h.ttl() {
            assert!(ttl <= cap && !ttl.is_zero());
        }
        assert!(h.ignored().len() <= 16);
        assert!(h.tables().len() <= 64);
    }
});
