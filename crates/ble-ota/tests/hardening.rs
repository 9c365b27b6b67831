//! Misuse, as a hostile tester tried it: every case gets a clear error with the documented
//! exit code (JSON included) and loses nothing.

use std::path::Path;
use std::process::Command;

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

fn image(dir: &Path, name: &str, version: &str, len: usize) -> String {
    let img = virtual_esp32::app_image::build(
        ota_core::esp::Chip::Esp32c3,
        "hardening-app",
        version,
        len,
        len as u64,
    );
    let path = dir.join(name);
    std::fs::write(&path, img).unwrap();
    path.to_str().unwrap().to_string()
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
    assert_eq!(info["app_name"], "hardening-app", "{info}");
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
