//! The `ble-ota` binary as a user runs it, against the virtual ESP32.

use std::path::Path;
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ota-core/tests/fixtures");

fn ble_ota(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = ble_ota(args);
    assert!(
        out.status.success(),
        "ble-ota {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).expect("valid JSON")
}

fn write_image(dir: &Path, name: &str, version: &str, len: usize) -> String {
    let img = virtual_esp32::app_image::build(
        ota_core::esp::Chip::Esp32c3,
        "cli-app",
        version,
        len,
        len as u64,
    );
    let path = dir.join(name);
    std::fs::write(&path, img).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&[
        "demo",
        "--speed",
        "0",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    for expected in [
        "refused by the device: BadImageChecksum",
        "rollback guard: ota_0",
        "Done: every step behaved as expected",
    ] {
        assert!(
            out.contains(expected),
            "demo output lacks {expected:?}:\n{out}"
        );
    }
}

#[test]
fn create_flash_confirm_and_info_over_the_simulated_link() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.bin");
    let dev = dev.to_str().unwrap();
    let boot = json(&["sim", "create", dev]);
    assert_eq!(boot["slot"], "factory");
    let v2 = write_image(dir.path(), "v2.bin", "2.0.0", 80_000);
    let r = json(&["--sim", dev, "flash", &v2, "--speed", "0"]);
    assert_eq!(r["outcome"], "activated");
    assert_eq!(r["slot"], 0);
    assert_eq!(r["booted"]["version"], "2.0.0");
    assert_eq!(r["booted"]["state"], "PendingVerify");
    assert!(r["modelled"].as_bool().unwrap());
    let info = json(&["--sim", dev, "info"]);
    assert_eq!(info["running"], "ota_0");
    assert_eq!(info["app_version"], "2.0.0");
    assert_eq!(info["chip"], "esp32c3");
    json(&["--sim", dev, "confirm"]);
    let info = json(&["--sim", dev, "info"]);
    let ota0 = info["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "ota_0")
        .unwrap()
        .clone();
    assert_eq!(ota0["state"], "valid");
    // A second update goes to ota_1 with the seed's protocol.
    let v3 = write_image(dir.path(), "v3.bin", "3.0.0", 70_001);
    let r = json(&["--sim", dev, "flash", &v3, "--legacy", "--speed", "0"]);
    assert_eq!(r["protocol"], "legacy");
    assert_eq!(r["booted"]["slot"], "ota_1");
    // The flash file is a plain merged image: ota_1 holds the image byte for byte.
    let flash = std::fs::read(dev).unwrap();
    let img = std::fs::read(&v3).unwrap();
    assert_eq!(&flash[0x210000..0x210000 + img.len()], &img[..]);
}

#[test]
fn resume_and_power_cut_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.bin");
    let dev = dev.to_str().unwrap();
    json(&["sim", "create", dev]);
    let v2 = write_image(dir.path(), "v2.bin", "2.0.0", 100_000);
    let r = json(&[
        "--sim",
        dev,
        "flash",
        &v2,
        "--speed",
        "0",
        "--disconnect-at",
        "50",
        "--disconnect-at",
        "200",
    ]);
    assert_eq!(r["disconnects"], 2);
    assert_eq!(r["booted"]["version"], "2.0.0");
    json(&["--sim", dev, "confirm"]);
    let v3 = write_image(dir.path(), "v3.bin", "3.0.0", 100_000);
    let out = ble_ota(&[
        "--sim",
        dev,
        "flash",
        &v3,
        "--speed",
        "0",
        "--power-cut-at",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost power"));
    let boot = json(&["sim", "boot", dev]);
    assert_eq!(
        (boot["slot"].as_str(), boot["version"].as_str()),
        (Some("ota_0"), Some("2.0.0"))
    );
}

#[test]
fn refusals_have_documented_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.bin");
    let dev = dev.to_str().unwrap();
    json(&["sim", "create", dev]);
    // A corrupt image: refused locally (5) unless forced, then by the device (3).
    let good = write_image(dir.path(), "v2.bin", "2.0.0", 50_000);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[30_000] ^= 1;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &bytes).unwrap();
    let bad = bad.to_str().unwrap();
    assert_eq!(
        ble_ota(&["--sim", dev, "flash", bad, "--speed", "0"])
            .status
            .code(),
        Some(5)
    );
    let out = ble_ota(&["--sim", dev, "flash", bad, "--speed", "0", "--force"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BadImageChecksum"));
    // Nothing to confirm on factory.
    assert_eq!(ble_ota(&["--sim", dev, "confirm"]).status.code(), Some(3));
    // A device file that does not exist.
    assert_eq!(
        ble_ota(&["--sim", "/nonexistent/dev.bin", "info"])
            .status
            .code(),
        Some(4)
    );
    // image inspect on the corrupt vector.
    let corrupt = format!("{FIXTURES}/handmade_c3_app_corrupt.bin");
    assert_eq!(
        ble_ota(&["image", "inspect", &corrupt]).status.code(),
        Some(5)
    );
}

#[test]
fn scan_without_bluetooth_says_so_in_one_line() {
    let out = ble_ota(&["scan", "--timeout", "0.1"]);
    if out.status.success() {
        return; // a machine with a working adapter: nothing to check here
    }
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--sim") && err.contains("--hci"), "{err}");
}

/// `image inspect` agrees with ESP-IDF's own `esptool image-info` on every image vector.
#[test]
#[ignore = "needs esptool from the Python venv: run via cargo xtask test"]
fn image_inspect_agrees_with_esptool() {
    let python = std::env::var("BLE_OTA_PYTHON")
        .expect("BLE_OTA_PYTHON must point at the venv's python (cargo xtask setup)");
    for (name, valid) in [
        ("tiny_c3_app.bin", true),
        ("handmade_c3_app.bin", true),
        ("handmade_c3_app_corrupt.bin", false),
    ] {
        let path = format!("{FIXTURES}/{name}");
        let esptool = Command::new(&python)
            .args(["-m", "esptool", "--chip", "esp32c3", "image-info", &path])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&esptool.stdout).to_lowercase();
        assert!(
            !text.is_empty(),
            "esptool printed nothing: {}",
            String::from_utf8_lossy(&esptool.stderr)
        );
        let ours = ble_ota(&["--json", "image", "inspect", &path]);
        let r: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        assert_eq!(r["valid"].as_bool(), Some(valid), "{name}");
        let checksum_valid = text.contains("checksum")
            && text
                .lines()
                .any(|l| l.contains("checksum") && l.contains("(valid)"));
        assert_eq!(
            r["checksum_valid"].as_bool(),
            Some(checksum_valid),
            "{name}: esptool says\n{text}"
        );
        let hash_valid = text
            .lines()
            .any(|l| l.contains("validation hash") && l.contains("(valid)"));
        assert_eq!(r["hash_valid"].as_bool(), Some(hash_valid), "{name}");
        assert!(
            text.contains(&format!(
                "entry point: {}",
                r["entry_point"].as_str().unwrap()
            )),
            "{name}: entry point differs:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "segments: {}",
                r["segments"].as_array().unwrap().len()
            )),
            "{name}: segment count differs"
        );
        for seg in r["segments"].as_array().unwrap() {
            let addr = seg["load_addr"].as_str().unwrap();
            assert!(
                text.contains(addr),
                "{name}: esptool lists no segment at {addr}:\n{text}"
            );
        }
        let project = r["project_name"].as_str().unwrap();
        assert!(
            text.contains(&project.to_lowercase()),
            "{name}: project name {project} not in esptool's output"
        );
    }
}

