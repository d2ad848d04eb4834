//! Repository rules, checked by plain `cargo test`: module docs, the core's purity, crate boundaries,
//! and the harness itself (the provisioned servers answer).

use std::path::{Path, PathBuf};

use crate::workspace_root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && !name.starts_with("target-") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn manifest(crate_dir: &str) -> String {
    let path = workspace_root().join("crates").join(crate_dir).join("Cargo.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The dependency names listed in a `[section]` of a manifest.
fn dependency_names(manifest: &str, section: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().trim_end_matches(".workspace").to_owned());
            }
        }
    }
    names
}

fn crate_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(workspace_root().join("crates"))
        .expect("crates/ exists")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("xtask"), &mut files);
    assert!(files.len() > 10, "expected to find the workspace's sources, found {}", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files must start with a `//!` line saying what they are for: {missing:#?}"
    );
}

#[test]
fn strata_core_depends_on_no_io_crate() {
    let allowed = ["async-trait", "bytes", "thiserror", "xxhash-rust"];
    let deps = dependency_names(&manifest("strata-core"), "[dependencies]");
    assert!(!deps.is_empty(), "could not read strata-core's dependencies");
    let extra: Vec<&String> = deps.iter().filter(|d| !allowed.contains(&d.as_str())).collect();
    assert!(extra.is_empty(), "strata-core is the contract (no I/O, no runtime, no backend types); new dependencies {extra:?} need a deliberate change of this rule");

    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates/strata-core/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // Paths, not words: an error message may well say "redis connection refused".
        for banned in [
            "tokio::",
            "redis::",
            "pg_query::",
            "hnsw_rs::",
            "std::net",
            "std::fs",
            "std::process",
            "std::thread",
        ] {
            assert!(
                !text.contains(banned),
                "{} mentions `{banned}`: strata-core stays free of I/O and backends",
                file.display()
            );
        }
    }
}

#[test]
fn tier_crates_depend_on_the_core_and_never_on_each_other() {
    let tiers = ["strata-l1", "strata-l2", "strata-l3", "strata-normalizer"];
    for dir in crate_dirs().iter().filter(|d| tiers.contains(&d.as_str())) {
        let deps = dependency_names(&manifest(dir), "[dependencies]");
        let crossing: Vec<&String> = deps.iter().filter(|d| tiers.contains(&d.as_str())).collect();
        assert!(crossing.is_empty(), "{dir} depends on {crossing:?}: only the `strata` crate composes tiers");
    }
}

#[test]
fn every_crate_inherits_the_workspace_lints() {
    for dir in crate_dirs() {
        let text = manifest(&dir);
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "crates/{dir}/Cargo.toml needs `[lints] workspace = true`"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run exists");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md exists");
    assert!(ci.contains("cargo xtask test"), ".ci/run must run the README's test command");
    assert!(readme.contains("cargo xtask test"), "README.md must show the test command");
}

/// The harness test: the servers `cargo xtask test` provisions are real and answer.
#[test]
fn provisioned_redis_and_postgres_answer() {
    use std::io::{Read, Write};
    let hint = "run `cargo xtask test`, which starts throwaway redis-server and PostgreSQL instances";
    let redis_url = std::env::var("STRATA_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_URL is unset: {hint}"));
    let addr = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to redis at {addr}: {e}"));
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write PING");
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).expect("read PONG");
    assert_eq!(&reply, b"+PONG\r\n");

    let database_url = std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: {hint}"));
    let bindir = std::env::var("STRATA_TEST_PG_BINDIR")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PG_BINDIR is unset: {hint}"));
    let out = std::process::Command::new(Path::new(&bindir).join("psql"))
        .args([
            database_url.as_str(),
            "-XAtc",
            "SELECT current_setting('server_version_num')::int >= 150000, 6 * 7",
        ])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t|42");
}

/// The harness test for WAL invalidation: the provisioned PostgreSQL decodes its WAL logically,
/// has room for the slots and senders parallel tests open, and accepts replication connections.
#[test]
fn provisioned_postgres_streams_logical_replication() {
    let hint = "run `cargo xtask test`, which starts throwaway redis-server and PostgreSQL instances";
    let database_url = std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: {hint}"));
    let bindir = std::env::var("STRATA_TEST_PG_BINDIR")
        .unwrap_or_else(|_| panic!("STRATA_TEST_PG_BINDIR is unset: {hint}"));
    let psql = |url: &str, sql: &str| {
        let out = std::process::Command::new(Path::new(&bindir).join("psql"))
            .args([url, "-XAtc", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql `{sql}` failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let settings = psql(
        &database_url,
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int >= 20, \
         current_setting('max_wal_senders')::int >= 20",
    );
    assert_eq!(settings, "logical|t|t", "wal_level | enough slots | enough senders");

    // `all` in pg_hba.conf does not cover replication connections: this needs its own rule.
    let separator = if database_url.contains('?') { '&' } else { '?' };
    let replication_url = format!("{database_url}{separator}replication=database");
    let system = psql(&replication_url, "IDENTIFY_SYSTEM");
    let fields: Vec<&str> = system.split('|').collect();
    assert_eq!(fields.len(), 4, "IDENTIFY_SYSTEM answers systemid|timeline|xlogpos|dbname: {system}");
    assert_eq!(fields[3], "postgres", "a database replication connection names its database: {system}");
}
