//! `cargo xtask bench pool`: Strata's transaction pooling against PgBouncer's transaction mode,
//! each beside direct PostgreSQL, in one run. pgbench at 100 and 1,000 clients (`-j 2`) over
//! 1,000,000 accounts (`pgbench -i -s 10`), in every protocol, runs `-S` and a zipfian point read
//! through: PostgreSQL directly (one backend per client), PgBouncer 1.18 (`pool_mode =
//! transaction`, 20 server connections), a relay-only strata-proxy (`--cache off`) pooling 20
//! server connections, and a caching strata-proxy pooling the same. PgBouncer 1.18 has no
//! prepared statements in transaction mode (`max_prepared_statements` came in 1.21), so it sits
//! out `-M prepared`; `-S -M prepared` also runs at 1 and 10 clients, direct and relay, as the
//! counterpart of figures other poolers publish for that shape.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::targets::{spawn, spawn_pgbouncer, wait_for_postgres_protocol, Daemon};
use super::{pgbench_path, psql, section, Mode, RemoveOnDrop, ACCOUNTS, DATABASE, SCALE, ZIPF_SKEW};
use crate::services::{self, free_port, Interrupted, Services};

/// 1,000 direct clients need 1,000 backends (and room for the sampling connection).
const PG_CONF: &str = "shared_buffers = 1GB\nmax_connections = 1200\n";
/// Server connections each pooler keeps per database and user.
const POOL_SIZE: u32 = 20;
const MAX_CLIENT_CONN: u32 = 2000;
const SECONDS: u64 = 10;
const WARM_SECONDS: u64 = 5;
/// The caching proxy's warm-up: long enough that the zipfian head is cached before the run.
const CACHE_WARM_SECONDS: u64 = 15;
/// A run that has not ended this long after its `-T` is killed and recorded as hung.
const HANG_GRACE: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    PgBouncer,
    Relay,
    Cache,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Direct, Kind::PgBouncer, Kind::Relay, Kind::Cache];

    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "PostgreSQL direct",
            Kind::PgBouncer => "PgBouncer (transaction)",
            Kind::Relay => "strata relay pooled",
            Kind::Cache => "strata cache pooled",
        }
    }

    fn warm_seconds(self) -> u64 {
        if self == Kind::Cache {
            CACHE_WARM_SECONDS
        } else {
            WARM_SECONDS
        }
    }

    /// PgBouncer 1.18 cannot run `-M prepared` in transaction mode; the 1- and 10-client rows are
    /// direct and relay only.
    fn runs(self, case: Case) -> bool {
        match self {
            Kind::PgBouncer if case.mode == Mode::Prepared => false,
            Kind::PgBouncer | Kind::Cache if case.clients < 100 => false,
            _ => true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    /// pgbench's built-in select-only script.
    SelectOnly,
    /// `SELECT abalance FROM pgbench_accounts WHERE aid = :aid` on a zipfian `aid`.
    Zipf,
}

impl Load {
    fn title(self) -> &'static str {
        match self {
            Load::SelectOnly => "-S",
            Load::Zipf => "zipfian reads",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Case {
    load: Load,
    mode: Mode,
    clients: u32,
}

/// Every row of the report, in its order.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for load in [Load::SelectOnly, Load::Zipf] {
        for mode in Mode::ALL {
            let clients: &[u32] = if load == Load::SelectOnly && mode == Mode::Prepared {
                &[1, 10, 100, 1000]
            } else {
                &[100, 1000]
            };
            for &clients in clients {
                cases.push(Case { load, mode, clients });
            }
        }
    }
    cases
}

/// What one measured pgbench run gave.
#[derive(Clone, Debug)]
struct Measured {
    tps: f64,
    latency_ms: Option<f64>,
    connect_ms: Option<f64>,
    /// The most client backends on `bench` seen in once-a-second samples during the run.
    server_conns: Option<u32>,
}

type Outcome = std::result::Result<Measured, String>;

struct Bench<'a> {
    tools: &'a crate::prereq::Tools,
    pg_port: u16,
    work: &'a Path,
    script: PathBuf,
    interrupted: &'a Interrupted,
}

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    if !args.is_empty() {
        bail!("bench pool takes no options");
    }
    let started = Instant::now();
    let tools = crate::prereq::ensure_all()?;
    // Only PgBouncer (ensure_bench_tools would also install pgpool-II and a font).
    let pgbouncer = crate::prereq::find_or_install("pgbouncer", "pgbouncer")?;
    println!("xtask bench pool: building strata-proxy (release)");
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "strata-proxy", "--bin", "strata-proxy"]);
    if !services::run_interruptibly(build, interrupted)?.success() {
        bail!("building strata-proxy failed");
    }
    let binary = crate::target_dir().join("release/strata-proxy");
    let services = Services::start_with(&tools, PG_CONF)?;
    let work = services::scratch_dir("bench-pool")?;
    let cleanup = RemoveOnDrop(work.clone());
    let pg_port = services.postgres_port();
    println!("xtask bench pool: pgbench -i -s {SCALE}");
    psql(pg_port, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    let init = Command::new(pgbench_path(&tools))
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &pg_port.to_string()])
        .args(["-U", "postgres", DATABASE])
        .env("PGSSLMODE", "disable")
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let script = work.join("zipf_read.sql");
    std::fs::write(
        &script,
        format!(
            "\\set aid random_zipfian(1, {ACCOUNTS}, {ZIPF_SKEW})\n\
             SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
        ),
    )?;
    let bench = Bench { tools: &tools, pg_port, work: &work, script, interrupted };

    let mut results: Vec<(Kind, Case, Outcome)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for kind in Kind::ALL {
        let started_target = match kind {
            Kind::Direct => Ok((pg_port, None)),
            Kind::PgBouncer => start_pgbouncer(&tools, &pgbouncer, pg_port, &work),
            Kind::Relay | Kind::Cache => start_strata(&binary, pg_port, kind == Kind::Cache, &work),
        };
        let (port, daemon) = match started_target {
            Ok(started) => started,
            Err(e) => {
                let reason = format!("{} did not start: {e:#}", kind.label());
                println!("xtask bench pool: {reason}");
                notes.push(reason.clone());
                for case in cases().into_iter().filter(|c| kind.runs(*c)) {
                    results.push((kind, case, Err(reason.clone())));
                }
                continue;
            }
        };
        if kind == Kind::PgBouncer {
            let log = std::fs::read_to_string(work.join("pgbouncer/pgbouncer.log")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("file descriptor limit")) {
                println!("xtask bench pool: pgbouncer: {}", line.trim());
            }
        }
        println!("xtask bench pool: {} on port {port}", kind.label());
        for case in cases().into_iter().filter(|c| kind.runs(*c)) {
            if interrupted.is_set() {
                bail!("interrupted");
            }
            // A warm-up at the same client count: connections, plans, and the cache's fills. A
            // failure shows again in the measured run, which records it.
            let _ = bench.pgbench(port, case, kind.warm_seconds(), false);
            let outcome = bench.pgbench(port, case, SECONDS, true);
            match &outcome {
                Ok(m) => println!(
                    "  {:<14} {:<8} c={:<4} {:>9.0} tps  lat {}  connect {}  server conns {}",
                    case.load.title(),
                    case.mode.to_string(),
                    case.clients,
                    m.tps,
                    m.latency_ms.map_or("-".to_owned(), |l| format!("{l:.3} ms")),
                    m.connect_ms.map_or("-".to_owned(), |c| format!("{c:.0} ms")),
                    m.server_conns.map_or("-".to_owned(), |n| n.to_string()),
                ),
                Err(reason) => {
                    println!(
                        "  {:<14} {:<8} c={:<4} FAILED: {reason}",
                        case.load.title(),
                        case.mode.to_string(),
                        case.clients
                    );
                    if let Some(log) = daemon.as_ref().map(|(_, log)| log) {
                        let tail = log_tail(log, 20);
                        if !tail.is_empty() {
                            println!("  {} log ({}), last lines:\n{tail}", kind.label(), log.display());
                        }
                    }
                }
            }
            results.push((kind, case, outcome));
        }
        // Logs of a target with a failed row are kept past the scratch directory's removal.
        if results.iter().any(|(k, _, o)| *k == kind && o.is_err()) {
            if let Some((_, log)) = &daemon {
                match keep_log(log) {
                    Ok(kept) => notes.push(format!("{} log kept at {}", kind.label(), kept.display())),
                    Err(e) => notes.push(format!("{} log could not be kept: {e:#}", kind.label())),
                }
            }
        }
        drop(daemon);
    }
    drop(cleanup);
    drop(services);
    section::write("pool", &report(&results, &notes, started.elapsed()))?;
    Ok(ExitCode::SUCCESS)
}

