//! `cargo xtask`: the project's tasks, so CI and a fresh machine run the very same steps.
//!
//! - `cargo xtask test`: everything CI checks (installs what it needs first): the firmware,
//!   every test (unit, property, vectors, CLI, end to end on Bumble), the fuzz targets' build,
//!   fmt and clippy (the firmware's too).
//! - `cargo xtask setup`: only the installs (Rust targets, rustfmt and clippy, the Python venv
//!   with Bumble, esptool and Playwright, Debian's dbus-daemon and chromium when missing).
//! - `cargo xtask bench`: the benchmarks; writes BENCHMARKS.md (see `crates/ota-bench`).
//! - `cargo xtask fuzz`: long fuzz runs (the bounded one is part of `test`).
//! - `cargo xtask web`: the web updater: its wasm core built, bound and run in Node.js, and the
//!   page put together in target/web/site (also part of `test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod firmware;

#[derive(Debug, Parser)]
#[command(about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the Rust targets and the Python venv the tests need.
    Setup,
    /// Run every test: unit, property, vectors, CLI, no_std build, end-to-end.
    Test,
    /// Build the firmware for the ESP32-C3 and ESP32-C6, write and check their app images
    /// (firmware/target/images/<chip>.bin) and report image size and RAM use.
    Firmware,
    /// Run the benchmarks (modelled update times, host CPU cost) and write BENCHMARKS.md,
    /// target/bench/bench.json and docs/bench.svg.
    Bench {
        /// The firmware's app image (default: firmware/target/images/esp32c3.bin if built).
        #[arg(long)]
        firmware: Option<PathBuf>,
    },
    /// Build the web updater: its core (crates/ota-web) for wasm, bound with wasm-bindgen and
    /// run in Node.js (target/web/node), and the page in target/web/site (`ble-ota web`).
    Web,
    /// Fuzz long: the targets' bodies (crates/ota-fuzz) on seeded random inputs, on stable
    /// Rust; with --libfuzzer, coverage-guided with cargo-fuzz on a nightly toolchain.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Only this target (wire, partition_table, image, manifest, engine).
        #[arg(long)]
        target: Option<String>,
        /// Use libFuzzer through `cargo +nightly fuzz run` (install: `cargo install cargo-fuzz`).
        #[arg(long)]
        libfuzzer: bool,
    },
}

/// Seconds per target of the bounded fuzz run in `cargo xtask test`.
const TEST_FUZZ_SECONDS: &str = "4";

/// Rust targets of the RISC-V ESP32 chips built in CI.
const TARGETS: &[&str] = &[
    "riscv32imc-unknown-none-elf",
    "riscv32imac-unknown-none-elf",
    // The browser's client core (crates/ota-web).
    WASM_TARGET,
];

/// The target of the browser's client core.
const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup().map(|_| ()),
        Task::Test => test(),
        Task::Firmware => firmware::firmware(),
        Task::Bench { firmware } => bench::bench(firmware),
        Task::Web => {
            // On its own (`cargo xtask web`), the one target it needs.
            if Command::new("rustup").arg("--version").output().is_ok() {
                run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
            }
            web_bindings()
        }
        Task::Fuzz {
            seconds,
            target,
            libfuzzer,
        } => fuzz(seconds, target, libfuzzer),
    }
}

