//! The app side of ESP-IDF OTA (`esp_ota_ops.c`): which slot to update, how to select it for
//! the next boot, and how to change the running image's state. Writes otadata exactly as
//! ESP-IDF v6.0+ does (an entry for the running slot is rewritten in place).

use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};

use super::flash::{self, FlashError, FlashOp, SECTOR_SIZE};
use super::otadata::{ENTRY_1_OFFSET, ENTRY_LEN, OTADATA_SIZE, OtaData, OtaEntry, OtaImgState};
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
    /// The table has no otadata partition, or it is smaller than 0x2000 bytes (the bootloader
    /// refuses it), or it is not made of whole 4 KiB sectors.
    #[error(
        "partition table has no usable otadata partition (data/ota, 0x2000 bytes); OTA needs one"
    )]
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
    /// The next sequence number would reach 0xFFFFFFFF (an erased entry); erase otadata
    /// (select factory) or rewrite it from scratch.
    #[error("otadata sequence number exhausted; erase otadata")]
    SeqExhausted,
}

/// Reads both otadata entries of the partition at `base`.
pub(crate) fn read_entries<F: NorFlash>(flash: &mut F, base: u32) -> Result<OtaData, FlashError> {
    let mut entries = [OtaEntry::ERASED; 2];
    for (i, e) in entries.iter_mut().enumerate() {
        let mut buf = [0u8; ENTRY_LEN];
        flash::read(flash, sector_addr(base, i)?, &mut buf)?;
        *e = OtaEntry::from_bytes(&buf);
    }
    Ok(OtaData { entries })
}

/// Writes entry `index` of the otadata partition at `base` as IDF does: erase its 4 KiB
/// sector, then program the 32 bytes.
pub(crate) fn write_entry<F: NorFlash>(
    flash: &mut F,
    base: u32,
    index: usize,
    entry: &OtaEntry,
) -> Result<(), FlashError> {
    write_entry_with(flash, base, index, entry, true)
}

/// [`write_entry`], erasing the sector only if it does not read blank when `always_erase` is
/// false: the same bytes result.
fn write_entry_with<F: NorFlash>(
    flash: &mut F,
    base: u32,
    index: usize,
    entry: &OtaEntry,
    always_erase: bool,
) -> Result<(), FlashError> {
    let at = sector_addr(base, index)?;
    let end = at
        .checked_add(SECTOR_SIZE)
        .ok_or(out_of_bounds(FlashOp::Erase, at))?;
    if always_erase || !flash::is_blank(flash, at, end)? {
        flash::erase(flash, at, end)?;
    }
    flash::write(flash, at, &entry.to_bytes())
}

fn out_of_bounds(op: FlashOp, addr: u32) -> FlashError {
    FlashError {
        op,
        addr,
        kind: NorFlashErrorKind::OutOfBounds,
    }
}

/// Address of entry `index` (0 or 1) of the otadata partition at `base`.
fn sector_addr(base: u32, index: usize) -> Result<u32, FlashError> {
    let off = if index == 0 { 0 } else { ENTRY_1_OFFSET };
    base.checked_add(off)
        .filter(|a| a.checked_add(SECTOR_SIZE).is_some())
        .ok_or(out_of_bounds(FlashOp::Read, base))
}

/// `compute_ota_seq_for_target_slot`: the smallest `base + i*n >= current` with
/// `base = (slot + 1) % n`. `None` when it would not fit below 0xFFFFFFFF.
pub fn next_seq(current: u32, slot: u8, ota_count: u8) -> Option<u32> {
    if ota_count == 0 {
        return None;
    }
    let n = u64::from(ota_count);
    let base = (u64::from(slot) + 1) % n;
    let cur = u64::from(current);
    let seq = if cur <= base {
        base
    } else {
        base + (cur - base).div_ceil(n) * n
    };
    u32::try_from(seq).ok().filter(|s| *s != u32::MAX)
}

