//! The analysis size limit: a text longer than `max_analyzed_bytes` is refused unparsed, with a
//! verdict that is safe for every caller (not cacheable, invalidates everything, may change the
//! session); a text of exactly the limit is analyzed as usual; the memos never take such a text.

use std::sync::Arc;

use strata_normalizer::{
    analyze, Analysis, ErrorKind, Normalizer, NormalizerConfig, NotCacheable, SessionEffect, WriteEffect,
};

/// The default limit, 256 KiB.
const DEFAULT_LIMIT: usize = 256 * 1024;

/// An `INSERT ... VALUES` of about `bytes` bytes, like the bulk loads that reach the limit.
fn bulk_values(bytes: usize) -> String {
    let mut sql = String::with_capacity(bytes + 64);
    sql.push_str("INSERT INTO t (a, b) VALUES (0, 'x')");
    let mut i = 1u64;
    while sql.len() < bytes {
        sql.push_str(&format!(", ({i}, 'x{i}')"));
        i += 1;
    }
    sql
}

/// `SELECT * FROM t WHERE a IN (...)` padded with blanks to exactly `bytes` bytes.
fn in_list_of_exactly(bytes: usize) -> String {
    let mut sql = String::from("SELECT * FROM t WHERE a IN (0");
    let mut i = 1u64;
    while sql.len() + 12 < bytes {
        sql.push_str(&format!(",{i}"));
        i += 1;
    }
    sql.push(')');
    while sql.len() < bytes {
        sql.push(' ');
    }
    assert_eq!(sql.len(), bytes);
    sql
}

fn assert_refused(a: &Analysis, bytes: usize, limit: usize) {
    assert_eq!(a.cacheability().reason(), Some(&NotCacheable::TooLarge { bytes, limit }));
    assert_eq!(
        a.cacheability().to_string(),
        format!("not cacheable: text of {bytes} bytes exceeds the analysis limit of {limit} bytes")
    );
    assert!(!a.is_parse_error(), "a refused text is not a parse error");
    assert_eq!(a.writes(), &WriteEffect::Unknown);
    let effects: Vec<&SessionEffect> = a.session_effects().collect();
    assert_eq!(effects, [&SessionEffect::ServerCode(Arc::from("text too large to analyze"))]);
    assert!(!a.leaves_session_alone());
    assert!(a.statements().is_empty());
    assert_eq!(a.kind(), None);
    assert!(a.reads().is_empty());
    assert_eq!(a.params().count(), 0);
    assert!(a.hints().is_empty());
}

#[test]
fn a_megabyte_and_a_twenty_megabyte_statement_are_refused_unparsed() {
    let n = Normalizer::default();
    for size in [1 << 20, 20 << 20] {
        let sql = bulk_values(size);
        assert_refused(&n.analyze(&sql), sql.len(), DEFAULT_LIMIT);
        assert_refused(&n.analyze_bytes(sql.as_bytes()), sql.len(), DEFAULT_LIMIT);
        assert_refused(&analyze(&sql), sql.len(), DEFAULT_LIMIT);
    }
    // Over the limit, bytes are refused before they are read as UTF-8.
    let mut bytes = bulk_values(1 << 20).into_bytes();
    bytes.push(0xff);
    assert_refused(&n.analyze_bytes(&bytes), bytes.len(), DEFAULT_LIMIT);
    // Two different refused texts keep different identities, as texts that did not parse do.
    assert_ne!(n.analyze(&bulk_values(1 << 20)).identity(), n.analyze(&bulk_values(2 << 20)).identity());
}

#[test]
fn a_text_of_exactly_the_limit_is_analyzed_and_one_byte_more_is_not() {
    let at = in_list_of_exactly(DEFAULT_LIMIT);
    for a in [Normalizer::default().analyze(&at), Arc::new(analyze(&at))] {
        assert!(a.cacheability().is_cacheable(), "{:?}", a.cacheability());
        assert_eq!(a.reads()[0].as_str(), "t");
        assert_eq!(a.statements()[0].normalized(), "select * from t where a in ($1 /*, ... */)");
        assert!(a.leaves_session_alone());
    }
    let over = format!("{at} ");
    assert_refused(&Normalizer::default().analyze(&over), DEFAULT_LIMIT + 1, DEFAULT_LIMIT);

    // A configured limit works the same way.
    let config = NormalizerConfig::builder().with_max_analyzed_bytes(4096).build().unwrap();
    assert_eq!(config.max_analyzed_bytes(), 4096);
    let n = Normalizer::new(config);
    assert!(n.analyze(&in_list_of_exactly(4096)).cacheability().is_cacheable());
    assert_refused(&n.analyze(&in_list_of_exactly(4097)), 4097, 4096);
}

#[test]
fn the_memos_never_take_a_text_over_the_limit() {
    // Memos that would take texts of this size, and a limit below it.
    let config = NormalizerConfig::builder()
        .with_max_analyzed_bytes(4096)
        .with_memo_max_text_bytes(1 << 20)
        .build()
        .unwrap();
    let n = Normalizer::new(config);
    // The same query with other literals: under the limit its shape is recorded the second time
    // and answered from the shape memo the third.
    let small = |i: u32| format!("SELECT * FROM t WHERE a = {i} AND b = 'x{i}'");
    for i in 0..3 {
        assert!(n.analyze(&small(i)).cacheability().is_cacheable());
    }
    assert_eq!((n.memo_len(), n.shape_memo_len(), n.shape_hits()), (3, 1, 1));
    // Over the limit: neither memo nor the shape lexer sees the text.
    let large = |i: u32| format!("{} {}", small(i), " ".repeat(8192));
    for i in 0..4 {
        let text = large(i);
        assert_refused(&n.analyze(&text), text.len(), 4096);
    }
    assert_eq!((n.memo_len(), n.shape_memo_len(), n.shape_hits()), (3, 1, 1));
}

#[test]
fn the_limit_has_a_default_and_a_floor() {
    assert_eq!(NormalizerConfig::default().max_analyzed_bytes(), DEFAULT_LIMIT);
    let e = NormalizerConfig::builder().with_max_analyzed_bytes(1023).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(e.to_string(), "config error: max analyzed bytes must be at least 1024, got 1023");
    assert!(NormalizerConfig::builder().with_max_analyzed_bytes(1024).build().is_ok());
}
