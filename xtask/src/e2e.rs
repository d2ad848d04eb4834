//! `cargo xtask bench e2e`: strata-proxy against direct PostgreSQL, PgBouncer and pgpool-II's
//! query cache, driven by the same pgbench workloads in one run on one machine, written to
//! BENCHMARKS.md with a plot.

pub(crate) mod pool;
mod report;
mod section;
pub(crate) mod semantic;
mod targets;
pub(crate) mod tls;
pub(crate) mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::services::{self, Interrupted, Services};
use targets::{Target, TargetKind};

/// pgbench's scale: 1,000,000 accounts, about 160 MB, in memory.
const SCALE: u32 = 10;
const ACCOUNTS: u32 = 100_000 * SCALE;
/// The heavy read covers the accounts in this many ranges of `ACCOUNTS / HEAVY_RANGES`.
const HEAVY_RANGES: u32 = 200;
/// The zipfian workload draws account `k` with a probability proportional to `k^-ZIPF_SKEW`
/// (`random_zipfian(1, ACCOUNTS, ZIPF_SKEW)`; pgbench 13 and later take a skew in [1.001, 1000]).
/// At 1.1 over a million accounts, account 1 gets 12% of the draws, accounts 1 to 200 58%, and
/// the other 42% spread over the rest of the table.
const ZIPF_SKEW: f64 = 1.1;
/// After a zipfian run, accounts 1 to `ZIPF_CHECKED` (the likeliest keys) are checked for
/// staleness.
const ZIPF_CHECKED: u32 = 200;
const DATABASE: &str = "bench";

/// PostgreSQL settings of the benchmark server (appended to the throwaway server's defaults):
/// the whole database fits in shared buffers.
const PG_CONF: &str = "shared_buffers = 1GB\nmax_connections = 300\n";

/// The workloads, each run against every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// pgbench's built-in select-only script (`-S`): one point select by primary key.
    SelectOnly,
    /// A join with an aggregate over 5,000 accounts (1-5 ms in PostgreSQL), 100% reads.
    HeavyRead,
    /// The heavy read 90% of the time, an account update 10%.
    HeavyMixed,
    /// The point select of `-S` 90% of the time, an account update 10%, each on an account
    /// drawn from a zipfian distribution (a few hot accounts, a long tail).
    ZipfMixed,
    /// A point select whose parameters never repeat: every request misses every cache.
    Miss,
    /// `-S`'s point select on an account drawn from the zipfian distribution, 100% reads, from a
    /// cold start: a caching target is started afresh for each protocol and measured without a
    /// warm-up, so its cache fills during the run.
    ZipfRead,
}

impl Workload {
    pub(crate) const ALL: [Workload; 6] = [
        Workload::SelectOnly,
        Workload::HeavyRead,
        Workload::HeavyMixed,
        Workload::ZipfMixed,
        Workload::Miss,
        Workload::ZipfRead,
    ];

    /// The name `--workload` takes.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::HeavyRead => "heavy-read",
            Workload::HeavyMixed => "heavy-mixed",
            Workload::ZipfMixed => "zipf",
            Workload::Miss => "miss",
            Workload::ZipfRead => "zipf-read",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only (-S)",
            Workload::HeavyRead => "heavy read, 100% reads",
            Workload::HeavyMixed => "heavy read, 90/10 read/write",
            Workload::ZipfMixed => "zipfian point reads, 10% updates",
            Workload::Miss => "cache miss (no parameter repeats)",
            Workload::ZipfRead => "zipfian point reads from a cold start",
        }
    }

    /// How a mixed workload's cached reads are checked for staleness after its run.
    pub(crate) fn freshness_check(self) -> Option<FreshnessCheck> {
        match self {
            Workload::HeavyMixed => Some(FreshnessCheck {
                script: "heavy_check.sql",
                start: "k=0",
                reads: HEAVY_RANGES,
                what: "summaries",
            }),
            Workload::ZipfMixed => Some(FreshnessCheck {
                script: "zipf_check.sql",
                start: "aid=0",
                reads: ZIPF_CHECKED,
                what: "accounts",
            }),
            Workload::SelectOnly | Workload::HeavyRead | Workload::Miss | Workload::ZipfRead => None,
        }
    }

    fn pgbench_args(self, scripts: &Path) -> Vec<String> {
        let script = |name: &str| scripts.join(name).display().to_string();
        match self {
            Workload::SelectOnly => vec!["-S".into()],
            Workload::HeavyRead => vec!["-f".into(), script("heavy_read.sql")],
            Workload::HeavyMixed => vec![
                "-f".into(),
                format!("{}@9", script("heavy_read.sql")),
                "-f".into(),
                format!("{}@1", script("heavy_write.sql")),
            ],
            Workload::ZipfMixed => vec![
                "-f".into(),
                format!("{}@9", script("zipf_read.sql")),
                "-f".into(),
                format!("{}@1", script("zipf_write.sql")),
            ],
            Workload::Miss => vec!["-f".into(), script("miss.sql")],
            Workload::ZipfRead => vec!["-f".into(), script("zipf_read.sql")],
        }
    }
}