impl Bench<'_> {
    /// One pgbench run; with `sample`, the server connections on `bench` are counted once a
    /// second. Failed transactions, aborted clients, a non-zero exit or a hang fail the run.
    fn pgbench(&self, port: u16, case: Case, secs: u64, sample: bool) -> Outcome {
        let out_path = self.work.join("pgbench.out");
        let err_path = self.work.join("pgbench.err");
        let io = |p: &Path| std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
        let mut cmd = Command::new(pgbench_path(self.tools));
        cmd.args(["-n", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-c", &case.clients.to_string(), "-j", &case.clients.min(2).to_string()])
            .args(["-M", &case.mode.to_string(), "-T", &secs.to_string()]);
        match case.load {
            Load::SelectOnly => {
                cmd.arg("-S");
            }
            Load::Zipf => {
                cmd.arg("-f").arg(&self.script);
            }
        }
        cmd.arg(DATABASE)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(Stdio::null())
            .stdout(io(&out_path)?)
            .stderr(io(&err_path)?);
        let mut child = cmd.spawn().map_err(|e| format!("starting pgbench: {e}"))?;
        let started = Instant::now();
        let mut next_sample = started + Duration::from_secs(1);
        let mut server_conns: Option<u32> = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for pgbench: {e}")),
            }
            if self.interrupted.is_set() {
                let _ = child.kill();
                let _ = child.wait();
                return Err("interrupted".to_owned());
            }
            if started.elapsed() > Duration::from_secs(secs) + HANG_GRACE {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
                return Err(format!(
                    "hung: pgbench still running {} s after a {secs} s run, killed; stderr: {}",
                    HANG_GRACE.as_secs(),
                    head(&stderr)
                ));
            }
            if sample && Instant::now() >= next_sample {
                next_sample += Duration::from_secs(1);
                if let Some(n) = self.server_connections() {
                    server_conns = Some(server_conns.map_or(n, |m| m.max(n)));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let failed = after(&stdout, "number of failed transactions:").and_then(first_number).unwrap_or(0.0);
        if !status.success() || stderr.contains("aborted") || stdout.contains("aborted") || failed > 0.0 {
            let mut reason = format!("pgbench {status}");
            if failed > 0.0 {
                let _ = write!(reason, ", {failed} failed transactions");
            }
            let _ = write!(reason, ": {}", head(&stderr));
            return Err(reason);
        }
        let tps = after(&stdout, "tps =")
            .and_then(first_number)
            .ok_or_else(|| format!("no tps in pgbench's output: {}", head(&stdout)))?;
        Ok(Measured {
            tps,
            latency_ms: after(&stdout, "latency average =").and_then(first_number),
            connect_ms: after(&stdout, "initial connection time =").and_then(first_number),
            server_conns,
        })
    }

    /// Client backends connected to `bench` now (the sampling session itself is on `postgres`).
    fn server_connections(&self) -> Option<u32> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' AND backend_type = 'client backend'"
        );
        psql(self.pg_port, "postgres", &sql).ok()?.trim().parse().ok()
    }
}

