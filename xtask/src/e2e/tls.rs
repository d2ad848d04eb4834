//! `cargo xtask bench tls`: what TLS and a Unix-socket upstream cost, each beside its plain
//! counterpart in one run. pgbench reads one account by key (pgbench's `-S` statement over 10,000
//! accounts, so a warm cache holds them all) at 8 clients, simple and prepared, through:
//! PostgreSQL directly (plain and TLS), a relay-only strata-proxy (`--cache off`, so every
//! request is a relayed miss) with each leg plain or TLS and the upstream over TCP or PostgreSQL's
//! Unix socket, and a caching strata-proxy warmed first (hits) with the client leg plain or TLS.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::targets::{spawn, wait_for_postgres_protocol, Daemon};
use super::{pgbench_path, psql, section, RemoveOnDrop, DATABASE};
use crate::services::{self, free_port, make_certificates, Interrupted, Services};

const PG_CONF: &str = "shared_buffers = 512MB\nmax_connections = 300\n";
const KEYS: u32 = 10_000;
const CLIENTS: u32 = 8;
const SECONDS: u64 = 10;
const WARM_SECONDS: u64 = 5;

/// One row: how pgbench reaches PostgreSQL.
#[derive(Clone, Copy)]
struct Row {
    label: &'static str,
    /// The proxy (`None`: straight to PostgreSQL).
    proxy: Option<ProxySetup>,
    /// The client leg over TLS (`PGSSLMODE=require`), else plain.
    client_tls: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct ProxySetup {
    cache: bool,
    upstream: Upstream,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Tcp,
    TcpTls,
    Unix,
}

const PATHS: [Row; 8] = [
    Row { label: "PostgreSQL direct, plain", proxy: None, client_tls: false },
    Row { label: "PostgreSQL direct, TLS", proxy: None, client_tls: true },
    Row { label: "relay, plain client, TCP upstream", proxy: Some(RELAY_TCP), client_tls: false },
    Row { label: "relay, TLS client, TCP upstream", proxy: Some(RELAY_TCP), client_tls: true },
    Row {
        label: "relay, plain client, TLS upstream",
        proxy: Some(ProxySetup { cache: false, upstream: Upstream::TcpTls }),
        client_tls: false,
    },
    Row {
        label: "relay, plain client, Unix-socket upstream",
        proxy: Some(ProxySetup { cache: false, upstream: Upstream::Unix }),
        client_tls: false,
    },
    Row { label: "cache hits, plain client", proxy: Some(CACHE_TCP), client_tls: false },
    Row { label: "cache hits, TLS client", proxy: Some(CACHE_TCP), client_tls: true },
];
const RELAY_TCP: ProxySetup = ProxySetup { cache: false, upstream: Upstream::Tcp };
const CACHE_TCP: ProxySetup = ProxySetup { cache: true, upstream: Upstream::Tcp };

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    if !args.is_empty() {
        bail!("bench tls takes no options");
    }
    let started = Instant::now();
    let tools = crate::prereq::ensure_all()?;
    println!("xtask bench tls: building strata-proxy (release)");
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "strata-proxy", "--bin", "strata-proxy"]);
    if !services::run_interruptibly(build, interrupted)?.success() {
        bail!("building strata-proxy failed");
    }
    let binary = crate::target_dir().join("release/strata-proxy");
    let services = Services::start_with_tls(&tools, PG_CONF)?;
    let work = services::scratch_dir("bench-tls")?;
    let _cleanup = RemoveOnDrop(work.clone());
    let certs = work.join("certs");
    make_certificates(&tools.openssl, &certs)?;
    let pg_port = services.postgres_port();
    psql(pg_port, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    let init = Command::new(pgbench_path(&tools))
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "postgres",
            DATABASE,
        ])
        .env("PGSSLMODE", "disable")
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let script = work.join("point.sql");
    std::fs::write(
        &script,
        format!("\\set aid random(1, {KEYS})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"),
    )?;

    let mut rows: Vec<(&'static str, &'static str, f64)> = Vec::new();
    let mut running: Option<(ProxySetup, Proxy)> = None;
    for path in PATHS {
        let port = match path.proxy {
            None => pg_port,
            Some(setup) => {
                if running.as_ref().is_none_or(|(s, _)| *s != setup) {
                    drop(running.take());
                    let proxy =
                        Proxy::start(&binary, setup, pg_port, services.postgres_socket_dir(), &certs, &work)?;
                    running = Some((setup, proxy));
                }
                running.as_ref().map(|(_, p)| p.port).context("proxy")?
            }
        };
        for mode in ["simple", "prepared"] {
            // A warm-up at the same client count: connections, plans, and the cache's fills.
            let warm = if path.proxy.is_some_and(|p| p.cache) { WARM_SECONDS * 2 } else { WARM_SECONDS };
            pgbench(&tools, port, path.client_tls, mode, &script, warm)?;
            let tps = pgbench(&tools, port, path.client_tls, mode, &script, SECONDS)?;
            println!("xtask bench tls: {:<48} {mode:<8} {tps:>9.0} tps", path.label);
            rows.push((path.label, mode, tps));
            if interrupted.is_set() {
                bail!("interrupted");
            }
        }
    }
    drop(running);
    drop(services);
    section::write("tls", &report(&rows, started.elapsed()))?;
    Ok(ExitCode::SUCCESS)
}

