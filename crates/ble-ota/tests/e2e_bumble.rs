//! End to end over real BLE host stacks: the virtual ESP32 runs `ota-gatt` on trouble-host
//! (`ble-ota device`) on one Bumble virtual controller; the client (trouble-host through
//! `ble-ota ... --hci`, or Bumble's own GATT client) runs on another, on one virtual link.
//!
//! Each test starts fresh controllers (`e2e/virtual_controllers.py`; HCI Reset does not reset
//! Bumble's link). They need the Python venv: run them with `cargo xtask test`, which sets
//! `BLE_OTA_PYTHON`.

use std::io::{BufRead, BufReader};
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

/// One rig at a time: on a 2-core machine parallel Bumble rigs race their wall-clock waits.
/// Every test holds this for its whole run.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// `ble-ota ARGS` in `dir`, which must succeed (key and image files named relative to it).
fn run_in(dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("ble-ota runs");
    assert!(out.status.success(), "{args:?}: {}", text(&out));
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

/// The bytes of partition `label` in the flash file, read as a flash dump (the running
/// `ble-ota device` holds the device itself).
fn slot_bytes(sim: &Path, label: &str, len: usize) -> Vec<u8> {
    use ota_core::esp::partition::{
        Md5Policy, PARTITION_TABLE_MAX_LEN, PARTITION_TABLE_OFFSET, PartitionTable,
    };
    let flash = std::fs::read(sim).unwrap();
    let at = PARTITION_TABLE_OFFSET as usize;
    let table = PartitionTable::parse(
        &flash[at..at + PARTITION_TABLE_MAX_LEN],
        Md5Policy::Optional,
        Some(flash.len() as u32),
    )
    .expect("partition table");
    let p = *table.find(label).expect("slot");
    flash[p.offset as usize..p.offset as usize + len].to_vec()
}

/// Fresh controllers (ports 0 and 1), a fresh virtual ESP32 and `ble-ota device` on port 0.
struct Rig {
    _ctl: Proc,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    sim: PathBuf,
    dev: Proc,
}

impl Rig {
    fn start(device_args: &[&str]) -> Rig {
        let (_ctl, ports) = controllers(2);
        let dir = tempfile::tempdir().unwrap();
        let sim = create_sim(dir.path());
        let dev = device(ports[0], &sim, device_args);
        Rig {
            _ctl,
            ports,
            dir,
            sim,
            dev,
        }
    }
}

/// Asserts the device rebooted into `version` and its slot holds `img` byte for byte.
fn assert_booted(dev: &mut Proc, sim: &Path, version: &str, img: &[u8]) {
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["version"], version);
    let slot = boot["slot"].as_str().unwrap().to_string();
    assert_eq!(slot_bytes(sim, &slot, img.len()), img);
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
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
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

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn legacy_update_over_hci() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let (path, img) = image(dir.path(), "app.bin", "3.0.0", 120_000, 11);
    let started = Instant::now();
    let out = flash_hci(ports[1], &path, &["--legacy"]);
    let report = flash_json(&out);
    eprintln!(
        "legacy update of {} bytes in {:.2} s",
        img.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report["outcome"], "activated");
    assert_booted(&mut dev, &sim, "3.0.0", &img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn seed_legacy_client_on_bumble() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let (path, img) = image(dir.path(), "app.bin", "4.0.0", 60_000, 13);
    let out = seed_client(ports[1], 517, &path);
    let log = text(&out);
    assert!(out.status.success(), "legacy_client.py: {log}");
    // Step by step, as the seed's client does.
    for step in [
        // The device caps the MTU at 498, so the unclamped MTU - 3 fits an attribute.
        "connected, MTU 498, packet size 495",
        "packet size 495 written to OTA Data",
        "subscribed to OTA Control",
        "OTA request acknowledged",
        "OTA done acknowledged",
    ] {
        assert!(log.contains(step), "missing `{step}` in:\n{log}");
    }
    assert_booted(&mut dev, &sim, "4.0.0", &img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn resume_after_forced_disconnect() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let (path, img) = image(dir.path(), "app.bin", "5.0.0", 150_000, 17);
    // Drop the link twice mid-transfer; each time the client reconnects and resumes.
    let out = flash_hci(
        ports[1],
        &path,
        &["--disconnect-at", "100", "--disconnect-at", "250"],
    );
    let report = flash_json(&out);
    assert_eq!(report["outcome"], "activated");
    assert_eq!(
        report["disconnects"], 2,
        "the report counts the dropped links: {report}"
    );
    // Compressed by default, and resumed in the stream with the device's inflater kept.
    assert_eq!(report["compressed"], true, "{report}");
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["version"], "5.0.0");
    let events = dev.drain();
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert!(count("connected") >= 3, "three connections: {events:?}");
    assert!(count("disconnected") >= 3, "{events:?}");
    // Resumed, not restarted: one session for the whole image.
    let started = events
        .iter()
        .filter(|e| {
            e["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("UpdateStarted"))
        })
        .count();
    assert_eq!(
        started, 1,
        "the update resumed instead of restarting: {events:?}"
    );
    let slot = boot["slot"].as_str().unwrap().to_string();
    assert_eq!(slot_bytes(&sim, &slot, img.len()), img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn corrupt_image_refused() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim: _sim,
        mut dev,
    } = Rig::start(&[]);
    let (path, mut img) = image(dir.path(), "app.bin", "6.0.0", 40_000, 19);
    let mid = img.len() / 2;
    img[mid] ^= 0x5A;
    std::fs::write(&path, &img).unwrap();
    let out = flash_hci(ports[1], &path, &["--force"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "refused exit code: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Bad")
            || String::from_utf8_lossy(&out.stderr).contains("Bad"),
        "the reason is printed: {}",
        text(&out)
    );
    // The device did not reboot and still serves: INFO answers with the factory app.
    let info = run(&[
        "--json",
        "info",
        "--hci",
        &format!("tcp:127.0.0.1:{}", ports[1]),
        "--scan-timeout",
        "15",
    ]);
    assert!(info.status.success(), "info: {}", text(&info));
    let v: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["app_version"], "1.0.0");
    assert!(
        !dev.drain().iter().any(|e| e["event"] == "boot"),
        "no reboot after a refused image"
    );
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn write_command_flood_is_recovered() {
    let _serial = serial();
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let sim = create_sim(dir.path());
    // Real flash timing: the device falls behind, as a chip erasing sectors does.
    let mut dev = device(ports[0], &sim, &["--flash-timing"]);
    let (path, img) = image(dir.path(), "app.bin", "7.0.0", 150_000, 23);
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/flood_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
        .args(["--mtu", "247", "--file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "flood_client.py: {}", text(&out));
    let flood: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("flood: {flood}");
    let window_chunks = flood["window"].as_u64().unwrap() / flood["chunk_size"].as_u64().unwrap();
    assert!(
        flood["chunks"].as_u64().unwrap() > 4 * window_chunks,
        "the flood exceeds the receive queue: {flood}"
    );
    assert!(
        flood["rewinds"].as_u64().unwrap() >= 1,
        "chunks beyond the queue were lost and the gap reported: {flood}"
    );
    assert!(
        flood["acked"].as_u64().unwrap() < img.len() as u64,
        "the flood alone did not deliver everything: {flood}"
    );
    // Count the flood's gaps once the device finished with that connection (it reports the
    // disconnection once its queue is drained): none can come later.
    dev.wait_event("disconnected", Duration::from_secs(10));
    let gaps_in_flood = dev.drain().iter().filter(|e| e["event"] == "gap").count();
    assert!(gaps_in_flood >= 1, "the device saw the gap");
    // A well-behaved client resumes the session and completes it; it honours the window, so
    // nothing is lost although the flash is slow.
    let started = Instant::now();
    let report = flash_json(&flash_hci(ports[1], &path, &[]));
    assert_eq!(report["outcome"], "activated");
    eprintln!(
        "resumed update with real flash timing: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let boot = dev.wait_event("boot", Duration::from_secs(20));
    let gaps = dev.drain().iter().filter(|e| e["event"] == "gap").count();
    assert_eq!(
        gaps, gaps_in_flood,
        "no data lost while the client kept to the window"
    );
    assert_eq!(boot["version"], "7.0.0");
    let slot = boot["slot"].as_str().unwrap().to_string();
    assert_eq!(slot_bytes(&sim, &slot, img.len()), img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn link_tuning_completes() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir: _dir,
        sim: _sim,
        mut dev,
    } = Rig::start(&[]);
    let info = run(&[
        "--json",
        "info",
        "--hci",
        &format!("tcp:127.0.0.1:{}", ports[1]),
        "--scan-timeout",
        "15",
    ]);
    assert!(info.status.success(), "info: {}", text(&info));
    let v: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["chip"], "esp32c3");
    let chunk = v["chunk_size"].as_u64().unwrap() as usize;
    // Both sides ask for 251 octets (the device its TX, the client, which sends the image,
    // its own); the device ends up with 251 both ways.
    dev.wait_line(Duration::from_secs(10), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "data_length" && v["tx"] == 251 && v["rx"] == 251)
    });
    dev.wait_event("disconnected", Duration::from_secs(10));
    let events = dev.drain();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "phy" && e["tx"] == "2M" && e["rx"] == "2M"),
        "2M PHY both ways: {events:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "conn_params"
            && e["interval_us"].as_u64().is_some_and(|i| i <= 15_000)),
        "short connection interval: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "mtu" && e["mtu"] == 498),
        "ATT MTU 498 (the device's cap): {events:?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "tuning_failed"),
        "no tuning request failed: {events:?}"
    );
    // The chunk INFO announced fills whole connection events for the link as the device knew
    // it then (ota_core::protocol::air::best_value_len, room for an ACK per event): on either
    // PHY at an interval the controller reported, or two whole 251-octet PDUs (495 bytes)
    // before it knew the interval. Less the 4-byte offset.
    use ota_core::protocol::air::{self, EventTiming, Phy};
    let mut expected = vec![495 - 4];
    for e in events.iter().filter(|e| e["event"] == "conn_params") {
        let interval_us = e["interval_us"].as_u64().unwrap() as u32;
        for phy in [Phy::Le1M, Phy::Le2M] {
            let t = EventTiming {
                phy,
                data_length: 251,
                interval_us,
                end_margin_us: air::DEFAULT_EVENT_END_MARGIN_US,
                max_pairs: None,
                reply_payload: 12,
            };
            expected.push(air::best_value_len(498, &t) - 4);
        }
    }
    assert!(
        expected.contains(&chunk),
        "chunk size {chunk} is one of {expected:?}"
    );
}

