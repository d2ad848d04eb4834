//! Every statement of the PostgreSQL regression corpus is analyzed without a panic; the summary
//! (statements, verdicts, kinds, write effects, parse errors) is snapshotted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use expect_test::expect_file;
use strata_normalizer::{Cacheability, Normalizer, NormalizerConfig, NotCacheable, WriteEffect};

mod support;

use support::{corpus_files, sql_of_psql_script, statements_of};

fn reason_name(c: &Cacheability) -> &'static str {
    match c.reason() {
        None => "cacheable",
        Some(NotCacheable::ParseError(_)) => "parse error",
        Some(NotCacheable::Empty) => "empty",
        Some(NotCacheable::NotARead(_)) => "not a read",
        Some(NotCacheable::DataModifyingCte) => "data-modifying cte",
        Some(NotCacheable::SelectInto) => "select into",
        Some(NotCacheable::LockingClause) => "locking clause",
        Some(NotCacheable::VolatileFunction(_)) => "volatile function",
        Some(NotCacheable::UnknownFunction(_)) => "unknown function",
        Some(NotCacheable::SqlValueFunction(_)) => "sql value function",
        Some(NotCacheable::TimeLiteral(_)) => "time literal",
        Some(NotCacheable::SystemCatalog(_)) => "system catalog",
        Some(NotCacheable::TableSampleWithoutRepeatable) => "tablesample",
        Some(NotCacheable::TemporaryTable(_)) => "temporary table",
        Some(NotCacheable::Unsupported(_)) => "unsupported construct",
        Some(NotCacheable::HintCacheOff) => "hint cache=off",
        Some(_) => "other",
    }
}

#[test]
fn regression_corpus_analyzes_without_panic() {
    let files = corpus_files();
    let normalizer = Normalizer::new(NormalizerConfig::builder().with_memo_capacity(0).build().unwrap());
    let mut statements = 0usize;
    let mut split_failures = 0usize;
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut writes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        let script = String::from_utf8_lossy(&bytes);
        let sql = sql_of_psql_script(&script);
        let (parts, fallback) = statements_of(&sql);
        if fallback {
            split_failures += 1;
        }
        for part in parts {
            if part.trim().is_empty() {
                continue;
            }
            statements += 1;
            let a = normalizer.analyze(part);
            *verdicts.entry(reason_name(a.cacheability())).or_default() += 1;
            let kind = a.kind().map_or_else(|| "(parse error or several)".to_owned(), |k| k.to_string());
            *kinds.entry(kind).or_default() += 1;
            let w = match a.writes() {
                WriteEffect::Nothing => "nothing",
                WriteEffect::Tables(_) => "tables",
                WriteEffect::Unknown => "unknown",
            };
            *writes.entry(w).or_default() += 1;
            if let Some(NotCacheable::Unsupported(what)) = a.cacheability().reason() {
                *unsupported.entry(what.to_string()).or_default() += 1;
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "files: {}", files.len());
    let _ = writeln!(out, "files the scanner could not split (split on `;` lines instead): {split_failures}");
    let _ = writeln!(out, "statements: {statements}");
    let _ = writeln!(out, "\nverdicts:");
    for (k, v) in &verdicts {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out, "\nkinds:");
    for (k, v) in &kinds {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out, "\nwrite effects:");
    for (k, v) in &writes {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out, "\nunsupported constructs (statement is not cacheable):");
    for (k, v) in &unsupported {
        let _ = writeln!(out, "  {k}: {v}");
    }
    expect_file!["snapshots/postgres_regress_summary.txt"].assert_eq(&out);
}