#[test]
fn the_modelled_link_can_be_tuned_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.bin");
    let dev = dev.to_str().unwrap();
    json(&["sim", "create", dev]);
    let v2 = write_image(dir.path(), "v2.bin", "2.0.0", 150_000);
    let base = json(&["--sim", dev, "flash", &v2, "--speed", "0"]);
    // The new image is on trial: a second update is refused until it is confirmed.
    assert_eq!(
        ble_ota(&["--sim", dev, "flash", &v2, "--speed", "0"])
            .status
            .code(),
        Some(3)
    );
    json(&["--sim", dev, "confirm"]);
    // A slower link (1M PHY, 30 ms interval, no data length extension) takes longer.
    let slow = json(&[
        "--sim",
        dev,
        "flash",
        &v2,
        "--speed",
        "0",
        "--phy",
        "1m",
        "--interval-ms",
        "30",
        "--data-length",
        "27",
        "--queue-full",
        "drop",
        "--rx-queue",
        "8",
    ]);
    assert_eq!(slow["outcome"], "activated");
    assert!(slow["seconds"].as_f64().unwrap() > 2.0 * base["seconds"].as_f64().unwrap());
    // Impossible parameters are refused as usage errors.
    let out = ble_ota(&["--sim", dev, "flash", &v2, "--interval-ms", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ble_ota(&["--sim", dev, "flash", &v2, "--att-mtu", "9000"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The firmware's real app images (from `cargo xtask firmware`) pass `ble-ota image inspect`.
#[test]
#[ignore = "needs the firmware images: run via cargo xtask test (it runs cargo xtask firmware first)"]
fn firmware_images_pass_image_inspect() {
    for chip in ["esp32c3", "esp32c6"] {
        let path = format!(
            "{}/../../firmware/target/images/{chip}.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        assert!(
            Path::new(&path).exists(),
            "{path} is missing: run `cargo xtask firmware`"
        );
        let r = json(&["image", "inspect", &path, "--chip", chip]);
        assert_eq!(r["valid"], true, "{chip}: {r}");
        assert_eq!(r["chip"], chip);
        assert_eq!(r["checksum_valid"], true);
        assert_eq!(r["hash_valid"], true);
        assert!(!r["project_name"].as_str().unwrap().is_empty());
        assert!(
            r["image_len"].as_u64().unwrap() < 1 << 20,
            "{chip}: larger than the 1 MiB slot"
        );
    }
}
