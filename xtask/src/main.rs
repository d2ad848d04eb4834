//! Strata's project automation: `cargo xtask test | ci | bench | services | proxy`.
//!
//! Everything a fresh Debian/Ubuntu machine needs (libclang for pg_query, redis-server, the
//! PostgreSQL server binaries) is installed here when missing, so the README's commands are the
//! whole set-up.

mod bench;
mod e2e;
mod models;
mod prereq;
mod services;
#[cfg(test)]
mod tidy;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  test [ARGS...]   provision throwaway redis-server and PostgreSQL on free ports, export
                   STRATA_TEST_* variables, run `cargo test --workspace ARGS...`, stop the servers
  ci               what CI runs: fmt check, clippy -D warnings, cargo deny, docs -D warnings, tests
  bench [ARGS...]  run every crate's criterion benches against provisioned servers and print a summary
  bench e2e [OPTS] strata-proxy against direct PostgreSQL, PgBouncer and pgpool-II with pgbench;
                   writes BENCHMARKS.md and BENCHMARKS.png (--duration SECS, --warm-up SECS,
                   --targets direct,pgbouncer,pgpool,strata-relay,strata,strata-redis, --out FILE,
                   --workload select-only,heavy-read,heavy-mixed,zipf,miss; see bench e2e --help)
  bench wal        commit made directly on PostgreSQL to a miss through a streaming proxy at 100 and
                   1,000 direct commits/s, and pgbench -N throughput with the stream on and off
  bench tls        pgbench -S through strata-proxy with TLS on the client or upstream leg against
                   plain TCP, and a Unix-socket upstream against TCP, in one run
  bench pool       transaction pooling: strata-proxy (relay and cache) against PgBouncer's transaction
                   mode and direct PostgreSQL, pgbench -S and zipfian reads at 100 and 1,000 clients
  bench semantic   embedding one question with all-MiniLM-L6-v2 and with n-grams, and an answer from
                   the semantic tier through strata-proxy end to end, with each embedder
  services         start the throwaway servers, print their variables, and wait for Ctrl-C
  proxy [ARGS...]  install prerequisites and run strata-proxy (release build) with ARGS";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let interrupted = services::install_interrupt_handler()?;
    match command.as_str() {
        "test" => test(&rest, &interrupted),
        "ci" => ci(&interrupted),
        "bench" if rest.first().is_some_and(|a| a == "e2e") => e2e::run(&rest[1..], &interrupted),
        "bench" if rest.first().is_some_and(|a| a == "wal") => e2e::wal::run(&rest[1..], &interrupted),
        "bench" if rest.first().is_some_and(|a| a == "tls") => e2e::tls::run(&rest[1..], &interrupted),
        "bench" if rest.first().is_some_and(|a| a == "pool") => e2e::pool::run(&rest[1..], &interrupted),
        "bench" if rest.first().is_some_and(|a| a == "semantic") => {
            e2e::semantic::run(&rest[1..], &interrupted)
        }
        "bench" => bench::run(&rest, &interrupted),
        "services" => services::hold(&interrupted),
        "proxy" => proxy(&rest, &interrupted),
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(workspace_root());
    cmd
}

fn test(args: &[String], interrupted: &services::Interrupted) -> Result<ExitCode> {
    let tools = prereq::ensure_all()?;
    let running = services::Services::start(&tools)?;
    let mut cmd = cargo();
    cmd.arg("test");
    // The whole workspace unless the caller named packages (`cargo xtask test -p strata-l1`).
    if !args.iter().any(|a| a == "-p" || a.starts_with("--package")) {
        cmd.arg("--workspace");
    }
    cmd.args(args);
    running.export_to(&mut cmd);
    // strata-l3's and the proxy's model tests (built with `minilm` by their own dev-dependency).
    cmd.env("STRATA_TEST_MINILM_DIR", models::ensure_minilm()?);
    // The proxy's psycopg tests.
    let (python, psycopg) = prereq::ensure_psycopg()?;
    cmd.env("STRATA_TEST_PYTHON", python).env("STRATA_TEST_PYTHONPATH", psycopg);
    println!("xtask: running {:?}", cmd.get_args().collect::<Vec<_>>());
    let status = services::run_interruptibly(cmd, interrupted)?;
    drop(running);
    Ok(exit_code(status))
}

fn ci(interrupted: &services::Interrupted) -> Result<ExitCode> {
    let steps: [(&str, &[&str]); 4] = [
        ("fmt", &["fmt", "--all", "--", "--check"]),
        ("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
        // The plot binary of `bench e2e` is only built with its feature.
        (
            "clippy (xtask plot)",
            &["clippy", "--package", "xtask", "--features", "plot", "--bin", "plot", "--", "-D", "warnings"],
        ),
        ("doc", &["doc", "--workspace", "--no-deps"]),
    ];
    prereq::ensure_all()?;
    for (name, args) in steps {
        println!("xtask ci: {name}");
        let mut cmd = cargo();
        cmd.args(args).env("RUSTDOCFLAGS", "-D warnings");
        let status = services::run_interruptibly(cmd, interrupted)?;
        if !status.success() {
            bail!("`cargo {}` failed", args.join(" "));
        }
    }
    println!("xtask ci: deny");
    prereq::ensure_cargo_deny()?;
    let status = services::run_interruptibly(
        {
            let mut cmd = cargo();
            cmd.args(["deny", "check", "licenses", "bans", "sources"]);
            cmd
        },
        interrupted,
    )?;
    if !status.success() {
        bail!("`cargo deny check licenses bans sources` failed");
    }
    println!("xtask ci: test");
    test(&[], interrupted)
}

fn proxy(args: &[String], interrupted: &services::Interrupted) -> Result<ExitCode> {
    prereq::ensure_build_tools()?;
    let mut cmd = cargo();
    // With the local sentence-embedding model, so that `--semantic-model DIR` works.
    cmd.args(["run", "--release", "--package", "strata-proxy", "--features", "minilm", "--"]).args(args);
    let status = services::run_interruptibly(cmd, interrupted).context("running strata-proxy")?;
    Ok(exit_code(status))
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