fn pgbench(
    tools: &crate::prereq::Tools,
    port: u16,
    tls: bool,
    mode: &str,
    script: &Path,
    secs: u64,
) -> Result<f64> {
    let out = Command::new(pgbench_path(tools))
        .args(["-n", "-M", mode, "-j", "2", "-c", &CLIENTS.to_string(), "-T", &secs.to_string()])
        .arg("-f")
        .arg(script)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", DATABASE])
        .env("PGSSLMODE", if tls { "require" } else { "disable" })
        .output()
        .context("running pgbench")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("aborted") {
        bail!("pgbench failed: {}", stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse::<f64>().ok())
        .context("no tps in pgbench's output")
}

/// A strata-proxy for one setup; it always holds a certificate, so the client picks its leg.
struct Proxy {
    port: u16,
    _daemon: Daemon,
}

impl Proxy {
    fn start(
        binary: &Path,
        setup: ProxySetup,
        pg_port: u16,
        socket_dir: &Path,
        certs: &Path,
        work: &Path,
    ) -> Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(binary);
        let (upstream, mode) = match setup.upstream {
            Upstream::Tcp => (format!("postgres://127.0.0.1:{pg_port}"), "disable"),
            Upstream::TcpTls => (format!("postgres://127.0.0.1:{pg_port}"), "require"),
            Upstream::Unix => {
                (format!("postgresql:///{DATABASE}?host={}&port={pg_port}", socket_dir.display()), "disable")
            }
        };
        cmd.args(["--upstream", &upstream, "--upstream-sslmode", mode])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", "off", "--log", "warn"])
            .arg("--tls-cert")
            .arg(certs.join("server.crt"))
            .arg("--tls-key")
            .arg(certs.join("server.key"))
            .args(["--cache", if setup.cache { "on" } else { "off" }]);
        let daemon = spawn(cmd, work.join(format!("strata-proxy-{port}.log")), "TERM")?;
        let daemon = Some(daemon);
        wait_for_postgres_protocol(port, &daemon)?;
        let daemon = daemon.context("proxy process")?;
        Ok(Self { port, _daemon: daemon })
    }
}

fn report(rows: &[(&str, &str, f64)], elapsed: Duration) -> String {
    let tps = |label: &str, mode: &str| {
        rows.iter().find(|(l, m, _)| *l == label && *m == mode).map_or(f64::NAN, |(_, _, t)| *t)
    };
    let mut text = String::from(
        "## TLS and Unix sockets (`cargo xtask bench tls`)\n\n\
         pgbench reading one account by key (`-S`'s statement over 10,000 accounts), 8 clients, 10 s per \
         run after a warm-up, one run, PostgreSQL 15 with `ssl = on` (ECDSA P-256 certificates). `TLS \
         client` is `PGSSLMODE=require` (TLS 1.3); the relay is `strata-proxy --cache off`; cache rows \
         are all hits after the warm-up. Each ratio compares a row with its plain counterpart measured \
         in the same run.\n\n\
         | path | protocol | tps | against |\n|---|---|---|---|\n",
    );
    let against = |label: &str| -> Option<&'static str> {
        Some(match label {
            "PostgreSQL direct, TLS" => "PostgreSQL direct, plain",
            "relay, plain client, TCP upstream" => "PostgreSQL direct, plain",
            "relay, TLS client, TCP upstream"
            | "relay, plain client, TLS upstream"
            | "relay, plain client, Unix-socket upstream" => "relay, plain client, TCP upstream",
            "cache hits, plain client" => "PostgreSQL direct, plain",
            "cache hits, TLS client" => "cache hits, plain client",
            _ => return None,
        })
    };
    for (label, mode, t) in rows {
        let cmp = match against(label) {
            Some(base) => format!("{:.2}× {base}", t / tps(base, mode)),
            None => "reference".to_owned(),
        };
        text.push_str(&format!("| {label} | {mode} | {t:.0} | {cmp} |\n"));
    }
    text.push_str(&format!("\nbench tls took {} s\n", elapsed.as_secs()));
    text
}
