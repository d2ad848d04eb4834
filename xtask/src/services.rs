//! Throwaway redis-server and PostgreSQL instances on free loopback ports, stopped on every exit path.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::prereq::{self, Tools};

/// Set when the user interrupts (Ctrl-C) or the process is asked to terminate.
#[derive(Clone)]
pub(crate) struct Interrupted(Arc<AtomicBool>);

impl Interrupted {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) fn install_interrupt_handler() -> Result<Interrupted> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst))
        .context("installing a signal handler")?;
    Ok(Interrupted(flag))
}

/// Runs a command to completion; if we are interrupted first, kills it, so that the servers'
/// guards still run and stop them.
pub(crate) fn run_interruptibly(mut cmd: Command, interrupted: &Interrupted) -> Result<ExitStatus> {
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if interrupted.is_set() {
            let _ = child.kill();
            let status = child.wait()?;
            eprintln!("xtask: interrupted; stopping the test servers");
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1, as the OS hands it out.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) fn scratch_dir(what: &str) -> Result<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("strata-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Both servers, running until dropped.
pub(crate) struct Services {
    redis: Redis,
    postgres: Postgres,
    tools: Tools,
}

impl Services {
    /// Both servers for tests: PostgreSQL also takes TLS (`ssl = on`, a certificate from a
    /// throwaway CA; see [`Services::vars`]).
    pub(crate) fn start(tools: &Tools) -> Result<Self> {
        Self::start_inner(tools, "", true)
    }

    /// Both servers, with `postgresql.conf` lines appended to the test defaults, PostgreSQL
    /// without TLS (benchmarks: what a client and the proxy negotiate stays plain).
    pub(crate) fn start_with(tools: &Tools, extra_pg_conf: &str) -> Result<Self> {
        Self::start_inner(tools, extra_pg_conf, false)
    }

    /// Both servers, PostgreSQL with TLS and `postgresql.conf` lines appended (`bench tls`).
    pub(crate) fn start_with_tls(tools: &Tools, extra_pg_conf: &str) -> Result<Self> {
        Self::start_inner(tools, extra_pg_conf, true)
    }

    fn start_inner(tools: &Tools, extra_pg_conf: &str, tls: bool) -> Result<Self> {
        let redis = Redis::start(tools)?;
        let postgres = Postgres::start(tools, extra_pg_conf, tls)?;
        println!(
            "xtask: redis-server on 127.0.0.1:{}, PostgreSQL on 127.0.0.1:{} (throwaway)",
            redis.port, postgres.port
        );
        Ok(Self { redis, postgres, tools: tools.clone() })
    }

    /// The variables tests read.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRATA_TEST_REDIS_URL", format!("redis://127.0.0.1:{}/", self.redis.port)),
            (
                "STRATA_TEST_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/postgres", self.postgres.port),
            ),
            ("STRATA_TEST_REDIS_SERVER", self.tools.redis_server.display().to_string()),
            ("STRATA_TEST_REDIS_CLI", self.tools.redis_cli.display().to_string()),
            ("STRATA_TEST_PG_BINDIR", self.tools.pg_bindir.display().to_string()),
            // The test PostgreSQL's Unix socket directory, and its TLS files: `root.crt` (the
            // CA), `server.crt` and `server.key` (for `localhost` and 127.0.0.1).
            ("STRATA_TEST_PG_SOCKET_DIR", self.postgres.dir.display().to_string()),
            ("STRATA_TEST_PG_TLS_DIR", self.postgres.dir.join("tls").display().to_string()),
        ]
    }

    pub(crate) fn redis_port(&self) -> u16 {
        self.redis.port
    }

    pub(crate) fn postgres_port(&self) -> u16 {
        self.postgres.port
    }

    /// PostgreSQL's Unix socket directory.
    pub(crate) fn postgres_socket_dir(&self) -> &Path {
        &self.postgres.dir
    }

    pub(crate) fn export_to(&self, cmd: &mut Command) {
        for (name, value) in self.vars() {
            cmd.env(name, value);
        }
    }
}

