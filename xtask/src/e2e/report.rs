//! BENCHMARKS.md: the machine, the versions, the tables with ratios to direct PostgreSQL, the
//! goals of the proxy measured against them, and the commands to rerun everything.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::targets::{strata_command, strata_config, TargetKind};
use super::{
    zipf_share, Mode, Pair, Run, WarmUp, Workload, ACCOUNTS, HEAVY_MODE, HEAVY_RANGES, PAIR_ROUNDS, PAIR_RUN,
    PG_CONF, SCALE, WARM_CLIENTS, ZIPF_CHECKED, ZIPF_SKEW,
};
use crate::prereq::{BenchTools, Tools};

/// Where and with what the benchmark ran.
#[derive(Debug, Clone)]
pub(crate) struct Environment {
    cpu: String,
    cores: String,
    memory: String,
    kernel: String,
    versions: Vec<(&'static str, String)>,
    commit: String,
    date: String,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Environment {
    pub(crate) fn read(tools: &Tools, bench: &BenchTools, proxy: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or_else(|| "unknown".to_owned(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0));
        let pg = |b: &str| tools.pg_bindir.join(b).display().to_string();
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(crate::workspace_root())
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        let commit = first_line(
            "git",
            &["-C", &crate::workspace_root().display().to_string(), "rev-parse", "--short", "HEAD"],
        );
        Environment {
            cpu,
            cores: first_line("nproc", &[]),
            memory,
            kernel: first_line("uname", &["-sr"]),
            versions: vec![
                ("PostgreSQL", first_line(&pg("postgres"), &["--version"])),
                ("pgbench", first_line(&pg("pgbench"), &["--version"])),
                ("PgBouncer", first_line(&bench.pgbouncer.display().to_string(), &["--version"])),
                ("pgpool-II", first_line(&bench.pgpool.display().to_string(), &["--version"])),
                ("Redis", first_line(&tools.redis_server.display().to_string(), &["--version"])),
                ("strata-proxy", first_line(&proxy.display().to_string(), &["--version"])),
                ("rustc", first_line("rustc", &["--version"])),
            ],
            commit: if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

fn find(runs: &[Run], target: TargetKind, workload: Workload, mode: Mode, clients: u32) -> Option<&Run> {
    runs.iter()
        .find(|r| r.target == target && r.workload == workload && r.mode == mode && r.clients == clients)
}

/// TPS of a run that produced figures.
fn tps(r: Option<&Run>) -> Option<f64> {
    r.filter(|r| r.error.is_none()).map(|r| r.tps)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".to_owned(), |r| format!("{r:.2}×"))
}

fn fmt_tps(t: f64) -> String {
    if t >= 10_000.0 {
        format!("{:.1}k", t / 1000.0)
    } else {
        format!("{t:.0}")
    }
}

/// The combinations measured, in the order the tables show them.
fn combinations() -> Vec<(Workload, Mode, u32)> {
    let mut all = Vec::new();
    for mode in Mode::ALL {
        for clients in [1, 8, 32] {
            all.push((Workload::SelectOnly, mode, clients));
        }
    }
    all.push((Workload::HeavyRead, HEAVY_MODE, 8));
    all.push((Workload::HeavyMixed, HEAVY_MODE, 8));
    all.push((Workload::ZipfMixed, Mode::Simple, 8));
    all.push((Workload::ZipfMixed, Mode::Prepared, 8));
    for mode in Mode::ALL {
        all.push((Workload::Miss, mode, 8));
    }
    for mode in Mode::ALL {
        all.push((Workload::ZipfRead, mode, 8));
    }
    all
}

/// How the run was set up, as the report states it.
#[derive(Debug, Clone)]
pub(crate) struct Settings<'a> {
    /// The lengths of the runs, as a phrase.
    pub(crate) lengths: &'a str,
    pub(crate) warm_up_secs: u64,
    pub(crate) elapsed: Duration,
    /// The plot's file name, next to the report, when one is drawn.
    pub(crate) plot: Option<&'a str>,
}

pub(crate) fn render(
    runs: &[Run],
    pairs: &[Pair],
    warm_ups: &[WarmUp],
    env: &Environment,
    settings: &Settings<'_>,
) -> String {
    let Settings { lengths, warm_up_secs, elapsed, plot } = *settings;
    let mut targets: Vec<TargetKind> = Vec::new();
    for r in runs {
        if !targets.contains(&r.target) {
            targets.push(r.target);
        }
    }
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Strata benchmarks: strata-proxy against PostgreSQL, PgBouncer and pgpool-II\n");
    let _ = writeln!(
        w,
        "Written by `cargo xtask bench e2e` on {} (whole run {:.1} min). Every figure below was measured in \
         that one run, on one machine, target after target, so ratios compare like with like. On a noisy box a \
         target's speed still drifts between runs minutes apart: a ratio within 10-20% of 1 can go either way \
         in another run (the paired rounds below show by how much). Rerun it with the same command; the \
         per-crate micro-benchmarks are `cargo xtask bench`.\n",
        env.date,
        elapsed.as_secs_f64() / 60.0
    );
    if let Some(png) = plot {
        let _ = writeln!(w, "![TPS by clients, select-only]({png})\n");
    }

    let _ = writeln!(w, "## Machine and versions\n");
    let _ = writeln!(
        w,
        "- CPU: {} ({} cores as the OS sees them), memory {}, {}",
        env.cpu, env.cores, env.memory, env.kernel
    );
    let _ = writeln!(w, "- Strata commit {}", env.commit);
    for (name, version) in &env.versions {
        let _ = writeln!(w, "- {name}: {version}");
    }
    let _ = writeln!(
        w,
        "\npgbench, PostgreSQL and the target all share the same cores: the load generator's own cost is part of \
         every figure, as it is for an application on the same host.\n"
    );

    let _ = writeln!(w, "## Goals\n");
    let _ = writeln!(
        w,
        "The goals of issue 7, each checked against this run's figures (not asserted in any test).\n"
    );
    let _ = writeln!(w, "| goal | target | measured | met |");
    let _ = writeln!(w, "|---|---|---|---|");
    for target in [TargetKind::Strata, TargetKind::StrataRedis] {
        if !targets.contains(&target) {
            continue;
        }
        for (goal, measured, met) in goals(runs, target) {
            let _ = writeln!(
                w,
                "| {goal} | {} | {measured} | {} |",
                target.label(),
                if met { "yes" } else { "**no**" }
            );
        }
    }

    let hop = hop_goals(runs, pairs);
    if !hop.is_empty() {
        let _ = writeln!(
            w,
            "\nThe goals of issue 18 (a cheaper hop), from the same run: the relay (`--cache off`) against PgBouncer \
             in every protocol, the cache's misses against the relay, the zipfian reads from a cold start against \
             direct PostgreSQL.{}\n",
            if pairs.is_empty() {
                ""
            } else {
                " The relay is judged against PgBouncer by the median of rounds run at the end with both up, \
                 alternating which goes first; the ratio of the separate runs above (minutes apart) is shown beside it."
            }
        );
        let _ = writeln!(w, "| goal | target | measured | met |");
        let _ = writeln!(w, "|---|---|---|---|");
        for (goal, target, measured, met) in hop {
            let _ = writeln!(
                w,
                "| {goal} | {} | {measured} | {} |",
                target.label(),
                if met { "yes" } else { "**no**" }
            );
        }
    }
    let _ = writeln!(
        w,
        "\nHow to read the workloads (what holds whatever the figures):\n\n\
         - **select-only** picks one of {ACCOUNTS} accounts uniformly, so a cache helps only once it holds most of \
         them: the caching targets were filled first (below). At one client every request is one round trip \
         through an extra process, so the proxy competes with PostgreSQL's own cost of a point select \
         (tens of microseconds) with its hop and wake-ups.\n\
         - **heavy read** repeats {HEAVY_RANGES} summaries that each cost PostgreSQL milliseconds: this is where a \
         result cache pays.\n\
         - **90/10**: each account update changes the one summary whose range holds that account. With \
         key-level invalidation (on by default in strata-proxy), an account update invalidates only the cached \
         summaries whose range covers that account (ranges are tracked in buckets of consecutive keys, so a \
         summary whose range shares a bucket with it can go as well); the other summaries stay cached. pgpool-II \
         invalidates by table: any write to `pgbench_accounts` drops every cached summary.\n\
         - **zipfian point reads, 10% updates** reads one balance by key (`-S`'s statement) 90% of the time and \
         updates one 10%, each on an account drawn by `random_zipfian(1, {ACCOUNTS}, {ZIPF_SKEW})`, reads and \
         updates independently: account 1 gets {top:.1}% of the draws, accounts 1 to {ZIPF_CHECKED} {head:.1}%, \
         and the other {tail:.1}% spread over the rest of the table (the hot accounts are the lowest `aid`s; no \
         `permute()`). It runs after the fill of its protocol (below) and the select-only runs, so it starts \
         with the accounts cached. An update changes one account: a cache that invalidates by key can keep \
         serving the other accounts' cached reads, one that invalidates by table cannot. strata-proxy's hit \
         ratio counts the updates among its requests, so it is at most 90% here. pgpool-II runs it in the \
         simple protocol only (below).\n\
         - **cache miss** never repeats a parameter: every request pays the hop, the lookup and the fill (stored in \
         L1 and L2), and PostgreSQL still runs the query on the same two cores.\n\
         - **zipfian point reads from a cold start** is `-S`'s statement on an account drawn by the same zipfian \
         distribution, 100% reads, measured first for each target with no warm-up: a caching target is started \
         afresh for each protocol, so its cache is empty when the run begins and fills as it goes (the hit ratio \
         is over the whole run).\n",
        top = zipf_share(1) * 100.0,
        head = zipf_share(ZIPF_CHECKED) * 100.0,
        tail = (1.0 - zipf_share(ZIPF_CHECKED)) * 100.0,
    );
    let _ = writeln!(w, "\n## TPS, and ratio to direct PostgreSQL\n");
    let _ = write!(w, "| workload | mode | clients |");
    for t in &targets {
        let _ = write!(w, " {} |", t.label());
    }
    let _ = write!(w, "\n|---|---|---|");
    for _ in &targets {
        let _ = write!(w, "---|");
    }
    let _ = writeln!(w);
    for (workload, mode, clients) in combinations() {
        let direct = tps(find(runs, TargetKind::Direct, workload, mode, clients));
        if targets.iter().all(|t| find(runs, *t, workload, mode, clients).is_none()) {
            continue;
        }
        let _ = write!(w, "| {} | {mode} | {clients} |", workload.title());
        for t in &targets {
            let run = find(runs, *t, workload, mode, clients);
            let cell = match (run, tps(run)) {
                (_, Some(v)) if *t == TargetKind::Direct => fmt_tps(v),
                (_, Some(v)) => format!("{} ({})", fmt_tps(v), fmt_ratio(ratio(Some(v), direct))),
                (Some(_), None) => "failed".to_owned(),
                (None, None) => "-".to_owned(),
            };
            let _ = write!(w, " {cell} |");
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "\n## Every run\n");
    let _ = writeln!(
        w,
        "Latencies are per transaction from pgbench's `-l` logs (p50, p99: nearest rank over every transaction); \
         hits are the target's own counters over the run: strata-proxy's replayed requests per request \
         (`strata_proxy_replays_total` / `strata_proxy_requests_total`), pgpool-II's `num_cache_hits` per SELECT \
         (`SHOW pool_cache`).\n"
    );
    let _ = writeln!(
        w,
        "| workload | mode | clients | target | TPS | × direct | avg ms | p50 ms | p99 ms | hits | failed |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (workload, mode, clients) in combinations() {
        let direct = tps(find(runs, TargetKind::Direct, workload, mode, clients));
        for t in &targets {
            let Some(r) = find(runs, *t, workload, mode, clients) else { continue };
            if let Some(error) = &r.error {
                let _ = writeln!(
                    w,
                    "| {} | {mode} | {clients} | {} | failed: {} | | | | | | |",
                    workload.title(),
                    t.label(),
                    error.replace('|', "/")
                );
                continue;
            }
            let hits = r.hit_ratio.map_or("-".to_owned(), |h| format!("{:.1}%", h * 100.0));
            let _ = writeln!(
                w,
                "| {} | {mode} | {clients} | {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {hits} | {} |",
                workload.title(),
                t.label(),
                r.tps,
                fmt_ratio(ratio(Some(r.tps), direct)),
                r.latency_avg_ms,
                r.latency_p50_ms,
                r.latency_p99_ms,
                r.failed
            );
        }
    }
    for workload in [Workload::HeavyMixed, Workload::ZipfMixed] {
        let checked: Vec<&Run> =
            runs.iter().filter(|r| r.workload == workload && r.fresh_after.is_some()).collect();
        if checked.is_empty() {
            continue;
        }
        let (intro, stale) = match workload {
            Workload::HeavyMixed => (
                format!(
                    "After the 90/10 run, each of the {HEAVY_RANGES} summaries was read once more through the \
                     target and compared with the same sum computed by PostgreSQL (uncached; `heavy_check.sql`):"
                ),
                "**a stale summary was served**",
            ),
            Workload::ZipfMixed => (
                format!(
                    "After each zipfian run, accounts 1 to {ZIPF_CHECKED} (the likeliest keys, {:.1}% of the draws) \
                     were read once more through the target, in the run's protocol and with its statement, and \
                     compared with their balance read by PostgreSQL (uncached; `zipf_check.sql`):",
                    zipf_share(ZIPF_CHECKED) * 100.0
                ),
                "**a stale balance was served**",
            ),
            Workload::SelectOnly | Workload::HeavyRead | Workload::Miss | Workload::ZipfRead => continue,
        };
        let _ = writeln!(w, "\n{intro}\n");
        for r in checked {
            let verdict = if r.fresh_after == Some(true) { "all equal" } else { stale };
            let _ = writeln!(w, "- {}, {}: {verdict}", r.target.label(), r.mode);
        }
    }
    if !warm_ups.is_empty() {
        let _ = writeln!(
            w,
            "\n## Filling the caches\n\nBefore the select-only and zipfian runs, each caching target read the {ACCOUNTS} \
             accounts once per protocol (32 clients, each walking its own slice; `warm_accounts.sql`), so that `-S` \
             (uniform over every account) and the zipfian reads (the same statement) find them cached, with at most {} s \
             per pass: a target that fills slower starts its runs with part of the accounts cached, which its hit ratio \
             above shows. Reads are the target's own count.\n",
            super::WARM_CAP.as_secs()
        );
        let _ = writeln!(w, "| target | mode | seconds | reads | reads per second | all accounts |");
        let _ = writeln!(w, "|---|---|---|---|---|---|");
        for u in warm_ups {
            let reads = u.reads.map_or("?".to_owned(), |r| r.to_string());
            let rate = u.reads.map_or("?".to_owned(), |r| format!("{:.0}", r as f64 / u.seconds));
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {reads} | {rate} | {} |",
                u.target.label(),
                u.mode,
                u.seconds,
                if u.complete { "yes" } else { "no (time cap)" }
            );
        }
    }

    let _ = writeln!(w, "\n## How it was run\n");
    let _ = writeln!(
        w,
        "`cargo xtask bench e2e` installs what is missing (PostgreSQL, Redis, PgBouncer, pgpool-II, a font for the \
         plot), builds strata-proxy in release mode, starts a throwaway PostgreSQL and Redis on free ports, runs \
         `pgbench -i -s {SCALE}` ({ACCOUNTS} accounts), then starts each target in turn and runs the workloads \
         against it. {lengths}; `-j` is 1 for one client, else 2 (the core count). PostgreSQL settings on top of \
         the test defaults (fsync off, synchronous_commit off): `{}`.\n",
        PG_CONF.trim().replace('\n', "`, `")
    );
    if !pairs.is_empty() {
        let _ = writeln!(
            w,
            "Last, PgBouncer and the relay are started side by side and compared in select-only at 1, 8 and 32 \
             clients in each protocol: after a 2 s warm-up of each, {PAIR_ROUNDS} rounds of one {} s run on each, \
             PgBouncer first in even rounds and the relay first in odd ones; the ratio is taken per round.\n",
            PAIR_RUN.as_secs()
        );
    }
    let _ = writeln!(w, "Targets:\n");
    let _ = writeln!(w, "- PostgreSQL direct: pgbench connects to the server itself.");
    let _ =
        writeln!(w, "- PgBouncer: `pool_mode = session`, `default_pool_size = 100`, `auth_type = trust`.");
    let _ = writeln!(
        w,
        "- pgpool-II: raw mode, one backend, `num_init_children = 40`, `max_pool = 1`, `memory_cache_enabled = on`, \
         `memqcache_method = 'shmem'`, `memqcache_total_size = 1024MB`, `memqcache_max_num_cache = 4000000`, \
         `memqcache_expire = 0`, `memqcache_auto_cache_invalidation = on`."
    );
    let _ = writeln!(w, "- strata-proxy relay only: `{}`", strata_command(TargetKind::StrataRelay));
    let _ = writeln!(w, "- strata-proxy: `{}`", strata_command(TargetKind::Strata));
    let _ = writeln!(w, "- strata-proxy with Redis: `{}`", strata_command(TargetKind::StrataRedis));
    let _ = writeln!(
        w,
        "\n`strata.toml` (caches big enough for every account in both protocols, a TTL longer than the run; Redis \
         replaces the memory L2 when `--redis` is given):\n\n```toml\n{}```\n",
        strata_config()
    );
    let names: Vec<String> = super::script_texts().iter().map(|(name, _)| format!("`{name}`")).collect();
    let _ = writeln!(w, "Scripts ({}):\n", names.join(", "));
    let _ = writeln!(w, "```");
    for (name, text) in super::script_texts() {
        let _ = writeln!(w, "-- {name}\n{text}");
    }
    let _ = writeln!(w, "```\n");
    let _ = writeln!(
        w,
        "The heavy runs use the simple protocol for every target: their queries cost milliseconds, so the \
         protocol's own cost does not matter, and pgpool-II 4.3 in raw mode leaves a session in a transaction \
         after an UPDATE in the extended protocol (with or without its query cache), which makes pgbench abort. \
         The zipfian run's point reads cost tens of microseconds, so it runs in both protocols, except on \
         pgpool-II, which runs it in the simple protocol only for the same reason.\n"
    );
    let _ = writeln!(
        w,
        "pgbench commands, with `$PORT` the target's port (the warm-up runs before each measured run are \
         the same command with `-T {}` and no log):\n",
        warm_up_secs
    );
    let _ = writeln!(w, "```");
    let mut seen = Vec::new();
    for r in runs {
        if !seen.contains(&r.command) {
            let _ = writeln!(w, "{}", r.command);
            seen.push(r.command.clone());
        }
    }
    let _ = writeln!(
        w,
        "pgbench -n -h 127.0.0.1 -p $PORT -U postgres -c {WARM_CLIENTS} -j 2 -M $MODE -t {} -f warm_accounts.sql -D k=0 bench   # filling, capped at {} s",
        ACCOUNTS / WARM_CLIENTS,
        super::WARM_CAP.as_secs()
    );
    for (workload, mode, after) in [
        (Workload::HeavyMixed, HEAVY_MODE.to_string(), "the 90/10 run"),
        (Workload::ZipfMixed, "$MODE".to_owned(), "each zipfian run, in its protocol"),
    ] {
        let Some(check) = workload.freshness_check() else { continue };
        if runs.iter().any(|r| r.workload == workload) {
            let _ = writeln!(
                w,
                "pgbench -n -h 127.0.0.1 -p $PORT -U postgres -c 1 -j 1 -M {mode} -t {} -f {} -D {} bench   # after {after}",
                check.reads, check.script, check.start
            );
        }
    }
    let _ = writeln!(w, "```");
    md
}

/// Each goal for one strata target: (goal, measured, met).
fn goals(runs: &[Run], target: TargetKind) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let get = |t, w, m, c| find(runs, t, w, m, c).filter(|r| r.error.is_none());
    let direct = TargetKind::Direct;
    for mode in [Mode::Simple, Mode::Prepared] {
        if let (Some(s), Some(d)) =
            (get(target, Workload::SelectOnly, mode, 1), get(direct, Workload::SelectOnly, mode, 1))
        {
            out.push((
                format!("select-only, 1 client, {mode}: p50 ≤ 0.030 ms"),
                format!("p50 {:.3} ms", s.latency_p50_ms),
                s.latency_p50_ms <= 0.030,
            ));
            let r = s.tps / d.tps;
            out.push((format!("select-only, 1 client, {mode}: ≥ 1.5× direct"), format!("{r:.2}×"), r >= 1.5));
        }
    }
    for mode in [Mode::Simple, Mode::Prepared] {
        let Some(s) = get(target, Workload::SelectOnly, mode, 8) else { continue };
        for (other, factor) in [(direct, 1.2), (TargetKind::PgBouncer, 1.5), (TargetKind::PgPool, 3.0)] {
            if let Some(o) = get(other, Workload::SelectOnly, mode, 8) {
                let r = s.tps / o.tps;
                out.push((
                    format!("select-only, 8 clients, {mode}: ≥ {factor}× {}", other.label()),
                    format!("{r:.2}×"),
                    r >= factor,
                ));
            }
        }
    }
    for (workload, factor) in [(Workload::HeavyRead, 10.0), (Workload::HeavyMixed, 3.0)] {
        if let (Some(s), Some(d)) =
            (get(target, workload, HEAVY_MODE, 8), get(direct, workload, HEAVY_MODE, 8))
        {
            let r = s.tps / d.tps;
            let fresh = s.fresh_after != Some(false);
            let stale_note = if workload == Workload::HeavyMixed {
                if fresh {
                    ", no stale summary"
                } else {
                    ", STALE summary found"
                }
            } else {
                ""
            };
            out.push((
                format!(
                    "{}, 8 clients: ≥ {factor}× direct{}",
                    workload.title(),
                    if workload == Workload::HeavyMixed { ", no stale read" } else { "" }
                ),
                format!("{r:.2}×{stale_note}"),
                r >= factor && fresh,
            ));
        }
    }
    for mode in [Mode::Simple, Mode::Prepared] {
        let Some(s) = get(target, Workload::Miss, mode, 8) else { continue };
        if let Some(d) = get(direct, Workload::Miss, mode, 8) {
            let r = s.tps / d.tps;
            out.push((
                format!("cache miss, 8 clients, {mode}: ≥ 0.85× direct"),
                format!("{r:.2}×"),
                r >= 0.85,
            ));
        }
        if let Some(b) = get(TargetKind::PgBouncer, Workload::Miss, mode, 8) {
            let r = s.tps / b.tps;
            out.push((format!("cache miss, 8 clients, {mode}: ≥ PgBouncer"), format!("{r:.2}×"), r >= 1.0));
        }
    }
    for r in runs.iter().filter(|r| r.target == target) {
        if let Some(error) = &r.error {
            out.push((
                format!("{}, {} clients, {}: runs", r.workload.title(), r.clients, r.mode),
                format!("failed: {}", error.replace('|', "/")),
                false,
            ));
        }
    }
    out
}

/// Issue 18's goals: (goal, target, measured, met).
fn hop_goals(runs: &[Run], pairs: &[Pair]) -> Vec<(String, TargetKind, String, bool)> {
    let mut out = Vec::new();
    let get = |t, w, m, c| find(runs, t, w, m, c).filter(|r| r.error.is_none());
    for mode in Mode::ALL {
        for clients in [1, 8, 32] {
            let goal = format!(
                "select-only, {clients} client{}, {mode}: ≥ 1.1× PgBouncer (session)",
                plural(clients)
            );
            let relay = get(TargetKind::StrataRelay, Workload::SelectOnly, mode, clients);
            let separate = match (relay, get(TargetKind::PgBouncer, Workload::SelectOnly, mode, clients)) {
                (Some(s), Some(b)) => Some(s.tps / b.tps),
                _ => None,
            };
            let pair = pairs.iter().find(|p| p.mode == mode && p.clients == clients);
            match (pair, separate) {
                (Some(pair), _) => {
                    let median = pair.median();
                    let low = pair.ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let high = pair.ratios.iter().copied().fold(0.0, f64::max);
                    let beside = separate.map_or(String::new(), |r| format!("; separate runs {r:.2}×"));
                    out.push((
                        goal,
                        TargetKind::StrataRelay,
                        format!(
                            "{median:.2}× (median of {} rounds, {low:.2}–{high:.2}{beside})",
                            pair.ratios.len()
                        ),
                        median >= 1.1,
                    ));
                }
                (None, Some(r)) => out.push((goal, TargetKind::StrataRelay, format!("{r:.2}×"), r >= 1.1)),
                (None, None) => {}
            }
        }
    }
    for target in [TargetKind::Strata, TargetKind::StrataRedis] {
        for mode in Mode::ALL {
            let miss = get(target, Workload::Miss, mode, 8);
            if let (Some(s), Some(relay)) = (miss, get(TargetKind::StrataRelay, Workload::Miss, mode, 8)) {
                let r = s.tps / relay.tps;
                out.push((
                    format!("cache miss, 8 clients, {mode}: ≥ 0.95× relay"),
                    target,
                    format!("{r:.2}×"),
                    r >= 0.95,
                ));
            }
        }
        for mode in Mode::ALL {
            let zipf = get(target, Workload::ZipfRead, mode, 8);
            if let (Some(s), Some(d)) = (zipf, get(TargetKind::Direct, Workload::ZipfRead, mode, 8)) {
                let r = s.tps / d.tps;
                let hits = s.hit_ratio.map_or(String::new(), |h| format!(", {:.1}% hits", h * 100.0));
                out.push((
                    format!("zipfian reads from a cold start, 8 clients, {mode}: ≥ 1.5× direct"),
                    target,
                    format!("{r:.2}×{hits}"),
                    r >= 1.5,
                ));
            }
        }
    }
    out
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `target,mode,clients,tps` of the select-only runs, for the plot.
pub(crate) fn csv(runs: &[Run]) -> String {
    let mut out = String::from("target,mode,clients,tps\n");
    for r in runs.iter().filter(|r| r.workload == Workload::SelectOnly) {
        let _ = writeln!(out, "{},{},{},{:.1}", r.target.label(), r.mode, r.clients, r.tps);
    }
    out
}
