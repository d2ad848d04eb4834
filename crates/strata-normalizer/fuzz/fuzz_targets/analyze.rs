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
            assert!(!a.leaves_session_alone());
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
        // The same text with other digits may be answered by the shape memo (the second call
        // recorded the shape): it must equal a full analysis.
        if let Ok(text) = std::str::from_utf8(data) {
            let variant: String = text
                .chars()
                .map(|c| if c.is_ascii_digit() { char::from(b'0' + (c as u8 - b'0' + 3) % 10) } else { c })
                .collect();
            let fast = n.analyze(&variant);
            let full = strata_normalizer::analyze(&variant);
            assert_eq!(fast.identity(), full.identity());
            assert_eq!(fast.key_bytes(), full.key_bytes());
            assert_eq!(fast.cacheability(), full.cacheability());
            assert_eq!(fast.writes(), full.writes());
            assert_eq!(fast.reads(), full.reads());
            assert_eq!(fast.hints(), full.hints());
            assert!(fast.session_effects().eq(full.session_effects()));
            let params = |a: &strata_normalizer::Analysis| {
                a.params().map(|p| (p.type_oid(), p.form(), p.text().to_owned())).collect::<Vec<_>>()
            };
            assert_eq!(params(&fast), params(&full));
            let ranges = |a: &strata_normalizer::Analysis| {
                a.statements().iter().map(|s| s.range()).collect::<Vec<_>>()
            };
            assert_eq!(ranges(&fast), ranges(&full));
        }
    });
});
