//! What a user reads: the human output of `info`, `flash`, `image inspect` and the errors,
//! pinned as snapshots (insta). A change to any of them shows up in review as a diff.
//!
//! Paths, times and rates vary between runs and machines: they are replaced before comparing.

use std::path::Path;
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ota-core/tests/fixtures");

fn ble_ota(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

/// Exit code, stdout and stderr, with run-specific text replaced.
fn shown(out: &Output, dir: &Path) -> String {
    let text = format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text.replace(dir.to_str().unwrap(), "[DIR]");
    let text = text.replace(FIXTURES, "[FIXTURES]");
    // Progress bar redraws and timings.
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.rsplit('\r').next().unwrap_or(line);
        lines.push(mask_numbers_after(line, &[" in ", " s (", "kB/s", "KiB/s"]));
    }
    lines.join("\n") + "\n"
}

/// Masks a number that follows one of `markers` (times, rates).
fn mask_numbers_after(line: &str, markers: &[&str]) -> String {
    if !markers.iter().any(|m| line.contains(m)) {
        return line.to_string();
    }
    let mut out = String::new();
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn app(dir: &Path, name: &str, version: &str, len: usize) -> String {
    let img =
        virtual_esp32::app_image::build(ota_core::esp::Chip::Esp32c3, "snap-app", version, len, 7);
    let path = dir.join(name);
    std::fs::write(&path, img).unwrap();
    name.to_string()
}

#[test]
fn image_inspect_of_a_valid_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = ble_ota(
        dir.path(),
        &["image", "inspect", &format!("{FIXTURES}/tiny_c3_app.bin")],
    );
    insta::assert_snapshot!(shown(&out, dir.path()));
}

#[test]
fn image_inspect_of_a_corrupt_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = ble_ota(
        dir.path(),
        &[
            "image",
            "inspect",
            &format!("{FIXTURES}/handmade_c3_app_corrupt.bin"),
        ],
    );
    insta::assert_snapshot!(shown(&out, dir.path()));
}

#[test]
fn info_of_a_fresh_virtual_esp32() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        ble_ota(dir.path(), &["sim", "create", "dev.bin"])
            .status
            .success()
    );
    let out = ble_ota(dir.path(), &["--sim", "dev.bin", "info"]);
    insta::assert_snapshot!(shown(&out, dir.path()));
}

#[test]
fn flash_then_info_on_the_virtual_esp32() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        ble_ota(dir.path(), &["sim", "create", "dev.bin"])
            .status
            .success()
    );
    let image = app(dir.path(), "app.bin", "2.0.0", 30_000);
    let out = ble_ota(
        dir.path(),
        &["--sim", "dev.bin", "flash", &image, "--speed", "0"],
    );
    insta::assert_snapshot!("flash", shown(&out, dir.path()));
    let out = ble_ota(dir.path(), &["--sim", "dev.bin", "info"]);
    insta::assert_snapshot!("info_after_flash", shown(&out, dir.path()));
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ble_ota(dir.path(), &["image", "inspect", "nope.bin"]);
    insta::assert_snapshot!("missing_image", shown(&missing, dir.path()));
    let no_device = ble_ota(dir.path(), &["--sim", "absent.bin", "info"]);
    insta::assert_snapshot!("no_virtual_device", shown(&no_device, dir.path()));
    assert!(
        ble_ota(dir.path(), &["sim", "create", "dev.bin"])
            .status
            .success()
    );
    std::fs::write(dir.path().join("junk.bin"), vec![0x42u8; 5000]).unwrap();
    let refused = ble_ota(
        dir.path(),
        &[
            "--sim", "dev.bin", "flash", "junk.bin", "--force", "--speed", "0",
        ],
    );
    insta::assert_snapshot!("foreign_file_refused", shown(&refused, dir.path()));
}
