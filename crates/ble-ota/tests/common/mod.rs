//! Helpers the `ble-ota` test files share.

use std::path::Path;

/// Writes a valid ESP32-C3 app image (project `cli-app`) of about `len` bytes to `dir/name`
/// and returns its path.
pub fn write_image(dir: &Path, name: &str, version: &str, len: usize) -> String {
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
