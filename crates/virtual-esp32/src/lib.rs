//! A virtual ESP32 for trying and testing over-the-air updates without a device.
//!
//! Its flash is a plain file holding a whole flash image in the layout
//! `espflash save-image --merge` writes: the second-stage bootloader region at the chip's
//! bootloader offset, the partition table at 0x8000, otadata, the app slots, 0xFF elsewhere.
//! So a real merged image can be loaded ([`VirtualEsp32::from_merged_image`]), and any tool
//! (`esptool image-info`, `otatool.py`, `dd`) can read the file.
//!
//! - [`Flash`]: NOR semantics (program only clears bits, erase sets 4 KiB sectors to 0xFF),
//!   `embedded_storage` traits like esp-storage, operation counters for a timing model, and
//!   power cuts at the N-th mutating operation ([`FaultPlan`]) that leave it torn.
//! - [`VirtualEsp32`]: created from a partitions CSV and a factory image, or opened from a
//!   file; [`boot`](VirtualEsp32::boot) applies ESP-IDF's bootloader rules (slot choice from
//!   otadata, with or without rollback support, image checks including the chip revision range
//!   against the device's [`chip_revision`](VirtualEsp32::chip_revision), which is recorded in
//!   `<flash file>.chip-revision`) and the firmware's early-boot rollback guard,
//!   both from `ota-core`, and reports the app it started from its `esp_app_desc_t`. It never
//!   executes app code, and it needs no bootloader image: the bootloader region stays erased
//!   unless one is given, and the device runs the bootloader's rules itself.
//! - [`app_image`]: builds valid ESP-IDF app images (header, app descriptor, filler code,
//!   checksum, SHA-256) for demos and tests.
//!
//! ```no_run
//! use virtual_esp32::{app_image, VirtualEsp32};
//! use ota_core::esp::{boot::BootloaderConfig, Chip};
//!
//! let csv = std::fs::read_to_string("partitions.csv")?;
//! let factory = app_image::build(Chip::Esp32c3, "demo", "1.0.0", 20_000, 1);
//! let mut dev = VirtualEsp32::create("device.bin", &csv, &factory, Chip::Esp32c3, 4 << 20)?;
//! let report = dev.boot(BootloaderConfig::default())?;
//! assert_eq!(report.slot, "factory");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod air;
pub mod app_image;
mod device;
pub mod flash;

pub use device::{
    BootReport, DeviceError, DeviceSpec, TABLE_OFFSET, VirtualEsp32, default_chip_revision,
    merged_image,
};
pub use flash::{FaultPlan, Flash, FlashError, FlashStats, Tear};
pub use ota_core::esp::boot::{BootloaderConfig, GuardOutcome};