/// A script run once after a mixed workload (one client, in the run's protocol, `-t reads`,
/// `-D start`): each transaction reads one of the run's cached queries through the target, then
/// the same value uncached, and divides by zero when they differ, which aborts pgbench.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreshnessCheck {
    pub(crate) script: &'static str,
    /// The `-D` assignment the script counts from.
    pub(crate) start: &'static str,
    /// Transactions, one per value checked.
    pub(crate) reads: u32,
    /// What one transaction checks, plural ("summaries").
    pub(crate) what: &'static str,
}

/// The share of `random_zipfian(1, ACCOUNTS, ZIPF_SKEW)` draws that fall on accounts 1 to `first`.
pub(crate) fn zipf_share(first: u32) -> f64 {
    let weight = |k: u32| f64::from(k).powf(-ZIPF_SKEW);
    let head: f64 = (1..=first).map(weight).sum();
    let all: f64 = (1..=ACCOUNTS).map(weight).sum();
    head / all
}

/// The ways pgbench talks to the server (`-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Simple,
    /// The extended protocol with the unnamed statement: Parse, Bind, Describe, Execute, Sync for
    /// every request.
    Extended,
    Prepared,
}

impl Mode {
    /// Every protocol, in the order the report shows them.
    pub(crate) const ALL: [Mode; 3] = [Mode::Simple, Mode::Extended, Mode::Prepared];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Simple => "simple",
            Mode::Extended => "extended",
            Mode::Prepared => "prepared",
        })
    }
}

/// The scripts, written next to the run's logs. The heavy read's text (ended by `\gset`, which
/// keeps its one row in variables) is shared by the run and the staleness check so that both use
/// the same cache entries.
const HEAVY_READ_QUERY: &str = "SELECT a.bid, b.bbalance, count(*) AS n, sum(a.abalance) AS total \
     FROM pgbench_accounts a JOIN pgbench_branches b ON b.bid = a.bid \
     WHERE a.aid BETWEEN :lo AND :hi GROUP BY a.bid, b.bbalance";

fn heavy_ranges_prelude(pick: &str) -> String {
    let width = ACCOUNTS / HEAVY_RANGES;
    format!("\\set k {pick}\n\\set lo (:k - 1) * {width} + 1\n\\set hi :lo + {}\n", width - 1)
}

