//! Everything a product changes in one place: names, the confirm policy and the watchdog.
//!
//! The app version is `version` in `Cargo.toml`; it lands in the app descriptor below, which the
//! bootloader tooling, `ble-ota info`, `ble-ota image inspect` and the Device Information
//! service (firmware revision) all read.

use embassy_time::Duration;
use ota_core::device::trial::{ConfirmPolicy, TrialConfig};
use ota_core::esp::Chip;
use ota_core::esp::boot::BootloaderConfig;
use ota_core::manifest::TrustedKeys;

/// Name in advertising and in the GAP Device Name characteristic (`ble-ota scan` shows it).
pub const DEVICE_NAME: &str = "esp-ble-ota";
/// Device Information: Manufacturer Name String.
pub const MANUFACTURER: &str = "ble-ota-rs";
/// Device Information: Model Number String.
pub const MODEL: &str = "ble-ota-firmware";
/// Device Information: Hardware Revision String (the chip).
pub const HARDWARE_REVISION: &str = {
    #[cfg(feature = "esp32c3")]
    let name = "ESP32-C3";
    #[cfg(feature = "esp32c6")]
    let name = "ESP32-C6";
    #[cfg(feature = "esp32h2")]
    let name = "ESP32-H2";
    #[cfg(feature = "esp32")]
    let name = "ESP32";
    #[cfg(feature = "esp32s3")]
    let name = "ESP32-S3";
    name
};
/// Project name in the app descriptor (at most 31 bytes).
pub const PROJECT_NAME: &str = env!("CARGO_PKG_NAME");

// The app descriptor (`esp_app_desc_t`, section `.flash.appdesc`, the first 256 bytes of the
// image's first segment). ESP-IDF's tools, `ble-ota` and the update engine read it.
esp_bootloader_esp_idf::esp_app_desc!(
    env!("CARGO_PKG_VERSION"),
    PROJECT_NAME,
    esp_bootloader_esp_idf::BUILD_TIME,
    esp_bootloader_esp_idf::BUILD_DATE,
    esp_bootloader_esp_idf::ESP_IDF_COMPATIBLE_VERSION,
    esp_bootloader_esp_idf::MMU_PAGE_SIZE,
    0,
    u16::MAX,
    esp_bootloader_esp_idf::SECURE_VERSION
);

/// How a trial image (the first boot of an update) gets confirmed, and its deadlines
/// (`ota_core::device::trial`, the same policy `ble-ota device --confirm` runs):
///
/// - auto (default): once advertising started and [`crate::app::self_test`] passed. The
///   seed's clients, which know no CONFIRM, end on the new firmware.
/// - strict (Cargo feature `strict-confirm`): a client's CONFIRM (`ble-ota confirm`) within
///   120 s of advertising, or the image rolls back.
///
/// Either way an image whose BLE does not start advertising within 60 s rolls back.
pub const TRIAL: TrialConfig = TrialConfig::new(if cfg!(feature = "strict-confirm") {
    ConfirmPolicy::Strict
} else {
    ConfirmPolicy::Auto
});

/// The watchdog (RTC WDT) resets the chip when the executor stops feeding it this long. A trial
/// image that hangs is thus reset, and the rollback guard then boots the previous image.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(8);

/// The bootloader in flash: espflash's bundled one has no rollback support; the Cargo feature
/// `bootloader-rollback` is for an ESP-IDF bootloader built with
/// `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y`.
pub const BOOTLOADER: BootloaderConfig = BootloaderConfig {
    rollback: cfg!(feature = "bootloader-rollback"),
};

include!(concat!(env!("OUT_DIR"), "/trusted_keys.rs"));

/// The keys the update engine trusts (empty: it takes unsigned images). With keys, the seed's
/// protocol is refused unless the firmware is built with the `unsigned-legacy` feature.
pub const TRUST: TrustedKeys = TrustedKeys::new(TRUSTED_KEYS);

/// The chip, for the update engine (it refuses images built for another chip).
pub const CHIP: Chip = {
    #[cfg(feature = "esp32c3")]
    let chip = Chip::Esp32c3;
    #[cfg(feature = "esp32c6")]
    let chip = Chip::Esp32c6;
    #[cfg(feature = "esp32h2")]
    let chip = Chip::Esp32h2;
    #[cfg(feature = "esp32")]
    let chip = Chip::Esp32;
    #[cfg(feature = "esp32s3")]
    let chip = Chip::Esp32s3;
    chip
};
