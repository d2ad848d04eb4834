//! Fuzz target: `analyze` must never panic, and its verdicts must stay consistent, for any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_normalizer::{Normalizer, NormalizerConfig, StatementKind, WriteEffect};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static NORMALIZER: Normalizer =
            Normalizer::new(NormalizerConfig::builder().with_memo_capacity(64).build().unwrap());
    }
    NORMALIZER.with(|n| {
        let a = n.analyze_bytes(data);
        if a.is_parse_error() {
            assert_eq!(a.writes(), &WriteEffect::Unknown);
            assert!(a.statements().is_empty());
        }
        if a.cacheability().is_cacheable() {
            assert!(!a.statements().is_empty());
            for s in a.statements() {
                assert_eq!(s.kind(), StatementKind::Select);
                assert_eq!(s.writes(), &WriteEffect::Nothing);
            }
        }
        for s in a.statements() {
            let _ = s.normalized();
            assert!(s.key_bytes().len() >= 16);
        }
        // A second call answers from the memo with the same analysis.
        let b = n.analyze_bytes(data);
        assert_eq!(a.identity(), b.identity());
    });
});
