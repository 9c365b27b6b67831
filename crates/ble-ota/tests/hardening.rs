//! Misuse, as a hostile tester tried it: every case gets a clear error with the documented
//! exit code (JSON included) and loses nothing.

use std::path::Path;
use std::process::Command;

mod common;
use common::write_image as image;

/// What one run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

fn ble_ota(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .args(args)
        .output()
        .expect("the binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and asserts the exit code, showing the output when it differs.
fn expect(code: i32, args: &[&str]) -> Run {
    let r = ble_ota(args);
    assert_eq!(
        r.code, code,
        "ble-ota {args:?}: exit {} not {code}\n{}\n{}",
        r.code, r.stdout, r.stderr
    );
    r
}

fn device(dir: &Path) -> String {
    let dev = dir.join("dev.bin").to_str().unwrap().to_string();
    expect(0, &["sim", "create", &dev]);
    dev
}

#[test]
fn a_virtual_esp32_in_use_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    let before = std::fs::read(&dev).unwrap();
    // This test process holds the device as `ble-ota device` would.
    let held = virtual_esp32::VirtualEsp32::open(&dev).unwrap();
    let r = expect(6, &["--sim", &dev, "flash", &app, "--speed", "0"]);
    assert!(
        r.stderr.contains("in use by another ble-ota process"),
        "{}",
        r.stderr
    );
    let r = expect(6, &["--json", "--sim", &dev, "info"]);
    assert_eq!(r.json()["exit_code"], 6);
    expect(6, &["sim", "create", &dev]);
    expect(6, &["sim", "boot", &dev]);
    drop(held);
    assert_eq!(std::fs::read(&dev).unwrap(), before, "nothing was written");
    expect(0, &["--sim", &dev, "flash", &app, "--speed", "0"]);
}

#[test]
fn a_failed_sim_create_leaves_the_old_device_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    expect(0, &["--sim", &dev, "flash", &app, "--speed", "0"]);
    expect(0, &["--sim", &dev, "confirm"]);
    let before = std::fs::read(&dev).unwrap();
    // A factory image with a flipped bit: the header is fine, the checksum is not.
    let mut corrupt = std::fs::read(&app).unwrap();
    corrupt[5000] ^= 0x01;
    let corrupt_path = dir.path().join("corrupt.bin");
    std::fs::write(&corrupt_path, corrupt).unwrap();
    let r = expect(
        1,
        &[
            "sim",
            "create",
            &dev,
            "--factory",
            corrupt_path.to_str().unwrap(),
        ],
    );
    assert!(r.stderr.contains("nothing was written"), "{}", r.stderr);
    assert_eq!(std::fs::read(&dev).unwrap(), before);
    let info = expect(0, &["--json", "--sim", &dev, "info"]).json();
    assert_eq!(info["app_name"], "cli-app", "{info}");
    expect(0, &["sim", "boot", &dev]);
}

#[test]
fn a_stale_power_record_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    expect(0, &["--sim", &dev, "flash", &app, "--speed", "0"]);
    // The running slot is overwritten behind the device's back (another tool wrote the file).
    let mut flash = std::fs::read(&dev).unwrap();
    let ota_0 = 0x11_0000;
    flash[ota_0..ota_0 + 4096].fill(0xFF);
    std::fs::write(&dev, flash).unwrap();
    // The record says ota_0 runs; the flash says it cannot: the device boots afresh.
    let info = expect(0, &["--json", "--sim", &dev, "info"]).json();
    assert_eq!(info["running"], "factory", "{info}");
}

#[test]
fn bad_numbers_are_usage_errors_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    let before = std::fs::read(&dev).unwrap();
    let flash = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "--sim",
            dev.as_str(),
            "flash",
            app.as_str(),
            "--speed",
            "0",
        ];
        args.extend_from_slice(extra);
        let r = expect(2, &args);
        assert_eq!(r.json()["exit_code"], 2, "{extra:?}");
        r
    };
    for t in ["inf", "NaN", "1e12", "1e308", "-1"] {
        flash(&["--sector-erase-ms", t]);
        flash(&["--page-program-ms", t]);
        flash(&["--block-erase-ms", t]);
        flash(&["--interval-ms", t]);
    }
    flash(&["--speed", "inf"]);
    flash(&["--att-mtu", "600"]);
    // The fast protocol's BEGIN does not fit an MTU below 41: say so, no panic.
    for mtu in ["23", "40"] {
        let r = flash(&["--att-mtu", mtu]);
        assert!(r.json()["error"].as_str().unwrap().contains("--legacy"));
    }
    for t in ["1e30", "inf", "0", "-3"] {
        let r = expect(2, &["--json", "--scan-timeout", t, "info"]);
        assert_eq!(r.json()["exit_code"], 2);
    }
    let big = dir.path().join("big.bin");
    expect(
        2,
        &["sim", "create", big.to_str().unwrap(), "--flash-mb", "4100"],
    );
    assert!(!big.exists(), "no 4 MiB device for a 4100 MiB request");
    let r = expect(2, &["--json", "--hci", "tcp:127.0.0.1", "info"]);
    assert!(r.json()["error"].as_str().unwrap().contains("port"));
    assert_eq!(std::fs::read(&dev).unwrap(), before, "nothing was written");
}