/// The rest of the first line of `text` starting with `prefix` (after leading spaces).
fn after<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim)
}

fn first_number(s: &str) -> Option<f64> {
    s.split([' ', '/']).next()?.parse().ok()
}

/// The first lines of pgbench's stderr, on one line, at most 600 characters.
fn head(text: &str) -> String {
    let joined =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).take(6).collect::<Vec<_>>().join(" | ");
    if joined.is_empty() {
        return "(empty)".to_owned();
    }
    match joined.char_indices().nth(600) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None => joined,
    }
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copies a log out of the scratch directory (which is removed at the end).
fn keep_log(log: &Path) -> Result<PathBuf> {
    let name = log.file_name().context("log name")?.to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("strata-bench-pool-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kept = dir.join(name);
    std::fs::copy(log, &kept).with_context(|| format!("copying {}", log.display()))?;
    Ok(kept)
}

/// A running pooler and its log.
type Started = (u16, Option<(Daemon, PathBuf)>);

fn start_pgbouncer(
    tools: &crate::prereq::Tools,
    pgbouncer: &Path,
    pg_port: u16,
    work: &Path,
) -> Result<Started> {
    let settings = format!(
        "pool_mode = transaction\nmax_client_conn = {MAX_CLIENT_CONN}\ndefault_pool_size = {POOL_SIZE}\n\
         ignore_startup_parameters = extra_float_digits\nlog_connections = 0\nlog_disconnections = 0\n"
    );
    let (port, daemon, log) = spawn_pgbouncer(tools, pgbouncer, pg_port, work, &settings, true)?;
    let daemon = Some(daemon);
    wait_for_postgres_protocol(port, &daemon)?;
    Ok((port, daemon.map(|d| (d, log))))
}

fn start_strata(binary: &Path, pg_port: u16, cache: bool, work: &Path) -> Result<Started> {
    let port = free_port()?;
    let mut cmd = Command::new(binary);
    cmd.args(["--upstream", &format!("postgres://127.0.0.1:{pg_port}")]).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--http",
        "off",
        "--log",
        "warn",
    ]);
    if !cache {
        cmd.args(["--cache", "off"]);
    }
    cmd.args(["--pool-mode", "transaction", "--pool-size", &POOL_SIZE.to_string()]).args([
        "--auth-type",
        "trust",
        "--max-client-conn",
        &MAX_CLIENT_CONN.to_string(),
    ]);
    let log = work.join(if cache { "strata-cache.log" } else { "strata-relay.log" });
    let daemon = Some(spawn(cmd, log.clone(), "TERM")?);
    wait_for_postgres_protocol(port, &daemon)?;
    Ok((port, daemon.map(|d| (d, log))))
}

