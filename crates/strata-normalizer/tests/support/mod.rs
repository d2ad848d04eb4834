//! Loading the PostgreSQL regression corpus (shared by the corpus tests).
#![allow(dead_code)]

use std::path::PathBuf;

pub(crate) fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/postgres_regress")
}

/// The corpus's `.sql` files, sorted; panics with what to run when the corpus is missing.
pub(crate) fn corpus_files() -> Vec<PathBuf> {
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
    files
}

/// Turns a psql script into SQL: drops backslash meta-command lines and the data lines of
/// `COPY ... FROM stdin` (the statement may span lines) up to the `\.` terminator.
pub(crate) fn sql_of_psql_script(script: &str) -> String {
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
pub(crate) fn statements_of(sql: &str) -> (Vec<&str>, bool) {
    match pg_query::split_with_scanner(sql) {
        Ok(parts) => (parts, false),
        Err(_) => (sql.split(";\n").collect(), true),
    }
}