fn script_texts() -> [(&'static str, String); 8] {
    [
        (
            "heavy_read.sql",
            format!("{}{HEAVY_READ_QUERY} \\gset\n", heavy_ranges_prelude(&format!("random(1, {HEAVY_RANGES})"))),
        ),
        (
            "heavy_write.sql",
            format!(
                "\\set aid random(1, {ACCOUNTS})\n\\set delta random(-5000, 5000)\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
            ),
        ),
        (
            // Walks every range once (-D k=0 -t HEAVY_RANGES, one client): reads the summary through
            // the target, then recomputes it uncached; a difference divides by zero and aborts.
            "heavy_check.sql",
            format!(
                "{}{HEAVY_READ_QUERY} \\gset\n/*NO QUERY CACHE*/ /* strata: cache=off */ SELECT 1 / (CASE WHEN sum(abalance) = :total \
                 THEN 1 ELSE 0 END) FROM pgbench_accounts WHERE aid BETWEEN :lo AND :hi;\n",
                heavy_ranges_prelude(":k + 1"),
            ),
        ),
        (
            // The read is `-S`'s statement text, so that it finds the accounts the fill cached.
            "zipf_read.sql",
            format!(
                "\\set aid random_zipfian(1, {ACCOUNTS}, {ZIPF_SKEW})\n\
                 SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
            ),
        ),
        (
            "zipf_write.sql",
            format!(
                "\\set aid random_zipfian(1, {ACCOUNTS}, {ZIPF_SKEW})\n\\set delta random(-5000, 5000)\n\
                 UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
            ),
        ),
        (
            // Reads accounts 1 to ZIPF_CHECKED (-D aid=0 -t ZIPF_CHECKED, one client) through the
            // target with the run's statement text (`; \gset` sends it as the run does, semicolon
            // included), then compares each with the balance read uncached; a difference divides
            // by zero.
            "zipf_check.sql",
            "\\set aid :aid + 1\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid; \\gset\n\
             /*NO QUERY CACHE*/ /* strata: cache=off */ SELECT 1 / (CASE WHEN abalance = :abalance \
             THEN 1 ELSE 0 END) FROM pgbench_accounts WHERE aid = :aid;\n"
                .to_owned(),
        ),
        (
            "miss.sql",
            format!(
                "\\set aid random(1, {ACCOUNTS})\n\\set r random(1, 2000000000)\n\
                 SELECT abalance FROM pgbench_accounts WHERE aid = :aid AND :r > 0;\n"
            ),
        ),
        (
            // Every account once per mode, so that -S then finds all of them cached: client c of
            // 32 reads accounts c*31250+1 ..= (c+1)*31250 (-D k=0 -t 31250).
            "warm_accounts.sql",
            format!(
                "\\set k :k + 1\n\\set aid :client_id * {} + :k\n\
                 SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
                ACCOUNTS / WARM_CLIENTS
            ),
        ),
    ]
}

fn write_scripts(dir: &Path) -> Result<()> {
    for (name, text) in script_texts() {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

const WARM_CLIENTS: u32 = 32;

/// The protocol of the heavy runs. Their queries cost milliseconds, so the protocol's own cost
/// does not matter; the simple protocol is the one every target runs writes in (see
/// `TargetKind::runs_writes_in`).
pub(crate) const HEAVY_MODE: Mode = Mode::Simple;

/// What `cargo xtask bench e2e --help` prints.
fn help() -> String {
    let targets: Vec<&str> = TargetKind::ALL.iter().map(|t| t.id()).collect();
    let workloads: Vec<&str> = Workload::ALL.iter().map(|w| w.id()).collect();
    format!(
        "usage: cargo xtask bench e2e [OPTIONS]

Runs pgbench workloads against PostgreSQL direct and each target in one run, and writes the
report (BENCHMARKS.md, with BENCHMARKS.png when select-only ran).

options:
  --duration SECS   length of each measured run (default 15; `3` or `3s`)
  --warm-up SECS    length of the warm-up run before each measured run (default 3)
  --targets LIST    comma-separated, from {targets} (default all;
                    direct always runs, the ratios are to it)
  --workload NAME   run only this workload; repeatable, or comma-separated (default all):
                    {workloads}
  --out FILE        the report (default BENCHMARKS.md at the workspace root); the plot goes next
                    to it with the extension .png",
        targets = targets.join(","),
        workloads = workloads.join(", "),
    )
}

/// What `cargo xtask bench e2e` was asked to do.
#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    warm_up: Duration,
    targets: Vec<TargetKind>,
    /// The workloads to run, in `Workload::ALL` order.
    workloads: Vec<Workload>,
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Options {
            duration: Duration::from_secs(15),
            warm_up: Duration::from_secs(3),
            targets: TargetKind::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            out: crate::workspace_root().join("BENCHMARKS.md"),
        };
        let mut chosen_workloads = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--duration" => options.duration = parse_secs(arg, value()?)?,
                "--warm-up" => options.warm_up = parse_secs(arg, value()?)?,
                "--targets" => {
                    options.targets = value()?
                        .split(',')
                        .map(|name| {
                            TargetKind::ALL
                                .into_iter()
                                .find(|k| k.id() == name)
                                .with_context(|| format!("unknown target {name}"))
                        })
                        .collect::<Result<_>>()?;
                    if !options.targets.contains(&TargetKind::Direct) {
                        options.targets.insert(0, TargetKind::Direct);
                    }
                }
                "--workload" => {
                    for name in value()?.split(',') {
                        let workload =
                            Workload::ALL.into_iter().find(|w| w.id() == name).with_context(|| {
                                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.id()).collect();
                                format!("unknown workload {name}; the workloads are {}", names.join(", "))
                            })?;
                        chosen_workloads.push(workload);
                    }
                }
                "--out" => options.out = PathBuf::from(value()?),
                other => bail!("unknown option {other}\n{}", help()),
            }
        }
        if !chosen_workloads.is_empty() {
            options.workloads.retain(|w| chosen_workloads.contains(w));
        }
        Ok(options)
    }

    fn runs(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }
}

/// Whole seconds, written `3` or `3s`.
fn parse_secs(option: &str, value: &str) -> Result<Duration> {
    let secs = value.strip_suffix('s').unwrap_or(value);
    let secs = secs.parse().with_context(|| format!("{option} takes whole seconds, not {value}"))?;
    Ok(Duration::from_secs(secs))
}

/// One measured pgbench run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) target: TargetKind,
    pub(crate) workload: Workload,
    pub(crate) mode: Mode,
    pub(crate) clients: u32,
    pub(crate) tps: f64,
    pub(crate) failed: u64,
    pub(crate) latency_avg_ms: f64,
    pub(crate) latency_p50_ms: f64,
    pub(crate) latency_p99_ms: f64,
    /// Share of reads answered from the target's cache, from its own counters.
    pub(crate) hit_ratio: Option<f64>,
    /// For the mixed workloads: whether every value the freshness check read through the target
    /// afterwards equalled PostgreSQL's.
    pub(crate) fresh_after: Option<bool>,
    pub(crate) command: String,
    /// Why the run produced no figures (pgbench aborted), if it did not.
    pub(crate) error: Option<String>,
}

