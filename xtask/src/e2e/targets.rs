//! What pgbench is pointed at: PostgreSQL itself, PgBouncer, pgpool-II with its query cache, and
//! strata-proxy (embedded L2, Redis L2), each started on free ports and stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Mode;
use crate::prereq::{BenchTools, Tools};
use crate::services::{as_service_user, free_port, give_to_service_user, Services};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Direct,
    PgBouncer,
    PgPool,
    /// strata-proxy with `--cache off`: the relay alone.
    StrataRelay,
    Strata,
    StrataRedis,
}

impl TargetKind {
    pub(crate) const ALL: [TargetKind; 6] = [
        TargetKind::Direct,
        TargetKind::PgBouncer,
        TargetKind::PgPool,
        TargetKind::StrataRelay,
        TargetKind::Strata,
        TargetKind::StrataRedis,
    ];

    /// The name `--targets` takes.
    pub(crate) fn id(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::PgBouncer => "pgbouncer",
            TargetKind::PgPool => "pgpool",
            TargetKind::StrataRelay => "strata-relay",
            TargetKind::Strata => "strata",
            TargetKind::StrataRedis => "strata-redis",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "PostgreSQL direct",
            TargetKind::PgBouncer => "PgBouncer (session)",
            TargetKind::PgPool => "pgpool-II + query cache",
            TargetKind::StrataRelay => "strata-proxy relay (cache off)",
            TargetKind::Strata => "strata-proxy (embedded L2)",
            TargetKind::StrataRedis => "strata-proxy (Redis L2)",
        }
    }

    /// Whether the target answers repeated reads from a cache.
    pub(crate) fn caches(self) -> bool {
        matches!(self, TargetKind::PgPool | TargetKind::Strata | TargetKind::StrataRedis)
    }

    /// Whether pgbench's writes run through the target in this protocol: pgpool-II 4.3 in raw
    /// mode leaves a session in a transaction after an UPDATE in the extended protocol (`-M
    /// extended` and `-M prepared`, with or without its query cache), and pgbench then aborts the
    /// client ("end of script reached
    /// without completing the last transaction").
    pub(crate) fn runs_writes_in(self, mode: Mode) -> bool {
        !(self == TargetKind::PgPool && mode != Mode::Simple)
    }
}

/// A target's cache counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheCounters {
    hits: f64,
    lookups: f64,
}

impl CacheCounters {
    /// Hits per lookup between `earlier` and now.
    pub(crate) fn ratio_since(&self, earlier: &CacheCounters) -> Option<f64> {
        let lookups = self.lookups - earlier.lookups;
        (lookups > 0.0).then(|| (self.hits - earlier.hits) / lookups)
    }

    /// Lookups between `earlier` and now.
    pub(crate) fn lookups_since(&self, earlier: &CacheCounters) -> u64 {
        (self.lookups - earlier.lookups).max(0.0) as u64
    }
}

/// A running target.
pub(crate) struct Target {
    kind: TargetKind,
    port: u16,
    /// strata-proxy's /metrics port.
    http_port: Option<u16>,
    process: Option<Daemon>,
}

/// The bench configuration of strata-proxy: caches big enough for every account in both
/// protocols, and a TTL longer than the run.
const STRATA_CONFIG: &str = "\
[cache]
default_ttl_ms = 3600000

[cache.l1]
capacity_bytes = 2147483648

[cache.l2.storage]
backend = \"memory\"
capacity_bytes = 2147483648
";

impl Target {
    pub(crate) fn start(
        kind: TargetKind,
        tools: &Tools,
        bench_tools: &BenchTools,
        services: &Services,
        proxy_binary: &Path,
        work: &Path,
    ) -> Result<Self> {
        let pg_port = services.postgres_port();
        let target = match kind {
            TargetKind::Direct => Target { kind, port: pg_port, http_port: None, process: None },
            TargetKind::PgBouncer => start_pgbouncer(tools, bench_tools, pg_port, work)?,
            TargetKind::PgPool => start_pgpool(tools, bench_tools, pg_port, work)?,
            TargetKind::StrataRelay | TargetKind::Strata | TargetKind::StrataRedis => {
                let redis = (kind == TargetKind::StrataRedis)
                    .then(|| format!("redis://127.0.0.1:{}/", services.redis_port()));
                if redis.is_some() {
                    flush_redis(tools, services.redis_port())?;
                }
                start_strata(kind, proxy_binary, pg_port, redis.as_deref(), work)?
            }
        };
        wait_for_postgres_protocol(target.port, &target.process)?;
        Ok(target)
    }

