//! The boot flow: the partition table, the running partition, the rollback guard, and the
//! update engine with this boot's confirm policy.
//!
//! This is the same `ota_core` code the virtual ESP32 runs at every boot
//! (`crates/virtual-esp32`), so the update tests there cover it.

use esp_storage::FlashStorage;
use log::{info, warn};
use ota_core::device::UpdateEngine;

#[cfg(not(feature = "esp32"))]
use crate::sha::FirmwareSha;
/// The original ESP32 hashes in software (see `sha.rs`).
#[cfg(feature = "esp32")]
pub type FirmwareSha = sha2::Sha256;
use ota_core::device::trial::TrialPolicy;
use ota_core::esp::boot::{GuardOutcome, rollback_guard};
use ota_core::esp::partition::{Md5Policy, PARTITION_TABLE_MAX_LEN, PARTITION_TABLE_OFFSET};
use ota_core::esp::{OtaSlots, PartitionTable, flash};
use static_cell::StaticCell;

use crate::config;

/// What the boot flow hands to the OTA service.
pub struct Booted {
    /// The update engine for the running partition, in a static: it holds a 32 KiB program
    /// buffer, which must not be copied through the async tasks' state.
    pub engine: &'static mut UpdateEngine<FirmwareSha>,
    /// The confirm policy of this boot (on trial or not).
    pub trial: TrialPolicy,
}

/// Why the boot flow could not run; the app then runs without updates.
#[derive(Debug)]
pub enum BootError {
    /// The partition table could not be read or is invalid.
    Table,
    /// No app partition of the table holds this app.
    RunningPartition,
    /// The update engine could not start (no OTA slots or otadata).
    Engine,
}

/// Runs the boot flow; `None` (logged) means the app runs without updates.
pub fn run(flash: &mut FlashStorage<'_>) -> Option<Booted> {
    match try_run(flash) {
        Ok(booted) => Some(booted),
        Err(e) => {
            warn!("boot: {e:?}: running without updates");
            None
        }
    }
}

/// Reads the table, finds the running partition, runs the rollback guard and starts the
/// engine. A trial image that boots a second time unconfirmed is marked ABORTED and the chip
/// resets at once, so the bootloader starts the previous image.
fn try_run(flash: &mut FlashStorage<'_>) -> Result<Booted, BootError> {
    let mut raw = [0u8; PARTITION_TABLE_MAX_LEN];
    flash::read(flash, PARTITION_TABLE_OFFSET, &mut raw).map_err(|e| {
        warn!("boot: {e}");
        BootError::Table
    })?;
    let table = PartitionTable::parse(&raw, Md5Policy::Required, Some(flash.capacity() as u32))
        .map_err(|e| {
            warn!("boot: {e}");
            BootError::Table
        })?;
    let running = *table
        .app_at(running_app_address(flash).ok_or(BootError::RunningPartition)?)
        .ok_or(BootError::RunningPartition)?;
    info!(
        "boot: running {} at {:#x} ({} KiB)",
        running.name(),
        running.offset,
        running.size / 1024
    );

    let guard = match OtaSlots::new(table.clone())
        .and_then(|slots| rollback_guard(flash, &slots, &running, config::BOOTLOADER))
    {
        Ok(outcome) => outcome,
        Err(e) => {
            // No otadata (a table without OTA slots): nothing is ever on trial.
            warn!("boot: rollback guard: {e}");
            GuardOutcome::NotOta
        }
    };
    match guard {
        GuardOutcome::RolledBack => {
            warn!("boot: this image was on trial and was never confirmed: rolling back");
            esp_hal::system::software_reset();
        }
        GuardOutcome::Trial => info!("boot: first boot of an update: on trial until confirmed"),
        GuardOutcome::Confirmed => info!("boot: image confirmed"),
        GuardOutcome::NotOta => info!("boot: not an OTA slot (factory app)"),
    }
    // The chip revision from eFuse (major * 100 + minor, as ESP-IDF compares it): images
    // whose revision range excludes this chip are refused before a byte is written.
    let mut device = ota_gatt::device_config(config::CHIP);
    device.chip_revision = Some(
        esp_hal::efuse::major_chip_version() as u16 * 100
            + esp_hal::efuse::minor_chip_version() as u16,
    );
    device.trusted_keys = config::TRUST;
    device.unsigned_legacy = cfg!(feature = "unsigned-legacy");
    static ENGINE: StaticCell<UpdateEngine<FirmwareSha>> = StaticCell::new();
    let engine = UpdateEngine::with_hasher(flash, device, table, running).map_err(|e| {
        warn!("boot: update engine: {e}");
        BootError::Engine
    })?;
    let engine = ENGINE.init(engine);
    let trial = TrialPolicy::new(config::TRIAL, guard == GuardOutcome::Trial, ota_gatt::now());
    Ok(Booted { engine, trial })
}
/// Returns the flash address the app's code is mapped from (the MMU's first page), as
/// esp-bootloader-esp-idf's `booted_partition` reads it.
fn running_app_address(flash: &mut FlashStorage<'_>) -> Option<u32> {
    let mut buf = [0u8; esp_bootloader_esp_idf::partitions::PARTITION_TABLE_MAX_LEN];
    let table = esp_bootloader_esp_idf::partitions::read_partition_table(flash, &mut buf).ok()?;
    let booted = table.booted_partition().ok()??;
    Some(booted.offset())
}
