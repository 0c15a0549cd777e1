//! `cargo run --release -p haven-bench -- [--quick] [--haven PATH] [--json OUT]`

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;

/// haven's data path beside tgtd: same tmpfs backing, same clients, same run.
#[derive(Parser, Debug)]
#[command(name = "haven-bench")]
struct Cli {
    /// One short run per figure on a small volume: checks the harness, measures nothing.
    #[arg(long)]
    quick: bool,
    /// The haven binary to measure (default: `haven` next to this binary, rebuilt first
    /// when run through cargo).
    #[arg(long)]
    haven: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Runs per figure (default 3, quick 1).
    #[arg(long)]
    runs: Option<u32>,
    /// Seconds per run (default 10, quick 2).
    #[arg(long)]
    seconds: Option<u64>,
    /// Volume size in MiB (default 1024, quick 64).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Only the figures whose name contains this ("1 MiB", "latency", "replicated"):
    /// for iterating on one figure; a report to publish measures them all.
    #[arg(long)]
    only: Option<String>,
}

/// The `haven` binary in this binary's target dir, brought up to date when cargo runs us.
fn default_haven() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("bench binary has no directory")?;
    let haven = dir.join("haven");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut c = Command::new(cargo);
        c.args(["build", "-p", "haven", "--bin", "haven"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        eprintln!("bench: {c:?}");
        if !c.status()?.success() {
            bail!("building haven failed");
        }
    }
    if !haven.is_file() {
        bail!(
            "no haven binary at {}: cargo build --release -p haven, or pass --haven",
            haven.display()
        );
    }
    Ok(haven)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let haven = match &cli.haven {
        Some(h) => h.clone(),
        None => default_haven()?,
    };
    let mut opts = haven_bench::Options::new(haven, cli.quick);
    opts.runs = cli.runs;
    opts.seconds = cli.seconds;
    opts.size_mib = cli.size_mib;
    opts.only = cli.only.clone();
    // The command line that repeats this run, as typed through cargo.
    let args: Vec<String> = std::env::args().skip(1).collect();
    opts.command = format!(
        "cargo run --release -p haven-bench --{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let report = haven_bench::run(&opts)?;
    print!("{}", report.table());
    if let Some(out) = &cli.json {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: wrote {}", out.display());
    }
    Ok(())
}
