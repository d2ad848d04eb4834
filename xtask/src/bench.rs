//! `cargo xtask bench`: every crate's criterion benches against provisioned servers, then one summary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::services::{Interrupted, Services};

pub(crate) fn run(args: &[String], interrupted: &Interrupted) -> Result<ExitCode> {
    let tools = crate::prereq::ensure_all()?;
    let services = Services::start(&tools)?;
    let mut cmd = crate::cargo();
    cmd.args(["bench", "--workspace"]).args(args).stdout(Stdio::piped());
    services.export_to(&mut cmd);
    // strata-l3's embedding bench runs the local model beside n-grams.
    cmd.env("STRATA_TEST_MINILM_DIR", crate::models::ensure_minilm()?);
    let mut child = cmd.spawn().context("starting cargo bench")?;
    // Echo the output as it comes and keep the ratio lines each bench prints for the summary.
    let mut ratios = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if line.starts_with("RATIO") {
                ratios.push(line);
            }
            if interrupted.is_set() {
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    drop(services);
    println!("\n== Strata bench summary ==");
    print_criterion_table(&crate::workspace_root().join("target/criterion"));
    println!("\nratios measured in the same run:");
    for line in &ratios {
        println!("  {}", line.trim_start_matches("RATIO "));
    }
    Ok(crate::exit_code(status))
}

/// Prints `group/bench  mean` for every `new/estimates.json` criterion wrote.
fn print_criterion_table(root: &Path) {
    let mut rows = Vec::new();
    collect(root, root, &mut rows);
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mean_ns) in rows {
        println!("  {name:<60} {}", human(mean_ns));
    }
}

fn collect(root: &Path, dir: &Path, rows: &mut Vec<(String, f64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "new") {
                if let Some(mean) =
                    std::fs::read_to_string(path.join("estimates.json")).ok().and_then(|j| mean_ns(&j))
                {
                    let name = path
                        .parent()
                        .and_then(|p| p.strip_prefix(root).ok())
                        .map(|p| p.display().to_string());
                    rows.push((name.unwrap_or_default(), mean));
                }
            } else if path.file_name().is_some_and(|n| n != "report" && n != "base") {
                collect(root, &path, rows);
            }
        }
    }
}

/// The mean's point estimate from criterion's estimates.json (`{"mean":{...,"point_estimate":X,...}`).
fn mean_ns(json: &str) -> Option<f64> {
    let after_mean = &json[json.find("\"mean\"")?..];
    let after_key = &after_mean[after_mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = after_key.find([',', '}'])?;
    after_key[..end].trim().parse().ok()
}

fn human(ns: f64) -> String {
    match ns {
        n if n >= 1e9 => format!("{:.2} s", n / 1e9),
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.2} µs", n / 1e3),
        n => format!("{n:.1} ns"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_mean_from_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":61.2,"upper_bound":63.0},"point_estimate":62.1,"standard_error":0.4},"median":{"point_estimate":61.0}}"#;
        assert_eq!(super::mean_ns(json), Some(62.1));
        assert_eq!(super::mean_ns("{}"), None);
        assert_eq!(super::human(62.1), "62.1 ns");
        assert_eq!(super::human(1_500.0), "1.50 µs");
    }
}
