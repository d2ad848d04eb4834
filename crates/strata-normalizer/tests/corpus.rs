//! Every statement of the PostgreSQL regression corpus is analyzed without a panic; the summary
//! (statements, verdicts, kinds, write effects, parse errors) is snapshotted, and so is the
//! summary of session effects, after checking them against the rest of each analysis.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use expect_test::expect_file;
use strata_normalizer::{
    Cacheability, Normalizer, NormalizerConfig, NotCacheable, SessionEffect, StatementKind, WriteEffect,
};

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

/// A label for the corpus summary: the effect without the names that vary.
fn label(e: &SessionEffect) -> String {
    match e {
        SessionEffect::Set { .. } => "Set".to_owned(),
        SessionEffect::SetLocal { .. } => "SetLocal".to_owned(),
        SessionEffect::Reset { .. } => "Reset".to_owned(),
        SessionEffect::Prepare(_) => "Prepare".to_owned(),
        SessionEffect::Deallocate(Some(_)) => "Deallocate(name)".to_owned(),
        SessionEffect::ServerCode(why) if why.starts_with("function ") => "ServerCode(function)".to_owned(),
        SessionEffect::ServerCode(why) if why.starts_with("CALL") => "ServerCode(CALL)".to_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn regression_corpus_effects_are_consistent_with_the_rest_of_the_analysis() {
    let normalizer = Normalizer::new(
        NormalizerConfig::builder().with_memo_capacity(0).build().unwrap_or_else(|e| panic!("{e}")),
    );
    let mut texts = 0usize;
    let mut alone = 0usize;
    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong: Vec<String> = Vec::new();
    for file in corpus_files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let sql = sql_of_psql_script(&String::from_utf8_lossy(&bytes));
        for part in statements_of(&sql).0 {
            if part.trim().is_empty() {
                continue;
            }
            texts += 1;
            let a = normalizer.analyze(part);
            if a.leaves_session_alone() {
                alone += 1;
            }
            if a.is_parse_error() && a.leaves_session_alone() {
                wrong.push(format!("parse error counted as neutral: {part}"));
            }
            for s in a.statements() {
                let effects = s.session_effects();
                for e in effects {
                    *labels.entry(label(e)).or_default() += 1;
                }
                let has = |f: &dyn Fn(&SessionEffect) -> bool| effects.iter().any(f);
                // The effects are a set.
                if effects.iter().enumerate().any(|(i, e)| effects[..i].contains(e)) {
                    wrong.push(format!("duplicate effects {effects:?}: {part}"));
                }
                // Every `SET`/`RESET`/`DISCARD` changes the session.
                if s.kind() == StatementKind::Session && effects.is_empty() {
                    wrong.push(format!("session statement without effect: {part}"));
                }
                // A call the walk met is reported: set_config as such, a schema other than
                // pg_catalog as server code.
                for f in s.functions() {
                    let set_config = &**f == "set_config" || &**f == "pg_catalog.set_config";
                    let foreign = f.contains('.') && !f.starts_with("pg_catalog.");
                    if (set_config && !has(&|e| *e == SessionEffect::SetConfig))
                        || (foreign && !has(&|e| matches!(e, SessionEffect::ServerCode(_))))
                    {
                        wrong.push(format!("call of {f} not reported: {part}"));
                    }
                }
                // A construct the walk does not know may run anything.
                if matches!(s.cacheability().reason(), Some(NotCacheable::Unsupported(_)))
                    && !has(&|e| matches!(e, SessionEffect::ServerCode(_)))
                {
                    wrong.push(format!("unsupported construct without server code: {part}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} inconsistencies:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let mut out = String::new();
    let _ = writeln!(out, "texts: {texts}");
    let _ = writeln!(out, "texts that leave the session alone: {alone}");
    let _ = writeln!(out, "\nstatements with each effect:");
    for (k, v) in &labels {
        let _ = writeln!(out, "  {k}: {v}");
    }
    expect_file!["snapshots/postgres_regress_session_effects.txt"].assert_eq(&out);
}

/// Every cacheable statement of the corpus gets a semantic form or none without a panic, and a
/// form does not depend on how the statement is written: the statement's own deparsed text has
/// the same form.
#[test]
fn regression_corpus_semantic_forms_are_stable() {
    let normalizer = Normalizer::new(NormalizerConfig::builder().with_memo_capacity(0).build().unwrap());
    let (mut cacheable, mut with_form, mut unstable) = (0usize, 0usize, Vec::new());
    for file in corpus_files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let sql = sql_of_psql_script(&String::from_utf8_lossy(&bytes));
        for part in statements_of(&sql).0 {
            if !normalizer.analyze(part).cacheability().is_cacheable() {
                continue;
            }
            cacheable += 1;
            let Some(form) = strata_normalizer::semantic_form(part) else { continue };
            with_form += 1;
            let rewritten = pg_query::parse(part, 0)
                .ok()
                .and_then(|p| p.deparse(pg_query::DeparseOptions::default()).ok());
            if let Some(rewritten) = rewritten {
                if strata_normalizer::semantic_form(&rewritten).as_ref() != Some(&form) {
                    unstable.push(part.trim().to_owned());
                }
            }
        }
    }
    eprintln!("cacheable statements: {cacheable}, with a semantic form: {with_form}");
    assert!(with_form * 10 >= cacheable * 9, "{with_form} of {cacheable} cacheable statements have a form");
    assert!(
        unstable.is_empty(),
        "{} forms change when the statement is deparsed:\n{}",
        unstable.len(),
        unstable.join("\n")
    );
}