/// A warm-up pass over the accounts, timed (it is how fast each target fills its cache).
#[derive(Debug, Clone)]
pub(crate) struct WarmUp {
    pub(crate) target: TargetKind,
    pub(crate) mode: Mode,
    pub(crate) seconds: f64,
    /// Reads the target counted during the pass (one per account read).
    pub(crate) reads: Option<u64>,
    /// Whether the pass read every account before the time cap.
    pub(crate) complete: bool,
}

/// The relay against PgBouncer in one protocol at one client count, measured in alternating
/// runs while both run: relay tps over PgBouncer tps, one ratio per round.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) mode: Mode,
    pub(crate) clients: u32,
    pub(crate) ratios: Vec<f64>,
}

impl Pair {
    /// The median of the rounds' ratios.
    pub(crate) fn median(&self) -> f64 {
        let mut sorted = self.ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    }
}

/// Rounds of the paired relay and PgBouncer runs; the order alternates (PgBouncer first in even
/// rounds), so a drift of the host's speed during a round favours neither.
pub(crate) const PAIR_ROUNDS: usize = 4;

/// The length of each paired run.
pub(crate) const PAIR_RUN: Duration = Duration::from_secs(5);

/// The most time a warm-up pass over the accounts may take, per target and protocol mode.
const WARM_CAP: Duration = Duration::from_secs(60);

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", help());
        return Ok(ExitCode::SUCCESS);
    }
    let options = Options::parse(args)?;
    let started = Instant::now();
    let tools = crate::prereq::ensure_all()?;
    let bench_tools = crate::prereq::ensure_bench_tools()?;
    println!("xtask bench e2e: building strata-proxy (release)");
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "strata-proxy"]);
    if !services::run_interruptibly(build, interrupted)?.success() {
        bail!("building strata-proxy failed");
    }
    let proxy_binary = crate::target_dir().join("release/strata-proxy");
    let services = Services::start_with(&tools, PG_CONF)?;
    let work = services::scratch_dir("bench-e2e")?;
    let _cleanup = RemoveOnDrop(work.clone());
    let pg_port = services.postgres_port();
    println!("xtask bench e2e: pgbench -i -s {SCALE}");
    psql(pg_port, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    let init = Command::new(pgbench_path(&tools))
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &pg_port.to_string()])
        .args(["-U", "postgres", DATABASE])
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    write_scripts(&work)?;
    let bench = Bench { tools: &tools, work: &work, options: &options, interrupted };

    let mut runs = Vec::new();
    let mut warm_ups = Vec::new();
    for &kind in &options.targets {
        let start = || Target::start(kind, &tools, &bench_tools, &services, &proxy_binary, &work);
        if options.runs(Workload::ZipfRead) {
            bench.run_cold(kind, &start, &mut runs)?;
        }
        if !bench.runs_warm() {
            continue;
        }
        let target = start()?;
        println!("xtask bench e2e: target {} on port {}", kind.label(), target.port());
        bench.run_target(&target, &mut runs, &mut warm_ups)?;
        drop(target);
        if interrupted.is_set() {
            bail!("interrupted");
        }
    }
    // The relay against PgBouncer once more, both running, in alternating short runs: the runs
    // above are minutes apart, and this host's speed drifts more than the goal's margin.
    let mut pairs = Vec::new();
    let paired = [TargetKind::PgBouncer, TargetKind::StrataRelay];
    if options.runs(Workload::SelectOnly) && paired.iter().all(|k| options.targets.contains(k)) {
        let start = |kind| Target::start(kind, &tools, &bench_tools, &services, &proxy_binary, &work);
        let bouncer = start(TargetKind::PgBouncer)?;
        let relay = start(TargetKind::StrataRelay)?;
        println!(
            "xtask bench e2e: the relay (port {}) against PgBouncer (port {}), {PAIR_ROUNDS} alternating rounds",
            relay.port(),
            bouncer.port()
        );
        pairs = bench.run_pairs(&relay, &bouncer)?;
    }
    drop(services);

    let elapsed = started.elapsed();
    let environment = report::Environment::read(&tools, &bench_tools, &proxy_binary);
    // The plot shows the select-only runs; without them there is none.
    let png = options.out.with_extension("png");
    let plotted = runs.iter().any(|r| r.workload == Workload::SelectOnly);
    let png_name = png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let text = report::render(
        &runs,
        &pairs,
        &warm_ups,
        &environment,
        &report::Settings {
            lengths: &options_summary(&options),
            warm_up_secs: options.warm_up.as_secs(),
            elapsed,
            plot: plotted.then_some(png_name.as_str()),
        },
    );
    // Sections other benches own (`bench wal`, `tls`, `pool`, `semantic`) are kept.
    let kept = std::fs::read_to_string(&options.out)
        .map(|old| {
            format!(
                "{}{}{}{}",
                wal::kept_section(&old),
                section::kept(&old, "tls"),
                section::kept(&old, "pool"),
                section::kept(&old, "semantic")
            )
        })
        .unwrap_or_default();
    let text = format!("{text}{kept}");
    std::fs::write(&options.out, &text).with_context(|| format!("writing {}", options.out.display()))?;
    println!("{text}");
    if plotted {
        let csv = report::csv(&runs);
        let csv_path = work.join("select_only.csv");
        std::fs::write(&csv_path, csv)?;
        let mut plot = crate::cargo();
        plot.args(["run", "--quiet", "--package", "xtask", "--features", "plot", "--bin", "plot", "--"])
            .arg(&csv_path)
            .arg(&png)
            .arg(&bench_tools.font);
        if !services::run_interruptibly(plot, interrupted)?.success() {
            bail!("drawing {} failed", png.display());
        }
        println!("xtask bench e2e: wrote {}", png.display());
    }
    println!("xtask bench e2e: wrote {} in {:.1} min", options.out.display(), elapsed.as_secs_f64() / 60.0);
    Ok(ExitCode::SUCCESS)
}

