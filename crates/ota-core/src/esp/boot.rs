//! The second-stage bootloader's choice of app (`bootloader_utility.c`), and the early-boot
//! rollback guard the app runs when its bootloader was built without rollback support.

use embedded_storage::nor_flash::NorFlash;

use super::chip::Chip;
use super::image::{ImageError, ImageInfo};
use super::partition::{Partition, PartitionError};
use super::slots::{OtaSlots, SlotError};

/// How the bootloader was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BootloaderConfig {
    /// `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (espflash's stock bootloader: off).
    pub rollback: bool,
}

/// The app the bootloader started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The partition it loaded.
    pub partition: Partition,
    /// The verified image in it.
    pub image: ImageInfo,
    /// The partitions tried before it whose images failed verification.
    pub skipped: heapless::Vec<(Partition, ImageError), 8>,
}

/// Why nothing could boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The partition table is invalid.
    #[error("invalid partition table: {0}")]
    PartitionTable(#[from] PartitionError),
    /// No app partition holds a valid image ("No bootable app partitions").
    #[error("no bootable app partition: every app slot failed verification")]
    NoBootableApp,
    /// Otadata could not be read or written.
    #[error(transparent)]
    Slots(#[from] SlotError),
}

/// Runs the bootloader's rules on `flash`: reads the table at `table_offset`, applies the
/// rollback pass (when configured), picks a slot from otadata, tries slots in IDF's loading order
/// until one verifies, and writes otadata where the bootloader does. `flash_size` bounds the table.
pub fn run_bootloader<F: NorFlash>(
    flash: &mut F,
    table_offset: u32,
    flash_size: u32,
    chip: Chip,
    config: BootloaderConfig,
) -> Result<Booted, BootError> {
    todo!()
}

/// What the early-boot rollback guard found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GuardOutcome {
    /// Running factory, or an app no otadata entry selects: nothing to guard.
    NotOta,
    /// The running image is already confirmed (VALID or UNDEFINED).
    Confirmed,
    /// First boot of a new image: now PENDING_VERIFY, on trial until confirmed.
    Trial,
    /// The image booted again without being confirmed: marked ABORTED. The caller must reboot
    /// at once; the bootloader then starts the previous image.
    RolledBack,
}

/// The early-boot rollback guard. With a bootloader without rollback support (espflash's), it
/// does what a rollback-enabled bootloader would: NEW becomes PENDING_VERIFY (trial), and a
/// PENDING_VERIFY image that boots again becomes ABORTED. With a rollback-enabled bootloader
/// (`config.rollback`) the bootloader did that already, and PENDING_VERIFY just means trial.
pub fn rollback_guard<F: NorFlash>(
    flash: &mut F,
    slots: &OtaSlots,
    running: &Partition,
    config: BootloaderConfig,
) -> Result<GuardOutcome, SlotError> {
    todo!()
}
