//! Every statement of the PostgreSQL regression corpus is analyzed without a panic; the summary
//! (statements, verdicts, kinds, write effects, parse errors) is snapshotted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use expect_test::expect_file;
use strata_normalizer::{Cacheability, Normalizer, NormalizerConfig, NotCacheable, WriteEffect};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/postgres_regress")
}

/// Turns a psql script into SQL: drops backslash meta-command lines and the data lines of
/// `COPY ... FROM stdin` (the statement may span lines) up to the `\.` terminator.
fn sql_of_psql_script(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    let mut in_copy_data = false;
    let mut statement = String::new();
    for line in script.lines() {
        if in_copy_data {
            if line == "\\." {
                in_copy_data = false;
            }
            continue;
        }
        if line.starts_with('\\') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("--") {
            continue;
        }
        statement.push_str(&line.to_ascii_lowercase());
        statement.push(' ');
        if line.trim_end().ends_with(';') {
            let s = statement.trim_start();
            if s.starts_with("copy") && s.contains("stdin") && !s.contains(" to stdin") {
                in_copy_data = true;
            }
            statement.clear();
        }
    }
    out
}

/// Statements of a script: PostgreSQL's scanner splits them; when it rejects the whole file
/// (a deliberately malformed literal somewhere), fall back to lines ending in `;`.
fn statements_of(sql: &str) -> (Vec<&str>, bool) {
    match pg_query::split_with_scanner(sql) {
        Ok(parts) => (parts, false),
        Err(_) => (sql.split(";\n").collect(), true),
    }
}

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
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!("the regression corpus is missing at {} ({e}); run `cargo xtask test`", dir.display())
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() > 100, "only {} corpus files", files.len());

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