#[test]
fn options_that_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    let before = std::fs::read(&dev).unwrap();
    let sim = |extra: &[&str]| {
        let mut args = vec!["--sim", dev.as_str(), "flash", app.as_str(), "--speed", "0"];
        args.extend_from_slice(extra);
        expect(2, &args)
    };
    sim(&["--legacy", "--disconnect-at", "3"]);
    sim(&["--disconnect-at", "0"]);
    sim(&["--power-cut-at", "0"]);
    sim(&["--legacy", "--mtu", "5000"]);
    sim(&["--legacy", "--mtu", "185"]);
    sim(&["--legacy", "--no-reboot"]);
    let r = sim(&["--disconnect-at", "100000"]);
    assert!(r.stderr.contains("data writes"), "{}", r.stderr);
    let r = sim(&["--power-cut-at", "1000000"]);
    assert!(r.stderr.contains("flash writes and erases"), "{}", r.stderr);
    expect(2, &["--sim", &dev, "--hci", "tcp:127.0.0.1:1", "info"]);
    // Modelled-link options without the virtual ESP32 (no Bluetooth is touched).
    for extra in [
        ["--profile", "ios"],
        ["--speed", "0"],
        ["--power-cut-at", "3"],
        ["--att-mtu", "185"],
    ] {
        let mut args = vec!["flash", app.as_str()];
        args.extend_from_slice(&extra);
        let r = expect(2, &args);
        assert!(r.stderr.contains("--sim"), "{}", r.stderr);
    }
    expect(2, &["flash", &app, "--mtu", "185"]);
    assert_eq!(std::fs::read(&dev).unwrap(), before, "nothing was written");
}

#[test]
fn messages_say_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["image", "inspect", d],
        vec!["--sim", d, "info"],
        vec!["sim", "create", "x.bin", "--factory", d],
    ] {
        let r = ble_ota(&args);
        assert_ne!(r.code, 0);
        let first = r
            .stderr
            .find("directory")
            .unwrap_or_else(|| panic!("{args:?}: {}", r.stderr));
        assert!(
            !r.stderr[first + 1..].contains("directory"),
            "{args:?} says it twice: {}",
            r.stderr
        );
    }
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let dev = device(dir.path());
    let r = expect(
        5,
        &["--sim", &dev, "flash", "--force", empty.to_str().unwrap()],
    );
    assert!(r.stderr.contains("0 bytes"), "{}", r.stderr);
    // A blank file is no virtual ESP32, and the hint names no option `--sim` lacks.
    let blank = dir.path().join("blank.bin");
    let mut bytes = vec![0xFFu8; 64 << 10];
    bytes[..0x8000].fill(0);
    std::fs::write(&blank, &bytes).unwrap();
    let r = expect(1, &["--sim", blank.to_str().unwrap(), "info"]);
    assert!(!r.stderr.contains("--chip"), "{}", r.stderr);
}

#[test]
fn image_files_are_capped_before_they_are_read() {
    let r = expect(5, &["--json", "image", "inspect", "/dev/zero"]);
    assert!(r.json()["error"].as_str().unwrap().contains("16 MiB"));
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    expect(5, &["--sim", &dev, "flash", "/dev/zero"]);
}

#[test]
fn a_broken_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .args(["image", "inspect", &app])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is read.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_layout_without_otadata_is_a_refusal_and_used_up_otadata_is_not_worn_flash() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("p.csv");
    std::fs::write(
        &csv,
        "nvs, data, nvs, , 0x6000,\nphy_init, data, phy, , 0x1000,\nfactory, app, factory, , 1M,\n",
    )
    .unwrap();
    let dev = dir.path().join("no-ota.bin");
    let dev = dev.to_str().unwrap();
    expect(
        0,
        &["sim", "create", dev, "--partitions", csv.to_str().unwrap()],
    );
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    let r = expect(3, &["--json", "--sim", dev, "flash", &app, "--speed", "0"]);
    assert!(r.json()["error"].as_str().unwrap().contains("otadata"));
    assert!(
        !ota_core::protocol::Reason::OtadataExhausted
            .hint()
            .contains("worn")
    );
}

#[test]
fn confirm_says_when_nothing_is_on_trial() {
    let dir = tempfile::tempdir().unwrap();
    let dev = device(dir.path());
    let app = image(dir.path(), "app.bin", "2.0.0", 40_000);
    // The factory app, and a confirmed image: the same refusal.
    expect(3, &["--sim", &dev, "confirm"]);
    expect(0, &["--sim", &dev, "flash", &app, "--speed", "0"]);
    expect(0, &["--sim", &dev, "confirm"]);
    let r = expect(3, &["--json", "--sim", &dev, "confirm"]);
    assert!(r.json()["error"].as_str().unwrap().contains("not on trial"));
}

#[test]
fn demo_leaves_nothing_in_the_current_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .args(["demo", "--speed", "0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let r = expect(2, &["--json", "demo"]);
    assert_eq!(r.json()["exit_code"], 2);
}

#[test]
fn argument_errors_are_json_with_json() {
    for args in [
        vec!["--json", "flash", "--bogus"],
        vec!["--json", "nonsense"],
        vec!["--json", "flash"],
    ] {
        let r = expect(2, &args);
        assert_eq!(r.json()["exit_code"], 2, "{args:?}");
    }
    let r = expect(0, &["--json", "--help"]);
    assert!(r.stdout.contains("Usage"));
}

#[test]
fn an_mtu_too_small_for_the_compressed_begin_sends_the_image_as_it_is() {
    for mtu in ["41", "48"] {
        let dir = tempfile::tempdir().unwrap();
        let dev = device(dir.path());
        let app = image(dir.path(), "app.bin", "2.0.0", 20_000);
        let r = expect(
            0,
            &[
                "--json",
                "--sim",
                &dev,
                "flash",
                &app,
                "--speed",
                "0",
                "--att-mtu",
                mtu,
            ],
        );
        assert_eq!(r.json()["compressed"], false, "MTU {mtu}");
    }
}
