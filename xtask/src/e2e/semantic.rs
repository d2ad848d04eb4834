//! `cargo xtask bench semantic`: what the semantic tier costs with the local model and with
//! hashed character n-grams, in one run. Two figures per embedder: embedding one short question
//! (strata-l3's criterion bench `minilm_embedder`, which times both embedders on the same
//! questions), and an answer from L3 through a strata-proxy end to end (the
//! `semantic_latency` example: each probe asks a paraphrase in SQL that misses L1 and L2, so the
//! question is embedded and looked up every time).

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::targets::{spawn, wait_for_postgres_protocol};
use super::{psql, section, RemoveOnDrop, DATABASE};
use crate::services::{self, free_port, Interrupted, Services};

const PROBES: u32 = 400;

/// One embedder the proxy runs.
struct Embedder {
    label: &'static str,
    /// The `[semantic]` table of the proxy's config file.
    config: String,
}

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    if !args.is_empty() {
        bail!("bench semantic takes no options");
    }
    let started = Instant::now();
    let tools = crate::prereq::ensure_all()?;
    let model = crate::models::ensure_minilm()?;
    println!("xtask bench semantic: building strata-proxy and its semantic_latency probe (release)");
    let mut build = crate::cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "strata-proxy",
        "--features",
        "minilm",
        "--bin",
        "strata-proxy",
        "--example",
        "semantic_latency",
    ]);
    if !services::run_interruptibly(build, interrupted)?.success() {
        bail!("building strata-proxy failed");
    }

    // Embedding alone: the criterion bench prints one RATIO line with both embedders' p50.
    println!("xtask bench semantic: timing the embedders (strata-l3 bench minilm_embedder)");
    let mut bench = crate::cargo();
    bench
        .args([
            "bench",
            "--package",
            "strata-l3",
            "--features",
            "minilm",
            "--bench",
            "l3",
            "--",
            "minilm_embedder",
        ])
        .env("STRATA_TEST_MINILM_DIR", &model)
        .stdout(Stdio::piped());
    let mut child = bench.spawn().context("starting cargo bench")?;
    let mut embedding = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("RATIO minilm_embedder/embed_one: ") {
                embedding = Some(rest.to_owned());
            }
        }
    }
    if !child.wait()?.success() {
        bail!("the strata-l3 embedder bench failed");
    }
    let embedding = embedding.context("the embedder bench printed no RATIO line")?;
    if interrupted.is_set() {
        bail!("interrupted");
    }

    let binary = crate::target_dir().join("release/strata-proxy");
    let probe = crate::target_dir().join("release/examples/semantic_latency");
    let services = Services::start(&tools)?;
    let work = services::scratch_dir("bench-semantic")?;
    let _cleanup = RemoveOnDrop(work.clone());
    let pg_port = services.postgres_port();
    psql(pg_port, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    let embedders = [
        Embedder {
            label: "all-MiniLM-L6-v2 (in process)",
            config: format!(
                "[semantic]\nembedder = \"minilm\"\nmodel_dir = {:?}\n",
                model.display().to_string()
            ),
        },
        Embedder { label: "character n-grams", config: "[semantic]\nembedder = \"ngrams\"\n".to_owned() },
    ];
    let mut rows = Vec::new();
    for embedder in &embedders {
        let port = free_port()?;
        let http = free_port()?;
        let config = work.join(format!("strata-{port}.toml"));
        std::fs::write(&config, &embedder.config)?;
        let mut cmd = Command::new(&binary);
        cmd.args(["--upstream", &format!("postgres://127.0.0.1:{pg_port}")])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{http}")])
            .args(["--log", "warn", "--config"])
            .arg(&config);
        let daemon = Some(spawn(cmd, work.join(format!("strata-proxy-{port}.log")), "TERM")?);
        wait_for_postgres_protocol(port, &daemon)?;
        let out = Command::new(&probe)
            .args([port.to_string(), http.to_string(), PROBES.to_string()])
            .output()
            .context("running semantic_latency")?;
        drop(daemon);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "semantic_latency failed: {}{}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SEMANTIC "))
            .context("semantic_latency printed no SEMANTIC line")?
            .to_owned();
        println!("xtask bench semantic: {:<32} {line}", embedder.label);
        rows.push((embedder.label, line));
        if interrupted.is_set() {
            bail!("interrupted");
        }
    }
    drop(services);
    section::write("semantic", &report(&embedding, &rows, started.elapsed()))?;
    Ok(ExitCode::SUCCESS)
}

/// `key=value` from a SEMANTIC line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).unwrap_or("-")
}

fn report(embedding: &str, rows: &[(&str, String)], elapsed: Duration) -> String {
    let mut text = String::from(
        "## The semantic tier (`cargo xtask bench semantic`)\n\n\
         Embedding one short question (strata-l3's `minilm_embedder` bench: 256 generated questions, \
         each embedded through `Embedder::embed` as the tier does, so the hop to a blocking thread \
         is included; the n-gram embedder on the same questions): ",
    );
    text.push_str(embedding);
    text.push_str(
        ".\n\nAn answer from L3 through strata-proxy end to end (tokio-postgres, simple protocol, one \
         client; each probe is one of 8 phrasings of one question, its SQL conditions in their own order, \
         so it misses L1 and L2 and is embedded and looked up; a probe is an L3 hit when the proxy's \
         `strata_tier_hits_total{tier=\"l3\"}` grew; every probe's rows are checked):\n\n\
         | embedder | probes | L3 hits | hit p50 ms | hit p99 ms | hit max ms | other probes | their p50 ms |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (label, line) in rows {
        text.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |\n",
            field(line, "probes"),
            field(line, "l3_hits"),
            field(line, "p50_ms"),
            field(line, "p99_ms"),
            field(line, "max_ms"),
            field(line, "misses"),
            field(line, "miss_p50_ms"),
        ));
    }
    text.push_str(
        "\nThe probes cycle through 8 phrasings of one question: after the first round, a probe finds its \
         own phrasing stored (each miss is filled), so the hit counts measure nothing about \
         quality (strata-l3's labeled set does: see the README); the latencies are what this \
         measures, and every probe is embedded. Goals (issue 16): embedding p50 ≤ 5 ms, an L3 hit \
         through the proxy p99 ≤ 15 ms.\n",
    );
    text.push_str(&format!("\nbench semantic took {} s\n", elapsed.as_secs()));
    text
}