/// The firmware's real app image, as `cargo xtask firmware` wrote it.
fn firmware_image() -> (PathBuf, Vec<u8>, String) {
    let path = Path::new(ROOT).join("firmware/target/images/esp32c3.bin");
    let img = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build it with `cargo xtask firmware` (cargo xtask test does)",
            path.display()
        )
    });
    let manifest =
        std::fs::read_to_string(Path::new(ROOT).join("firmware/Cargo.toml")).expect("manifest");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("firmware version")
        .to_string();
    (path, img, version)
}

/// Runs `e2e/legacy_client.py` (the seed's client flow on Bumble's host) at `mtu`.
fn seed_client(port: u16, mtu: u16, image: &Path) -> Output {
    Command::new(python())
        .arg(Path::new(ROOT).join("e2e/legacy_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{port}")])
        .args(["--mtu", &mtu.to_string(), "--file"])
        .arg(image)
        .output()
        .unwrap()
}

/// `ble-ota sim boot`: a power cycle of the (stopped) virtual ESP32.
fn power_cycle(sim: &Path) -> Value {
    let out = run(&["--json", "sim", "boot", sim.to_str().unwrap()]);
    assert!(out.status.success(), "sim boot: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn confirmed(dev: &mut Proc) {
    dev.wait_line(Duration::from_secs(15), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "engine" && v["what"] == "Confirmed")
    });
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn seed_client_at_every_mtu_with_the_firmware_image_then_power_cycle() {
    let _serial = serial();
    let (path, img, version) = firmware_image();
    let dir = tempfile::tempdir().unwrap();
    let sim = create_sim(dir.path());
    for mtu in [23u16, 185, 247, 256, 517] {
        // Fresh controllers each time (HCI Reset does not reset Bumble's link).
        let (_ctl, ports) = controllers(2);
        let mut dev = device(ports[0], &sim, &[]);
        let started = Instant::now();
        let out = seed_client(ports[1], mtu, &path);
        let log = text(&out);
        assert!(out.status.success(), "MTU {mtu}: legacy_client.py: {log}");
        let negotiated = mtu.min(498);
        let step = format!(
            "connected, MTU {negotiated}, packet size {}",
            negotiated - 3
        );
        assert!(log.contains(&step), "missing `{step}` in:\n{log}");
        eprintln!(
            "seed client, MTU {mtu}: {} bytes in {:.1} s",
            img.len(),
            started.elapsed().as_secs_f64()
        );
        let boot = dev.wait_event("boot", Duration::from_secs(10));
        assert_eq!(boot["version"], version.as_str());
        assert_eq!(boot["state"], "PendingVerify", "on trial: {boot}");
        let slot = boot["slot"].as_str().unwrap().to_string();
        assert_eq!(slot_bytes(&sim, &slot, img.len()), img);
        // The firmware's default policy: confirmed once advertising started and the self-test
        // passed.
        confirmed(&mut dev);
        drop(dev);
        // One more power cycle: the new image still boots.
        let again = power_cycle(&sim);
        assert_eq!(again["slot"], slot.as_str(), "MTU {mtu}: {again}");
        assert_eq!(again["state"], "Valid");
        assert_eq!(again["rolled_back"], serde_json::json!([]));
    }
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn strict_confirm_rolls_back_an_unconfirmed_image() {
    let _serial = serial();
    let (path, img, version) = firmware_image();
    let dir = tempfile::tempdir().unwrap();
    let sim = create_sim(dir.path());
    // Power cut before any CONFIRM: the next boot rolls back to factory.
    {
        let (_ctl, ports) = controllers(2);
        let mut dev = device(ports[0], &sim, &["--confirm", "strict"]);
        let out = seed_client(ports[1], 247, &path);
        assert!(out.status.success(), "{}", text(&out));
        let boot = dev.wait_event("boot", Duration::from_secs(10));
        assert_eq!(boot["version"], version.as_str());
        assert_eq!(slot_bytes(&sim, "ota_0", img.len()), img);
        dev.wait_event("advertising", Duration::from_secs(10));
        assert!(
            !dev.drain()
                .iter()
                .any(|e| e["event"] == "engine" && e["what"] == "Confirmed"),
            "strict never confirms by itself"
        );
    }
    let after = power_cycle(&sim);
    assert_eq!(after["slot"], "factory", "rolled back: {after}");
    assert_eq!(after["rolled_back"], serde_json::json!(["ota_0"]));
    // The deadline passes with no CONFIRM: the device resets itself and rolls back.
    let (_ctl, ports) = controllers(2);
    let mut dev = device(
        ports[0],
        &sim,
        &["--confirm", "strict", "--trial-deadline", "2"],
    );
    let out = seed_client(ports[1], 247, &path);
    assert!(out.status.success(), "{}", text(&out));
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["state"], "PendingVerify");
    assert_rolled_back(&mut dev, "no client sent CONFIRM in time");
}