impl OtaSlots {
    /// Wraps a table that has an otadata partition and at least ota_0.
    pub fn new(table: PartitionTable) -> Result<Self, SlotError> {
        let otadata = table.otadata().ok_or(SlotError::NoOtadata)?;
        if otadata.size < OTADATA_SIZE
            || otadata.offset % SECTOR_SIZE != 0
            || otadata.size % SECTOR_SIZE != 0
            || otadata.offset.checked_add(otadata.size).is_none()
        {
            return Err(SlotError::NoOtadata);
        }
        if table.ota_count() == 0 {
            return Err(SlotError::NoOtaSlots);
        }
        Ok(OtaSlots { table })
    }
    /// Returns the table.
    pub fn table(&self) -> &PartitionTable {
        &self.table
    }
    /// Returns the otadata partition.
    pub fn otadata_partition(&self) -> &Partition {
        // `new` refused tables without one; the fallback is never used.
        const NONE: Partition = Partition {
            ty: Partition::TYPE_DATA,
            subtype: Partition::SUBTYPE_OTADATA,
            offset: 0,
            size: 0,
            label: [0; 16],
            flags: 0,
        };
        self.table.otadata().unwrap_or(&NONE)
    }
    /// Returns the number of OTA slots (contiguous from ota_0).
    pub fn ota_count(&self) -> u8 {
        self.table.ota_count()
    }
    /// Reads both otadata entries.
    pub fn read_otadata<F: NorFlash>(&self, flash: &mut F) -> Result<OtaData, SlotError> {
        Ok(read_entries(flash, self.otadata_partition().offset)?)
    }
    /// Writes otadata entry `index` (0 or 1): erases its sector and programs the 32 bytes. A
    /// sector that already reads blank (an update invalidated it before its first write) is
    /// not erased again: the same bytes result, and the radio, which stops during every
    /// erase, is spared 45 ms at the end of an update.
    pub fn write_otadata_entry<F: NorFlash>(
        &self,
        flash: &mut F,
        index: usize,
        entry: &OtaEntry,
    ) -> Result<(), SlotError> {
        Ok(write_entry_with(
            flash,
            self.otadata_partition().offset,
            index,
            entry,
            false,
        )?)
    }
    /// Returns the OTA partition selected by `entry` (`ota_<(seq-1) % count>`).
    pub fn slot_partition(&self, entry: &OtaEntry) -> Option<&Partition> {
        self.table.ota(entry.slot(self.ota_count()))
    }
    /// `find_default_boot_partition`: factory, else the first OTA partition, else test.
    fn default_boot(&self) -> Result<Partition, SlotError> {
        self.table
            .factory()
            .or_else(|| (0..16).find_map(|n| self.table.ota(n)))
            .or_else(|| self.table.test())
            .copied()
            .ok_or(SlotError::NoOtaSlots)
    }
    /// Returns this table's partition `ota_<slot of p>` when `p` is it (same offset).
    fn own_ota(&self, p: &Partition) -> Result<(u8, &Partition), SlotError> {
        let slot = p.ota_slot().ok_or(SlotError::NotOtaSlot)?;
        match self.table.ota(slot) {
            Some(own) if own.offset == p.offset && slot < self.ota_count() => Ok((slot, own)),
            _ => Err(SlotError::NotOtaSlot),
        }
    }
    /// `esp_ota_get_next_update_partition`: the OTA slot after `running` (wrapping; ota_0 when
    /// running factory or the last slot). Never the running one, never factory.
    pub fn next_update_partition(&self, running: &Partition) -> Result<Partition, SlotError> {
        let mut default = None;
        let mut next_is_result = false;
        for p in (0..16).filter_map(|n| self.table.ota(n)) {
            default.get_or_insert(p);
            if p.offset == running.offset {
                next_is_result = true;
            } else if next_is_result {
                return Ok(*p);
            }
        }
        match default {
            None => Err(SlotError::NoOtaSlots),
            Some(p) if p.offset == running.offset => Err(SlotError::RunningPartition),
            Some(p) => Ok(*p),
        }
    }
    /// `esp_ota_get_boot_partition`: the partition the bootloader will pick (no side effects,
    /// no image check).
    pub fn boot_partition<F: NorFlash>(&self, flash: &mut F) -> Result<Partition, SlotError> {
        let data = self.read_otadata(flash)?;
        if data.both_invalid() {
            return self.default_boot();
        }
        match data.active_entry().and_then(|e| self.slot_partition(e)) {
            Some(p) => Ok(*p),
            None => self.default_boot(),
        }
    }
    /// Returns every OTA slot's state (ota_0 .. ota_15, those the table has).
    pub fn slot_states<F: NorFlash>(
        &self,
        flash: &mut F,
    ) -> Result<heapless::Vec<SlotState, 16>, SlotError> {
        let data = self.read_otadata(flash)?;
        let boot = self.boot_partition(flash)?;
        let mut out = heapless::Vec::new();
        for p in (0..16).filter_map(|n| self.table.ota(n)) {
            let _ = out.push(SlotState {
                partition: *p,
                state: self.state_in(&data, p),
                is_boot: p.offset == boot.offset,
            });
        }
        Ok(out)
    }
    fn state_in(&self, data: &OtaData, p: &Partition) -> Option<OtaImgState> {
        let want = p.ota_slot()?;
        let count = self.ota_count();
        data.entries
            .iter()
            .find(|e| e.slot(count) == want && e.crc_ok())
            .map(|e| e.state)
    }
    /// `esp_ota_get_state_partition`.
    pub fn state_of<F: NorFlash>(
        &self,
        flash: &mut F,
        slot: &Partition,
    ) -> Result<Option<OtaImgState>, SlotError> {
        if slot.ota_slot().is_none() {
            return Err(SlotError::NotOtaSlot);
        }
        let data = self.read_otadata(flash)?;
        Ok(self.state_in(&data, slot))
    }
    /// `esp_ota_invalidate_inactive_ota_data_slot` (IDF v5.5+, called by `esp_ota_begin` with
    /// rollback): erases the inactive otadata sector if it selects `target`, so a fallback never
    /// lands on a slot that is being overwritten.
    ///
    /// IDF erases the inactive sector when its entry (seq != 0xFFFFFFFF, good CRC, any state)
    /// selects any slot other than the running one; with `target` != running (which
    /// `esp_ota_begin` enforces) this is the same for two slots. With three or more slots this
    /// keeps an inactive entry selecting a third, untouched slot; see
    /// [`invalidate_inactive_except`](Self::invalidate_inactive_except) for IDF's exact rule.
    pub fn invalidate_inactive_for<F: NorFlash>(
        &self,
        flash: &mut F,
        target: &Partition,
    ) -> Result<(), SlotError> {
        let (slot, _) = self.own_ota(target)?;
        self.invalidate_inactive_if(flash, |s| s == Some(slot))
    }
    /// IDF's exact `esp_ota_invalidate_inactive_ota_data_slot`: erases the inactive otadata
    /// sector if its entry (seq != 0xFFFFFFFF, good CRC) selects a slot that is not `running`.
    pub fn invalidate_inactive_except<F: NorFlash>(
        &self,
        flash: &mut F,
        running: &Partition,
    ) -> Result<(), SlotError> {
        let running_slot = self.own_ota(running).ok().map(|(s, _)| s);
        self.invalidate_inactive_if(flash, |s| s.is_some() && s != running_slot)
    }
    fn invalidate_inactive_if<F: NorFlash>(
        &self,
        flash: &mut F,
        erase_if_selects: impl Fn(Option<u8>) -> bool,
    ) -> Result<(), SlotError> {
        let data = self.read_otadata(flash)?;
        let Some(active) = data.active() else {
            return Ok(());
        };
        let inactive = 1 - active;
        let entry = &data.entries[inactive];
        if entry.seq == u32::MAX || !entry.crc_ok() {
            return Ok(());
        }
        let selects = self.slot_partition(entry).and_then(Partition::ota_slot);
        if erase_if_selects(selects) {
            let at = sector_addr(self.otadata_partition().offset, inactive)?;
            flash::erase(flash, at, at + SECTOR_SIZE)?;
        }
        Ok(())
    }
    /// `esp_ota_set_boot_partition` without the image check (callers verify first): selects
    /// `target` for the next boot with `state` (NEW with rollback, UNDEFINED without). Selecting
    /// factory erases otadata.
    ///
    /// As IDF v6.0+: when `target` is already the active entry's slot, that entry is rewritten in
    /// place (same seq, new state); otherwise the other sector gets the next seq that selects
    /// `target`; with no valid entry, sector 0 gets `slot + 1`. The written sector keeps its
    /// label bytes.
    pub fn set_boot_partition<F: NorFlash>(
        &self,
        flash: &mut F,
        target: &Partition,
        state: OtaImgState,
    ) -> Result<(), SlotError> {
        let otadata = *self.otadata_partition();
        if target.is_factory() {
            flash::erase(flash, otadata.offset, otadata.offset + otadata.size)?;
            return Ok(());
        }
        let (slot, _) = self.own_ota(target)?;
        let count = self.ota_count();
        let data = self.read_otadata(flash)?;
        let (index, seq) = match data.active() {
            Some(active) => {
                let current = data.entries[active].seq;
                if data.entries[active].slot(count) == slot {
                    (active, current)
                } else {
                    let seq = next_seq(current, slot, count).ok_or(SlotError::SeqExhausted)?;
                    (1 - active, seq)
                }
            }
            None => (0, u32::from(slot) + 1),
        };
        let mut entry = data.entries[index];
        entry.seq = seq;
        entry.state = state;
        entry.crc = super::otadata::seq_crc(seq);
        self.write_otadata_entry(flash, index, &entry)
    }
    /// Rewrites the active entry in place with `state` (`esp_ota_mark_app_valid_cancel_rollback`
    /// with VALID, `esp_ota_mark_app_invalid_rollback` with INVALID; the rollback guard uses
    /// PENDING_VERIFY and ABORTED). A no-op when the state is already `state`.
    pub fn set_active_state<F: NorFlash>(
        &self,
        flash: &mut F,
        state: OtaImgState,
    ) -> Result<(), SlotError> {
        let data = self.read_otadata(flash)?;
        let active = data.active().ok_or(SlotError::NoActiveEntry)?;
        let entry = data.entries[active];
        if entry.state.same_as(state) {
            return Ok(());
        }
        self.write_otadata_entry(flash, active, &entry.with_state(state))
    }
}