fn fuzz(seconds: u64, target: Option<String>, libfuzzer: bool) -> Result<()> {
    if !libfuzzer {
        let mut cmd = cargo();
        cmd.args(["run", "--release", "--locked", "-p", "ota-fuzz", "--"])
            .args(["--seconds", &seconds.to_string()]);
        if let Some(t) = &target {
            cmd.args(["--target", t]);
        }
        return run(cmd.current_dir(root()));
    }
    let all = ["wire", "partition_table", "image", "manifest", "engine"];
    let names: Vec<String> = match target {
        Some(t) => vec![t],
        None => all.iter().map(|s| s.to_string()).collect(),
    };
    for name in names {
        run(cargo()
            .args(["+nightly", "fuzz", "run", &name, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(root()))?;
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Installs the Rust targets and the Python venv; returns the venv's python.
fn setup() -> Result<PathBuf> {
    if Command::new("rustup").arg("--version").output().is_ok() {
        let mut c = Command::new("rustup");
        c.args(["target", "add"]).args(TARGETS);
        run(&mut c)?;
        // The style and lint gates of `cargo xtask test` must run, not be skipped.
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    } else {
        eprintln!(
            "rustup not found: assuming the targets {TARGETS:?}, rustfmt and clippy are installed"
        );
    }
    let venv = root().join("target/py-venv");
    let python = venv.join("bin/python");
    let requirements = root().join("e2e/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements).context("reading e2e/requirements.txt")?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements))?;
        std::fs::write(&stamp, wanted)?;
    }
    install_debian_tool("dbus-daemon", "dbus-daemon")?;
    // The web updater's test drives Debian's Chromium (Web Bluetooth over the stand-in).
    install_debian_tool("chromium", "chromium")?;
    Ok(python)
}

/// Installs Debian's `package` when `tool` is missing (the BlueZ stand-in's private bus needs
/// dbus-daemon, the web updater's bindings run in Node.js and its page in Chromium); fails
/// with what to do when it cannot.
fn install_debian_tool(tool: &str, package: &str) -> Result<()> {
    if Command::new(tool).arg("--version").output().is_ok() {
        return Ok(());
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        bail!(
            "{tool} is missing and `apt-get install {package}` failed: install it (the e2e tests need it)"
        );
    }
    Ok(())
}

fn test() -> Result<()> {
    let python = setup()?;
    // Figures the tests record for this run, printed at the end.
    let figures_dir = root().join("target/figures");
    let _ = std::fs::remove_dir_all(&figures_dir);
    // The firmware first: the host tests below load its app images into the virtual ESP32.
    firmware::firmware()?;
    // The browser's client core, built for wasm, bound by wasm-bindgen and run in Node.js; and
    // the page, which the web updater's e2e test serves to Chromium.
    web_bindings()?;
    // Host workspace: unit, vector, property and CLI tests, plus those needing Python tools.
    run(cargo()
        .args(["test", "--workspace", "--locked", "--", "--include-ignored"])
        .env("BLE_OTA_PYTHON", &python)
        .env("ESPTOOL", python.with_file_name("esptool"))
        .current_dir(root()))?;
    // The core and the GATT crate must stay no_std: build them for the ESP32-C3's bare-metal target.
    run(cargo()
        .args([
            "build", "--locked", "-p", "ota-core", "-p", "ota-gatt", "--target", TARGETS[0],
        ])
        .current_dir(root()))?;
    // The fuzz targets' bodies on seeded random inputs, a few seconds each (it prints the
    // executions; a crash fails the run and is kept as a regression input); and libFuzzer's
    // targets must keep building (long runs: `cargo xtask fuzz`).
    let fuzz = output(
        cargo()
            .args(["run", "--locked", "-p", "ota-fuzz", "--"])
            .args(["--seconds", TEST_FUZZ_SECONDS])
            .current_dir(root()),
    )?;
    run(cargo()
        .args(["build", "--locked"])
        .current_dir(root().join("fuzz")))?;
    // Style and lints, last so a lint never hides a failing test. `setup` installed rustfmt
    // and clippy; if they still cannot run, this fails rather than skipping them.
    run(cargo()
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(root()))?;
    let lint = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ];
    run(cargo().args(lint).current_dir(root()))?;
    // The firmware too, for the chip CI builds first.
    let fw = &firmware::CHIPS[0];
    run(cargo()
        .args(["clippy", "--release", "--locked", "--target", fw.target])
        .args(["--no-default-features", "--features", fw.name])
        .args(["--", "-D", "warnings"])
        .current_dir(root().join("firmware")))?;
    // And with its optional paired links (LE Secure Connections), which pull in P-256.
    run(cargo()
        .args(["clippy", "--release", "--locked", "--target", fw.target])
        .args(["--no-default-features", "--features"])
        .arg(format!("{},secure-link", fw.name))
        .args(["--", "-D", "warnings"])
        .env("BLE_OTA_PASSKEY", "123456")
        .current_dir(root().join("firmware")))?;
    print_figures(&figures_dir, &fuzz)
}

/// Builds `crates/ota-web` for the browser, generates its JavaScript bindings with
/// wasm-bindgen (the CLI of the version Cargo.lock pins, installed under `target/tools`),
/// puts the page together in [`web_site`] (`crates/ota-web/www` beside the bindings for
/// browsers), and runs the Node.js bindings (`crates/ota-web/js/node_smoke.mjs`).
fn web_bindings() -> Result<()> {
    run(cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ota-web",
            "--target",
            WASM_TARGET,
        ])
        .current_dir(root()))?;
    let version = locked_version("wasm-bindgen")?;
    let tools = root().join("target/tools");
    let bindgen = tools.join("bin/wasm-bindgen");
    let installed = Command::new(&bindgen)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&version));
    if !installed {
        // Its own lockfile pins a yanked crate, so it is resolved afresh at this exact version.
        run(cargo()
            .args(["install", "wasm-bindgen-cli", "--version"])
            .arg(format!("={version}"))
            .arg("--root")
            .arg(&tools))?;
    }
    let wasm = root().join(format!("target/{WASM_TARGET}/release/ota_web.wasm"));
    let node_out = root().join("target/web/node");
    run(Command::new(&bindgen)
        .args(["--target", "nodejs", "--out-dir"])
        .arg(&node_out)
        .arg(&wasm))?;
    // The page: crates/ota-web/www beside the bindings for browsers, a folder to host anywhere.
    let site = web_site();
    let _ = std::fs::remove_dir_all(&site);
    run(Command::new(&bindgen)
        .args(["--target", "web", "--out-dir"])
        .arg(site.join("pkg"))
        .arg(&wasm))?;
    for entry in std::fs::read_dir(root().join("crates/ota-web/www"))? {
        let path = entry?.path();
        std::fs::copy(&path, site.join(path.file_name().unwrap_or_default()))?;
    }
    eprintln!(
        "the page is in {} (serve it with `ble-ota web`)",
        site.display()
    );
    install_debian_tool("node", "nodejs")?;
    run(Command::new("node")
        .arg(root().join("crates/ota-web/js/node_smoke.mjs"))
        .arg(&node_out)
        .arg(root().join("crates/ota-core/tests/fixtures/tiny_c3_app.bin")))
}

