//! The second-stage bootloader's choice of app (`bootloader_utility.c`), and the early-boot
//! rollback guard the app runs when its bootloader was built without rollback support.

use embedded_storage::nor_flash::NorFlash;

use super::chip::Chip;
use super::flash::{self, FlashError};
use super::image::{ImageError, ImageInfo, ImageValidator, verify_in_flash_with};
use super::otadata::{OTADATA_SIZE, OtaEntry, OtaImgState};
use super::partition::{
    Md5Policy, PARTITION_TABLE_MAX_LEN, Partition, PartitionError, PartitionTable,
};
use super::slots::{OtaSlots, SlotError, read_entries, write_entry};

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
    /// Otadata could not be read or written, or it is smaller than 0x2000 bytes (the
    /// bootloader then resets: `INVALID_INDEX`).
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// Reading the partition table failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
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
    run_bootloader_with_revision(flash, table_offset, flash_size, chip, None, config)
}

/// [`run_bootloader`] on a chip of known `revision` (`major * 100 + minor`; `None`: not
/// checked): like ESP-IDF's bootloader (`bootloader_common_check_chip_validity`), it skips an
/// app whose chip revision range excludes the chip as it skips any invalid image.
pub fn run_bootloader_with_revision<F: NorFlash>(
    flash: &mut F,
    table_offset: u32,
    flash_size: u32,
    chip: Chip,
    revision: Option<u16>,
    config: BootloaderConfig,
) -> Result<Booted, BootError> {
    let mut raw = [0u8; PARTITION_TABLE_MAX_LEN];
    flash::read(flash, table_offset, &mut raw)?;
    let table = PartitionTable::parse(&raw, Md5Policy::Optional, Some(flash_size))?;
    let bs = BootState::new(&table);
    let (start, initial) = select_boot_index(flash, &bs, config)?;

    let mut skipped = heapless::Vec::new();
    // `start, start-1, ..., 0, factory`, then `start+1 .. app_count`, then test.
    let backwards = (FACTORY_INDEX..=start).rev();
    let forwards = (start + 1)..i32::from(bs.app_count);
    for index in backwards
        .chain(forwards)
        .chain(core::iter::once(TEST_APP_INDEX))
    {
        let Some(part) = bs.partition(index) else {
            continue;
        };
        let validator = ImageValidator::new(Some(chip), part.size).with_chip_revision(revision);
        match verify_in_flash_with(flash, part.offset, validator) {
            Ok(image) => {
                if initial && index >= 0 {
                    // set_actual_ota_seq: label 0xFF, seq index+1, VALID, into sector 0.
                    if let Some(otadata) = bs.otadata {
                        let entry = OtaEntry::new(index as u32 + 1, OtaImgState::Valid);
                        write_entry(flash, otadata.offset, 0, &entry).map_err(SlotError::from)?;
                    }
                }
                return Ok(Booted {
                    partition: part,
                    image,
                    skipped,
                });
            }
            Err(e) => {
                let _ = skipped.push((part, e));
            }
        }
    }
    Err(BootError::NoBootableApp)
}

/// `FACTORY_INDEX` of the bootloader.
const FACTORY_INDEX: i32 = -1;
/// `TEST_APP_INDEX` of the bootloader.
const TEST_APP_INDEX: i32 = -2;
/// `MAX_OTA_SLOTS`.
const MAX_OTA_SLOTS: usize = 16;

/// `bootloader_state_t` as `bootloader_utility_load_partition_table` fills it: plain
/// assignments (the last row wins), `app_count` counts every OTA app row.
struct BootState {
    factory: Option<Partition>,
    test: Option<Partition>,
    otadata: Option<Partition>,
    ota: [Option<Partition>; MAX_OTA_SLOTS],
    app_count: u8,
}

