//! `cargo xtask bench`: the benchmarks of `crates/ota-bench`, end to end.
//!
//! 1. The criterion bench `ota-bench/benches/engine.rs` with a short measurement time (the
//!    host CPU cost of the device engine against SHA-256 alone).
//! 2. The `ota-bench` binary: the modelled update times, criterion's estimates read back, the
//!    real-stack run over Bumble (it builds `ble-ota` and sets up the venv first),
//!    and the report: `BENCHMARKS.md`, `target/bench/bench.json`, `docs/bench.svg`.

use std::path::PathBuf;

use anyhow::Result;

use crate::{cargo, root, run};

/// Runs the benchmarks and writes the report.
pub fn bench(firmware: Option<PathBuf>) -> Result<()> {
    let root = root();
    // Part 3 needs Bumble (the venv) and a release `ble-ota`.
    let python = crate::setup()?;
    run(cargo()
        .args(["build", "--release", "--locked", "-p", "ble-ota"])
        .current_dir(&root))?;
    run(cargo()
        .args([
            "bench",
            "--locked",
            "-p",
            "ota-bench",
            "--bench",
            "engine",
            "--",
        ])
        .args(["--warm-up-time", "1", "--measurement-time", "3"])
        .current_dir(&root))?;
    let mut report = cargo();
    report
        .args([
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            "ota-bench",
            "--",
        ])
        .arg("--root")
        .arg(&root)
        .arg("--ble-ota")
        .arg(root.join("target/release/ble-ota"))
        .arg("--python")
        .arg(&python)
        .current_dir(&root);
    if let Some(path) = firmware {
        report.arg("--firmware").arg(path);
    }
    run(&mut report)
}
