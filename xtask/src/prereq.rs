//! Finding, and on Debian/Ubuntu installing, what builds and tests need: libclang, redis, PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context, Result};

/// The binaries the test harness runs.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) redis_server: PathBuf,
    pub(crate) redis_cli: PathBuf,
    pub(crate) pg_bindir: PathBuf,
    /// PostgreSQL refuses to run as root: when we are root, servers run as the `postgres` user.
    pub(crate) run_as_postgres: bool,
    pub(crate) openssl: PathBuf,
}

/// Installs the tools tests need when missing, and says where they are.
pub(crate) fn ensure_all() -> Result<Tools> {
    ensure_build_tools()?;
    let redis_server = find_or_install("redis-server", "redis-server")?;
    let redis_cli = find_or_install("redis-cli", "redis-tools")?;
    // Makes the test PostgreSQL's TLS certificates.
    let openssl = find_or_install("openssl", "openssl")?;
    let pg_bindir = match pg_bindir() {
        Some(dir) => dir,
        None => {
            install(&["postgresql"])?;
            pg_bindir().context(
                "PostgreSQL server binaries (initdb, pg_ctl) not found after installing `postgresql`",
            )?
        }
    };
    for client in ["psql", "pgbench"] {
        if !pg_bindir.join(client).exists() && find_in_path(client).is_none() {
            install(&["postgresql-client"])?;
        }
    }
    let run_as_postgres = is_root();
    if run_as_postgres && !user_exists("postgres") {
        bail!("running as root, but there is no `postgres` user to run PostgreSQL as: install the `postgresql` package");
    }
    Ok(Tools { redis_server, redis_cli, pg_bindir, run_as_postgres, openssl })
}

/// The psycopg the proxy's psycopg tests run (`psycopg_scenarios.py`), with its own libpq.
const PSYCOPG: &str = "psycopg[binary]==3.3.9";

/// Python and a directory holding psycopg (for `PYTHONPATH`), installed there from PyPI on first
/// use: Python's own packages stay untouched.
pub(crate) fn ensure_psycopg() -> Result<(PathBuf, PathBuf)> {
    let python = find_or_install("python3", "python3")?;
    let dir = crate::target_dir().join("strata-py").join("psycopg-3.3.9");
    if dir.join("psycopg").is_dir() && dir.join("psycopg_binary").is_dir() {
        return Ok((python, dir));
    }
    let pip_works = |python: &Path| {
        Command::new(python).args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success())
    };
    if !pip_works(&python) {
        install(&["python3-pip"])?;
    }
    println!("xtask: installing {PSYCOPG} into {}", dir.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&dir)
        .arg(PSYCOPG)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("`pip install {PSYCOPG}` failed");
    }
    Ok((python, dir))
}

/// What `cargo xtask bench e2e` compares Strata with, and the font its plot is drawn with.
#[derive(Debug, Clone)]
pub(crate) struct BenchTools {
    pub(crate) pgbouncer: PathBuf,
    pub(crate) pgpool: PathBuf,
    pub(crate) font: PathBuf,
}

/// Installs PgBouncer, pgpool-II and a TrueType font when missing.
pub(crate) fn ensure_bench_tools() -> Result<BenchTools> {
    let pgbouncer = find_or_install("pgbouncer", "pgbouncer")?;
    let pgpool = find_or_install("pgpool", "pgpool2")?;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    if !Path::new(FONT).is_file() {
        install(&["fonts-dejavu-core"])?;
    }
    Ok(BenchTools { pgbouncer, pgpool, font: PathBuf::from(FONT) })
}

/// Makes sure crates that bind to C can build: pg_query needs libclang (bindgen).
pub(crate) fn ensure_build_tools() -> Result<()> {
    if has_libclang() {
        return Ok(());
    }
    install(&["libclang-dev"])?;
    if !has_libclang() {
        bail!(
            "libclang is still missing after installing `libclang-dev`; set LIBCLANG_PATH to its directory"
        );
    }
    Ok(())
}

/// Installs cargo-deny when `cargo deny` is not available.
pub(crate) fn ensure_cargo_deny() -> Result<()> {
    let present = crate::cargo().args(["deny", "--version"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("xtask: installing cargo-deny (once; this takes a few minutes)");
    let status = crate::cargo().args(["install", "cargo-deny", "--locked"]).status()?;
    if !status.success() {
        bail!("`cargo install cargo-deny --locked` failed");
    }
    Ok(())
}

fn has_libclang() -> bool {
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    // On Debian the whole toolchain bindgen needs (library, headers) comes with libclang-dev.
    if Path::new("/usr/bin/dpkg-query").exists() {
        return Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "libclang-dev"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    }
    let dirs = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ];
    let llvm_dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .map(|e| e.path().join("lib"));
    dirs.iter().map(PathBuf::from).chain(llvm_dirs).any(|dir| {
        std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("libclang")
                && e.file_name().to_string_lossy().contains(".so")
        })
    })
}

pub(crate) fn find_or_install(binary: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_in_path(binary) {
        return Ok(path);
    }
    install(&[package])?;
    find_in_path(binary).with_context(|| format!("`{binary}` not found after installing `{package}`"))
}

pub(crate) fn find_in_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// The newest `/usr/lib/postgresql/N/bin` (Debian's layout), else `pg_config --bindir`, else PATH.
fn pg_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = std::env::var_os("STRATA_PG_BINDIR").map(PathBuf::from) {
        return complete(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|dir| complete(dir));
    from_pg_config.or_else(|| {
        find_in_path("initdb").and_then(|p| p.parent().map(PathBuf::from)).filter(|d| complete(d))
    })
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn user_exists(name: &str) -> bool {
    Command::new("id").arg(name).output().is_ok_and(|o| o.status.success())
}

/// `apt-get install`s packages when we are root on a Debian-like system; otherwise stops with
/// one line naming what to install.
fn install(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing prerequisite: install the package(s) `{list}` (or their equivalent on this system)");
    }
    if !is_root() {
        bail!("missing prerequisite: run `sudo apt-get install -y {list}`");
    }
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        println!("xtask: apt-get update");
        let _ =
            Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive").status();
    });
    println!("xtask: apt-get install {list}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get install {list}` failed");
    }
    Ok(())
}
