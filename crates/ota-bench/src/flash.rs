//! Flash time of the reference devices, charged with the same rules as ours.
//!
//! The virtual ESP32 counts one erase command per 4 KiB sector or aligned 64 KiB block and one
//! page-program command per 256-byte page a write touches; `virtual_esp32::air` charges them
//! with [`FlashTiming`] (W25Q32FV typical times, cited there). [`FlashCost`] applies the same
//! rules to a reference device's writes, so every column pays the same price for the same
//! flash operations. Which erase commands a reference issues follows what its real
//! implementation does: sector by sector unless it knows the image size and erases the range
//! with ESP-IDF's `esp_partition_erase_range`, which uses block erases where aligned.

use std::time::Duration;

use ble_link_model::FlashTiming;

/// Flash time of one image written into an erased-on-demand slot from offset 0.
#[derive(Debug, Clone)]
pub struct FlashCost {
    timing: FlashTiming,
    /// Bytes of the slot erased so far (a whole number of sectors).
    erased: u64,
    /// Total charged so far.
    total: Duration,
    /// Image size, when the device erases with block commands where it can.
    block_erase_for: Option<u64>,
}

impl FlashCost {
    /// A slot with nothing erased yet.
    pub fn new(timing: FlashTiming) -> Self {
        FlashCost {
            timing,
            erased: 0,
            total: Duration::ZERO,
            block_erase_for: None,
        }
    }

    /// Erases with 64 KiB block commands where aligned and filled by an image of `len` bytes
    /// (as ESP-IDF's `esp_ota_begin` does through `esp_partition_erase_range`, and as ours does).
    pub fn use_block_erase(&mut self, len: u64) {
        self.block_erase_for = Some(len);
    }

    /// Erases every sector up to the one holding byte `end - 1` that is not erased yet, one
    /// sector-erase command each (as ours: sector by sector just ahead of the writes).
    pub fn erase_to(&mut self, end: u64) -> Duration {
        let sector = u64::from(self.timing.sector_size);
        let target = end.div_ceil(sector) * sector;
        if target <= self.erased {
            return Duration::ZERO;
        }
        let block = u64::from(self.timing.block_size);
        let mut took = Duration::ZERO;
        while self.erased < target {
            let whole_block = self.block_erase_for.is_some_and(|len| {
                self.erased.is_multiple_of(block) && len >= self.erased + 4 * sector
            });
            if whole_block {
                took += self.timing.block_erase_time(1);
                self.erased += block;
            } else {
                took += self.timing.erase_time(1);
                self.erased += sector;
            }
        }
        self.total += took;
        took
    }

    /// Programs `len` bytes at `offset` with one write call, erasing first what it reaches:
    /// a sector erase per new sector, a page program per page the range touches.
    pub fn program(&mut self, offset: u64, len: u64) -> Duration {
        let erase = self.erase_to(offset + len);
        let program = self.timing.program_time(offset, len);
        self.total += program;
        erase + program
    }

    /// Returns everything charged so far.
    pub fn total(&self) -> Duration {
        self.total
    }
}
