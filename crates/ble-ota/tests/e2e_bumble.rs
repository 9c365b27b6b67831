//! End to end over real BLE host stacks: the virtual ESP32 runs `ota-gatt` on trouble-host
//! (`ble-ota device`) on one Bumble virtual controller; the client (trouble-host through
//! `ble-ota ... --hci`, or Bumble's own GATT client) runs on another, on one virtual link.
//!
//! Each test starts fresh controllers (`e2e/virtual_controllers.py`; HCI Reset does not reset
//! Bumble's link). They need the Python venv: run them with `cargo xtask test`, which sets
//! `BLE_OTA_PYTHON`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ota_core::esp::Chip;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ble-ota");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn python() -> PathBuf {
    match std::env::var_os("BLE_OTA_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "BLE_OTA_PYTHON is not set: these tests need the Python venv with Bumble; run them with `cargo xtask test` (or set BLE_OTA_PYTHON=target/py-venv/bin/python after `cargo xtask setup`)"
        ),
    }
}

/// A child process killed when dropped, with its stdout lines on a channel.
struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name,
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line that `pred` accepts.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no expected line within {timeout:?}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a JSON event line `{"event": name, ...}`.
    fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let line = self.wait_line(timeout, |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["event"] == name)
                .unwrap_or(false)
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Every JSON line seen so far plus what is waiting now.
    fn drain(&mut self) -> Vec<Value> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fresh virtual controllers; returns the process and its ports.
fn controllers(count: usize) -> (Proc, Vec<u16>) {
    let mut p = Proc::spawn(
        "virtual_controllers",
        Command::new(python())
            .arg(Path::new(ROOT).join("e2e/virtual_controllers.py"))
            .args(["--count", &count.to_string()]),
    );
    let line = p.wait_line(Duration::from_secs(30), |l| l.contains("ports"));
    let v: Value = serde_json::from_str(&line).unwrap();
    let ports = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u16)
        .collect();
    (p, ports)
}

/// A fresh virtual ESP32-C3 (factory app 1.0.0, ota_0 and ota_1).
fn create_sim(dir: &Path) -> PathBuf {
    let path = dir.join("esp32.bin");
    let out = run(&["sim", "create", path.to_str().unwrap()]);
    assert!(out.status.success(), "sim create: {}", text(&out));
    path
}

/// Starts `ble-ota device` on `port` and waits until it advertises.
fn device(port: u16, sim: &Path, extra: &[&str]) -> Proc {
    let hci = format!("tcp:127.0.0.1:{port}");
    let mut p = Proc::spawn(
        "ble-ota device",
        Command::new(BIN)
            .args(["--json", "device", "--hci", &hci, "--sim"])
            .arg(sim)
            .args(["--name", "e2e-esp32"])
            .args(extra),
    );
    p.wait_event("advertising", Duration::from_secs(20));
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("ble-ota runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn image(dir: &Path, name: &str, version: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let img = virtual_esp32::app_image::build(Chip::Esp32c3, "e2e-app", version, len, seed);
    let path = dir.join(name);
    std::fs::write(&path, &img).unwrap();
    (path, img)
}

/// The bytes of partition `label` in the flash file.
fn slot_bytes(sim: &Path, label: &str, len: usize) -> Vec<u8> {
    let flash = std::fs::read(sim).unwrap();
    let dev = virtual_esp32::VirtualEsp32::open(sim).expect("flash file");
    let p = *dev.partition_table().find(label).expect("slot");
    flash[p.offset as usize..p.offset as usize + len].to_vec()
}

/// `ble-ota --json flash --hci ...` from the controller on `port`.
fn flash_hci(port: u16, image: &Path, extra: &[&str]) -> Output {
    let hci = format!("tcp:127.0.0.1:{port}");
    let mut args = vec!["--json", "flash", "--hci", &hci, "--scan-timeout", "15"];
    args.extend_from_slice(extra);
    args.push(image.to_str().unwrap());
    run(&args)
}

fn flash_json(out: &Output) -> Value {
    assert!(out.status.success(), "flash failed: {}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("flash JSON: {e}: {stdout}"))
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn new_protocol_update_over_hci() {
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let sim = create_sim(dir.path());
    let mut dev = device(ports[0], &sim, &[]);
    let (path, img) = image(dir.path(), "app.bin", "2.0.0", 200_000, 7);
    let started = Instant::now();
    let out = flash_hci(ports[1], &path, &[]);
    let report = flash_json(&out);
    eprintln!(
        "fast update of {} bytes over Bumble in {:.2} s",
        img.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report["outcome"], "activated");
    let slot = report["slot"].as_u64().expect("slot") as u8;
    assert_eq!(slot_bytes(&sim, &format!("ota_{slot}"), img.len()), img);
    // The device rebooted into the new image and advertises again.
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["version"], "2.0.0");
    dev.wait_event("advertising", Duration::from_secs(10));
}