/// Waits for the device to say its trial failed for `why`, reset, and boot factory again.
fn assert_rolled_back(dev: &mut Proc, why: &str) {
    let said = dev.wait_event("rollback", Duration::from_secs(15));
    assert_eq!(said["why"], why);
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["slot"], "factory", "{boot}");
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn a_failed_self_test_rolls_back() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim: _sim,
        mut dev,
    } = Rig::start(&["--self-test-fails"]);
    let (path, _img) = image(dir.path(), "app.bin", "8.0.0", 60_000, 29);
    let out = seed_client(ports[1], 247, &path);
    assert!(out.status.success(), "{}", text(&out));
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(boot["version"], "8.0.0");
    assert_rolled_back(&mut dev, "the self-test failed");
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn every_attribute_read_read_blobbed_written_and_flooded() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir: _dir,
        sim: _sim,
        mut dev,
    } = Rig::start(&[]);
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/gatt_probe.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
        .args(["--flood", "50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gatt_probe.py: {}", text(&out));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    const INVALID_OFFSET: u64 = 0x07;
    const READ_NOT_PERMITTED: u64 = 0x02;
    let control = probe["control_handle"].as_u64().unwrap();
    let attributes = probe["attributes"].as_array().unwrap();
    assert!(
        attributes.len() >= 9,
        "GAP, OTA and DIS attributes: {probe}"
    );
    for a in attributes {
        let read = &a["read"];
        if read["error"] == READ_NOT_PERMITTED {
            // OTA Data is write-only: every read refused alike.
            for (_, r) in a["blob"].as_object().unwrap() {
                assert_eq!(r["error"], READ_NOT_PERMITTED, "{a}");
            }
            continue;
        }
        let value = read["value"]
            .as_str()
            .unwrap_or_else(|| panic!("read: {a}"));
        let len = value.len() as u64 / 2;
        for (offset, r) in a["blob"].as_object().unwrap() {
            let offset: u64 = offset.parse().unwrap();
            if offset > len {
                assert_eq!(r["error"], INVALID_OFFSET, "offset {offset} of {a}");
            } else {
                assert_eq!(
                    r["value"].as_str().unwrap(),
                    &value[offset as usize * 2..],
                    "offset {offset} of {a}"
                );
            }
        }
        assert!(
            a["write"]["ok"] == true || a["write"]["error"].is_u64(),
            "{a}"
        );
        if a["handle"] == control {
            // The seed's API: OTA Control reads as the last control value, 0x00 at first.
            assert_eq!(value, "00");
            assert_eq!(a["blob"]["0"]["value"], "00");
            assert_eq!(a["blob"]["1"]["value"], "");
            assert_eq!(a["blob"]["2"]["error"], INVALID_OFFSET);
            assert_eq!(a["blob"]["600"]["error"], INVALID_OFFSET);
        }
    }
    // OTA Control notifies only: indications are refused, notifications taken.
    const CCCD_IMPROPERLY_CONFIGURED: u64 = 0xFD;
    assert_eq!(
        probe["control_cccd"]["indicate"]["error"], CCCD_IMPROPERLY_CONFIGURED,
        "{probe}"
    );
    assert_eq!(probe["control_cccd"]["notify"]["ok"], true, "{probe}");
    assert_eq!(probe["alive"], true);
    assert_eq!(probe["control_after"], "00");
    // The device survived all of it and serves the next central.
    dev.wait_event("advertising", Duration::from_secs(10));
    assert!(
        dev.child.try_wait().unwrap().is_none(),
        "the device is still running"
    );
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn a_dropped_fast_client_does_not_lock_out_the_seed_client() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    // A fast client begins an update and vanishes mid-transfer, leaving a resumable session.
    let (fast, _) = image(dir.path(), "fast.bin", "9.0.0", 150_000, 31);
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/flood_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
        .args(["--mtu", "247", "--file"])
        .arg(&fast)
        .output()
        .unwrap();
    assert!(out.status.success(), "flood_client.py: {}", text(&out));
    // The seed's client, which knows no ABORT, updates the device.
    let (seed, img) = image(dir.path(), "seed.bin", "9.1.0", 80_000, 37);
    let out = seed_client(ports[1], 517, &seed);
    assert!(out.status.success(), "legacy_client.py: {}", text(&out));
    assert_booted(&mut dev, &sim, "9.1.0", &img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn virtual_controllers_and_seed_client_smoke() {
    let _serial = serial();
    // The rig itself (controllers, fragmenting, link tuning answers) and the seed client
    // against a fake seed device, all on Bumble hosts: e2e/smoke_peripheral_central.py.
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/smoke_peripheral_central.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smoke_peripheral_central.py: {}",
        text(&out)
    );
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat` (clock ticks of 10 ms,
/// the `USER_HZ` of every Linux ABI).
#[cfg(target_os = "linux")]
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

#[test]
#[cfg(target_os = "linux")]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn an_idle_device_does_not_spin() {
    let _serial = serial();
    let rig = Rig::start(&[]);
    let pid = rig.dev.child.id();
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid) - before;
    // Advertising with nobody connected is a few HCI events a second; a polling loop is 3 s.
    assert!(
        used < Duration::from_millis(500),
        "an advertising device used {used:?} of CPU in 3 s"
    );
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn a_disconnect_the_update_never_reaches_is_an_error() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim: _sim,
        dev: _dev,
    } = Rig::start(&[]);
    let (path, _img) = image(dir.path(), "app.bin", "2.0.0", 30_000, 41);
    let out = flash_hci(ports[1], &path, &["--disconnect-at", "100000"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("never happened"),
        "{v}"
    );
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn a_compressed_update_over_hci_sends_fewer_bytes_and_lands_byte_for_byte() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let mut spec =
        virtual_esp32::app_image::AppImageSpec::new(Chip::Esp32c3, "e2e-app", "6.0.0", 120_000, 3);
    spec.code_like = true;
    let img = virtual_esp32::app_image::build_with(&spec);
    let path = dir.path().join("code.bin");
    std::fs::write(&path, &img).unwrap();
    let report = flash_json(&flash_hci(ports[1], &path, &[]));
    assert_eq!(report["compressed"], true, "{report}");
    let wire = report["wire_bytes"].as_u64().unwrap();
    assert!(wire < img.len() as u64 * 2 / 3, "{report}");
    assert_booted(&mut dev, &sim, "6.0.0", &img);
    // And the image as it is, when asked (once the device confirmed the first by itself).
    confirmed(&mut dev);
    let (plain, plain_img) = image(dir.path(), "plain.bin", "7.0.0", 60_000, 5);
    let report = flash_json(&flash_hci(ports[1], &plain, &["--no-compress"]));
    assert_eq!(report["compressed"], false, "{report}");
    assert_eq!(report["wire_bytes"], report["image_bytes"]);
    assert_booted(&mut dev, &sim, "7.0.0", &plain_img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn an_idle_central_is_dropped_so_another_can_get_in() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&["--idle-timeout", "2"]);
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/idle_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
        .args(["--wait", "15"])
        .output()
        .unwrap();
    assert!(out.status.success(), "idle_client.py: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dropped"], true, "{v}");
    let after = v["after_s"].as_f64().unwrap();
    assert!((1.5..10.0).contains(&after), "dropped after {after} s");
    dev.wait_event("dropped_idle", Duration::from_secs(5));
    // The device kept advertising on its second connection while the idle central held the
    // first, and the next central updates it.
    let events = dev.drain();
    let connected_at = events.iter().position(|e| e["event"] == "connected");
    let advertised_after =
        connected_at.is_some_and(|i| events[i..].iter().any(|e| e["event"] == "advertising"));
    assert!(advertised_after, "{events:?}");
    let (path, img) = image(dir.path(), "app.bin", "9.0.0", 40_000, 31);
    let report = flash_json(&flash_hci(ports[1], &path, &[]));
    assert_eq!(report["outcome"], "activated");
    assert_booted(&mut dev, &sim, "9.0.0", &img);
}

/// Writes a C3 app image with `secure_version` to `dir/name`.
fn image_with_secure_version(dir: &Path, name: &str, version: &str, sv: u32) -> (PathBuf, Vec<u8>) {
    let mut spec = virtual_esp32::app_image::AppImageSpec::new(
        Chip::Esp32c3,
        "e2e-app",
        version,
        80_000,
        u64::from(sv) + 40,
    );
    spec.secure_version = sv;
    let img = virtual_esp32::app_image::build_with(&spec);
    let path = dir.join(name);
    std::fs::write(&path, &img).unwrap();
    (path, img)
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn a_device_with_a_key_over_bumble_takes_only_the_signed_image() {
    let _serial = serial();
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let in_dir = |args: &[&str]| run_in(d, args);
    in_dir(&["keygen", "vendor"]);
    in_dir(&["keygen", "attacker"]);
    // The running app has secure_version 3.
    image_with_secure_version(d, "factory.bin", "1.0.0", 3);
    in_dir(&[
        "sim",
        "create",
        "esp32.bin",
        "--factory",
        "factory.bin",
        "--key",
        "vendor.pub",
    ]);
    let sim = d.join("esp32.bin");
    // The seed's client leaves its link up when refused; the device drops it after 3 idle s.
    let mut dev = device(ports[0], &sim, &["--idle-timeout", "3"]);
    let (app, img) = image_with_secure_version(d, "app.bin", "2.0.0", 3);
    let (old, _) = image_with_secure_version(d, "old.bin", "0.9.0", 1);
    let key = |k: &str| d.join(k).to_str().unwrap().to_string();
    let refused = |out: Output, reason: &str| {
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(reason),
            "expected {reason}: {}",
            text(&out)
        );
    };
    refused(flash_hci(ports[1], &app, &[]), "SignatureRequired");
    refused(
        flash_hci(ports[1], &app, &["--key", &key("attacker.key")]),
        "UnknownKey",
    );
    refused(
        flash_hci(ports[1], &old, &["--key", &key("vendor.key")]),
        "Downgrade",
    );
    // A forged signature: the vendor's manifest with one bit of its signature flipped.
    let sign = Command::new(BIN)
        .current_dir(d)
        .args(["sign", "app.bin", "--key", "vendor.key"])
        .output()
        .unwrap();
    assert!(sign.status.success(), "{}", text(&sign));
    let mut forged = std::fs::read(d.join("app.bin.sig")).unwrap();
    forged[100] ^= 1;
    std::fs::write(d.join("app.bin.sig"), &forged).unwrap();
    refused(flash_hci(ports[1], &app, &[]), "BadSignature");
    std::fs::remove_file(d.join("app.bin.sig")).unwrap();
    // The seed's client, which cannot carry a signature.
    let out = seed_client(ports[1], 247, &app);
    assert_eq!(
        out.status.code(),
        Some(2),
        "legacy_client.py: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("refused the OTA request"),
        "{}",
        text(&out)
    );
    // Nothing of the refused ones reached the slot the next update writes.
    assert!(
        slot_bytes(&sim, "ota_0", 4096).iter().all(|b| *b == 0xFF),
        "refused updates must leave ota_0 erased"
    );
    record_figures(
        "signed",
        &serde_json::json!({
            "refused": ["unsigned", "another key", "downgrade", "forged", "seed protocol"],
            "accepted": 0,
        }),
    );
    let report = flash_json(&flash_hci(ports[1], &app, &["--key", &key("vendor.key")]));
    assert_eq!(report["outcome"], "activated");
    assert!(report["signed_by"].is_string(), "{report}");
    assert_booted(&mut dev, &sim, "2.0.0", &img);
}

/// Records a figure of this run in `target/figures/NAME.json`, which `cargo xtask test` prints
/// at its end.
fn record_figures(name: &str, figures: &Value) {
    let dir = Path::new(ROOT).join("target/figures");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), figures.to_string()).unwrap();
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn hostile_clients_leave_the_device_alive_and_the_running_slot_intact() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let factory_before = slot_bytes(&sim, "factory", 0x10_0000);
    let (path, img) = image(dir.path(), "app.bin", "2.0.0", 80_000, 21);
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/hostile_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
        .arg("--file")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("hostile_client.py: {e}: {}", text(&out)));
    let cases = report["cases"].as_array().unwrap();
    let failed: Vec<&Value> = cases.iter().filter(|c| c["ok"] != true).collect();
    // The device process is still up and advertises again.
    let crashed = dev.child.try_wait().unwrap().is_some();
    dev.wait_event("advertising", Duration::from_secs(10));
    let running_changed = slot_bytes(&sim, "factory", 0x10_0000) != factory_before;
    record_figures(
        "hostile",
        &serde_json::json!({
            "cases": cases.len(),
            "failed": failed.len(),
            "device_crashes": u32::from(crashed),
            "running_slot_changed": u32::from(running_changed),
        }),
    );
    assert!(
        failed.is_empty(),
        "cases without their documented answer: {failed:#?}"
    );
    assert!(!crashed && !running_changed);
    assert!(cases.len() >= 20, "{} cases", cases.len());
    // And it still updates: the image the last case cut off at END goes through (resumed, or
    // answered again if END had completed).
    let report = flash_json(&flash_hci(ports[1], &path, &[]));
    assert_eq!(report["outcome"], "activated");
    assert_booted(&mut dev, &sim, "2.0.0", &img);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn while_one_central_idles_connected_another_updates_the_device() {
    let _serial = serial();
    let (_ctl, ports) = controllers(3);
    let dir = tempfile::tempdir().unwrap();
    let sim = create_sim(dir.path());
    // Long enough that the idle central stays connected through the whole update.
    let mut dev = device(ports[0], &sim, &["--idle-timeout", "60"]);
    let mut idle = Proc::spawn(
        "idle_client.py",
        Command::new(python())
            .arg(Path::new(ROOT).join("e2e/idle_client.py"))
            .args(["--hci", &format!("tcp-client:127.0.0.1:{}", ports[1])])
            .args(["--wait", "60"]),
    );
    let first = dev.wait_event("connected", Duration::from_secs(20));
    // The device advertises again with one connection held.
    dev.wait_event("advertising", Duration::from_secs(10));
    let (path, img) = image(dir.path(), "app.bin", "2.0.0", 120_000, 31);
    let report = flash_json(&flash_hci(ports[2], &path, &[]));
    assert_eq!(report["outcome"], "activated");
    assert_booted(&mut dev, &sim, "2.0.0", &img);
    let events = dev.drain();
    let connected: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "connected")
        .collect();
    assert_eq!(connected.len(), 2, "two centrals at once: {events:?}");
    assert_ne!(connected[1]["handle"], first["handle"]);
    // The idle central was still connected when the update finished: not dropped for it.
    assert!(
        !events.iter().any(|e| e["event"] == "dropped_idle"),
        "{events:?}"
    );
    drop(idle.child.kill());
}

/// Runs `e2e/secure_client.py` typing `passkey` from the controller on `port`.
fn secure_client(port: u16, passkey: &str) -> Value {
    let out = Command::new(python())
        .arg(Path::new(ROOT).join("e2e/secure_client.py"))
        .args(["--hci", &format!("tcp-client:127.0.0.1:{port}")])
        .args(["--passkey", passkey])
        .output()
        .unwrap();
    assert!(out.status.success(), "secure_client.py: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn ota_writes_need_a_link_paired_by_passkey_when_the_device_asks_for_one() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&["--passkey", "024680"]);
    // The right passkey: refused before pairing, answered after.
    let v = secure_client(ports[1], "24680");
    assert_eq!(
        v["before"]["error"], 5,
        "Insufficient Authentication first: {v}"
    );
    assert_eq!(v["paired"], true, "{v}");
    assert_eq!(v["after"]["ok"], true, "{v}");
    assert!(
        v["info"].as_str().is_some_and(|i| i.starts_with("90")),
        "INFO answered after pairing: {v}"
    );
    let paired = dev.wait_event("paired", Duration::from_secs(10));
    assert_eq!(paired["authenticated"], true);
    // A wrong passkey: pairing fails and the write stays refused.
    let v = secure_client(ports[1], "135791");
    assert_eq!(v["paired"], false, "{v}");
    assert_ne!(v["after"]["ok"], true, "{v}");
    dev.wait_event("pairing_failed", Duration::from_secs(10));
    // ble-ota's own central (trouble-host) pairs with --passkey: a wrong one is refused
    // before a byte is sent, the right one updates the device.
    let (path, img) = image(dir.path(), "app.bin", "8.0.0", 60_000, 51);
    let out = flash_hci(ports[1], &path, &["--passkey", "111111"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("pairing failed"), "{}", text(&out));
    let report = flash_json(&flash_hci(ports[1], &path, &["--passkey", "024680"]));
    assert_eq!(report["outcome"], "activated");
    assert_booted(&mut dev, &sim, "8.0.0", &img);
}

/// A private D-Bus bus (the system bus's stand-in) and the BlueZ stand-in on it, as a Bumble
/// central on the controller at `port`; returns them and the bus address.
fn bluez_standin(dir: &Path, port: u16, extra: &[&str]) -> (Proc, Proc, String) {
    let address = format!("unix:path={}", dir.join("system_bus").display());
    let mut bus = Proc::spawn(
        "dbus-daemon",
        Command::new("dbus-daemon")
            .arg("--config-file")
            .arg(Path::new(ROOT).join("e2e/dbus-private.conf"))
            .arg(format!("--address={address}"))
            .args(["--nofork", "--print-address"]),
    );
    bus.wait_line(Duration::from_secs(10), |l| l.starts_with("unix:"));
    let mut standin = Proc::spawn(
        "bluez_standin.py",
        Command::new(python())
            .arg(Path::new(ROOT).join("e2e/bluez_standin.py"))
            .args(["--hci", &format!("tcp-client:127.0.0.1:{port}")])
            .args(extra)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address),
    );
    standin.wait_line(Duration::from_secs(20), |l| l.contains("ready"));
    (bus, standin, address)
}

/// `ble-ota --json ARGS` with the default transport (btleplug on BlueZ) on the bus at `bus`.
fn over_bluez(bus: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--json")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .output()
        .expect("ble-ota runs")
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn btleplug_scans_shows_and_updates_through_a_bluez_standin_with_a_resume() {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&[]);
    let (_bus, _standin, bus) = bluez_standin(dir.path(), ports[1], &[]);
    // scan: the device, by the name it advertises.
    let out = over_bluez(&bus, &["scan", "--scan-timeout", "3"]);
    assert!(out.status.success(), "scan: {}", text(&out));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    // info: INFO written and its notification received through BlueZ's D-Bus API.
    let out = over_bluez(&bus, &["info", "--scan-timeout", "3"]);
    assert!(out.status.success(), "info: {}", text(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["protocol_version"], 4, "{info}");
    assert_eq!(info["running"], "factory");
    // flash, with the link dropped on the way: it resumes and the device boots the image.
    let (path, img) = image(dir.path(), "app.bin", "6.0.0", 150_000, 41);
    let args = [
        "flash",
        path.to_str().unwrap(),
        "--scan-timeout",
        "3",
        "--disconnect-at",
        "40",
    ];
    let out = over_bluez(&bus, &args);
    let report = flash_json(&out);
    assert_eq!(report["outcome"], "activated");
    assert_eq!(report["disconnects"], 1, "{report}");
    assert_booted(&mut dev, &sim, "6.0.0", &img);
}

#[test]
#[ignore = "needs the Python venv, Chromium and the built page: run via cargo xtask test"]
fn the_web_page_in_headless_chromium_updates_with_both_protocols_resumes_and_refuses_a_corrupt_image()
 {
    let _serial = serial();
    let Rig {
        _ctl,
        ports,
        dir,
        sim,
        mut dev,
    } = Rig::start(&["--confirm", "strict"]);
    // The stand-in drops the link at the 30th write command, as a radio would.
    let (_bus, mut standin, bus) = bluez_standin(dir.path(), ports[1], &["--drop-at", "30"]);
    let (fast, fast_img) = image(dir.path(), "app2.bin", "2.0.0", 150_000, 51);
    let corrupt = dir.path().join("corrupt.bin");
    let (legacy, legacy_img) = image(dir.path(), "app3.bin", "3.0.0", 60_000, 52);
    let mut bad = fast_img.clone();
    bad[100] ^= 1;
    std::fs::write(&corrupt, &bad).unwrap();
    let shot = Path::new(ROOT).join("target/figures/web-updater.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let (_web, page) = click_through_the_page(
        &bus,
        &[
            ("--corrupt", corrupt.as_path()),
            ("--fast", &fast),
            ("--legacy", &legacy),
            ("--screenshot", &shot),
        ],
        &["--legacy-mtu", "247"],
    );
    assert_eq!(page["unavailable"], false, "{page:#}");
    assert_eq!(
        page["offered"].as_array().map(Vec::len),
        Some(1),
        "{page:#}"
    );
    let device = page["device"].as_str().unwrap();
    assert!(device.contains("1.0.0 from factory"), "{device}");
    // The corrupt image: refused on the page, Update stays disabled, nothing sent.
    assert_eq!(page["corrupt"]["start_disabled"], true, "{page:#}");
    let refusal = page["corrupt"]["error"].as_str().unwrap();
    assert!(refusal.contains("not an app image"), "{refusal}");
    // The fast protocol: the link dropped once and the update resumed; the device booted the
    // image on trial, and the page's Confirm made it stay.
    standin.wait_line(Duration::from_secs(1), |l| l.contains("dropped_at"));
    let f = &page["fast"];
    assert_eq!(f["state"], "rebooted", "{page:#}");
    assert_eq!(f["report"]["reconnects"], 1, "{page:#}");
    // Its bytes are checked by the device's SHA-256 at END; once 3.0.0 is confirmed below, the
    // device pre-erases this slot for the next update, so only the boot is checked here.
    let boot = dev.wait_event("boot", Duration::from_secs(10));
    assert_eq!(
        (&boot["version"], &boot["slot"]),
        (&"2.0.0".into(), &"ota_0".into())
    );
    assert!(
        f["device_after"].as_str().unwrap().contains("on trial"),
        "{f:#}"
    );
    assert_eq!(f["confirmed"], true, "{f:#}");
    assert!(
        f["device_confirmed"]
            .as_str()
            .unwrap()
            .contains("2.0.0 from ota_0"),
        "{f:#}"
    );
    // The seed's protocol, packets of MTU - 3 as the seed's clients send them.
    let l = &page["legacy"];
    assert_eq!(l["state"], "rebooted", "{page:#}");
    assert_booted(&mut dev, &sim, "3.0.0", &legacy_img);
    assert_eq!(l["confirmed"], true, "{l:#}");
    assert!(
        l["device_confirmed"]
            .as_str()
            .unwrap()
            .contains("3.0.0 from ota_1"),
        "{l:#}"
    );
    assert!(shot.is_file(), "the screenshot of the page mid-update");
    record_figures(
        "web",
        &serde_json::json!({
            "fast_bytes": f["report"]["bytes"],
            "fast_seconds": f["report"]["seconds"],
            "fast_reconnects": f["report"]["reconnects"],
            "legacy_bytes": l["report"]["bytes"],
            "refused": "corrupt",
        }),
    );
}

/// Serves the page with `ble-ota web` and clicks through it in headless Chromium
/// (`e2e/web_page.py` with `files` and `args`) over the BlueZ stand-in on `bus`; returns the
/// server and what the page showed, which must hold no exception.
fn click_through_the_page(bus: &str, files: &[(&str, &Path)], args: &[&str]) -> (Proc, Value) {
    let mut web = Proc::spawn(
        "ble-ota web",
        Command::new(BIN)
            .args(["--json", "web", "--port", "0", "--site"])
            .arg(Path::new(ROOT).join("target/web/site")),
    );
    let url = web.wait_event("serving", Duration::from_secs(10))["url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(ROOT).join("e2e/web_page.py"))
        .args(["--url", &url])
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    for (flag, path) in files {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().expect("web_page.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let page: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("web_page.py JSON: {e}: {}", text(&out)));
    assert!(page["exception"].is_null(), "{page:#}\n{}", text(&out));
    (web, page)
}

#[test]
#[ignore = "needs the Python venv, Chromium and the built page: run via cargo xtask test"]
fn the_web_page_sends_a_signed_image_over_a_small_mtu_reading_a_cut_info_whole() {
    let _serial = serial();
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let in_dir = |args: &[&str]| run_in(d, args);
    in_dir(&["keygen", "vendor"]);
    in_dir(&["sim", "create", "esp32.bin", "--key", "vendor.pub"]);
    let sim = d.join("esp32.bin");
    let mut dev = device(ports[0], &sim, &["--confirm", "strict"]);
    let (app, img) = image(d, "app.bin", "4.0.0", 40_000, 61);
    in_dir(&["sign", "app.bin", "--key", "vendor.key"]);
    image(d, "other.bin", "4.0.1", 40_000, 62);
    in_dir(&["sign", "other.bin", "--key", "vendor.key"]);
    // An ATT MTU of 50: INFO (56 bytes here) does not fit a notification, so the page reads OTA Control whole,
    // and Chromium's handling of the value change that follows a read is in the way.
    let (_bus, mut standin, bus) = bluez_standin(d, ports[1], &["--mtu", "50"]);
    let (_web, page) = click_through_the_page(
        &bus,
        &[
            ("--fast", app.as_path()),
            ("--sig", &d.join("app.bin.sig")),
            ("--wrong-sig", &d.join("other.bin.sig")),
        ],
        &["--stop-at", "0.3"],
    );
    let device_text = page["device"].as_str().unwrap();
    assert!(device_text.contains("signed images only"), "{device_text}");
    // The cut INFO was read whole from OTA Control (longer than a 47-byte notification).
    let read: Value = serde_json::from_str(
        &standin.wait_line(Duration::from_secs(1), |l| l.contains("\"read\"")),
    )
    .unwrap();
    assert!(read["len"].as_u64().unwrap() > 47, "{read}");
    assert_eq!(page["unsigned"]["start_disabled"], true, "{page:#}");
    let refusal = page["unsigned"]["error"].as_str().unwrap();
    assert!(refusal.contains("signed images only"), "{refusal}");
    assert_eq!(page["wrong_sig"]["start_disabled"], true, "{page:#}");
    let refusal = page["wrong_sig"]["error"].as_str().unwrap();
    assert!(refusal.contains("belongs to another image"), "{refusal}");
    let f = &page["fast"];
    // Stop on the page, then Update again: it resumes where the device stopped.
    assert!(
        f["stopped"].as_str().unwrap().starts_with("Stopped"),
        "{f:#}"
    );
    assert!(
        f["restarted"].as_str().unwrap().starts_with("Resuming at"),
        "{f:#}"
    );
    assert_eq!(f["state"], "rebooted", "{page:#}");
    assert_eq!(f["report"]["signed"], true, "{f:#}");
    assert!(f["status"].as_str().unwrap().contains("on trial"), "{f:#}");
    assert_booted(&mut dev, &sim, "4.0.0", &img);
    assert_eq!(f["confirmed"], true, "{f:#}");
    assert!(
        f["device_confirmed"]
            .as_str()
            .unwrap()
            .contains("4.0.0 from ota_0"),
        "{f:#}"
    );
    record_figures(
        "web_signed",
        &serde_json::json!({"bytes": f["report"]["bytes"], "mtu": 50, "refused": "unsigned, another image's signature"}),
    );
}

/// A stand-in for a device running the seed's firmware (`e2e/seed_device.py`) on the
/// controller at `port`, advertising.
fn seed_device(port: u16) -> Proc {
    let mut seed = Proc::spawn(
        "seed_device.py",
        Command::new(python())
            .arg(Path::new(ROOT).join("e2e/seed_device.py"))
            .args(["--hci", &format!("tcp-client:127.0.0.1:{port}")]),
    );
    seed.wait_line(Duration::from_secs(20), |l| l.contains("advertising"));
    seed
}

/// Asserts the seed's firmware took `img` whole, in packets of `packet_size`, and said DONE_ACK.
fn assert_seed_took(seed: &mut Proc, img: &[u8], packet_size: u16) {
    use sha2::Digest;
    let done: Value =
        serde_json::from_str(&seed.wait_line(Duration::from_secs(5), |l| l.contains("done")))
            .unwrap();
    let done = &done["done"];
    assert_eq!(done["reply"], 5, "DONE_ACK: {done}");
    assert_eq!(done["len"], img.len());
    assert_eq!(done["packet_size"], packet_size);
    assert_eq!(done["sha256"], hex::encode(sha2::Sha256::digest(img)));
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn legacy_flash_updates_a_device_running_the_seeds_firmware_which_restarts_at_once() {
    let _serial = serial();
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let mut seed = seed_device(ports[0]);
    let (app, img) = image(dir.path(), "app.bin", "5.1.0", 30_000, 72);
    // The seed restarts right after its DONE_ACK. An answer that arrived counts; one that
    // went with the link (trouble-host 0.8 clears the ATT PDUs it has not handed over when the
    // link drops) leaves the user told the device probably took it, never "run it again".
    let out = flash_hci(ports[1], &app, &["--legacy"]);
    if out.status.success() {
        assert_eq!(flash_json(&out)["outcome"], "activated");
    } else {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("probably runs the new one"),
            "{}",
            text(&out)
        );
    }
    // trouble-host's central asks for MTU 498; the seed's packets are MTU - 3.
    assert_seed_took(&mut seed, &img, 495);
}

#[test]
#[ignore = "needs the Python venv, Chromium and the built page: run via cargo xtask test"]
fn the_web_page_updates_a_device_running_the_seeds_firmware_with_the_seeds_protocol() {
    let _serial = serial();
    let (_ctl, ports) = controllers(2);
    let dir = tempfile::tempdir().unwrap();
    let mut seed = seed_device(ports[0]);
    let (app, img) = image(dir.path(), "app.bin", "5.0.0", 30_000, 71);
    let (_bus, _standin, bus) = bluez_standin(dir.path(), ports[1], &["--mtu", "247"]);
    let (_web, page) = click_through_the_page(
        &bus,
        &[("--legacy", app.as_path())],
        &["--legacy-mtu", "247"],
    );
    // INFO goes unanswered: the page says what the device runs and picks the seed's protocol.
    let device_text = page["device"].as_str().unwrap();
    assert!(device_text.contains("answers no INFO"), "{device_text}");
    let l = &page["legacy"];
    assert_eq!(l["state"], "rebooted", "{page:#}");
    assert!(
        l["status"].as_str().unwrap().contains("seed's protocol"),
        "{l:#}"
    );
    // The seed's firmware got the image whole, in packets of MTU - 3 as its clients send them.
    assert_seed_took(&mut seed, &img, 244);
}
