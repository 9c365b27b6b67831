//! The app side of ESP-IDF OTA (`esp_ota_ops.c`): which slot to update, how to select it for
//! the next boot, and how to change the running image's state. Writes otadata exactly as
//! ESP-IDF v6.0+ does (an entry for the running slot is rewritten in place).

use embedded_storage::nor_flash::NorFlash;

use super::flash::FlashError;
use super::otadata::{OtaData, OtaImgState};
use super::partition::{Partition, PartitionTable};

/// The OTA view of a partition table: its otadata and OTA app slots.
#[derive(Debug, Clone)]
pub struct OtaSlots {
    table: PartitionTable,
}

/// What otadata says about one app slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotState {
    /// The slot's partition.
    pub partition: Partition,
    /// `esp_ota_get_state_partition`: the state of the first CRC-valid entry for this slot.
    pub state: Option<OtaImgState>,
    /// Whether the bootloader would pick this slot now.
    pub is_boot: bool,
}

/// Why a slot operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SlotError {
    /// The table has no otadata partition or it is not 0x2000 bytes.
    #[error("partition table has no usable otadata partition (data/ota, 0x2000 bytes); OTA needs one")]
    NoOtadata,
    /// The table has no OTA app slot.
    #[error("partition table has no ota_0 app partition; OTA needs one")]
    NoOtaSlots,
    /// The target is not an OTA app slot (factory, test, data ...).
    #[error("partition is not an OTA app slot")]
    NotOtaSlot,
    /// The target is the running partition.
    #[error("refusing to write the running partition")]
    RunningPartition,
    /// No otadata entry selects the running app (it is factory, or otadata is blank).
    #[error("no otadata entry selects the running app (running factory?)")]
    NoActiveEntry,
    /// A flash operation failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
}

impl OtaSlots {
    /// Wraps a table that has an otadata partition and at least ota_0.
    pub fn new(table: PartitionTable) -> Result<Self, SlotError> {
        todo!()
    }
    /// Returns the table.
    pub fn table(&self) -> &PartitionTable {
        todo!()
    }
    /// Returns the otadata partition.
    pub fn otadata_partition(&self) -> &Partition {
        todo!()
    }
    /// Reads both otadata entries.
    pub fn read_otadata<F: NorFlash>(&self, flash: &mut F) -> Result<OtaData, SlotError> {
        todo!()
    }
    /// `esp_ota_get_next_update_partition`: the OTA slot after `running` (wrapping; ota_0 when
    /// running factory or the last slot). Never the running one, never factory.
    pub fn next_update_partition(&self, running: &Partition) -> Result<Partition, SlotError> {
        todo!()
    }
    /// `esp_ota_get_boot_partition`: the partition the bootloader will pick (no side effects,
    /// no image check).
    pub fn boot_partition<F: NorFlash>(&self, flash: &mut F) -> Result<Partition, SlotError> {
        todo!()
    }
    /// Returns every OTA slot's state.
    pub fn slot_states<F: NorFlash>(
        &self,
        flash: &mut F,
    ) -> Result<heapless::Vec<SlotState, 16>, SlotError> {
        todo!()
    }
    /// `esp_ota_get_state_partition`.
    pub fn state_of<F: NorFlash>(
        &self,
        flash: &mut F,
        slot: &Partition,
    ) -> Result<Option<OtaImgState>, SlotError> {
        todo!()
    }
    /// `esp_ota_invalidate_inactive_ota_data_slot` (IDF v5.5+, called by `esp_ota_begin` with
    /// rollback): erases the inactive otadata sector if it selects `target`, so a fallback never
    /// lands on a slot that is being overwritten.
    pub fn invalidate_inactive_for<F: NorFlash>(
        &self,
        flash: &mut F,
        target: &Partition,
    ) -> Result<(), SlotError> {
        todo!()
    }
    /// `esp_ota_set_boot_partition` without the image check (callers verify first): selects
    /// `target` for the next boot with `state` (NEW with rollback, UNDEFINED without). Selecting
    /// factory erases otadata.
    pub fn set_boot_partition<F: NorFlash>(
        &self,
        flash: &mut F,
        target: &Partition,
        state: OtaImgState,
    ) -> Result<(), SlotError> {
        todo!()
    }
    /// Rewrites the active entry in place with `state` (`esp_ota_mark_app_valid_cancel_rollback`
    /// with VALID, `esp_ota_mark_app_invalid_rollback` with INVALID; the rollback guard uses
    /// PENDING_VERIFY and ABORTED). A no-op when the state is already `state`.
    pub fn set_active_state<F: NorFlash>(
        &self,
        flash: &mut F,
        state: OtaImgState,
    ) -> Result<(), SlotError> {
        todo!()
    }
}