fn options_summary(options: &Options) -> String {
    let mut summary = format!(
        "{} s per measured run after a {} s warm-up run at the same client count",
        options.duration.as_secs(),
        options.warm_up.as_secs()
    );
    if options.workloads.len() < Workload::ALL.len() {
        let names: Vec<&str> = options.workloads.iter().map(|w| w.id()).collect();
        summary.push_str(&format!(", only the workloads {} (`--workload`)", names.join(", ")));
    }
    summary
}

struct Bench<'a> {
    tools: &'a crate::prereq::Tools,
    work: &'a Path,
    options: &'a Options,
    interrupted: &'a Interrupted,
}

impl Bench<'_> {
    /// Whether any workload besides the cold-start one is to run.
    fn runs_warm(&self) -> bool {
        self.options.workloads.iter().any(|w| *w != Workload::ZipfRead)
    }

    /// The zipfian reads from a cold start, 8 clients, each protocol: a caching target is
    /// started afresh for each (its cache empty), and no run warms it first.
    fn run_cold(
        &self,
        kind: TargetKind,
        start: &dyn Fn() -> Result<Target>,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let mut shared = None;
        for mode in Mode::ALL {
            let fresh;
            let target = if kind.caches() {
                fresh = start()?;
                &fresh
            } else {
                if shared.is_none() {
                    shared = Some(start()?);
                }
                shared.as_ref().context("the target started")?
            };
            println!("xtask bench e2e: target {} on port {}, cold, {mode}", kind.label(), target.port());
            runs.push(self.measure(target, Workload::ZipfRead, mode, 8, false)?);
        }
        Ok(())
    }

    fn run_target(&self, target: &Target, runs: &mut Vec<Run>, warm_ups: &mut Vec<WarmUp>) -> Result<()> {
        let select_only = self.options.runs(Workload::SelectOnly);
        for mode in Mode::ALL {
            // The zipfian reads are `-S`'s statement, so they run right after it, on the same fill
            // (in the simple and prepared protocols: the extended one adds a select-only row).
            let zipf = self.options.runs(Workload::ZipfMixed)
                && mode != Mode::Extended
                && target.kind().runs_writes_in(mode);
            if !select_only && !zipf {
                continue;
            }
            if target.kind().caches() {
                warm_ups.push(self.warm_all_accounts(target, mode)?);
            } else {
                let _ = self.pgbench(
                    target,
                    Workload::SelectOnly,
                    mode,
                    8,
                    Length::Time(self.options.warm_up),
                    None,
                );
            }
            if select_only {
                for clients in [1, 8, 32] {
                    runs.push(self.measure(target, Workload::SelectOnly, mode, clients, false)?);
                }
            }
            if zipf {
                runs.push(self.measure_mixed(target, Workload::ZipfMixed, mode)?);
            }
        }
        if self.options.runs(Workload::HeavyRead) {
            runs.push(self.measure(target, Workload::HeavyRead, HEAVY_MODE, 8, true)?);
        }
        if self.options.runs(Workload::HeavyMixed) {
            runs.push(self.measure_mixed(target, Workload::HeavyMixed, HEAVY_MODE)?);
        }
        if self.options.runs(Workload::Miss) {
            for mode in Mode::ALL {
                runs.push(self.measure(target, Workload::Miss, mode, 8, true)?);
            }
        }
        Ok(())
    }

    /// Select-only through the relay and through PgBouncer at 1, 8 and 32 clients in each
    /// protocol: after a short warm-up of each, `PAIR_ROUNDS` rounds of one `PAIR_RUN` run on
    /// each, in alternating order. A failed run leaves its pair out (the separate runs report it).
    fn run_pairs(&self, relay: &Target, bouncer: &Target) -> Result<Vec<Pair>> {
        let mut pairs = Vec::new();
        for mode in Mode::ALL {
            for clients in [1, 8, 32] {
                for target in [bouncer, relay] {
                    let warm = Length::Time(Duration::from_secs(2));
                    let _ = self.pgbench(target, Workload::SelectOnly, mode, clients, warm, None);
                }
                let mut ratios = Vec::with_capacity(PAIR_ROUNDS);
                for round in 0..PAIR_ROUNDS {
                    if self.interrupted.is_set() {
                        bail!("interrupted");
                    }
                    let order = if round % 2 == 0 { [bouncer, relay] } else { [relay, bouncer] };
                    let mut tps = [0.0_f64; 2];
                    for target in order {
                        let slot = usize::from(std::ptr::eq(target, relay));
                        match self.pgbench(
                            target,
                            Workload::SelectOnly,
                            mode,
                            clients,
                            Length::Time(PAIR_RUN),
                            None,
                        ) {
                            Ok(out) => tps[slot] = out.tps,
                            Err(e) => println!("  paired run of {} failed: {e}", target.kind().label()),
                        }
                    }
                    if tps[0] > 0.0 && tps[1] > 0.0 {
                        ratios.push(tps[1] / tps[0]);
                    }
                }
                if ratios.len() == PAIR_ROUNDS {
                    let pair = Pair { mode, clients, ratios };
                    println!(
                        "  relay / PgBouncer, select-only {:>8} c={clients:<2} median {:.2}×  rounds {}",
                        mode.to_string(),
                        pair.median(),
                        pair.ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ")
                    );
                    pairs.push(pair);
                }
            }
        }
        Ok(pairs)
    }

    /// A mixed workload at 8 clients, then its freshness check if the run went through.
    fn measure_mixed(&self, target: &Target, workload: Workload, mode: Mode) -> Result<Run> {
        let mut run = self.measure(target, workload, mode, 8, true)?;
        if let (None, Some(check)) = (&run.error, workload.freshness_check()) {
            run.fresh_after = Some(self.fresh_after(target, check, mode)?);
        }
        Ok(run)
    }

    /// Reads every account once through the target (32 clients, each its own slice), stopping
    /// at `WARM_CAP`, so that `-S` afterwards finds them cached.
    fn warm_all_accounts(&self, target: &Target, mode: Mode) -> Result<WarmUp> {
        let before = target.cache_counters()?;
        let args = self.command_args(
            target,
            &Invocation {
                script: vec![
                    "-f".into(),
                    self.work.join("warm_accounts.sql").display().to_string(),
                    "-D".into(),
                    "k=0".into(),
                ],
                mode,
                clients: WARM_CLIENTS,
                length: Length::Transactions(ACCOUNTS / WARM_CLIENTS),
                log_prefix: None,
            },
        );
        let started = Instant::now();
        let mut child = Command::new(pgbench_path(self.tools))
            .args(&args)
            .current_dir(self.work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running pgbench")?;
        let complete = loop {
            if let Some(status) = child.try_wait()? {
                break status.success();
            }
            if started.elapsed() > WARM_CAP || self.interrupted.is_set() {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let seconds = started.elapsed().as_secs_f64();
        let after = target.cache_counters()?;
        let reads = match (before, after) {
            (Some(b), Some(a)) => Some(a.lookups_since(&b)),
            _ => None,
        };
        println!(
            "  warm-up {mode}: {} reads in {seconds:.1} s{}",
            reads.map_or("?".to_owned(), |r| r.to_string()),
            if complete { "" } else { " (stopped at the time cap)" }
        );
        Ok(WarmUp { target: target.kind(), mode, seconds, reads, complete })
    }

    fn measure(
        &self,
        target: &Target,
        workload: Workload,
        mode: Mode,
        clients: u32,
        warm_up: bool,
    ) -> Result<Run> {
        if self.interrupted.is_set() {
            bail!("interrupted");
        }
        if warm_up {
            // A failure shows again in the measured run, which records it.
            let _ = self.pgbench(target, workload, mode, clients, Length::Time(self.options.warm_up), None);
        }
        let before = target.cache_counters()?;
        let log_prefix = self.work.join("txlog");
        let out = self.pgbench(
            target,
            workload,
            mode,
            clients,
            Length::Time(self.options.duration),
            Some(&log_prefix),
        );
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let _ = read_latencies(self.work, "txlog");
                let reason = e.to_string();
                println!(
                    "  {:<36} {:>8} c={clients:<2} FAILED: {reason}",
                    workload.title(),
                    mode.to_string()
                );
                return Ok(Run {
                    target: target.kind(),
                    workload,
                    mode,
                    clients,
                    tps: 0.0,
                    failed: 0,
                    latency_avg_ms: 0.0,
                    latency_p50_ms: 0.0,
                    latency_p99_ms: 0.0,
                    hit_ratio: None,
                    fresh_after: None,
                    command: String::new(),
                    error: Some(reason),
                });
            }
        };
        let after = target.cache_counters()?;
        let mut latencies = read_latencies(self.work, "txlog")?;
        let (p50, p99) = percentiles(&mut latencies);
        let hit_ratio = match (before, after) {
            (Some(b), Some(a)) => a.ratio_since(&b),
            _ => None,
        };
        let run = Run {
            target: target.kind(),
            workload,
            mode,
            clients,
            tps: out.tps,
            failed: out.failed,
            latency_avg_ms: out.latency_avg_ms,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            hit_ratio,
            fresh_after: None,
            command: out.command,
            error: None,
        };
        println!(
            "  {:<36} {:>8} c={:<2} {:>9.0} tps  avg {:.3} ms  p50 {:.3} ms  p99 {:.3} ms  hits {}",
            workload.title(),
            mode.to_string(),
            clients,
            run.tps,
            run.latency_avg_ms,
            p50,
            p99,
            hit_ratio.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        );
        Ok(run)
    }

    /// After a mixed run: every value the check reads through the target equals the database's.
    fn fresh_after(&self, target: &Target, check: FreshnessCheck, mode: Mode) -> Result<bool> {
        // In the protocol of the run, so that it reads the entries the run cached.
        let invocation = Invocation {
            script: vec![
                "-f".to_owned(),
                self.work.join(check.script).display().to_string(),
                "-D".to_owned(),
                check.start.to_owned(),
            ],
            mode,
            clients: 1,
            length: Length::Transactions(check.reads),
            log_prefix: None,
        };
        let out = self.run_pgbench(target, &invocation);
        match out {
            Ok(out) if out.transactions == u64::from(check.reads) && out.failed == 0 => {
                println!("  fresh: all {} {} equal PostgreSQL's", check.reads, check.what);
                Ok(true)
            }
            Ok(out) => {
                println!(
                    "  STALE: {} of {} {} checked before a mismatch",
                    out.transactions, check.reads, check.what
                );
                Ok(false)
            }
            Err(e) => {
                println!("  STALE or failed check: {e:#}");
                Ok(false)
            }
        }
    }

    fn pgbench(
        &self,
        target: &Target,
        workload: Workload,
        mode: Mode,
        clients: u32,
        length: Length,
        log_prefix: Option<&Path>,
    ) -> Result<PgbenchOutput> {
        let script = workload.pgbench_args(self.work);
        self.run_pgbench(target, &Invocation { script, mode, clients, length, log_prefix })
    }

    fn run_pgbench(&self, target: &Target, invocation: &Invocation<'_>) -> Result<PgbenchOutput> {
        let args = self.command_args(target, invocation);
        let command = format!("pgbench {}", display_args(&args, self.work, target.port()));
        let out = Command::new(pgbench_path(self.tools))
            .args(&args)
            .current_dir(self.work)
            .stdin(Stdio::null())
            .output()
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("aborted") {
            let first_error = stderr.lines().find(|l| l.contains("error")).unwrap_or(stderr.trim());
            bail!("pgbench {}: {}", out.status, first_error.trim());
        }
        PgbenchOutput::parse(&stdout, command).with_context(|| format!("unexpected pgbench output: {stdout}"))
    }

    fn command_args(&self, target: &Target, invocation: &Invocation<'_>) -> Vec<String> {
        let Invocation { script, mode, clients, length, log_prefix } = invocation;
        let threads = (*clients).min(2);
        let mut args: Vec<String> = vec![
            "-n".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            target.port().to_string(),
            "-U".into(),
            "postgres".into(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            threads.to_string(),
            "-M".into(),
            mode.to_string(),
        ];
        match length {
            Length::Time(d) => args.extend(["-T".into(), d.as_secs().max(1).to_string()]),
            Length::Transactions(t) => args.extend(["-t".into(), t.to_string()]),
        }
        args.extend(script.iter().cloned());
        if let Some(prefix) = log_prefix {
            args.extend(["-l".into(), format!("--log-prefix={}", prefix.display())]);
        }
        args.push(DATABASE.into());
        args
    }
}

/// One pgbench command against a target: its script arguments, protocol, clients, length, and
/// where its per-transaction log goes (if anywhere).
struct Invocation<'a> {
    script: Vec<String>,
    mode: Mode,
    clients: u32,
    length: Length,
    log_prefix: Option<&'a Path>,
}

