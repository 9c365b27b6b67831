//! `ota-bench`: runs the modelled benchmarks, reads criterion's CPU results and writes the
//! report. `cargo xtask bench` runs criterion first, then this.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ble_link_model::{FlashTiming, Profile};
use clap::Parser;
use ota_bench::device::image_chip;
use ota_bench::model::run_profile;
use ota_bench::report::{self, Cpu, ImageRuns, RealStack, Report};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the BLE OTA protocols (run by `cargo xtask bench`)")]
struct Args {
    /// Workspace root: BENCHMARKS.md and docs/bench.svg are written there.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))]
    root: PathBuf,
    /// The firmware's app image; by default `firmware/target/images/esp32c3.bin` (what
    /// `cargo xtask firmware` writes), else the newest app image there or under
    /// `firmware/target/*/release/`.
    #[arg(long, env = "OTA_BENCH_FIRMWARE")]
    firmware: Option<PathBuf>,
    /// Criterion's output directory (default: <root>/target/criterion).
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// The `ble-ota` binary for the real-stack run (part 3; with `--python`).
    #[arg(long, requires = "python")]
    ble_ota: Option<PathBuf>,
    /// The Python of the venv with Bumble (`cargo xtask setup`), for part 3.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Legacy and fast runs each in part 3.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The image size of the CPU benchmark (must match benches/engine.rs).
const CPU_LEN: usize = 3 << 19;

fn main() -> Result<()> {
    let args = Args::parse();
    let root = args.root.canonicalize().context("workspace root")?;

    let mut modelled = Vec::new();
    let image = ota_bench::device::part1_image();
    modelled.push(run_all("1 MiB app image", &image));
    let (firmware, firmware_note) = find_firmware(&root, args.firmware.as_deref());
    if let Some((path, bytes)) = firmware {
        let name = format!(
            "firmware `{}`",
            path.strip_prefix(&root).unwrap_or(&path).display()
        );
        modelled.push(run_all(&name, &bytes));
    }

    let criterion = args
        .criterion
        .unwrap_or_else(|| root.join("target/criterion"));
    let (cpu, cpu_note) = match read_cpu(&criterion) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let real_stack = match (&args.ble_ota, &args.python) {
        (Some(bin), Some(py)) => {
            eprintln!("real stack: {} rounds of legacy and fast over Bumble", args.rounds);
            match ota_bench::realstack::run(bin, py, &root, &image, args.rounds) {
                Ok(m) => RealStack::Measured(m),
                Err(e) => RealStack::NotMeasured { reason: format!("the run failed: {e:#}") },
            }
        }
        _ => RealStack::NotMeasured {
            reason: "`ota-bench` was run without `--ble-ota` and `--python` (`cargo xtask bench` passes them)".into(),
        },
    };
    let report = Report {
        modelled,
        firmware_note,
        cpu,
        cpu_note,
        real_stack,
        flash_timing: FlashTiming::TYPICAL_4MB_SPI_NOR.into(),
    };

    let json_path = root.join("target/bench/bench.json");
    std::fs::create_dir_all(json_path.parent().expect("has a parent"))?;
    report::json(&report, &json_path)?;
    let svg_path = root.join("docs/bench.svg");
    report::chart(&report.modelled[0], &svg_path)?;
    let md = report::markdown(&report, "target/bench/bench.json", "docs/bench.svg");
    std::fs::write(root.join("BENCHMARKS.md"), &md).context("writing BENCHMARKS.md")?;
    println!("{md}");
    eprintln!(
        "wrote BENCHMARKS.md, {}, {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn run_all(name: &str, image: &[u8]) -> ImageRuns {
    let runs = Profile::ALL
        .into_iter()
        .map(|p| {
            eprintln!("modelling {name} on {}", p.name());
            run_profile(p, image)
        })
        .collect();
    ImageRuns {
        name: name.to_string(),
        len: image.len(),
        runs,
    }
}

/// Finds the firmware's app image: the given path, or the newest `*.bin` app image under
/// `firmware/target/*/release/`. Returns it, or a note saying why there is none.
#[allow(clippy::type_complexity)]
fn find_firmware(
    root: &Path,
    given: Option<&Path>,
) -> (Option<(PathBuf, Vec<u8>)>, Option<String>) {
    let check = |path: &Path| -> Result<Vec<u8>, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if image_chip(&bytes).is_none() {
            return Err(format!(
                "`{}` is not an ESP app image for a known chip (a merged flash image or ELF?)",
                path.display()
            ));
        }
        Ok(bytes)
    };
    if let Some(path) = given {
        return match check(path) {
            Ok(bytes) => (Some((path.to_path_buf(), bytes)), None),
            Err(e) => (None, Some(e)),
        };
    }
    // `cargo xtask firmware` writes `firmware/target/images/<chip>.bin`; prefer the chip the
    // benchmark device is.
    let images = root.join("firmware/target/images");
    let preferred = images.join(format!("{}.bin", ota_bench::device::CHIP.name()));
    if let Ok(bytes) = check(&preferred) {
        return (Some((preferred, bytes)), None);
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let push = |found: &mut Vec<_>, entry: std::fs::DirEntry| {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "bin") && check(&path).is_ok() {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, path));
        }
    };
    for entry in std::fs::read_dir(&images).into_iter().flatten().flatten() {
        push(&mut found, entry);
    }
    let dir = root.join("firmware/target");
    let Ok(targets) = std::fs::read_dir(&dir) else {
        return (
            None,
            Some(
                "not measured: `firmware/target/` does not exist (the firmware has not been \
                 built with `cargo xtask firmware` on this machine), so part 1 uses the 1 MiB \
                 image only. Build it, or pass `--firmware PATH` (or set `OTA_BENCH_FIRMWARE`) \
                 to an app image `.bin`, and rerun."
                    .into(),
            ),
        );
    };
    for target in targets.flatten() {
        let release = target.path().join("release");
        for entry in std::fs::read_dir(&release).into_iter().flatten().flatten() {
            push(&mut found, entry);
        }
    }
    found.sort();
    match found.pop() {
        Some((_, path)) => {
            let bytes = check(&path).expect("checked above");
            (Some((path, bytes)), None)
        }
        None => (
            None,
            Some(format!(
                "not measured: no app image (`*.bin` starting with 0xE9) in `{}` or `{}/*/release/` \
                 (run `cargo xtask firmware`), or pass `--firmware PATH`.",
                images.display(),
                dir.display()
            )),
        ),
    }
}

/// Reads criterion's median estimates of `cpu/sha256` and `cpu/engine`.
fn read_cpu(dir: &Path) -> Result<Cpu> {
    let median = |name: &str| -> Result<f64> {
        let path = dir.join("cpu").join(name).join("new/estimates.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("criterion results not found at {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("no median in {}", path.display()))
    };
    let sha256_ns = median("sha256")?;
    let engine_ns = median("engine")?;
    Ok(Cpu {
        image_len: CPU_LEN,
        sha256_ns,
        engine_ns,
        ratio: engine_ns / sha256_ns,
        source: "criterion, `benches/engine.rs`, short measurement time".into(),
    })
}