/// Where `cargo xtask web` puts the page (`ble-ota web` serves it from there by default).
fn web_site() -> PathBuf {
    root().join("target/web/site")
}

/// The version of `package` that Cargo.lock pins.
fn locked_version(package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"")
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    bail!("Cargo.lock pins no {package}")
}

/// Runs `cmd`, passing its output through, and returns its standard output.
fn output(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(stdout)
}

/// Prints what this run measured of the device's defences: the hostile-client suite and the
/// signed-update refusals (recorded by the e2e tests) and the fuzz run.
fn print_figures(dir: &Path, fuzz: &str) -> Result<()> {
    let read = |name: &str| -> Result<serde_json::Value> {
        let path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} was not written by the e2e tests", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let hostile = read("hostile")?;
    let signed = read("signed")?;
    let refused = signed["refused"].as_array().map_or(0, Vec::len);
    println!("\n== Figures of this run");
    println!(
        "hostile clients over Bumble: {} cases tried, {} device crashes, running slot changed {} times, {} without their documented answer",
        hostile["cases"],
        hostile["device_crashes"],
        hostile["running_slot_changed"],
        hostile["failed"]
    );
    println!(
        "signed updates over Bumble: {refused} bad updates tried ({}), {} accepted",
        signed["refused"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        signed["accepted"]
    );
    let web = read("web")?;
    let signed_web = read("web_signed")?;
    let kb = |v: &serde_json::Value| v.as_u64().unwrap_or(0) / 1000;
    println!(
        "web page in headless Chromium (BlueZ stand-in): fast protocol {} kB sent in {:.1} s across {} dropped link(s), seed protocol {} kB, signed {} kB at ATT MTU {}, each confirmed from the page; refused on the page: {}, {}",
        kb(&web["fast_bytes"]),
        web["fast_seconds"].as_f64().unwrap_or(f64::NAN),
        web["fast_reconnects"],
        kb(&web["legacy_bytes"]),
        kb(&signed_web["bytes"]),
        signed_web["mtu"],
        web["refused"].as_str().unwrap_or("?"),
        signed_web["refused"].as_str().unwrap_or("?"),
    );
    println!(
        "{}",
        fuzz.lines()
            .find(|l| l.starts_with("fuzz:"))
            .unwrap_or("fuzz: no report")
    );
    Ok(())
}