/// How long a pgbench run lasts.
#[derive(Debug, Clone, Copy)]
enum Length {
    Time(Duration),
    Transactions(u32),
}

/// The figures pgbench prints.
#[derive(Debug, Clone)]
struct PgbenchOutput {
    tps: f64,
    transactions: u64,
    failed: u64,
    latency_avg_ms: f64,
    command: String,
}

impl PgbenchOutput {
    fn parse(stdout: &str, command: String) -> Option<Self> {
        let after = |prefix: &str| {
            stdout.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(|rest| rest.trim().to_owned())
        };
        let first_number = |s: String| -> Option<f64> { s.split([' ', '/']).next()?.parse().ok() };
        Some(PgbenchOutput {
            tps: first_number(after("tps =")?)?,
            transactions: first_number(after("number of transactions actually processed:")?)? as u64,
            failed: after("number of failed transactions:").and_then(first_number).unwrap_or(0.0) as u64,
            latency_avg_ms: first_number(after("latency average =")?)?,
            command,
        })
    }
}

/// The command as a reader reruns it: scratch paths and ports replaced by names.
fn display_args(args: &[String], work: &Path, port: u16) -> String {
    let work = format!("{}/", work.display());
    args.iter()
        .map(|a| {
            let a = a.replace(&work, "");
            if a == port.to_string() {
                "$PORT".to_owned()
            } else if a.starts_with("--log-prefix=") {
                "--log-prefix=txlog".to_owned()
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Latencies in milliseconds from pgbench's per-transaction logs `<prefix>.<pid>[.<thread>]`
/// (third column, microseconds); the files are removed once read.
fn read_latencies(dir: &Path, prefix: &str) -> Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(&format!("{prefix}.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        latencies.extend(
            text.lines().filter_map(|l| l.split(' ').nth(2)?.parse::<f64>().ok()).map(|us| us / 1000.0),
        );
        std::fs::remove_file(entry.path())?;
    }
    Ok(latencies)
}

/// The median and the 99th percentile (nearest rank); zeros for no data.
fn percentiles(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    (rank(0.50), rank(0.99))
}

fn pgbench_path(tools: &crate::prereq::Tools) -> PathBuf {
    let bundled = tools.pg_bindir.join("pgbench");
    if bundled.is_file() {
        bundled
    } else {
        PathBuf::from("pgbench")
    }
}

/// Runs one statement with psql as `postgres` against the throwaway server.
fn psql(port: u16, database: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", database, "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql `{sql}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_judged_by_the_median_of_its_rounds() {
        let pair = |ratios: &[f64]| Pair { mode: Mode::Simple, clients: 8, ratios: ratios.to_vec() };
        assert!((pair(&[1.4, 0.9, 1.0]).median() - 1.0).abs() < 1e-12);
        assert!((pair(&[1.3, 0.8, 1.0, 1.2]).median() - 1.1).abs() < 1e-12);
        assert!((pair(&[0.7]).median() - 0.7).abs() < 1e-12);
    }

    #[test]
    fn reads_pgbench_figures() {
        let stdout = "transaction type: <builtin: select only>\nscaling factor: 10\n\
            number of transactions actually processed: 123456\n\
            number of failed transactions: 0 (0.000%)\nlatency average = 0.130 ms\n\
            initial connection time = 3.2 ms\ntps = 61234.567890 (without initial connection time)\n";
        let out = PgbenchOutput::parse(stdout, String::new()).unwrap();
        assert_eq!(out.transactions, 123_456);
        assert!((out.tps - 61_234.567_89).abs() < 1e-6);
        assert!((out.latency_avg_ms - 0.130).abs() < 1e-9);
        assert!(PgbenchOutput::parse("no figures here", String::new()).is_none());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(&mut values), (50.0, 99.0));
        assert_eq!(percentiles(&mut [7.0]), (7.0, 7.0));
        assert_eq!(percentiles(&mut []), (0.0, 0.0));
    }

    #[test]
    fn zipf_share_is_the_bounded_zipfian_mass() {
        // 1 / H(1,000,000, 1.1) and H(200, 1.1) / H(1,000,000, 1.1).
        assert!((zipf_share(1) - 0.1239).abs() < 1e-3);
        assert!((zipf_share(ZIPF_CHECKED) - 0.5821).abs() < 1e-3);
        assert!((zipf_share(ACCOUNTS) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn workloads_are_chosen_by_name() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let options =
            Options::parse(&args(&["--workload", "zipf", "--workload", "miss,select-only"])).unwrap();
        assert_eq!(options.workloads, [Workload::SelectOnly, Workload::ZipfMixed, Workload::Miss]);
        assert_eq!(Options::parse(&[]).unwrap().workloads, Workload::ALL);
        assert!(Options::parse(&args(&["--workload", "zipfian"])).is_err());
        assert_eq!(Options::parse(&args(&["--duration", "3s"])).unwrap().duration, Duration::from_secs(3));
    }

    #[test]
    fn scripts_cover_every_account_and_range() {
        assert_eq!(ACCOUNTS % WARM_CLIENTS, 0);
        assert_eq!(ACCOUNTS % HEAVY_RANGES, 0);
        let prelude = heavy_ranges_prelude("1");
        assert!(prelude.contains("\\set lo (:k - 1) * 5000 + 1") && prelude.contains("\\set hi :lo + 4999"));
    }
}
