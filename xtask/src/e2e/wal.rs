//! `cargo xtask bench wal`: how fast a commit made directly on PostgreSQL stops being served by a
//! proxy that follows the WAL, at a background load of 100 and 1,000 direct commits per second,
//! and what the stream costs the server's write throughput (pgbench's simple-update, straight to
//! PostgreSQL, with a streaming proxy attached and without, alternated in one run).
//!
//! The server runs with PostgreSQL's durability defaults (`fsync`, `synchronous_commit`), unlike
//! the test harness: how soon a commit is decoded depends on when its WAL is flushed.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::targets::{spawn, wait_for_postgres_protocol, Daemon};
use super::{pgbench_path, psql, RemoveOnDrop, DATABASE};
use crate::services::{self, free_port, Interrupted, Services};

const PG_CONF: &str = "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\nshared_buffers = 512MB\n";
const RATES: [u32; 2] = [100, 1000];
const PROBES: u32 = 300;
const WRITE_SECONDS: u32 = 15;
const WRITE_CLIENTS: u32 = 8;

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    if !args.is_empty() {
        bail!("bench wal takes no options");
    }
    let started = Instant::now();
    let tools = crate::prereq::ensure_all()?;
    println!("xtask bench wal: building strata-proxy and the staleness probe (release)");
    let mut build = crate::cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "strata-proxy",
        "--bin",
        "strata-proxy",
        "--example",
        "wal_staleness",
    ]);
    if !services::run_interruptibly(build, interrupted)?.success() {
        bail!("building strata-proxy failed");
    }
    let binary = crate::target_dir().join("release/strata-proxy");
    let probe = crate::target_dir().join("release/examples/wal_staleness");
    let services = Services::start_with(&tools, PG_CONF)?;
    let work = services::scratch_dir("bench-wal")?;
    let _cleanup = RemoveOnDrop(work.clone());
    let pg_port = services.postgres_port();
    psql(pg_port, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;

    let mut lines = Vec::new();
    for rate in RATES {
        let proxy = Proxy::start(&binary, pg_port, true, &work)?;
        let out = Command::new(&probe)
            .args([proxy.port, proxy.http_port, pg_port].map(|p| p.to_string()))
            .args([rate.to_string(), PROBES.to_string()])
            .output()
            .context("running the staleness probe")?;
        if !out.status.success() {
            bail!("the staleness probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("STALENESS")).context("no STALENESS line")?;
        println!("xtask bench wal: {line}");
        lines.push(line.to_owned());
        drop(proxy);
        if interrupted.is_set() {
            bail!("interrupted");
        }
    }

    println!("xtask bench wal: pgbench -i -s 10");
    let init = Command::new(pgbench_path(&tools))
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "postgres",
            DATABASE,
        ])
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let mut throughput: Vec<(bool, f64)> = Vec::new();
    for streaming in [false, true, false, true] {
        let proxy = Proxy::start(&binary, pg_port, streaming, &work)?;
        let tps = simple_update(&tools, pg_port)?;
        println!(
            "xtask bench wal: simple-update straight to PostgreSQL, stream {}: {tps:.0} tps",
            on_off(streaming)
        );
        throughput.push((streaming, tps));
        drop(proxy);
        if interrupted.is_set() {
            bail!("interrupted");
        }
    }
    drop(services);
    let section = report(&lines, &throughput, started.elapsed().as_secs());
    println!("\n{section}");
    let path = crate::workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace_section(&old, &section))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("xtask bench wal: wrote its section of {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `text` with this bench's section replaced by `section` (appended when missing).
fn replace_section(text: &str, section: &str) -> String {
    super::section::replace(text, "wal", section)
}

/// This bench's section of `text`, markers included (empty when missing), for `bench e2e` to keep.
pub(crate) fn kept_section(text: &str) -> String {
    super::section::kept(text, "wal")
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A strata-proxy, with the WAL stream or without.
struct Proxy {
    port: u16,
    http_port: u16,
    _daemon: Daemon,
}

impl Proxy {
    fn start(binary: &Path, pg_port: u16, streaming: bool, work: &Path) -> Result<Self> {
        let port = free_port()?;
        let http_port = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.arg("--upstream")
            .arg(format!("postgres://127.0.0.1:{pg_port}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--http")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(["--catalog-user", "postgres", "--catalog-databases", DATABASE, "--log", "warn"]);
        if streaming {
            cmd.args(["--replication-user", "postgres", "--replication-database", DATABASE]);
        }
        let daemon = spawn(cmd, work.join(format!("strata-proxy-{port}.log")), "TERM")?;
        let daemon = Some(daemon);
        wait_for_postgres_protocol(port, &daemon)?;
        let daemon = daemon.context("proxy process")?;
        Ok(Self { port, http_port, _daemon: daemon })
    }
}

/// pgbench's simple-update (`-N`) straight to PostgreSQL; its tps.
fn simple_update(tools: &crate::prereq::Tools, pg_port: u16) -> Result<f64> {
    let out = Command::new(pgbench_path(tools))
        .args(["-N", "-M", "prepared", "-n", "-j", "2"])
        .args(["-c", &WRITE_CLIENTS.to_string(), "-T", &WRITE_SECONDS.to_string()])
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "postgres", DATABASE])
        .output()
        .context("running pgbench -N")?;
    if !out.status.success() {
        bail!("pgbench -N failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse::<f64>().ok())
        .context("no tps in pgbench's output")
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')).unwrap_or("?")
}

fn report(lines: &[String], throughput: &[(bool, f64)], seconds: u64) -> String {
    let mut text = String::from(
        "## Writes made directly on PostgreSQL (`cargo xtask bench wal`)\n\n\
         A strata-proxy with a replication role (and a catalog user) in front of PostgreSQL 15 with \
         `fsync` and `synchronous_commit` on. Each probe caches a row through the proxy (a hit on its \
         `/metrics`), commits a new value directly on PostgreSQL, and reads through the proxy until it \
         is served: from the commit's acknowledgement to that read. Four direct connections commit \
         single-row updates in the background at the target rate.\n\n\
         | background direct commits/s (target / reached) | probes | commit to miss p50 | p99 | max | never cached |\n|---|---|---|---|---|---|\n",
    );
    for line in lines {
        text.push_str(&format!(
            "| {} / {} | {} | {} ms | {} ms | {} ms | {} |\n",
            field(line, "target_rate"),
            field(line, "load_commits_per_s"),
            field(line, "probes"),
            field(line, "p50_ms"),
            field(line, "p99_ms"),
            field(line, "max_ms"),
            field(line, "never_cached"),
        ));
    }
    let mean = |on: bool| {
        let v: Vec<f64> = throughput.iter().filter(|(s, _)| *s == on).map(|(_, t)| *t).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let runs = |on: bool| {
        throughput
            .iter()
            .filter(|(s, _)| *s == on)
            .map(|(_, t)| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.push_str(&format!(
        "\npgbench -N -M prepared, {WRITE_CLIENTS} clients, {WRITE_SECONDS} s per run, straight to PostgreSQL: \
         stream off {} tps (runs {}), stream on {} tps (runs {}): on/off = {:.3}\n\nbench wal took {seconds} s\n",
        format_args!("{:.0}", mean(false)),
        runs(false),
        format_args!("{:.0}", mean(true)),
        runs(true),
        mean(true) / mean(false).max(1.0),
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::{kept_section, replace_section};

    #[test]
    fn the_section_is_replaced_in_place_and_kept_by_bench_e2e() {
        let first = replace_section("# Benchmarks\n\nbody\n", "figures 1\n");
        assert!(
            first.starts_with("# Benchmarks\n\nbody\n\n<!-- bench wal: begin -->\nfigures 1\n"),
            "{first}"
        );
        let second = replace_section(&format!("{first}tail\n"), "figures 2\n");
        assert!(
            second.contains("figures 2") && !second.contains("figures 1") && second.ends_with("tail\n"),
            "{second}"
        );
        assert_eq!(
            kept_section(&second),
            "\n<!-- bench wal: begin -->\nfigures 2\n<!-- bench wal: end -->\n"
        );
        assert_eq!(kept_section("no section"), "");
    }
}