impl BootState {
    fn new(table: &PartitionTable) -> Self {
        let mut bs = BootState {
            factory: None,
            test: None,
            otadata: None,
            ota: [None; MAX_OTA_SLOTS],
            app_count: 0,
        };
        let mut app_count = 0u32;
        for p in table.partitions() {
            if p.is_factory() {
                bs.factory = Some(*p);
            } else if p.is_test() {
                bs.test = Some(*p);
            } else if let Some(n) = p.ota_slot() {
                bs.ota[usize::from(n)] = Some(*p);
                app_count += 1;
            } else if p.is_otadata() {
                bs.otadata = Some(*p);
            }
        }
        // The bootloader never indexes past its 16 slots.
        bs.app_count = app_count.min(MAX_OTA_SLOTS as u32) as u8;
        // A position with offset 0 means "absent" to the bootloader.
        bs.factory = bs.factory.filter(|p| p.offset != 0);
        bs.otadata = bs.otadata.filter(|p| p.offset != 0);
        bs
    }

    /// `index_to_partition`, with the loader's "size 0: skip" rule folded in.
    fn partition(&self, index: i32) -> Option<Partition> {
        let p = match index {
            FACTORY_INDEX => self.factory,
            TEST_APP_INDEX => self.test,
            i if i >= 0 && i < i32::from(self.app_count) => self.ota[i as usize],
            _ => None,
        };
        p.filter(|p| p.size != 0)
    }
}

/// `bootloader_utility_get_selected_boot_partition` (without anti-rollback): returns the start
/// index and whether otadata has "initial contents" (then the slot that loads is written).
fn select_boot_index<F: NorFlash>(
    flash: &mut F,
    bs: &BootState,
    config: BootloaderConfig,
) -> Result<(i32, bool), BootError> {
    let Some(otadata) = bs.otadata else {
        return Ok((FACTORY_INDEX, false));
    };
    if otadata.size < OTADATA_SIZE {
        return Err(SlotError::NoOtadata.into());
    }
    let mut data = read_entries(flash, otadata.offset).map_err(SlotError::from)?;
    if config.rollback {
        for (i, e) in data.entries.iter_mut().enumerate() {
            if e.state.same_as(OtaImgState::PendingVerify) {
                e.state = OtaImgState::Aborted;
                write_entry(flash, otadata.offset, i, e).map_err(SlotError::from)?;
            }
        }
    }
    if data.both_invalid() || bs.app_count == 0 {
        if bs.factory.is_some() {
            return Ok((FACTORY_INDEX, false));
        }
        let initial = data.entries.iter().all(OtaEntry::is_blank_or_bad_crc);
        return Ok((0, initial));
    }
    let Some(active) = data.active() else {
        // "ota data partition invalid": factory, or without one, try every partition.
        return Ok((FACTORY_INDEX, false));
    };
    let entry = data.entries[active];
    let index = i32::from(entry.slot(bs.app_count));
    if config.rollback && entry.state.same_as(OtaImgState::New) {
        let entry = entry.with_state(OtaImgState::PendingVerify);
        write_entry(flash, otadata.offset, active, &entry).map_err(SlotError::from)?;
    }
    Ok((index, false))
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
    let data = slots.read_otadata(flash)?;
    let Some(entry) = data.active_entry() else {
        return Ok(GuardOutcome::NotOta);
    };
    let selected = slots.slot_partition(entry);
    if running.ota_slot().is_none() || selected.is_none_or(|p| p.offset != running.offset) {
        return Ok(GuardOutcome::NotOta);
    }
    Ok(match entry.state {
        // A rollback bootloader turns NEW into PENDING_VERIFY before booting; if it did not
        // (NEW written for the running slot after boot), do it now so the trial is guarded.
        OtaImgState::New => {
            slots.set_active_state(flash, OtaImgState::PendingVerify)?;
            GuardOutcome::Trial
        }
        OtaImgState::PendingVerify if config.rollback => GuardOutcome::Trial,
        OtaImgState::PendingVerify => {
            slots.set_active_state(flash, OtaImgState::Aborted)?;
            GuardOutcome::RolledBack
        }
        // VALID, UNDEFINED, and unknown values (selectable for IDF): nothing on trial.
        // (INVALID and ABORTED entries are never active.)
        _ => GuardOutcome::Confirmed,
    })
}