fn report(results: &[(Kind, Case, Outcome)], notes: &[String], elapsed: Duration) -> String {
    let get =
        |kind: Kind, case: Case| results.iter().find(|(k, c, _)| *k == kind && *c == case).map(|(_, _, o)| o);
    let tps = |kind: Kind, case: Case| get(kind, case).and_then(|o| o.as_ref().ok()).map(|m| m.tps);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut text = format!(
        "## Transaction pooling (`cargo xtask bench pool`)\n\n\
         Strata's transaction pooling against PgBouncer 1.18's transaction mode, each beside PostgreSQL 15 \
         directly, one run on one machine ({cores} cores shared by pgbench, the pooler and PostgreSQL). \
         pgbench over {ACCOUNTS} accounts (`pgbench -i -s {SCALE}`), `-j 2`, `-T {SECONDS}` after a warm-up \
         at the same client count ({WARM_SECONDS} s; {CACHE_WARM_SECONDS} s for the caching proxy, so the \
         zipfian head is cached), tps without the initial connection time. `-S` is pgbench's select-only \
         script (uniform over all accounts); zipfian reads are `\\set aid random_zipfian(1, {ACCOUNTS}, \
         {ZIPF_SKEW})` + `SELECT abalance FROM pgbench_accounts WHERE aid = :aid;`. PostgreSQL: \
         `shared_buffers = 1GB`, `max_connections = 1200`.\n\n\
         - PgBouncer 1.18: `pool_mode = transaction`, `default_pool_size = {POOL_SIZE}`, `max_client_conn = \
         {MAX_CLIENT_CONN}`, `auth_type = trust`, `ignore_startup_parameters = extra_float_digits`, \
         `log_connections = 0`, `log_disconnections = 0`\n\
         - strata relay pooled: `strata-proxy --upstream postgres://127.0.0.1:$PG --listen 127.0.0.1:$PORT \
         --http off --log warn --cache off --pool-mode transaction --pool-size {POOL_SIZE} --auth-type trust \
         --max-client-conn {MAX_CLIENT_CONN}`\n\
         - strata cache pooled: the same without `--cache off` (default cache settings: 60 s TTL)\n\n\
         Each tps cell is followed by its ratio to PostgreSQL direct in the same row. PgBouncer 1.18 cannot \
         run `-M prepared` in transaction mode (`max_prepared_statements` came in 1.21), so it has no \
         prepared rows: those compare Strata with direct PostgreSQL only.\n\n\
         | workload | protocol | clients | direct | PgBouncer (transaction) | strata relay pooled | strata cache pooled | relay / PgBouncer | cache / PgBouncer | goal |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut goals_met = Vec::new();
    for case in cases() {
        let direct = tps(Kind::Direct, case);
        let cell = |kind: Kind| -> String {
            if !kind.runs(case) {
                return "—".to_owned();
            }
            match get(kind, case) {
                Some(Ok(m)) => match direct {
                    Some(d) if kind != Kind::Direct && d > 0.0 => format!("{:.0} ({:.2}×)", m.tps, m.tps / d),
                    _ => format!("{:.0}", m.tps),
                },
                Some(Err(_)) => "**failed**".to_owned(),
                None => "did not run".to_owned(),
            }
        };
        let ratio = |kind: Kind| match (tps(kind, case), tps(Kind::PgBouncer, case)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".to_owned(),
        };
        let goal = goal(case, tps(Kind::Relay, case), tps(Kind::Cache, case), tps(Kind::PgBouncer, case));
        if let Some(met) = goal.1 {
            goals_met.push((case, met));
        }
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.load.title(),
            case.mode,
            case.clients,
            cell(Kind::Direct),
            cell(Kind::PgBouncer),
            cell(Kind::Relay),
            cell(Kind::Cache),
            ratio(Kind::Relay),
            ratio(Kind::Cache),
            goal.0,
        );
    }
    let met = goals_met.iter().filter(|(_, m)| *m).count();
    let _ = write!(
        text,
        "\nGoals (from the issue): relay-only Strata ≥ PgBouncer on `-S` in every protocol at 100 and 1,000 \
         clients; Strata with its cache ≥ 2× PgBouncer on the zipfian read workload. {met} of the {} \
         checkable rows meet their goal; the `-S` prepared rows cannot be checked against PgBouncer 1.18.\n\n\
         pgdog publishes 17.5k tps at 1 client and 111k at 10 clients with 4 threads for its \
         prepared-statement pooling (a different machine: not directly comparable); the `-S` prepared rows \
         at 1 and 10 clients above are the same shape on this machine.\n\n",
        goals_met.len()
    );
    text.push_str(
        "Every run: average latency, pgbench's initial connection time, and the most client backends on \
         `bench` in once-a-second samples of `pg_stat_activity` during the measured run (the server \
         connections the target used).\n\n\
         | workload | protocol | clients | target | tps | latency avg | initial connection | server connections |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for case in cases() {
        for kind in Kind::ALL.into_iter().filter(|k| k.runs(case)) {
            let row = match get(kind, case) {
                Some(Ok(m)) => format!(
                    "{:.0} | {} | {} | {}",
                    m.tps,
                    m.latency_ms.map_or("-".to_owned(), |l| format!("{l:.3} ms")),
                    m.connect_ms.map_or("-".to_owned(), |c| format!("{c:.0} ms")),
                    m.server_conns.map_or("-".to_owned(), |n| n.to_string()),
                ),
                Some(Err(reason)) => {
                    failures.push(format!(
                        "- {} {} {} clients, {}: {}",
                        case.load.title(),
                        case.mode,
                        case.clients,
                        kind.label(),
                        reason.replace('|', "\\|")
                    ));
                    "failed | | | ".to_owned()
                }
                None => "did not run | | | ".to_owned(),
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {row} |",
                case.load.title(),
                case.mode,
                case.clients,
                kind.label()
            );
        }
    }
    if !failures.is_empty() {
        text.push_str("\nFailed runs (pgbench's exit and the head of its stderr):\n\n");
        for f in failures {
            text.push_str(&f);
            text.push('\n');
        }
    }
    if !notes.is_empty() {
        text.push('\n');
        for n in notes {
            let _ = writeln!(text, "- {n}");
        }
    }
    let _ = writeln!(text, "\nbench pool took {} s", elapsed.as_secs());
    text
}

/// The goal for a row, and whether it is met (`None`: nothing to check).
fn goal(
    case: Case,
    relay: Option<f64>,
    cache: Option<f64>,
    pgbouncer: Option<f64>,
) -> (String, Option<bool>) {
    let verdict = |ours: Option<f64>, factor: f64, what: &str| match (ours, pgbouncer) {
        (Some(o), Some(p)) if o >= factor * p => (format!("{what}: met"), Some(true)),
        (Some(_), Some(_)) => (format!("{what}: **not met**"), Some(false)),
        _ => (format!("{what}: no figure"), Some(false)),
    };
    match (case.load, case.mode, case.clients) {
        (_, _, c) if c < 100 => ("— (pgdog's shape)".to_owned(), None),
        (Load::SelectOnly, Mode::Prepared, _) => ("relay ≥ PgBouncer: not measurable".to_owned(), None),
        (Load::SelectOnly, _, _) => verdict(relay, 1.0, "relay ≥ PgBouncer"),
        (Load::Zipf, Mode::Prepared, _) => ("cache ≥ 2× PgBouncer: not measurable".to_owned(), None),
        (Load::Zipf, _, _) => verdict(cache, 2.0, "cache ≥ 2× PgBouncer"),
    }
}
