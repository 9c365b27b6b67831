//! `ota-fuzz`: the fuzz targets' bodies on seeded random inputs, bounded in time, on the stable
//! toolchain. `cargo xtask test` runs it briefly, `cargo xtask fuzz` long. A crash is written
//! to `crates/ota-fuzz/regressions/<target>/`, where this crate's tests replay it, and the run
//! exits 1.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;

/// Runs every fuzz target's body on random inputs for a while.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Random seed (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Only this target (wire, partition_table, image, manifest, engine).
    #[arg(long)]
    target: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let targets: Vec<_> = ota_fuzz::TARGETS
        .iter()
        .filter(|t| args.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if targets.is_empty() {
        bail!("no target named {:?}", args.target);
    }
    // A panic is caught and reported with its input; the default hook's message is kept.
    let started = Instant::now();
    let stats = ota_fuzz::run(&targets, seed, Duration::from_secs_f64(args.seconds));
    let per: Vec<String> = stats
        .executions
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!(
        "fuzz: {} executions in {:.0} s (seed {seed}; {}), {} crashes",
        stats.total(),
        started.elapsed().as_secs_f64(),
        per.join(", "),
        stats.crashes.len()
    );
    for (target, input) in &stats.crashes {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("regressions")
            .join(target);
        std::fs::create_dir_all(&dir)?;
        let name = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(input)[..8]);
        let path = dir.join(name);
        std::fs::write(&path, input)?;
        eprintln!(
            "fuzz: {target} crashed; input kept as {} (replayed by `cargo test -p ota-fuzz`)",
            path.display()
        );
    }
    if !stats.crashes.is_empty() {
        bail!("{} fuzz target(s) crashed", stats.crashes.len());
    }
    Ok(())
}