/// `cargo xtask services`: start the servers, print their variables, wait for Ctrl-C.
pub(crate) fn hold(interrupted: &Interrupted) -> Result<std::process::ExitCode> {
    let tools = prereq::ensure_all()?;
    let services = Services::start(&tools)?;
    for (name, value) in services.vars() {
        println!("export {name}={value}");
    }
    println!("# servers run until Ctrl-C");
    while !interrupted.is_set() {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(tools: &Tools) -> Result<Self> {
        let dir = scratch_dir("redis")?;
        let port = free_port()?;
        let child = Command::new(&tools.redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let mut redis = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !redis_answers_ping(port) {
            if let Some(status) = redis.child.try_wait()? {
                bail!(
                    "redis-server exited at start ({status}); see {}",
                    redis.dir.join("redis.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 15 s on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

struct Postgres {
    dir: PathBuf,
    port: u16,
    tools: Tools,
}

/// Password authentication for two roles tests create (`strata_scram`, `strata_md5`), trust for all else.
/// The `all` database keyword does not match replication connections, so every rule has a
/// `replication` twin: WAL-invalidation tests stream changes over such connections.
const PG_HBA: &str = "\
local all all trust
local replication all trust
host all strata_scram 127.0.0.1/32 scram-sha-256
host replication strata_scram 127.0.0.1/32 scram-sha-256
host all strata_md5 127.0.0.1/32 md5
host replication strata_md5 127.0.0.1/32 md5
host all strata_scram ::1/128 scram-sha-256
host replication strata_scram ::1/128 scram-sha-256
host all strata_md5 ::1/128 md5
host replication strata_md5 ::1/128 md5
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all all ::1/128 trust
host replication all ::1/128 trust
";

/// Lines before [`PG_HBA`] on a server with TLS: `strata_tls_only` gets in over TLS only.
const PG_HBA_TLS_ONLY: &str = "\
hostssl all strata_tls_only 127.0.0.1/32 trust
host all strata_tls_only 127.0.0.1/32 reject
";

/// The test defaults appended to `postgresql.conf` (before a caller's extra lines, which win).
/// `wal_level = logical` and room for slots and senders let tests decode the WAL through
/// temporary logical slots, one or more per test binary running at once.
const PG_TEST_CONF: &str = "\
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
";

impl Postgres {
    fn start(tools: &Tools, extra_conf: &str, tls: bool) -> Result<Self> {
        let dir = scratch_dir("postgres")?;
        let port = free_port()?;
        // From here on, the guard removes the directory whatever happens.
        let pg = Self { dir, port, tools: tools.clone() };
        let tls_conf = if tls {
            let tls_dir = pg.dir.join("tls");
            make_certificates(&tools.openssl, &tls_dir)?;
            format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                tls_dir.display()
            )
        } else {
            String::new()
        };
        give_to_service_user(tools, &pg.dir)?;
        let data = pg.dir.join("data");
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             {PG_TEST_CONF}{tls_conf}{extra_conf}\n",
            pg.dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        // With TLS, one role may log in over TLS only, as on a server that requires it.
        let hba = if tls { format!("{PG_HBA_TLS_ONLY}{PG_HBA}") } else { PG_HBA.to_owned() };
        std::fs::write(data.join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        let log = pg.dir.join("postgres.log");
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("PostgreSQL did not start: {}\n{tail}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(pg)
    }

    /// A PostgreSQL binary, run as the `postgres` user when we are root (it refuses root).
    fn command(&self, binary: &str) -> Command {
        as_service_user(&self.tools, &self.tools.pg_bindir.join(binary))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway CA (`root.crt`) and a server certificate signed by it for `localhost` and
/// 127.0.0.1 (`server.crt`, `server.key`, mode 0600 as PostgreSQL demands), ECDSA P-256, valid
/// for a week.
pub(crate) fn make_certificates(openssl: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(openssl).args(args).current_dir(dir).output().context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let ca = format!("req -x509 {ec} -keyout ca.key -out root.crt -days 7 -subj");
    run(&ca.split(' ').chain(["/CN=strata test CA"]).collect::<Vec<_>>())?;
    let csr = format!("req {ec} -keyout server.key -out server.csr -subj /CN=localhost");
    run(&csr.split(' ').collect::<Vec<_>>())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "7",
        "-extfile",
        "san.ext",
    ])?;
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A server program, run as the `postgres` user when we are root (PostgreSQL and PgBouncer refuse
/// root; everything of theirs lives in directories that user owns).
pub(crate) fn as_service_user(tools: &Tools, program: &Path) -> Command {
    if tools.run_as_postgres {
        let mut cmd =
            Command::new(prereq::find_in_path("runuser").unwrap_or_else(|| PathBuf::from("runuser")));
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Hands a directory to the `postgres` user when servers run as that user.
pub(crate) fn give_to_service_user(tools: &Tools, dir: &Path) -> Result<()> {
    if tools.run_as_postgres {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
        if !status.success() {
            bail!("could not hand {} to the postgres user", dir.display());
        }
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