    pub(crate) fn kind(&self) -> TargetKind {
        self.kind
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Hits and lookups so far: strata-proxy's replayed requests per request, pgpool-II's
    /// `SHOW pool_cache`; `None` for targets without a cache.
    pub(crate) fn cache_counters(&self) -> Result<Option<CacheCounters>> {
        match self.kind {
            TargetKind::Strata | TargetKind::StrataRedis => {
                let Some(http) = self.http_port else { return Ok(None) };
                let text = http_get(http, "/metrics")?;
                let value = |name: &str| -> f64 {
                    text.lines()
                        .filter(|l| l.starts_with(name))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum()
                };
                Ok(Some(CacheCounters {
                    hits: value("strata_proxy_replays_total"),
                    lookups: value("strata_proxy_requests_total"),
                }))
            }
            TargetKind::PgPool => {
                let out = super::psql(self.port, super::DATABASE, "SHOW pool_cache")?;
                let fields: Vec<f64> = out
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .split('|')
                    .take(2)
                    .filter_map(|f| f.trim().parse().ok())
                    .collect();
                match fields[..] {
                    // num_cache_hits, num_selects (the selects that went to PostgreSQL).
                    [hits, selects] => Ok(Some(CacheCounters { hits, lookups: hits + selects })),
                    _ => bail!("unexpected SHOW pool_cache output: {out}"),
                }
            }
            TargetKind::Direct | TargetKind::PgBouncer | TargetKind::StrataRelay => Ok(None),
        }
    }
}

/// A server process in its own process group; on drop the whole group (a server's worker
/// processes, and runuser above it) gets `stop_signal`, then SIGKILL after a grace period.
pub(super) struct Daemon {
    child: Child,
    stop_signal: &'static str,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ =
            Command::new("kill").args(["-s", self.stop_signal, "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && group_alive(&group) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

/// Whether any process of the group is left (`kill -0` succeeds).
fn group_alive(group: &str) -> bool {
    Command::new("kill").args(["-0", "--", group]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Starts a server in a new process group, output to `log`; `stop_signal` is its fast shutdown.
pub(super) fn spawn(mut cmd: Command, log: PathBuf, stop_signal: &'static str) -> Result<Daemon> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(Daemon { child, stop_signal, log })
}

fn start_pgbouncer(tools: &Tools, bench: &BenchTools, pg_port: u16, work: &Path) -> Result<Target> {
    let settings = "pool_mode = session\nmax_client_conn = 500\ndefault_pool_size = 100\n\
                    ignore_startup_parameters = extra_float_digits\n";
    let (port, daemon, _) = spawn_pgbouncer(tools, &bench.pgbouncer, pg_port, work, settings, false)?;
    Ok(Target { kind: TargetKind::PgBouncer, port, http_port: None, process: Some(daemon) })
}

/// Starts PgBouncer as the service user in `work/pgbouncer`, every database on the PostgreSQL at
/// `pg_port`, trust authentication for `postgres`, and `settings` (ini lines) for the rest;
/// `raise_file_limit` lifts the soft open-files limit to the hard one first (runuser's PAM
/// session puts it back to 1024, too few for thousands of clients). Returns its port, the
/// process and its log.
pub(super) fn spawn_pgbouncer(
    tools: &Tools,
    pgbouncer: &Path,
    pg_port: u16,
    work: &Path,
    settings: &str,
    raise_file_limit: bool,
) -> Result<(u16, Daemon, PathBuf)> {
    let dir = work.join("pgbouncer");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    // With auth_type trust the user must still be in auth_file.
    let ini = format!(
        "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {d}/userlist.txt\n{settings}",
        d = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini)?;
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
    give_to_service_user(tools, &dir)?;
    let mut cmd = if raise_file_limit {
        let mut cmd = as_service_user(tools, Path::new("/bin/sh"));
        cmd.args(["-c", "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" \"$@\""]).arg(pgbouncer);
        cmd
    } else {
        as_service_user(tools, pgbouncer)
    };
    cmd.arg(dir.join("pgbouncer.ini"));
    let log = dir.join("pgbouncer.log");
    let daemon = spawn(cmd, log.clone(), "TERM")?;
    Ok((port, daemon, log))
}

fn start_pgpool(tools: &Tools, bench: &BenchTools, pg_port: u16, work: &Path) -> Result<Target> {
    let dir = work.join("pgpool");
    std::fs::create_dir_all(dir.join("oiddir"))?;
    let port = free_port()?;
    let pcp_port = free_port()?;
    // Raw mode (one backend), one pooled backend connection per child, 40 children (32 clients
    // plus the counters' own connection), the query cache in shared memory, sized for every
    // account in both protocols, never expiring, invalidated by table on writes.
    let conf = format!(
        "backend_clustering_mode = 'raw'\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
         unix_socket_directories = '{d}'\npcp_listen_addresses = ''\npcp_port = {pcp_port}\n\
         pcp_socket_dir = '{d}'\nbackend_hostname0 = '127.0.0.1'\nbackend_port0 = {pg_port}\n\
         backend_weight0 = 1\nbackend_flag0 = 'DISALLOW_TO_FAILOVER'\nenable_pool_hba = off\n\
         num_init_children = 40\nmax_pool = 1\nconnection_cache = on\nload_balance_mode = off\n\
         health_check_period = 0\nsr_check_period = 0\nfailover_on_backend_error = off\n\
         use_watchdog = off\nlogdir = '{d}'\npid_file_name = '{d}/pgpool.pid'\n\
         log_destination = 'stderr'\nmemory_cache_enabled = on\nmemqcache_method = 'shmem'\n\
         memqcache_total_size = 1024MB\nmemqcache_max_num_cache = 4000000\nmemqcache_expire = 0\n\
         memqcache_auto_cache_invalidation = on\nmemqcache_maxcache = 409600\n\
         memqcache_cache_block_size = 1MB\nmemqcache_oiddir = '{d}/oiddir'\n",
        d = dir.display()
    );
    std::fs::write(dir.join("pgpool.conf"), conf)?;
    std::fs::write(dir.join("pcp.conf"), "")?;
    std::fs::write(dir.join("pool_hba.conf"), "")?;
    give_to_service_user(tools, &dir)?;
    let mut cmd = as_service_user(tools, &bench.pgpool);
    cmd.arg("-n").arg("-f").arg(dir.join("pgpool.conf")).arg("-F").arg(dir.join("pcp.conf"));
    cmd.arg("-a").arg(dir.join("pool_hba.conf"));
    let daemon = spawn(cmd, dir.join("pgpool.log"), "INT")?;
    Ok(Target { kind: TargetKind::PgPool, port, http_port: None, process: Some(daemon) })
}

fn start_strata(
    kind: TargetKind,
    binary: &Path,
    pg_port: u16,
    redis: Option<&str>,
    work: &Path,
) -> Result<Target> {
    let dir = work.join(kind.id());
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let http_port = free_port()?;
    std::fs::write(dir.join("strata.toml"), STRATA_CONFIG)?;
    let mut cmd = Command::new(binary);
    cmd.arg("--upstream")
        .arg(format!("postgres://127.0.0.1:{pg_port}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--http")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--config")
        .arg(dir.join("strata.toml"))
        .args(["--catalog-user", "postgres", "--catalog-databases", super::DATABASE, "--log", "warn"]);
    if kind == TargetKind::StrataRelay {
        cmd.args(["--cache", "off"]);
    }
    if let Some(url) = redis {
        cmd.arg("--redis").arg(url);
    }
    let daemon = spawn(cmd, dir.join("strata-proxy.log"), "TERM")?;
    Ok(Target { kind, port, http_port: Some(http_port), process: Some(daemon) })
}

/// The strata-proxy command line as BENCHMARKS.md shows it.
pub(crate) fn strata_command(kind: TargetKind) -> String {
    let extra = match kind {
        TargetKind::StrataRedis => " --redis redis://127.0.0.1:$REDIS_PORT/",
        TargetKind::StrataRelay => " --cache off",
        _ => "",
    };
    format!(
        "strata-proxy --upstream postgres://127.0.0.1:$PG_PORT --listen 127.0.0.1:$PORT --http 127.0.0.1:$HTTP_PORT \
         --config strata.toml --catalog-user postgres --catalog-databases bench --log warn{extra}"
    )
}

pub(crate) fn strata_config() -> &'static str {
    STRATA_CONFIG
}

/// Waits until the target answers a query (10 s).
pub(super) fn wait_for_postgres_protocol(port: u16, process: &Option<Daemon>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new("psql")
            .args(["-X", "-q", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", super::DATABASE, "-c", "SELECT 1"])
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = process.as_ref().map(|d| std::fs::read_to_string(&d.log).unwrap_or_default());
            bail!("nothing answered on port {port} within 20 s\n{}", log.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn flush_redis(tools: &Tools, port: u16) -> Result<()> {
    let status = Command::new(&tools.redis_cli)
        .args(["-p", &port.to_string(), "FLUSHALL"])
        .stdout(Stdio::null())
        .status()
        .context("running redis-cli FLUSHALL")?;
    if !status.success() {
        bail!("redis-cli FLUSHALL failed");
    }
    Ok(())
}

/// A plain HTTP/1.0 GET on 127.0.0.1, returning the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to /metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200") => Ok(body.to_owned()),
        _ => bail!("GET {path} failed: {}", response.lines().next().unwrap_or_default()),
    }
}
